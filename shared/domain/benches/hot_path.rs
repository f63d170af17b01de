//! Criterion micro-benchmarks of the pure code on every request's hot path: the price
//! calculation (a 3-hour and a 3-day window, time-of-day rules and a discount), quote-token
//! signing and verification (every quote and every hold), JWT verification (every
//! authenticated request) and edge → origin request signatures (every forwarded request). `cargo bench -p domain`; reports in `target/criterion`.

use std::hint::black_box;

use chrono::{DateTime, Duration, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use domain::auth::{sign_hs256, Claims, JwtVerifier, VerifyKey};
use domain::edge_auth::{body_sha256, EdgeSigner, EdgeVerifier, RequestParts};
use domain::pricing::{
    price, DiscountKind, DiscountRule, HourOfWeekTable, PriceInput, RateCard, TimeMultiplierRule,
};
use domain::quote_token::{QuoteClaims, QuoteSigner};
use domain::{Currency, Money, Multiplier, Region, TimeWindow, VehicleId};

fn at(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 3, 8, h, 0, 0)
        .single()
        .expect("valid instant")
}

fn rate() -> RateCard {
    RateCard {
        currency: Currency::EUR,
        per_hour_minor: 1_290,
        per_day_minor: 7_900,
        floor_minor: 500,
        ceiling_minor: 500_000,
    }
}

fn table() -> HourOfWeekTable {
    let rules = [
        TimeMultiplierRule {
            days: 0b001_1111,
            start_hour: 7,
            end_hour: 10,
            multiplier: Multiplier::from_bp(12_500),
        },
        TimeMultiplierRule {
            days: 0b110_0000,
            start_hour: 10,
            end_hour: 18,
            multiplier: Multiplier::from_bp(11_000),
        },
        TimeMultiplierRule {
            days: 0b111_1111,
            start_hour: 0,
            end_hour: 6,
            multiplier: Multiplier::from_bp(8_000),
        },
    ];
    HourOfWeekTable::from_rules(&rules).expect("valid rules")
}

fn discount() -> DiscountRule {
    DiscountRule {
        id: uuid::Uuid::from_u128(1),
        kind: DiscountKind::LongDuration,
        code: None,
        percent_bp: 1_000,
        min_duration_minutes: Some(24 * 60),
        membership_tier: None,
        valid_from: None,
        valid_until: None,
    }
}

fn pricing(c: &mut Criterion) {
    let (rate, table, rule) = (rate(), table(), discount());
    let tz = chrono_tz::Europe::Berlin;
    for (name, hours) in [("price_3h", 3), ("price_3_days", 72)] {
        let window = TimeWindow::new(at(8), at(8) + Duration::hours(hours)).expect("window");
        let discounts = if hours >= 24 { vec![&rule] } else { vec![] };
        c.bench_function(name, |b| {
            b.iter(|| {
                price(black_box(&PriceInput {
                    rate: &rate,
                    window: &window,
                    tz,
                    time_table: &table,
                    surge: Multiplier::from_bp(11_500),
                    risk: Multiplier::from_bp(10_200),
                    discounts: &discounts,
                }))
            })
        });
    }
}

fn quote_tokens(c: &mut Criterion) {
    let signer = QuoteSigner::new(
        "k1",
        vec![(
            "k1".into(),
            b"bench-quote-key-0123456789abcdef0123".to_vec(),
        )],
    )
    .expect("signer");
    let window = TimeWindow::new(at(8), at(11)).expect("window");
    let claims = QuoteClaims {
        quote_id: uuid::Uuid::from_u128(7),
        user_id: "user-42".into(),
        vehicle_id: VehicleId::new(Region::Euw, uuid::Uuid::from_u128(9)),
        region: Region::Euw,
        window,
        total: Money::new(4_599, Currency::EUR),
        breakdown: Vec::new(),
        destination_bay_id: None,
        issued_at: at(6),
        expires_at: at(6) + Duration::minutes(5),
    };
    let token = signer.sign(&claims);
    c.bench_function("quote_token_sign", |b| {
        b.iter(|| signer.sign(black_box(&claims)))
    });
    let now = at(6) + Duration::minutes(1);
    c.bench_function("quote_token_verify", |b| {
        b.iter(|| signer.verify(black_box(&token), now))
    });
}

fn jwt(c: &mut Criterion) {
    let secret = b"bench-jwt-secret-0123456789abcdef012345".to_vec();
    let now = 1_800_000_000;
    let claims = Claims {
        sub: "user-42".into(),
        iss: "booking-bench".into(),
        aud: serde_json::Value::String("booking-api".into()),
        exp: now + 3600,
        nbf: None,
        iat: Some(now),
        roles: vec![],
        membership: None,
    };
    let token = sign_hs256(&claims, &secret, None).expect("sign");
    let verifier = JwtVerifier::new(
        vec![VerifyKey::Hs256 { kid: None, secret }],
        "booking-bench".into(),
        "booking-api".into(),
        30,
    )
    .expect("verifier");
    c.bench_function("jwt_verify_hs256", |b| {
        b.iter(|| verifier.verify(black_box(&token), now))
    });
}

fn parts(hash: &[u8; 32]) -> RequestParts<'_> {
    RequestParts {
        method: "POST",
        path: "/v1/bookings",
        query: "",
        body_sha256: hash,
        request_id: "0123456789abcdef0123456789abcdef",
        region: "EUW",
    }
}

/// Edge → origin signatures: what every forwarded request costs the edge (hash the body,
/// sign) and the origin (hash the body, verify), for a hold's small body and a 4 KiB one.
fn edge_signatures(c: &mut Criterion) {
    let key = b"bench-edge-signing-key-0123456789abcdef".to_vec();
    let signer = EdgeSigner::new("e1", &key).expect("signer");
    let verifier = EdgeVerifier::new(vec![("e1".into(), key)]).expect("verifier");
    let now = 1_800_000_000;
    for (name, len) in [("hold_body", 120), ("body_4k", 4096)] {
        let body = vec![b'x'; len];
        let nonce = "00112233445566778899aabbccddeeff";
        c.bench_function(&format!("edge_sign_{name}"), |b| {
            b.iter(|| {
                let hash = body_sha256(black_box(&body));
                signer.sign(&parts(&hash), now, nonce)
            })
        });
        let hash = body_sha256(&body);
        let header = signer.sign(&parts(&hash), now, nonce);
        c.bench_function(&format!("edge_verify_{name}"), |b| {
            b.iter(|| {
                let hash = body_sha256(black_box(&body));
                verifier.verify(Some(black_box(&header)), &parts(&hash), now)
            })
        });
    }
}

criterion_group!(benches, pricing, quote_tokens, jwt, edge_signatures);
criterion_main!(benches);
