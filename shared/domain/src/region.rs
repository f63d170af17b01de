//! Deployment regions.
//!
//! Every vehicle has a home region whose origin owns its bookings; the region is also what
//! decides the currency a customer is charged in. Keeping it a closed enum means the edge can
//! route a write from an id alone, without a lookup table that could drift.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::money::Currency;

/// A home region of vehicles, bookings and their origin deployment. Ordered as declared
/// (EUW, EUN), which is the order of [`Region::ALL`]; maps keyed by region use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Region {
    /// Europe West (Frankfurt), charges EUR.
    #[serde(rename = "EUW")]
    Euw,
    /// Europe North (Sweden), charges SEK.
    #[serde(rename = "EUN")]
    Eun,
}

/// The region code could not be recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown region {0:?}: expected EUW or EUN")]
pub struct UnknownRegion(pub String);

impl Region {
    /// All regions, for iterating configuration and tests without forgetting one.
    pub const ALL: [Region; 2] = [Region::Euw, Region::Eun];

    /// Upper-case code used on the wire and in headers ("EUW").
    pub fn code(self) -> &'static str {
        match self {
            Region::Euw => "EUW",
            Region::Eun => "EUN",
        }
    }

    /// Lower-case slug used inside public ids and hostnames ("euw").
    pub fn slug(self) -> &'static str {
        match self {
            Region::Euw => "euw",
            Region::Eun => "eun",
        }
    }

    /// The currency every price in this region is quoted and charged in.
    pub fn currency(self) -> Currency {
        match self {
            Region::Euw => Currency::EUR,
            Region::Eun => Currency::SEK,
        }
    }

    /// Parses the exact lower-case slug only (used by the strict id parser).
    pub(crate) fn from_slug(s: &str) -> Option<Region> {
        match s {
            "euw" => Some(Region::Euw),
            "eun" => Some(Region::Eun),
            _ => None,
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Region {
    type Err = UnknownRegion;

    /// Accepts the code ("EUW") or the slug ("euw"); nothing else, so typos fail loudly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "EUW" | "euw" => Ok(Region::Euw),
            "EUN" | "eun" => Ok(Region::Eun),
            other => Err(UnknownRegion(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_slugs_and_currencies_match_the_region() {
        assert_eq!(Region::Euw.code(), "EUW");
        assert_eq!(Region::Eun.slug(), "eun");
        assert_eq!(Region::Euw.currency(), Currency::EUR);
        assert_eq!(Region::Eun.currency(), Currency::SEK);
        assert_eq!(Region::Eun.to_string(), "EUN");
    }

    #[test]
    fn parsing_accepts_code_and_slug_but_not_mixed_case() {
        for r in Region::ALL {
            assert_eq!(r.code().parse::<Region>(), Ok(r));
            assert_eq!(r.slug().parse::<Region>(), Ok(r));
        }
        assert!("Euw".parse::<Region>().is_err());
        assert!("".parse::<Region>().is_err());
    }

    #[test]
    fn serde_uses_the_upper_case_code() {
        assert_eq!(serde_json::to_string(&Region::Euw).unwrap(), "\"EUW\"");
        let r: Region = serde_json::from_str("\"EUN\"").unwrap();
        assert_eq!(r, Region::Eun);
    }
}
