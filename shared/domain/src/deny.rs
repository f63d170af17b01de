//! The deny list's rules, shared by the origin (which keeps the list) and the edges (which
//! enforce it): what ops may put on it, and how an entry and a request meet.
//!
//! An entry names a **network** (an address is its /32 or /128), a **user id** or an app's
//! **API key** (by its id). The origin publishes each region's active entries to the edges'
//! Upstash as one hash, [`hash_key`]: field [`DenyTarget::field`] → the entry's expiry in ms since the epoch (`0`:
//! none). A request does not carry the list: the edge sends the fields that *could* deny it —
//! its user's field and its address's network at every prefix length an entry may have
//! ([`candidates`]) — inside the rate-limit script it already sends, and the script looks them
//! up with one `HMGET` per region's hash. So matching is exact (no cached copy to go stale),
//! costs no Upstash request of its own, and works the same on a runtime that keeps no memory
//! between requests.
//!
//! To keep that list of fields short, prefix lengths are restricted: IPv4 /8 to /32, IPv6 /16
//! to /128 in steps of 4 (nibble boundaries: /32, /48, /56, /64 are the allocations in use) —
//! 25 or 29 fields per request. An IPv4-mapped IPv6 address is its IPv4 address, on both sides.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::ids::ApiKeyId;
use crate::region::Region;

/// The IPv4 prefix lengths an entry may have.
pub const V4_PREFIXES: std::ops::RangeInclusive<u8> = 8..=32;
/// The shortest IPv6 prefix an entry may have; lengths go up in [`V6_STEP`]s to 128.
pub const V6_MIN_PREFIX: u8 = 16;
/// IPv6 prefix lengths are multiples of this.
pub const V6_STEP: u8 = 4;
/// The longest user id an entry may name.
pub const MAX_USER_LEN: usize = 256;

/// What an entry denies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyTarget {
    /// Every address in the network (canonical: host bits zero, IPv4-mapped as IPv4).
    Network(IpNet),
    /// Every request whose verified token names this user (`sub`).
    User(String),
    /// Every request that presents this app's API key (`domain::api_key`). The edge does not
    /// know a key's id before the script reads its plan, so the script adds this field to the
    /// request's candidates itself, from the plan.
    Key(ApiKeyId),
}

/// Why an entry cannot be on the list; the message names what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyError {
    #[error("kind must be \"network\", \"user\" or \"key\" (got {0:?})")]
    Kind(String),
    #[error(
        "{0:?} is not an IP address or a network in CIDR form (e.g. 203.0.113.0/24, 2001:db8::/48)"
    )]
    Network(String),
    #[error("{given} has host bits set: the network is {network}")]
    HostBits { given: String, network: String },
    #[error("/{0} is not an allowed IPv4 prefix length: 8 to 32")]
    V4Prefix(u8),
    #[error(
        "/{0} is not an allowed IPv6 prefix length: 16 to 128 in steps of 4 (e.g. /48, /56, /64)"
    )]
    V6Prefix(u8),
    #[error("a user id is 1 to 256 characters without control characters")]
    User,
    #[error("an API key is named by its id, key_<region>_<32 hex> (got {0:?})")]
    Key(String),
}

impl DenyTarget {
    /// Parses an entry as ops give it: `kind` `network` (an address or a CIDR network) or
    /// `user` (a user id).
    pub fn parse(kind: &str, value: &str) -> Result<Self, DenyError> {
        match kind {
            "network" => parse_network(value.trim()).map(DenyTarget::Network),
            "user" => {
                let user = value.trim();
                if user.is_empty()
                    || user.len() > MAX_USER_LEN
                    || user.chars().any(char::is_control)
                {
                    return Err(DenyError::User);
                }
                Ok(DenyTarget::User(user.to_owned()))
            }
            "key" => value
                .trim()
                .parse::<ApiKeyId>()
                .map(DenyTarget::Key)
                .map_err(|_| DenyError::Key(value.to_owned())),
            other => Err(DenyError::Kind(other.to_owned())),
        }
    }

    /// `network` or `user`.
    pub fn kind(&self) -> &'static str {
        match self {
            DenyTarget::Network(_) => "network",
            DenyTarget::User(_) => "user",
            DenyTarget::Key(_) => "key",
        }
    }

    /// The canonical value: the network in CIDR form, or the user id.
    pub fn value(&self) -> String {
        match self {
            DenyTarget::Network(net) => net.to_string(),
            DenyTarget::User(user) => user.clone(),
            DenyTarget::Key(id) => id.to_string(),
        }
    }

    /// The entry's field in the region's hash: `n:<network>` or `u:<user id>`.
    pub fn field(&self) -> String {
        match self {
            DenyTarget::Network(net) => format!("n:{net}"),
            DenyTarget::User(user) => format!("u:{user}"),
            DenyTarget::Key(id) => format!("{KEY_FIELD_PREFIX}{id}"),
        }
    }
}

/// An address or network, with the prefix rules above; host bits must be zero.
fn parse_network(text: &str) -> Result<IpNet, DenyError> {
    let bad = || DenyError::Network(text.to_owned());
    let net = match IpNet::from_str(text) {
        Ok(net) => net,
        Err(_) => IpNet::from(IpAddr::from_str(text).map_err(|_| bad())?),
    };
    let net = unmapped(net);
    match net {
        IpNet::V4(v4) if !V4_PREFIXES.contains(&v4.prefix_len()) => {
            return Err(DenyError::V4Prefix(v4.prefix_len()))
        }
        IpNet::V6(v6) if v6.prefix_len() < V6_MIN_PREFIX || v6.prefix_len() % V6_STEP != 0 => {
            return Err(DenyError::V6Prefix(v6.prefix_len()))
        }
        _ => {}
    }
    if net.trunc() != net {
        return Err(DenyError::HostBits {
            given: text.to_owned(),
            network: net.trunc().to_string(),
        });
    }
    Ok(net)
}

/// An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/n`, n ≥ 96) as the IPv4 network it is. (A
/// shorter prefix cannot keep the `ffff` of the mapping, so its network is not mapped.)
fn unmapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
}

/// A key entry's field is this and the key's id: the edge script builds it from the plan it
/// reads (`"k:" .. id`).
pub const KEY_FIELD_PREFIX: &str = "k:";

/// The Upstash hash holding `region`'s active entries (keys share the edge's prefix).
pub fn hash_key(prefix: &str, region: Region) -> String {
    format!("{prefix}deny:{}", region.code())
}

/// The fields that would deny a request from `address` (as the platform gave it; unparseable:
/// none) by `user` (none before the token is verified): the user's field, then the address's
/// network at every allowed prefix length, longest first.
pub fn candidates(address: Option<&str>, user: Option<&str>) -> Vec<String> {
    let mut out = Vec::with_capacity(30);
    if let Some(user) = user {
        out.push(DenyTarget::User(user.to_owned()).field());
    }
    let ip = address.and_then(|a| IpAddr::from_str(a.trim()).ok());
    let ip = match ip {
        Some(IpAddr::V6(v6)) => Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
        other => other,
    };
    match ip {
        Some(IpAddr::V4(v4)) => {
            for len in V4_PREFIXES.rev() {
                if let Ok(net) = ipnet::Ipv4Net::new(v4, len) {
                    out.push(format!("n:{}", net.trunc()));
                }
            }
        }
        Some(IpAddr::V6(v6)) => {
            let mut len = 128u8;
            while len >= V6_MIN_PREFIX {
                if let Ok(net) = ipnet::Ipv6Net::new(v6, len) {
                    out.push(format!("n:{}", net.trunc()));
                }
                len -= V6_STEP;
            }
        }
        None => {}
    }
    out
}

/// The hash value of an entry: its expiry in ms since the epoch, `0` for none.
pub fn expiry_value(expires_at_ms: Option<i64>) -> String {
    expires_at_ms.map_or_else(|| "0".to_owned(), |ms| ms.max(1).to_string())
}

/// Whether a hash value denies at `now_ms` (the edge script's rule, for tests of it).
pub fn denies(value: &str, now_ms: u64) -> bool {
    match value.parse::<u64>() {
        Ok(0) => true,
        Ok(until) => until > now_ms,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(kind: &str, value: &str) -> Result<String, DenyError> {
        DenyTarget::parse(kind, value).map(|t| t.field())
    }

    #[test]
    fn networks_are_canonical_and_their_rules_named() {
        assert_eq!(
            net("network", "203.0.113.0/24"),
            Ok("n:203.0.113.0/24".into())
        );
        assert_eq!(
            net("network", " 203.0.113.7 "),
            Ok("n:203.0.113.7/32".into())
        );
        assert_eq!(
            net("network", "2001:DB8::/48"),
            Ok("n:2001:db8::/48".into())
        );
        assert_eq!(
            net("network", "2001:db8::1"),
            Ok("n:2001:db8::1/128".into())
        );
        assert_eq!(
            net("network", "::ffff:198.51.100.9"),
            Ok("n:198.51.100.9/32".into())
        );
        assert_eq!(
            net("network", "::ffff:198.51.100.0/120"),
            Ok("n:198.51.100.0/24".into())
        );
        assert_eq!(
            net("network", "203.0.113.5/24"),
            Err(DenyError::HostBits {
                given: "203.0.113.5/24".into(),
                network: "203.0.113.0/24".into()
            })
        );
        assert!(matches!(
            net("network", "::ffff:198.51.100.9/120"),
            Err(DenyError::HostBits { .. })
        ));
        assert_eq!(net("network", "10.0.0.0/7"), Err(DenyError::V4Prefix(7)));
        assert_eq!(
            net("network", "2001:db8::/50"),
            Err(DenyError::V6Prefix(50))
        );
        assert_eq!(net("network", "2000::/12"), Err(DenyError::V6Prefix(12)));
        for bad in ["", "nope", "1.2.3.4/33", "1.2.3.4/", "1.2.3.4.5"] {
            assert!(
                matches!(net("network", bad), Err(DenyError::Network(_))),
                "{bad:?}: {:?}",
                net("network", bad)
            );
        }
        assert_eq!(net("user", " usr_rita "), Ok("u:usr_rita".into()));
        assert_eq!(net("user", ""), Err(DenyError::User));
        assert_eq!(net("user", "a\nb"), Err(DenyError::User));
        assert_eq!(net("user", &"x".repeat(257)), Err(DenyError::User));
        assert_eq!(net("key", "k"), Err(DenyError::Key("k".into())));
        assert_eq!(
            net("key", " key_euw_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e "),
            Ok("k:key_euw_0190f0c5a4c37d3e8b1e2f3a4b5c6d7e".into())
        );
        assert_eq!(net("app", "k"), Err(DenyError::Kind("app".into())));
    }

    #[test]
    fn a_request_has_one_field_per_allowed_prefix_and_its_user() {
        let v4 = candidates(Some("203.0.113.7"), Some("rita"));
        assert_eq!(v4.len(), 1 + 25);
        assert_eq!(v4[0], "u:rita");
        assert_eq!(v4[1], "n:203.0.113.7/32");
        assert_eq!(v4[25], "n:203.0.0.0/8");
        let v6 = candidates(Some("2001:db8:1:2:3:4:5:6"), None);
        assert_eq!(v6.len(), 29);
        assert!(v6.contains(&"n:2001:db8:1:2::/64".to_owned()));
        assert!(v6.contains(&"n:2001:db8:1::/48".to_owned()));
        assert_eq!(
            candidates(Some("::ffff:203.0.113.7"), None)[0],
            "n:203.0.113.7/32"
        );
        assert!(candidates(Some("unknown"), None).is_empty());
        assert!(candidates(None, None).is_empty());
    }

    #[test]
    fn an_expiry_denies_until_it_passes() {
        assert!(denies(&expiry_value(None), u64::MAX));
        assert!(denies(&expiry_value(Some(1_000)), 999));
        assert!(!denies(&expiry_value(Some(1_000)), 1_000));
        assert!(!denies("garbage", 0));
    }

    fn v4_prefix() -> impl Strategy<Value = u8> {
        V4_PREFIXES
    }

    fn v6_prefix() -> impl Strategy<Value = u8> {
        (V6_MIN_PREFIX / V6_STEP..=128 / V6_STEP).prop_map(|k| k * V6_STEP)
    }

    proptest! {
        // The matching promise: an entry denies exactly the addresses inside its network.
        #[test]
        fn an_ipv4_entry_matches_exactly_the_addresses_inside_it(
            a in any::<u32>(), b in any::<u32>(), len in v4_prefix()
        ) {
            let entry = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), len).unwrap().trunc();
            let target = DenyTarget::parse("network", &entry.to_string()).unwrap();
            let addr = std::net::Ipv4Addr::from(b);
            let hit = candidates(Some(&addr.to_string()), None).contains(&target.field());
            prop_assert_eq!(hit, entry.contains(&addr));
            let own = std::net::Ipv4Addr::from(a);
            prop_assert!(candidates(Some(&own.to_string()), None).contains(&target.field()));
        }

        #[test]
        fn an_ipv6_entry_matches_exactly_the_addresses_inside_it(
            a in any::<u128>(), flip in 0u32..128, len in v6_prefix()
        ) {
            let own = std::net::Ipv6Addr::from(a);
            prop_assume!(own.to_ipv4_mapped().is_none());
            let entry = ipnet::Ipv6Net::new(own, len).unwrap().trunc();
            let target = DenyTarget::parse("network", &entry.to_string()).unwrap();
            prop_assert!(candidates(Some(&own.to_string()), None).contains(&target.field()));
            let other = std::net::Ipv6Addr::from(a ^ (1u128 << flip));
            prop_assume!(other.to_ipv4_mapped().is_none());
            let hit = candidates(Some(&other.to_string()), None).contains(&target.field());
            prop_assert_eq!(hit, entry.contains(&other));
        }
    }
}
