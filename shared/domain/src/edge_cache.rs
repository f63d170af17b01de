//! The edge cache's generation keys, shared by the edge workers (which read and bump them) and
//! the origin (which bumps them after committed changes).
//!
//! The edge keeps quotes and searches in Upstash Redis under keys that embed generation
//! counters: `gen:<REGION>` for searches, `gen:veh:<vehicle id>` for quotes (see
//! `edge/core/src/cache.rs`). Incrementing a counter makes every entry under it unreachable at
//! once. Both sides must spell these keys identically or a bump silently misses, so they are
//! defined here, once.

use crate::ids::VehicleId;
use crate::region::Region;

/// How long a vehicle's generation counter lives after its last bump (a day): long past any
/// entry stored under it (quotes live 60 s), short enough that idle vehicles' counters go away.
pub const VEHICLE_GEN_TTL_SECS: u64 = 86_400;

/// `<prefix>gen:<REGION>`: the generation of a region's searches.
pub fn region_gen_key(prefix: &str, region: Region) -> String {
    format!("{prefix}gen:{}", region.code())
}

/// `<prefix>gen:veh:<vehicle id>`: the generation of a vehicle's quotes.
pub fn vehicle_gen_key(prefix: &str, vehicle: &VehicleId) -> String {
    format!("{prefix}gen:veh:{vehicle}")
}

/// The Redis commands of one bump: the region's counter, and the vehicle's counter with its
/// expiry when a vehicle is named. Sent as one pipeline.
pub fn bump_commands(
    prefix: &str,
    region: Region,
    vehicle: Option<&VehicleId>,
) -> Vec<Vec<String>> {
    let mut commands = vec![vec!["INCR".to_owned(), region_gen_key(prefix, region)]];
    if let Some(vehicle) = vehicle {
        let key = vehicle_gen_key(prefix, vehicle);
        commands.push(vec!["INCR".to_owned(), key.clone()]);
        commands.push(vec![
            "EXPIRE".to_owned(),
            key,
            VEHICLE_GEN_TTL_SECS.to_string(),
        ]);
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vehicle() -> VehicleId {
        VehicleId::new(
            Region::Eun,
            uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        )
    }

    #[test]
    fn generation_keys_name_the_region_and_the_public_vehicle_id() {
        assert_eq!(region_gen_key("edge:", Region::Euw), "edge:gen:EUW");
        assert_eq!(
            vehicle_gen_key("p:", &vehicle()),
            "p:gen:veh:veh_eun_0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn a_bump_increments_the_region_and_the_vehicle_and_keeps_the_vehicle_counter_a_day() {
        let commands = bump_commands("p:", Region::Eun, Some(&vehicle()));
        let key = "p:gen:veh:veh_eun_0123456789abcdef0123456789abcdef";
        assert_eq!(
            commands,
            [
                vec!["INCR", "p:gen:EUN"],
                vec!["INCR", key],
                vec!["EXPIRE", key, "86400"],
            ]
        );
        assert_eq!(
            bump_commands("p:", Region::Euw, None),
            [vec!["INCR", "p:gen:EUW"]]
        );
    }
}
