//! Vehicle classes.
//!
//! The class decides a vehicle's rate card (base rates, floor and ceiling are set per region
//! and class), so it is a closed set: the five classes the schema's `vehicles.class` check
//! allows. A free string would let a typo price a vehicle from a rate card that cannot exist;
//! an enum is parsed once where text enters (an HTTP query or path, a database row) and the
//! rest of the code cannot hold an unknown class.
//!
//! The text form (`"compact"` …) is what the database stores, the API shows and the caches
//! key on; [`VehicleClass::as_str`] and [`FromStr`] are exact inverses and accept nothing else.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A class of vehicle (the `vehicles.class` check of the schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VehicleClass {
    Compact,
    Sedan,
    Suv,
    Van,
    Premium,
}

/// The text names no vehicle class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown vehicle class {0:?} (expected one of {names})", names = VehicleClass::names())]
pub struct UnknownVehicleClass(pub String);

impl VehicleClass {
    /// Every class, in the schema's order (the order error messages list them in).
    pub const ALL: [VehicleClass; 5] = [
        VehicleClass::Compact,
        VehicleClass::Sedan,
        VehicleClass::Suv,
        VehicleClass::Van,
        VehicleClass::Premium,
    ];

    /// The lower-case name stored in the database and shown on the wire (`"suv"`).
    pub fn as_str(self) -> &'static str {
        match self {
            VehicleClass::Compact => "compact",
            VehicleClass::Sedan => "sedan",
            VehicleClass::Suv => "suv",
            VehicleClass::Van => "van",
            VehicleClass::Premium => "premium",
        }
    }

    /// Every class's name, comma-separated (`"compact, sedan, suv, van, premium"`), for
    /// messages that tell a caller what is accepted.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for VehicleClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VehicleClass {
    type Err = UnknownVehicleClass;

    /// The exact lower-case name only: `"SUV"` or `" suv"` is not a class.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownVehicleClass(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_parses_back_from_its_name() {
        for class in VehicleClass::ALL {
            assert_eq!(class.as_str().parse::<VehicleClass>(), Ok(class));
            assert_eq!(class.to_string(), class.as_str());
        }
    }

    #[test]
    fn the_classes_are_exactly_the_five_the_schema_allows() {
        assert_eq!(VehicleClass::names(), "compact, sedan, suv, van, premium");
    }

    #[test]
    fn parsing_refuses_other_case_padding_and_unknown_names() {
        for text in ["SUV", "Van", " suv", "suv ", "", "truck"] {
            assert_eq!(
                text.parse::<VehicleClass>(),
                Err(UnknownVehicleClass(text.to_owned()))
            );
        }
    }

    #[test]
    fn the_error_quotes_the_input_and_lists_the_classes() {
        let err = "bus".parse::<VehicleClass>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                r#"unknown vehicle class "bus" (expected one of compact, sedan, suv, van, premium)"#
            )
        );
    }

    #[test]
    fn serde_uses_the_lower_case_name() -> Result<(), serde_json::Error> {
        assert_eq!(serde_json::to_string(&VehicleClass::Suv)?, "\"suv\"");
        assert_eq!(
            serde_json::from_str::<VehicleClass>("\"premium\"")?,
            VehicleClass::Premium
        );
        assert!(serde_json::from_str::<VehicleClass>("\"Premium\"").is_err());
        Ok(())
    }
}
