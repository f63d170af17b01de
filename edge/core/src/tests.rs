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

/// A platform whose Upstash answers are scripted, recording every command sent.
struct Scripted {
    replies: std::cell::RefCell<Vec<(u16, Value)>>,
    sent: std::cell::RefCell<Vec<Value>>,
}

impl Platform for Scripted {
    async fn fetch(&self, req: Outbound) -> Result<Response, FetchError> {
        self.sent
            .borrow_mut()
            .push(serde_json::from_slice(&req.body).unwrap_or(Value::Null));
        let (status, body) = self.replies.borrow_mut().remove(0);
        Ok(Response {
            status,
            headers: Vec::new(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        })
    }
    fn now_ms(&self) -> u64 {
        120_000
    }
    fn var(&self, _name: &str) -> Option<String> {
        None
    }
    fn log(&self, _line: &str) {}
}

fn checks() -> Vec<Check> {
    [(Subject::User, "u", 5), (Subject::Ip, "1.2.3.4", 10)]
        .into_iter()
        .map(|(subject, id, limit)| Check {
            subject,
            id: id.into(),
            limit: RateLimit {
                limit,
                window_ms: 60_000,
            },
            burst: None,
        })
        .collect()
}

#[test]
fn one_request_checks_the_limits_and_reads_the_entry_under_the_generations_it_read() {
    let p = Scripted {
        replies: std::cell::RefCell::new(vec![
            (
                400,
                serde_json::json!({"error": "NOSCRIPT No matching script"}),
            ),
            (
                200,
                serde_json::json!({"result": [[0, 1, 0, 0, 0, 2, 0, 0], ["7", "0"], "{\"s\":200}"]}),
            ),
        ]),
        sent: Default::default(),
    };
    let redis = Upstash {
        url: "http://x",
        token: "t",
        timeout_ms: 1,
    };
    let read = CacheRead {
        gen_keys: vec!["p:gen:EUW".into(), "p:gen:EUN".into()],
        key: cache::search_key_parts("p:", "v1", "b=2&a=1"),
    };
    let blocked = ratelimit::BlockedCache::default();
    let (outcome, found) = futures_executor::block_on(ratelimit::apply(
        &p,
        &redis,
        "p:",
        None,
        &blocked,
        &checks(),
        Some(&read),
        &ratelimit::DenyRead::default(),
        None,
        120_000,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.decision.allowed);
    let found = found.unwrap_or_else(|| panic!("no cache read"));
    assert_eq!(found.gens, ["7", "0"]);
    assert_eq!(found.key, cache::search_key("p:", "v1", &[7, 0], "a=1&b=2"));
    assert_eq!(found.entry.as_deref(), Some("{\"s\":200}"));
    // EVALSHA first; on NOSCRIPT the same command with the script itself.
    let sent = p.sent.borrow();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0][0], "EVALSHA");
    assert_eq!(sent[0][1], ratelimit::script_sha());
    assert_eq!(sent[1][0], "EVAL");
    assert_eq!(sent[1][1], ratelimit::SCRIPT);
    assert_eq!(
        sent[0][2], "8",
        "four counters, two buckets and two generations"
    );
    assert_eq!(
        sent[0].as_array().map(Vec::len),
        sent[1].as_array().map(Vec::len)
    );
}

#[test]
fn a_refused_request_reads_nothing_and_the_next_costs_no_request() {
    let p = Scripted {
        // The user's window is full (5 of 5): the script reads no generation, no entry.
        replies: std::cell::RefCell::new(vec![(
            200,
            serde_json::json!({"result": [[0, 5, 0, 0, 0, 5, 0, 0], [], null]}),
        )]),
        sent: Default::default(),
    };
    let redis = Upstash {
        url: "http://x",
        token: "t",
        timeout_ms: 1,
    };
    let read = CacheRead {
        gen_keys: vec!["p:gen:veh:x".into()],
        key: cache::search_key_parts("p:", "v1", ""),
    };
    let blocked = ratelimit::BlockedCache::default();
    for _ in 0..2 {
        let (outcome, found) = futures_executor::block_on(ratelimit::apply(
            &p,
            &redis,
            "p:",
            None,
            &blocked,
            &checks(),
            Some(&read),
            &ratelimit::DenyRead::default(),
            None,
            120_000,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!outcome.decision.allowed);
        assert!(found.is_none());
    }
    assert_eq!(
        p.sent.borrow().len(),
        1,
        "the second refusal came from memory"
    );
}

/// The deny list rides on the script: its hashes after the generation keys, the fields after
/// the cache key; a denying reply is remembered by field, so the client's next request costs
/// no Upstash request, while another client's still asks.
#[test]
fn a_denied_request_is_refused_by_field_and_remembered_briefly() {
    let p = Scripted {
        replies: std::cell::RefCell::new(vec![
            (
                200,
                serde_json::json!({"result": [[], [], null, "n:203.0.113.0/24"]}),
            ),
            (
                200,
                serde_json::json!({"result": [[0, 1, 0, 0, 0, 1, 0, 0], [], null]}),
            ),
            (
                200,
                serde_json::json!({"result": [[0, 2, 0, 0, 0, 2, 0, 0], [], null]}),
            ),
        ]),
        sent: Default::default(),
    };
    let redis = Upstash {
        url: "http://x",
        token: "t",
        timeout_ms: 1,
    };
    let blocked = ratelimit::BlockedCache::default();
    let deny_of = |ip: &str| ratelimit::DenyRead {
        keys: vec!["p:deny:EUW".into(), "p:deny:EUN".into()],
        fields: domain::deny::candidates(Some(ip), Some("rita")),
    };
    let run = |deny: &ratelimit::DenyRead, now: u64| {
        futures_executor::block_on(ratelimit::apply(
            &p,
            &redis,
            "p:",
            None,
            &blocked,
            &checks(),
            None,
            deny,
            None,
            now,
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .0
    };
    let denied = deny_of("203.0.113.7");
    let first = run(&denied, 120_000);
    assert_eq!(first.denied.as_deref(), Some("n:203.0.113.0/24"));
    assert!(!first.from_memory);
    let again = run(&denied, 121_000);
    assert_eq!(again.denied.as_deref(), Some("n:203.0.113.0/24"));
    assert!(again.from_memory, "remembered: no request");
    assert_eq!(p.sent.borrow().len(), 1);
    // Another address asks Redis; so does the denied one once the memory has passed.
    let other = run(&deny_of("198.51.100.1"), 121_000);
    assert!(other.denied.is_none() && other.decision.allowed);
    assert_eq!(p.sent.borrow().len(), 2);
    let sent = p.sent.borrow();
    let args: Vec<&str> = sent[0]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // Four counters, two buckets, then the two hashes; m = 2, f = 26 and the fields, then
    // no key (0 hashes, empty hash and origin) at the end.
    assert_eq!(args[2], "8");
    assert_eq!(&args[9..11], ["p:deny:EUW", "p:deny:EUN"]);
    let m_at = args.len() - 3 - 28;
    assert_eq!(args[m_at], "2");
    assert_eq!(args[m_at + 1], "26");
    assert_eq!(args[m_at + 2], "u:rita");
    assert_eq!(args[m_at + 3], "n:203.0.113.7/32");
    assert_eq!(&args[args.len() - 3..], ["0", "", ""]);
    drop(sent);
    assert!(
        run(&denied, 120_000 + ratelimit::DENIED_MEMORY_MS + 1)
            .denied
            .is_none(),
        "past the memory the script decides (here: allowed)"
    );
}

#[test]
fn the_script_sha_is_the_sha1_of_the_script() {
    assert_eq!(ratelimit::script_sha().len(), 40);
    assert_eq!(
        ratelimit::script_sha(),
        hex::encode(<sha1::Sha1 as sha1::Digest>::digest(ratelimit::SCRIPT))
    );
}

#[test]
fn the_policy_names_the_window_and_the_burst() {
    let limit = RateLimit {
        limit: 100,
        window_ms: 60_000,
    };
    assert_eq!(policy(&limit, None), "100;w=60");
    let burst = Burst::new(&limit, 10);
    assert_eq!(policy(&limit, burst.as_ref()), "100;w=60, 83;w=10;burst=68");
}

/// The user's window is full (5 of 5 this minute); what the bucket read by the script holds
/// decides: a token left is an allowance whose `remaining` is the bucket's, none is a refusal
/// whose `Retry-After` is the next token's (sooner than the window's).
#[test]
fn with_the_window_full_the_bucket_the_script_read_decides_and_sets_the_numbers() {
    let now = 120_000 + 30_000;
    let mut checks = checks();
    for c in &mut checks {
        c.burst = Burst::new(&c.limit, 10);
    }
    let user = checks[0].burst.unwrap_or_else(|| panic!("burst off"));
    // (4 × 5 + 1) × 10/60 = 3.5, rounded up, plus one; a token back every 10 × 60/5 s.
    assert_eq!((user.capacity, user.refill_ms), (5, 120_000));
    let reply = |tokens: u64, at: u64| serde_json::json!({"result": [[0, 5, tokens, at, 0, 1, 0, 0], [], null]});
    let p = Scripted {
        replies: std::cell::RefCell::new(vec![
            (200, reply(3, now - 1_000)),
            (200, reply(0, now - 100_000)),
        ]),
        sent: Default::default(),
    };
    let redis = Upstash {
        url: "http://x",
        token: "t",
        timeout_ms: 1,
    };
    let blocked = ratelimit::BlockedCache::default();
    let run = || {
        futures_executor::block_on(ratelimit::apply(
            &p,
            &redis,
            "p:",
            None,
            &blocked,
            &checks,
            None,
            &ratelimit::DenyRead::default(),
            None,
            now,
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .0
    };
    let paid_by_bucket = run();
    assert!(paid_by_bucket.decision.allowed);
    assert_eq!(
        paid_by_bucket.decision.remaining, 2,
        "three tokens, one spent"
    );
    assert_eq!(paid_by_bucket.burst, Some(user));
    let refused = run();
    assert!(!refused.decision.allowed);
    assert_eq!(refused.decision.retry_after_ms, 20_000, "the next token");
    // The command carries the bucket key and its sizes.
    let sent = p.sent.borrow();
    assert!(sent[0][5]
        .as_str()
        .is_some_and(|k| k.starts_with("p:rlb:user:")));
    let args: Vec<&str> = sent[0]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(args.windows(3).any(|w| w == ["5", "5", "120000"]));
}
