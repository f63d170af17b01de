//! Search-cursor decoding on arbitrary input: never panics, and whatever decodes re-encodes to
//! a cursor that decodes to the same value (the format is strict, so the text is the same).
#![no_main]

use domain::search::SearchCursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cursor) = SearchCursor::decode(text) {
        let encoded = cursor.encode();
        assert_eq!(SearchCursor::decode(&encoded).ok(), Some(cursor));
        assert_eq!(encoded, text, "decode accepted a non-canonical cursor");
    }
});
