//! W3C Trace Context (`traceparent`) and the pseudonym of a user in access logs: the rules the
//! edge and the origin share, so both tiers accept, forward and log exactly the same things.
//!
//! A `traceparent` is `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`, lower-case
//! (W3C Trace Context level 1). Anything else — another version with our length, upper case,
//! an all-zero id — is *invalid* and is replaced, never forwarded: the spec lets a receiver
//! restart a trace it cannot parse, and a header copied blindly into logs and Kafka records
//! would carry attacker-chosen bytes. Ids are made by the caller (randomness is I/O; the
//! domain stays pure): [`TraceParent::new`] takes the bytes.

use sha2::{Digest, Sha256};

/// A parsed, valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// Never all zero.
    pub trace_id: [u8; 16],
    /// The span of the sender (the parent of the receiver's span); never all zero.
    pub parent_id: [u8; 8],
    /// Bit 0: sampled.
    pub flags: u8,
}

/// The W3C `sampled` flag.
pub const SAMPLED: u8 = 0x01;

fn hex_lower<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

impl TraceParent {
    /// A new trace (or a new span of one), from caller-made random ids. `None` if either id
    /// is all zero (invalid by the spec: the caller draws again or gives up tracing).
    pub fn new(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Option<Self> {
        (trace_id != [0; 16] && parent_id != [0; 8]).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Parses a header value; `None` for anything but a valid version-00 header.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim_matches([' ', '\t']);
        if header.len() != 55 {
            return None;
        }
        let mut parts = header.split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        let [flags] = hex_lower::<1>(flags)?;
        Self::new(hex_lower(trace)?, hex_lower(parent)?, flags)
    }

    /// The same trace with `span_id` as the parent: what a tier forwards after making its own
    /// span.
    pub fn child(&self, span_id: [u8; 8]) -> Option<Self> {
        Self::new(self.trace_id, span_id, self.flags)
    }

    /// The trace id as 32 lower-case hex digits (how logs name the trace).
    pub fn trace_id_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, &self.trace_id);
        out
    }

    /// The parent span id as 16 lower-case hex digits.
    pub fn parent_id_hex(&self) -> String {
        let mut out = String::with_capacity(16);
        push_hex(&mut out, &self.parent_id);
        out
    }

    /// Whether the sender sampled this trace.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.parent_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        f.write_str(&out)
    }
}

/// The pseudonym of a user in access logs: the first 16 hex digits (64 bits) of SHA-256 of
/// the user id, unsalted. Not reversible by computation, and the same at the edge and the
/// origin, so one user's lines join across tiers and regions; but an id that can be guessed
/// can be confirmed by hashing it — it is a pseudonym for log readers, not a secret.
pub fn user_hash(user_id: &str) -> String {
    let digest = Sha256::digest(user_id.as_bytes());
    let mut out = String::with_capacity(16);
    push_hex(&mut out, &digest[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_round_trips() {
        let tp = TraceParent::parse(GOOD).expect("valid");
        assert_eq!(tp.to_string(), GOOD);
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id_hex(), "00f067aa0ba902b7");
        assert!(tp.sampled());
    }

    #[test]
    fn invalid_headers_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_and_names_the_new_parent() {
        let tp = TraceParent::parse(GOOD).expect("valid");
        let child = tp.child([1, 2, 3, 4, 5, 6, 7, 8]).expect("valid");
        assert_eq!(
            child.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_eq!(tp.child([0; 8]), None);
    }

    #[test]
    fn the_user_hash_is_16_hex_of_sha256() {
        // sha256("ann") = 9f2d…; stable across tiers and releases (logs join on it).
        let h = user_hash("ann");
        assert_eq!(h.len(), 16);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(h, user_hash("bob"));
        assert!(!h.contains("ann"));
    }
}
