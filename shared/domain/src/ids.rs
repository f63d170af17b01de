//! Public, region-routable identifiers.
//!
//! A public id names its home region: `veh_euw_<32 hex>` / `bkg_eun_<32 hex>`. The edge routes a
//! write to the origin that owns the vehicle from the id alone, without a lookup (which would be
//! a cross-region round trip and a consistency hazard). Parsing is strict — lower-case type
//! prefix and region slug, exactly 32 hex digits (any case) — so that one entity has one
//! canonical spelling (used in cache keys and idempotency hashes); display is always lower case.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::region::Region;

/// Longest string the parser even looks at; real ids are 40 bytes.
const MAX_ID_LEN: usize = 64;

/// Why a public id string was rejected. Messages are safe to show to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id does not start with the expected type prefix, e.g. a booking id where a vehicle id
    /// was expected.
    #[error("id must start with \"{expected}_\"")]
    WrongPrefix {
        /// The lower-case prefix required ("veh" or "bkg").
        expected: &'static str,
    },
    /// The region segment is not a known lower-case region slug.
    #[error("id has unknown region {0:?}: expected \"euw\" or \"eun\"")]
    UnknownRegion(String),
    /// The trailing part is not exactly 32 hexadecimal digits.
    #[error("id must end with 32 hexadecimal digits")]
    BadUuid,
    /// Wrong overall shape (missing separators, too long, …).
    #[error("malformed id: expected <type>_<region>_<32 hex digits>")]
    Malformed,
}

fn parse_id(s: &str, prefix: &'static str) -> Result<(Region, Uuid), IdError> {
    if s.len() > MAX_ID_LEN {
        return Err(IdError::Malformed);
    }
    let rest = s
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .ok_or(IdError::WrongPrefix { expected: prefix })?;
    let (slug, hex) = rest.split_once('_').ok_or(IdError::Malformed)?;
    let region = Region::from_slug(slug).ok_or_else(|| IdError::UnknownRegion(slug.to_owned()))?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IdError::BadUuid);
    }
    let uuid = Uuid::try_parse(hex).map_err(|_| IdError::BadUuid)?;
    Ok((region, uuid))
}

macro_rules! region_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name {
            /// Home region: the origin that owns writes for this entity.
            pub region: Region,
            /// The entity's primary key (the caller generates it, e.g. UUIDv7).
            pub uuid: Uuid,
        }

        impl $name {
            /// The lower-case type prefix of the public form.
            pub const PREFIX: &'static str = $prefix;

            /// Combines a region and a uuid (no I/O: the caller supplies the uuid).
            pub const fn new(region: Region, uuid: Uuid) -> Self {
                Self { region, uuid }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}_{}", $prefix, self.region.slug(), self.uuid.simple())
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let (region, uuid) = parse_id(s, $prefix)?;
                Ok(Self { region, uuid })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

region_id!(
    /// Public id of a vehicle, e.g. `veh_euw_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e`.
    VehicleId,
    "veh"
);
region_id!(
    /// Public id of a booking, e.g. `bkg_eun_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e`. A booking lives in
    /// its vehicle's home region.
    BookingId,
    "bkg"
);
region_id!(
    /// Public id of a webhook endpoint, e.g. `whk_euw_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e`: it is
    /// registered in one region and hears that region's events.
    WebhookId,
    "whk"
);
region_id!(
    /// Public id of a waitlist entry, e.g. `wlt_euw_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e`: it lives
    /// in its vehicle's region, as the vehicle's bookings do.
    WaitlistId,
    "wlt"
);
region_id!(
    /// Public id of an app's API key, e.g. `key_euw_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e`: it is
    /// issued and kept by one region's origin and accepted by every edge.
    ApiKeyId,
    "key"
);
region_id!(
    /// Public id of a deny-list entry, e.g. `dny_euw_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e`: it is
    /// kept by one region's origin and enforced by every edge.
    DenyId,
    "dny"
);

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0190f0c5a4c37d3e8b1e2f3a4b5c6d7e";

    fn uuid() -> Uuid {
        Uuid::try_parse(HEX).unwrap()
    }

    #[test]
    fn display_uses_prefix_region_slug_and_lower_hex() {
        let v = VehicleId::new(Region::Euw, uuid());
        assert_eq!(v.to_string(), format!("veh_euw_{HEX}"));
        let b = BookingId::new(Region::Eun, uuid());
        assert_eq!(b.to_string(), format!("bkg_eun_{HEX}"));
    }

    #[test]
    fn parse_round_trips_and_accepts_upper_case_hex() {
        let v: VehicleId = format!("veh_eun_{HEX}").parse().unwrap();
        assert_eq!(v, VehicleId::new(Region::Eun, uuid()));
        let upper: VehicleId = format!("veh_eun_{}", HEX.to_uppercase()).parse().unwrap();
        assert_eq!(upper, v);
        assert_eq!(upper.to_string(), format!("veh_eun_{HEX}"));
    }

    #[test]
    fn parse_rejects_everything_else_with_a_specific_error() {
        let cases: [(String, IdError); 9] = [
            (
                format!("bkg_euw_{HEX}"),
                IdError::WrongPrefix { expected: "veh" },
            ),
            (
                format!("VEH_euw_{HEX}"),
                IdError::WrongPrefix { expected: "veh" },
            ),
            (
                format!("vehx_euw_{HEX}"),
                IdError::WrongPrefix { expected: "veh" },
            ),
            (
                format!("veh_EUW_{HEX}"),
                IdError::UnknownRegion("EUW".into()),
            ),
            (
                format!("veh_usa_{HEX}"),
                IdError::UnknownRegion("usa".into()),
            ),
            (format!("veh_euw_{}", &HEX[..31]), IdError::BadUuid),
            (format!("veh_euw_{HEX}0"), IdError::BadUuid),
            (
                "veh_euw_0190f0c5-a4c3-7d3e-8b1e-2f3a4b5c".to_owned(),
                IdError::BadUuid,
            ),
            ("veh_euw".to_owned(), IdError::Malformed),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<VehicleId>(), Err(expected), "{input}");
        }
        assert_eq!(
            format!("veh_euw_{HEX}{}", "0".repeat(64)).parse::<VehicleId>(),
            Err(IdError::Malformed)
        );
        assert!(format!("veh_euw_{}g", &HEX[..31])
            .parse::<VehicleId>()
            .is_err());
        assert!(format!(" veh_euw_{HEX}").parse::<VehicleId>().is_err());
    }

    #[test]
    fn serde_uses_the_public_string_form() {
        let b = BookingId::new(Region::Euw, uuid());
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, format!("\"bkg_euw_{HEX}\""));
        assert_eq!(serde_json::from_str::<BookingId>(&json).unwrap(), b);
        assert!(serde_json::from_str::<VehicleId>(&json).is_err());
    }
}
