//! Criterion micro-benchmark of the origin's L1 cache-key derivation (every quote request pays
//! it before its first cache lookup). The edge's cache keys live in `edge/core` and are
//! benchmarked there. `cargo bench -p origin --bench cache_key`.

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use domain::{Region, TimeWindow, VehicleId};
use origin::redis::cache::QuoteKey;

fn cache_key(c: &mut Criterion) {
    let vehicle = VehicleId::new(Region::Euw, uuid::Uuid::from_u128(0x1234_5678));
    let start = Utc
        .with_ymd_and_hms(2027, 3, 8, 9, 0, 0)
        .single()
        .expect("valid instant");
    let window = TimeWindow::new(start, start + chrono::Duration::hours(3)).expect("window");
    let key = QuoteKey {
        user: "user-42",
        vehicle: &vehicle,
        destination_bay: Some(uuid::Uuid::from_u128(7)),
        window: &window,
        promo_code: Some("SPRING25"),
        membership: Some("gold"),
    };
    c.bench_function("l1_quote_key_digest", |b| {
        b.iter(|| black_box(&key).digest())
    });
}

criterion_group!(benches, cache_key);
criterion_main!(benches);
