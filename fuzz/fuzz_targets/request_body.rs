//! Request-body parsing: the domain's wire types that arrive in JSON bodies (time windows,
//! money, booking statuses, JWT claims, quote claims) on arbitrary bytes. Never panics; a window
//! that parses is valid (non-empty, whole minutes) and round-trips.
#![no_main]

use chrono::Timelike;
use domain::auth::Claims;
use domain::money::Money;
use domain::quote_token::QuoteClaims;
use domain::state::BookingStatus;
use domain::window::TimeWindow;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = serde_json::from_slice::<TimeWindow>(data) {
        assert!(w.start() < w.end());
        assert_eq!((w.start().second(), w.start().nanosecond()), (0, 0));
        let json = serde_json::to_vec(&w).expect("serialise");
        assert_eq!(serde_json::from_slice::<TimeWindow>(&json).ok(), Some(w));
    }
    if let Ok(m) = serde_json::from_slice::<Money>(data) {
        let json = serde_json::to_vec(&m).expect("serialise");
        assert_eq!(serde_json::from_slice::<Money>(&json).ok(), Some(m));
    }
    if let Ok(s) = serde_json::from_slice::<BookingStatus>(data) {
        assert_eq!(s.as_str().parse::<BookingStatus>().ok(), Some(s));
    }
    let _ = serde_json::from_slice::<Claims>(data);
    let _ = serde_json::from_slice::<QuoteClaims>(data);
    let _ = serde_json::from_slice::<serde_json::Value>(data);
});
