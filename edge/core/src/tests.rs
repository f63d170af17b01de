//! Unit tests of the pure parts (routing, canonical bodies, cache keys, token routing); the
//! behaviour through real runtimes is tested end to end in `tests/edge`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::*;

#[test]
fn routes_are_recognised_by_method_and_path() {
    let id = "bkg_eun_0123456789abcdef0123456789abcdef";
    assert_eq!(route("GET", "vehicles/search"), Route::Search);
    assert_eq!(route("POST", "quotes"), Route::Quote);
    assert_eq!(route("POST", "bookings"), Route::CreateBooking);
    assert!(
        matches!(route("POST", &format!("bookings/{id}/confirm")), Route::BookingAction(b) if b.region == Region::Eun)
    );
    assert!(matches!(
        route("GET", &format!("bookings/{id}")),
        Route::BookingRead(_)
    ));
    assert_eq!(route("GET", "bookings/not-an-id"), Route::Other);
    assert_eq!(route("GET", "quotes"), Route::Other);
}

#[test]
fn canonical_json_does_not_depend_on_key_order() {
    let a: Value =
        serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"d":2,"c":3}],"x":"s"}}"#).unwrap_or_default();
    let b: Value =
        serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#).unwrap_or_default();
    assert_eq!(canonical(&a), canonical(&b));
    assert_ne!(canonical(&a), canonical(&Value::Null));
}

#[test]
fn a_quote_token_names_its_region_and_vehicle_without_being_verified() {
    let payload =
        serde_json::json!({"reg": "EUN", "veh": "veh_eun_0123456789abcdef0123456789abcdef"});
    let token = format!("v1.k1.{}.sig", URL_SAFE_NO_PAD.encode(payload.to_string()));
    let (region, vehicle) = quote_token_target(&token).unwrap_or((Region::Euw, None));
    assert_eq!(region, Region::Eun);
    assert_eq!(
        vehicle.map(|v| v.to_string()).as_deref(),
        Some("veh_eun_0123456789abcdef0123456789abcdef")
    );
    assert!(quote_token_target("garbage").is_none());
    assert!(quote_token_target("v1.k1.!!!.sig").is_none());
}

#[test]
fn search_keys_ignore_parameter_order_and_change_with_any_generation() {
    let a = cache::search_key("p:", "v1", &[1, 2], "lat=1&lon=2");
    assert_eq!(a, cache::search_key("p:", "v1", &[1, 2], "lon=2&lat=1"));
    assert_ne!(a, cache::search_key("p:", "v1", &[1, 3], "lat=1&lon=2"));
    assert_ne!(a, cache::search_key("p:", "v2", &[1, 2], "lat=1&lon=2"));
}

#[test]
fn a_malformed_request_id_is_replaced() {
    let mut req = Request::default();
    req.headers.push(("X-Request-Id".into(), "abc-123".into()));
    assert_eq!(request_id(&req), "abc-123");
    req.headers[0].1 = "bad id\n".into();
    let id = request_id(&req);
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn paths_and_queries_are_made_sendable_without_touching_what_the_client_encoded() {
    let encoded = "/v1/admin/pricing/%F3%9D%BD%81%15/discount-rules/%3B%F1%AA%A0%A2U";
    assert_eq!(uri_safe(encoded, false), encoded);
    assert_eq!(uri_safe("/v1/a b\\\"é", false), "/v1/a%20b%5C%22%C3%A9");
    assert_eq!(uri_safe("a=1&b=x?y{z}", true), "a=1&b=x?y%7Bz%7D");
    assert_eq!(uri_safe("/v1/x?y", false), "/v1/x%3Fy");
}

#[test]
fn only_the_methods_the_origin_routes_are_forwarded() {
    for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        assert!(FORWARDED_METHODS.contains(&m), "{m}");
    }
    for m in ["QUERY", "PROPFIND", "TRACE", "CONNECT", "get"] {
        assert!(!FORWARDED_METHODS.contains(&m), "{m}");
    }
}
