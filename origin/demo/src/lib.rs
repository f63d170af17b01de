//! Deterministic demo fleet: parking bays, vehicles and a full rate card for Frankfurt am Main
//! (`EUW`) and Stockholm (`EUN`).
//!
//! A fresh deployment has nothing to search, quote or book, so demos, load tests and the
//! end-to-end suite seed this fleet first. Three properties make that safe to do on every start
//! and from several origins at once:
//!
//! * **Deterministic.** Every id is a fixed, readable UUID (see [`demo_vehicle_id`]) and every
//!   random attribute comes from a `StdRng` seeded per vehicle, so a test can name "vehicle 7 of
//!   Stockholm" and get the same car, bay and plate on every machine.
//! * **Prefix-stable.** Vehicle `i` of a city depends only on vehicles `0..i` of that city, so the
//!   first 20 vehicles of a 120-vehicle fleet are exactly a 20-vehicle fleet. A test that seeds 20
//!   and a demo that seeds 120 into the same database do not fight.
//! * **Idempotent.** Every insert is `on conflict do nothing`, all in one transaction; seeding
//!   twice changes nothing, and rows an operator already edited (e.g. a rate) are left alone.
//!
//! The generator ([`demo_fleet`] and friends) is pure and tested without a database; only
//! [`seed_demo`] does I/O.
//!
//! A crate of its own (with the `seed-demo` binary), not a module of the origin: these are
//! fixtures, and a production server should not compile a thousand lines of them.

use std::collections::HashSet;

use anyhow::{ensure, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

/// Seed of every demo random stream. Changing it reshuffles the whole demo fleet.
const DEMO_SEED: u64 = 0x5eed_de30_2026_1125;

/// Upper bits shared by all demo ids: `d3a0f1ee-7000-8000-80KK-SSSSIIIIIIII`, where `KK` is the
/// row kind, `SSSS` the city/region and `IIIIIIII` the index. Version nibble 8 ("custom") and the
/// RFC 4122 variant are set, so the ids are well-formed UUIDs that are easy to spot in logs.
const DEMO_ID_PREFIX: u128 = 0xd3a0_f1ee_7000_8000_8000_0000_0000_0000;

/// Upper bound on `vehicles_per_city`: far beyond any demo, and keeps ids and plates in range.
const MAX_VEHICLES_PER_CITY: usize = 100_000;

/// Rows per multi-row `insert`, well below PostgreSQL's 65 535 bind parameters.
const INSERT_CHUNK: usize = 1_000;

/// What the demo fleet holds after [`seed_demo`]: rows with demo ids, whether this call inserted
/// them or an earlier one did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DemoSummary {
    /// Parking bays of the demo fleet present in the database (both cities).
    pub bays: usize,
    /// Vehicles `0..vehicles_per_city` of both cities present in the database.
    pub vehicles: usize,
}

/// Loads the demo fleet and the pricing tables of both regions in one transaction.
///
/// `vehicles_per_city` vehicles are generated per city (the demo uses 120, tests fewer); a later
/// call with a larger number adds the missing tail, a smaller one adds nothing. A demo vehicle
/// whose plate is already taken by a non-demo vehicle is skipped, and then not counted.
pub async fn seed_demo(pool: &PgPool, vehicles_per_city: usize) -> anyhow::Result<DemoSummary> {
    ensure!(
        vehicles_per_city <= MAX_VEHICLES_PER_CITY,
        "vehicles_per_city {vehicles_per_city} exceeds the demo limit {MAX_VEHICLES_PER_CITY}"
    );
    let fleet = demo_fleet(vehicles_per_city);

    let mut tx = pool.begin().await.context("begin demo seed transaction")?;

    for chunk in fleet.bays.chunks(INSERT_CHUNK) {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
            "insert into parking_bays (id, region, name, city, lat, lon, timezone, capacity) ",
        );
        qb.push_values(chunk, |mut row, bay| {
            row.push_bind(bay.id)
                .push_bind(bay.region)
                .push_bind(bay.name)
                .push_bind(bay.city)
                .push_bind(bay.lat)
                .push_bind(bay.lon)
                .push_bind(bay.timezone)
                .push_bind(bay.capacity);
        });
        qb.push(" on conflict (id) do nothing");
        qb.build()
            .execute(&mut *tx)
            .await
            .context("insert demo parking bays")?;
    }

    for chunk in fleet.vehicles.chunks(INSERT_CHUNK) {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
            "insert into vehicles (id, region, bay_id, class, make, model, seats, fuel, plate, status) ",
        );
        qb.push_values(chunk, |mut row, v| {
            row.push_bind(v.id)
                .push_bind(v.region)
                .push_bind(v.bay_id)
                .push_bind(v.class.as_str())
                .push_bind(v.make)
                .push_bind(v.model)
                .push_bind(v.seats)
                .push_bind(v.fuel.as_str())
                .push_bind(v.plate.as_str())
                .push_bind(v.status);
        });
        // No conflict target: a taken id *or* a taken plate both mean "leave it alone".
        qb.push(" on conflict do nothing");
        qb.build()
            .execute(&mut *tx)
            .await
            .context("insert demo vehicles")?;
    }

    let rates = base_rates();
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "insert into base_rates (region, class, currency, per_hour_minor, per_day_minor) ",
    );
    qb.push_values(&rates, |mut row, r| {
        row.push_bind(r.region)
            .push_bind(r.class.as_str())
            .push_bind(r.currency)
            .push_bind(r.per_hour_minor)
            .push_bind(r.per_day_minor);
    });
    qb.push(" on conflict (region, class) do nothing");
    qb.build()
        .execute(&mut *tx)
        .await
        .context("insert demo base rates")?;

    let configs = vehicle_configs();
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "insert into vehicle_config (region, class, floor_minor, ceiling_minor) ",
    );
    qb.push_values(&configs, |mut row, c| {
        row.push_bind(c.region)
            .push_bind(c.class.as_str())
            .push_bind(c.floor_minor)
            .push_bind(c.ceiling_minor);
    });
    qb.push(" on conflict (region, class) do nothing");
    qb.build()
        .execute(&mut *tx)
        .await
        .context("insert demo vehicle config")?;

    let multipliers = time_multipliers();
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "insert into time_multipliers (id, region, days_mask, start_hour, end_hour, multiplier_bp, label) ",
    );
    qb.push_values(&multipliers, |mut row, m| {
        row.push_bind(m.id)
            .push_bind(m.region)
            .push_bind(m.days_mask)
            .push_bind(m.start_hour)
            .push_bind(m.end_hour)
            .push_bind(m.multiplier_bp)
            .push_bind(m.label);
    });
    qb.push(" on conflict (id) do nothing");
    qb.build()
        .execute(&mut *tx)
        .await
        .context("insert demo time multipliers")?;

    let discounts = discount_rules();
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "insert into discount_rules \
         (id, region, kind, code, percent_bp, min_duration_minutes, membership_tier, active) ",
    );
    qb.push_values(&discounts, |mut row, d| {
        row.push_bind(d.id)
            .push_bind(d.region)
            .push_bind(d.kind)
            .push_bind(d.code)
            .push_bind(d.percent_bp)
            .push_bind(d.min_duration_minutes)
            .push_bind(d.membership_tier)
            .push_bind(true);
    });
    // No conflict target: covers the fixed id and the (region, lower(code)) promo index, so an
    // operator's own WELCOME10 wins over the demo one.
    qb.push(" on conflict do nothing");
    qb.build()
        .execute(&mut *tx)
        .await
        .context("insert demo discount rules")?;

    let bay_ids: Vec<Uuid> = fleet.bays.iter().map(|b| b.id).collect();
    let vehicle_ids: Vec<Uuid> = fleet.vehicles.iter().map(|v| v.id).collect();
    let bays: i64 = sqlx::query_scalar("select count(*) from parking_bays where id = any($1)")
        .bind(&bay_ids)
        .fetch_one(&mut *tx)
        .await
        .context("count demo parking bays")?;
    let vehicles: i64 = sqlx::query_scalar("select count(*) from vehicles where id = any($1)")
        .bind(&vehicle_ids)
        .fetch_one(&mut *tx)
        .await
        .context("count demo vehicles")?;

    tx.commit().await.context("commit demo seed transaction")?;

    Ok(DemoSummary {
        bays: usize::try_from(bays).context("demo bay count out of range")?,
        vehicles: usize::try_from(vehicles).context("demo vehicle count out of range")?,
    })
}

/// Id of demo vehicle `index` in `region` (`"EUW"` Frankfurt, `"EUN"` Stockholm), as
/// [`seed_demo`] inserts it; `None` for an unknown region. Lets tests name a demo car directly.
pub fn demo_vehicle_id(region: &str, index: u32) -> Option<Uuid> {
    city_index(region).map(|c| demo_id(IdKind::Vehicle, c, index))
}

/// Id of demo parking bay `index` in `region`, in the order of the city's bay list; `None` for an
/// unknown region or an index past the list.
pub fn demo_bay_id(region: &str, index: u32) -> Option<Uuid> {
    let c = city_index(region)?;
    let count = CITIES.get(usize::from(c))?.bays.len();
    (usize::try_from(index).ok()? < count).then(|| demo_id(IdKind::Bay, c, index))
}

fn city_index(region: &str) -> Option<u16> {
    CITIES
        .iter()
        .position(|c| c.region == region)
        .and_then(|i| u16::try_from(i).ok())
}

// ---------------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------------

/// The kind of row an id belongs to; its discriminant is part of the id.
#[derive(Debug, Clone, Copy)]
enum IdKind {
    Bay = 1,
    Vehicle = 2,
    TimeMultiplier = 3,
    DiscountRule = 4,
}

fn demo_id(kind: IdKind, scope: u16, index: u32) -> Uuid {
    Uuid::from_u128(
        DEMO_ID_PREFIX
            | (u128::from(kind as u8) << 48)
            | (u128::from(scope) << 32)
            | u128::from(index),
    )
}

// ---------------------------------------------------------------------------------------------
// Closed sets
// ---------------------------------------------------------------------------------------------

/// Vehicle class, as the `vehicles.class` check constraint spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Class {
    Compact,
    Sedan,
    Suv,
    Van,
    Premium,
}

impl Class {
    const ALL: [Class; 5] = [
        Class::Compact,
        Class::Sedan,
        Class::Suv,
        Class::Van,
        Class::Premium,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Class::Compact => "compact",
            Class::Sedan => "sedan",
            Class::Suv => "suv",
            Class::Van => "van",
            Class::Premium => "premium",
        }
    }

    /// Hourly rate in euro cents; the SEK card is derived from it.
    fn eur_per_hour_minor(self) -> i64 {
        match self {
            Class::Compact => 900,
            Class::Sedan => 1_200,
            Class::Suv => 1_500,
            Class::Van => 1_800,
            Class::Premium => 2_400,
        }
    }
}

/// Fuel, as the `vehicles.fuel` check constraint spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fuel {
    Petrol,
    Diesel,
    Hybrid,
    Electric,
}

impl Fuel {
    fn as_str(self) -> &'static str {
        match self {
            Fuel::Petrol => "petrol",
            Fuel::Diesel => "diesel",
            Fuel::Hybrid => "hybrid",
            Fuel::Electric => "electric",
        }
    }
}

/// How a city writes its number plates.
#[derive(Debug, Clone, Copy)]
enum PlateStyle {
    /// Frankfurt: `F-AB 1234`, electric cars with the `E` suffix (`F-AB 123E`).
    German,
    /// Sweden: `ABC 123` or, since 2019, `ABC 12D`.
    Swedish,
}

// ---------------------------------------------------------------------------------------------
// Static demo data
// ---------------------------------------------------------------------------------------------

/// A parking bay: name, coordinates, capacity.
#[derive(Debug)]
struct BaySpec {
    name: &'static str,
    lat: f64,
    lon: f64,
    capacity: i32,
}

const fn bay(name: &'static str, lat: f64, lon: f64, capacity: i32) -> BaySpec {
    BaySpec {
        name,
        lat,
        lon,
        capacity,
    }
}

/// One demo city and how its fleet is composed.
#[derive(Debug)]
struct CitySpec {
    region: &'static str,
    city: &'static str,
    timezone: &'static str,
    currency: &'static str,
    /// Kronor per euro when deriving the rate card from [`Class::eur_per_hour_minor`].
    rate_factor: i64,
    /// Price floor and ceiling of every class, in minor units.
    floor_minor: i64,
    ceiling_minor: i64,
    bays: &'static [BaySpec],
    /// Relative weights of [`Class::ALL`].
    class_weights: [u32; 5],
    /// Share of electric cars, in percent.
    ev_percent: u32,
    plates: PlateStyle,
}

/// City order is part of the ids: index 0 is Frankfurt, 1 Stockholm. Append, never reorder.
const CITIES: [CitySpec; 2] = [
    CitySpec {
        region: "EUW",
        city: "Frankfurt am Main",
        timezone: "Europe/Berlin",
        currency: "EUR",
        rate_factor: 1,
        floor_minor: 500,
        ceiling_minor: 500_000,
        // Append only: a bay's position is part of its id.
        bays: &[
            bay("Frankfurt Hbf", 50.1071, 8.6638, 30),
            bay("Hauptwache", 50.1140, 8.6788, 20),
            bay("Konstablerwache", 50.1147, 8.6869, 15),
            bay("Römerberg", 50.1106, 8.6821, 10),
            bay("Sachsenhausen Südbahnhof", 50.0996, 8.6862, 20),
            bay("Bockenheimer Warte", 50.1196, 8.6530, 15),
            bay("Westend", 50.1198, 8.6640, 12),
            bay("Nordend", 50.1260, 8.6920, 12),
            bay("Ostend Ostbahnhof", 50.1126, 8.7077, 15),
            bay("Bornheim Mitte", 50.1264, 8.7110, 10),
            bay("Gallus", 50.1040, 8.6390, 10),
            bay("Messe Frankfurt", 50.1115, 8.6470, 25),
            bay("Europaviertel", 50.1075, 8.6335, 15),
            bay("Höchst Bahnhof", 50.1027, 8.5420, 12),
            bay("Flughafen Terminal 1", 50.0506, 8.5704, 30),
            bay("Niederrad", 50.0810, 8.6330, 8),
            bay("Rödelheim", 50.1260, 8.6080, 8),
            bay("Fechenheim", 50.1230, 8.7560, 6),
            bay("Riedberg", 50.1740, 8.6330, 6),
            bay("Oberrad", 50.0970, 8.7280, 5),
        ],
        class_weights: [35, 25, 20, 8, 12],
        ev_percent: 40,
        plates: PlateStyle::German,
    },
    CitySpec {
        region: "EUN",
        city: "Stockholm",
        timezone: "Europe/Stockholm",
        currency: "SEK",
        rate_factor: 11,
        floor_minor: 5_000,
        ceiling_minor: 5_500_000,
        bays: &[
            bay("Stockholm Central", 59.3303, 18.0586, 30),
            bay("Sergels torg", 59.3325, 18.0649, 15),
            bay("Gamla stan", 59.3251, 18.0711, 8),
            bay("Slussen", 59.3195, 18.0722, 12),
            bay("Södermalm Medborgarplatsen", 59.3142, 18.0736, 20),
            bay("Hornstull", 59.3158, 18.0340, 10),
            bay("Östermalm", 59.3350, 18.0790, 15),
            bay("Gärdet", 59.3450, 18.1000, 10),
            bay("Djurgården", 59.3270, 18.1040, 6),
            bay("Kungsholmen Fridhemsplan", 59.3320, 18.0290, 18),
            bay("Vasastan Odenplan", 59.3430, 18.0490, 18),
            bay("Hagastaden", 59.3480, 18.0350, 12),
            bay("Solna station", 59.3650, 18.0100, 15),
            bay("Sundbyberg", 59.3610, 17.9710, 10),
            bay("Bromma", 59.3380, 17.9400, 12),
            bay("Liljeholmen", 59.3100, 18.0230, 15),
            bay("Hammarby sjöstad", 59.3040, 18.1020, 20),
            bay("Globen", 59.2930, 18.0830, 10),
            bay("Nacka Forum", 59.3110, 18.1630, 12),
            bay("Frihamnen", 59.3420, 18.1150, 8),
        ],
        class_weights: [30, 25, 25, 8, 12],
        ev_percent: 55,
        plates: PlateStyle::Swedish,
    },
];

/// A real model: class, the fuels it is sold with, and its seat range.
#[derive(Debug)]
struct ModelSpec {
    class: Class,
    make: &'static str,
    model: &'static str,
    fuels: &'static [Fuel],
    seats: (i16, i16),
}

const fn car(
    class: Class,
    make: &'static str,
    model: &'static str,
    fuels: &'static [Fuel],
    seats: (i16, i16),
) -> ModelSpec {
    ModelSpec {
        class,
        make,
        model,
        fuels,
        seats,
    }
}

const EV: &[Fuel] = &[Fuel::Electric];
const PETROL: &[Fuel] = &[Fuel::Petrol];
const DIESEL: &[Fuel] = &[Fuel::Diesel];
const HYBRID: &[Fuel] = &[Fuel::Hybrid];
const PETROL_DIESEL: &[Fuel] = &[Fuel::Petrol, Fuel::Diesel];
const PETROL_HYBRID: &[Fuel] = &[Fuel::Petrol, Fuel::Hybrid];
const DIESEL_HYBRID: &[Fuel] = &[Fuel::Diesel, Fuel::Hybrid];
const ANY_ICE: &[Fuel] = &[Fuel::Petrol, Fuel::Diesel, Fuel::Hybrid];

/// Every class has electric and non-electric models, so any EV share is reachable.
const MODELS: &[ModelSpec] = &[
    // compact: 4–5 seats
    car(Class::Compact, "Volkswagen", "Golf", ANY_ICE, (5, 5)),
    car(Class::Compact, "Skoda", "Fabia", PETROL, (5, 5)),
    car(Class::Compact, "Toyota", "Yaris", HYBRID, (5, 5)),
    car(Class::Compact, "Opel", "Corsa", PETROL, (5, 5)),
    car(Class::Compact, "Volkswagen", "ID.3", EV, (5, 5)),
    car(Class::Compact, "Renault", "Zoe", EV, (5, 5)),
    car(Class::Compact, "Fiat", "500e", EV, (4, 4)),
    car(Class::Compact, "Peugeot", "e-208", EV, (5, 5)),
    // sedan: 5 seats
    car(Class::Sedan, "Skoda", "Octavia", PETROL_DIESEL, (5, 5)),
    car(Class::Sedan, "Volkswagen", "Passat", DIESEL_HYBRID, (5, 5)),
    car(Class::Sedan, "Toyota", "Corolla", HYBRID, (5, 5)),
    car(Class::Sedan, "Volvo", "V60", DIESEL_HYBRID, (5, 5)),
    car(Class::Sedan, "Tesla", "Model 3", EV, (5, 5)),
    car(Class::Sedan, "Polestar", "2", EV, (5, 5)),
    car(Class::Sedan, "Hyundai", "Ioniq 6", EV, (5, 5)),
    car(Class::Sedan, "Volkswagen", "ID.7", EV, (5, 5)),
    // suv: 5–7 seats
    car(Class::Suv, "Volvo", "XC40", PETROL_HYBRID, (5, 5)),
    car(Class::Suv, "Volkswagen", "Tiguan", PETROL_DIESEL, (5, 5)),
    car(Class::Suv, "Kia", "Niro", HYBRID, (5, 5)),
    car(Class::Suv, "Toyota", "RAV4", HYBRID, (5, 5)),
    car(Class::Suv, "Skoda", "Kodiaq", PETROL_DIESEL, (5, 7)),
    car(Class::Suv, "Volvo", "EX30", EV, (5, 5)),
    car(Class::Suv, "Tesla", "Model Y", EV, (5, 5)),
    car(Class::Suv, "Kia", "Niro EV", EV, (5, 5)),
    car(Class::Suv, "Skoda", "Enyaq", EV, (5, 5)),
    // van: 7–9 seats
    car(Class::Van, "Mercedes-Benz", "Vito Tourer", DIESEL, (8, 9)),
    car(Class::Van, "Volkswagen", "Multivan", DIESEL_HYBRID, (7, 7)),
    car(Class::Van, "Ford", "Tourneo Custom", DIESEL, (8, 9)),
    car(Class::Van, "Mercedes-Benz", "eVito Tourer", EV, (8, 9)),
    car(Class::Van, "Volkswagen", "ID. Buzz", EV, (7, 7)),
    car(Class::Van, "Opel", "Zafira Electric", EV, (7, 9)),
    // premium: 4–7 seats
    car(Class::Premium, "BMW", "3er", ANY_ICE, (5, 5)),
    car(Class::Premium, "Mercedes-Benz", "C-Klasse", ANY_ICE, (5, 5)),
    car(Class::Premium, "Audi", "A6", PETROL_DIESEL, (5, 5)),
    car(Class::Premium, "Volvo", "XC90", HYBRID, (7, 7)),
    car(Class::Premium, "BMW", "i4", EV, (5, 5)),
    car(Class::Premium, "Mercedes-Benz", "EQE", EV, (5, 5)),
    car(Class::Premium, "Porsche", "Taycan", EV, (4, 4)),
    car(Class::Premium, "Audi", "e-tron GT", EV, (4, 4)),
];

/// One vehicle in this many is in the workshop.
const MAINTENANCE_ONE_IN: u32 = 40;

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct BayRow {
    id: Uuid,
    region: &'static str,
    name: &'static str,
    city: &'static str,
    lat: f64,
    lon: f64,
    timezone: &'static str,
    capacity: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct VehicleRow {
    id: Uuid,
    region: &'static str,
    bay_id: Uuid,
    class: Class,
    make: &'static str,
    model: &'static str,
    seats: i16,
    fuel: Fuel,
    plate: String,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
struct DemoFleet {
    bays: Vec<BayRow>,
    vehicles: Vec<VehicleRow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BaseRateRow {
    region: &'static str,
    class: Class,
    currency: &'static str,
    per_hour_minor: i64,
    per_day_minor: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VehicleConfigRow {
    region: &'static str,
    class: Class,
    floor_minor: i64,
    ceiling_minor: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeMultiplierRow {
    id: Uuid,
    region: &'static str,
    /// Bit 0 = Monday … bit 6 = Sunday.
    days_mask: i16,
    start_hour: i16,
    /// Exclusive.
    end_hour: i16,
    multiplier_bp: i32,
    label: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DiscountRuleRow {
    id: Uuid,
    region: &'static str,
    kind: &'static str,
    code: Option<&'static str>,
    percent_bp: i32,
    min_duration_minutes: Option<i64>,
    membership_tier: Option<&'static str>,
}

// ---------------------------------------------------------------------------------------------
// Generators (pure)
// ---------------------------------------------------------------------------------------------

/// The bays of both cities and `vehicles_per_city` vehicles per city.
fn demo_fleet(vehicles_per_city: usize) -> DemoFleet {
    let mut bays = Vec::new();
    let mut vehicles = Vec::with_capacity(vehicles_per_city * CITIES.len());
    for (c, spec) in (0u16..).zip(CITIES.iter()) {
        let city_bays: Vec<BayRow> = (0u32..)
            .zip(spec.bays.iter())
            .map(|(i, b)| BayRow {
                id: demo_id(IdKind::Bay, c, i),
                region: spec.region,
                name: b.name,
                city: spec.city,
                lat: b.lat,
                lon: b.lon,
                timezone: spec.timezone,
                capacity: b.capacity,
            })
            .collect();
        vehicles.extend(city_vehicles(c, spec, &city_bays, vehicles_per_city));
        bays.extend(city_bays);
    }
    DemoFleet { bays, vehicles }
}

/// Vehicles of one city, generated in order so that vehicle `i` depends only on vehicles `0..i`
/// (bay occupancy and plates already taken): a longer fleet extends a shorter one.
fn city_vehicles(c: u16, spec: &CitySpec, bays: &[BayRow], count: usize) -> Vec<VehicleRow> {
    let mut parked = vec![0i32; bays.len()];
    let mut plates = HashSet::with_capacity(count);
    (0u32..)
        .take(count)
        .map(|i| {
            let mut rng = StdRng::seed_from_u64(DEMO_SEED ^ (u64::from(c) << 40) ^ u64::from(i));

            let class = Class::ALL[weighted_index(&mut rng, &spec.class_weights)];
            let electric = rng.gen_range(0..100) < spec.ev_percent;
            let candidates: Vec<&ModelSpec> = MODELS
                .iter()
                .filter(|m| m.class == class && m.fuels.contains(&Fuel::Electric) == electric)
                .collect();
            let model = candidates[rng.gen_range(0..candidates.len())];
            let fuel = model.fuels[rng.gen_range(0..model.fuels.len())];
            let seats = rng.gen_range(model.seats.0..=model.seats.1);

            let b = pick_bay(&mut rng, bays, &parked);
            parked[b] += 1;

            let plate = loop {
                let candidate = plate(&mut rng, spec.plates, electric);
                if plates.insert(candidate.clone()) {
                    break candidate;
                }
            };
            let status = if rng.gen_ratio(1, MAINTENANCE_ONE_IN) {
                "maintenance"
            } else {
                "active"
            };

            VehicleRow {
                id: demo_id(IdKind::Vehicle, c, i),
                region: spec.region,
                bay_id: bays[b].id,
                class,
                make: model.make,
                model: model.model,
                seats,
                fuel,
                plate,
                status,
            }
        })
        .collect()
}

/// Index drawn with probability proportional to `weights` (which must not all be zero).
fn weighted_index(rng: &mut StdRng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut roll = rng.gen_range(0..total);
    for (i, w) in weights.iter().enumerate() {
        if roll < *w {
            return i;
        }
        roll -= w;
    }
    weights.len() - 1
}

/// A bay with free spaces, weighted by how many it has left; once every bay is full (a fleet
/// larger than the bays hold), weighted by capacity so the overflow still spreads sensibly.
fn pick_bay(rng: &mut StdRng, bays: &[BayRow], parked: &[i32]) -> usize {
    let free: Vec<u32> = bays
        .iter()
        .zip(parked)
        .map(|(b, p)| u32::try_from(b.capacity - p).unwrap_or(0))
        .collect();
    if free.iter().any(|f| *f > 0) {
        weighted_index(rng, &free)
    } else {
        let capacity: Vec<u32> = bays
            .iter()
            .map(|b| u32::try_from(b.capacity).unwrap_or(1))
            .collect();
        weighted_index(rng, &capacity)
    }
}

fn plate(rng: &mut StdRng, style: PlateStyle, electric: bool) -> String {
    match style {
        PlateStyle::German => {
            // Combinations German registration offices refuse to issue.
            const BANNED: [&str; 5] = ["HJ", "KZ", "NS", "SA", "SS"];
            const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
            let letters = loop {
                let pair: String = (0..2)
                    .map(|_| char::from(LETTERS[rng.gen_range(0..LETTERS.len())]))
                    .collect();
                if !BANNED.contains(&pair.as_str()) {
                    break pair;
                }
            };
            let number = rng.gen_range(1..=9999);
            let suffix = if electric { "E" } else { "" };
            format!("F-{letters} {number}{suffix}")
        }
        PlateStyle::Swedish => {
            // Swedish plates never use I, Q, V, Å, Ä or Ö; the last position is a digit or,
            // on newer plates, a letter other than O.
            const LETTERS: &[u8] = b"ABCDEFGHJKLMNOPRSTUWXYZ";
            const LAST_LETTERS: &[u8] = b"ABCDEFGHJKLMNPRSTUWXYZ";
            let letters: String = (0..3)
                .map(|_| char::from(LETTERS[rng.gen_range(0..LETTERS.len())]))
                .collect();
            let digits = rng.gen_range(0..100);
            let last = if rng.gen_bool(0.5) {
                char::from(LAST_LETTERS[rng.gen_range(0..LAST_LETTERS.len())])
            } else {
                char::from(b'0' + rng.gen_range(0..10u8))
            };
            format!("{letters} {digits:02}{last}")
        }
    }
}

/// Converts a euro amount with `factor`, rounded to whole units (a multiple of 100 minor).
fn convert_rounded(eur_minor: i64, factor: i64) -> i64 {
    (eur_minor * factor + 50) / 100 * 100
}

/// Rate card: EUR per hour by class, a day costs six hours; SEK is the EUR card ×11, rounded
/// to whole kronor.
fn base_rates() -> Vec<BaseRateRow> {
    CITIES
        .iter()
        .flat_map(|city| {
            Class::ALL.iter().map(move |&class| {
                let hour = class.eur_per_hour_minor();
                BaseRateRow {
                    region: city.region,
                    class,
                    currency: city.currency,
                    per_hour_minor: convert_rounded(hour, city.rate_factor),
                    per_day_minor: convert_rounded(hour * 6, city.rate_factor),
                }
            })
        })
        .collect()
}

/// Price floor and ceiling per class: 5 € / 50 kr at least, 5 000 € / 55 000 kr at most.
fn vehicle_configs() -> Vec<VehicleConfigRow> {
    CITIES
        .iter()
        .flat_map(|city| {
            Class::ALL.iter().map(move |&class| VehicleConfigRow {
                region: city.region,
                class,
                floor_minor: city.floor_minor,
                ceiling_minor: city.ceiling_minor,
            })
        })
        .collect()
}

/// Mon–Fri in `days_mask` (bit 0 = Monday).
const WEEKDAYS: i16 = 0b001_1111;
/// Friday and Saturday.
const FRI_SAT: i16 = 0b011_0000;
const EVERY_DAY: i16 = 0b111_1111;

/// Rush hours, weekend nights and cheap small hours, the same in both regions (local time).
/// No two rules of a region share a day and an hour, so the calculator never has to choose.
fn time_multipliers() -> Vec<TimeMultiplierRow> {
    const RULES: [(i16, i16, i16, i32, &str); 4] = [
        (WEEKDAYS, 7, 10, 12_000, "weekday morning rush"),
        (WEEKDAYS, 16, 19, 12_500, "weekday evening rush"),
        (FRI_SAT, 20, 24, 11_500, "friday/saturday night"),
        (EVERY_DAY, 0, 6, 8_000, "night"),
    ];
    (0u16..)
        .zip(CITIES.iter())
        .flat_map(|(c, city)| {
            (0u32..)
                .zip(RULES)
                .map(
                    move |(i, (days_mask, start_hour, end_hour, bp, label))| TimeMultiplierRow {
                        id: demo_id(IdKind::TimeMultiplier, c, i),
                        region: city.region,
                        days_mask,
                        start_hour,
                        end_hour,
                        multiplier_bp: bp,
                        label,
                    },
                )
        })
        .collect()
}

/// A welcome code, a long-rental discount and a gold-member discount per region, open-ended.
fn discount_rules() -> Vec<DiscountRuleRow> {
    (0u16..)
        .zip(CITIES.iter())
        .flat_map(|(c, city)| {
            [
                DiscountRuleRow {
                    id: demo_id(IdKind::DiscountRule, c, 0),
                    region: city.region,
                    kind: "promo",
                    code: Some("WELCOME10"),
                    percent_bp: 1_000,
                    min_duration_minutes: None,
                    membership_tier: None,
                },
                DiscountRuleRow {
                    id: demo_id(IdKind::DiscountRule, c, 1),
                    region: city.region,
                    kind: "long_duration",
                    code: None,
                    percent_bp: 1_000,
                    min_duration_minutes: Some(3 * 24 * 60),
                    membership_tier: None,
                },
                DiscountRuleRow {
                    id: demo_id(IdKind::DiscountRule, c, 2),
                    region: city.region,
                    kind: "membership",
                    code: None,
                    percent_bp: 1_500,
                    min_duration_minutes: None,
                    membership_tier: Some("gold"),
                },
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn km_between(a: (f64, f64), b: (f64, f64)) -> f64 {
        let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
        let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
        let h = ((lat2 - lat1) / 2.0).sin().powi(2)
            + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
        2.0 * 6371.0 * h.sqrt().asin()
    }

    /// Frankfurt Hbf and Stockholm C, in `CITIES` order.
    const CENTRES: [(f64, f64); 2] = [(50.1071, 8.6638), (59.3303, 18.0586)];

    fn city_of(fleet: &DemoFleet, region: &str) -> Vec<VehicleRow> {
        fleet
            .vehicles
            .iter()
            .filter(|v| v.region == region)
            .cloned()
            .collect()
    }

    #[test]
    fn no_two_time_multipliers_of_a_region_share_a_day_and_an_hour() {
        let rules = time_multipliers();
        for city in &CITIES {
            let mine: Vec<_> = rules.iter().filter(|r| r.region == city.region).collect();
            assert_eq!(mine.len(), 4, "{}", city.region);
            for (i, a) in mine.iter().enumerate() {
                assert!((1..=127).contains(&a.days_mask), "{a:?}");
                assert!(
                    a.start_hour >= 0 && a.start_hour < a.end_hour && a.end_hour <= 24,
                    "{a:?}"
                );
                for b in &mine[i + 1..] {
                    let share_day = a.days_mask & b.days_mask != 0;
                    let share_hour = a.start_hour < b.end_hour && b.start_hour < a.end_hour;
                    assert!(
                        !(share_day && share_hour),
                        "{} overlaps {}",
                        a.label,
                        b.label
                    );
                }
            }
        }
    }

    #[test]
    fn generating_the_fleet_twice_gives_the_same_fleet() {
        assert_eq!(demo_fleet(120), demo_fleet(120));
    }

    #[test]
    fn a_smaller_fleet_is_a_prefix_of_a_larger_one_in_every_city() {
        let small = demo_fleet(10);
        let large = demo_fleet(30);
        assert_eq!(small.bays, large.bays);
        for city in &CITIES {
            let s = city_of(&small, city.region);
            let l = city_of(&large, city.region);
            assert_eq!(s.len(), 10);
            assert_eq!(l.len(), 30);
            assert_eq!(s[..], l[..10], "{}", city.region);
        }
    }

    #[test]
    fn ids_are_pinned_well_formed_and_distinct() {
        // Pinned: tests and demos refer to these ids, so they must never drift.
        assert_eq!(
            demo_vehicle_id("EUW", 0).map(|u| u.to_string()).as_deref(),
            Some("d3a0f1ee-7000-8000-8002-000000000000")
        );
        assert_eq!(
            demo_vehicle_id("EUN", 7).map(|u| u.to_string()).as_deref(),
            Some("d3a0f1ee-7000-8000-8002-000100000007")
        );
        assert_eq!(
            demo_bay_id("EUN", 0).map(|u| u.to_string()).as_deref(),
            Some("d3a0f1ee-7000-8000-8001-000100000000")
        );
        assert_eq!(demo_vehicle_id("XXX", 0), None);
        assert_eq!(demo_bay_id("EUW", 20), None);

        let fleet = demo_fleet(120);
        assert_eq!(
            fleet.vehicles[0].id,
            demo_vehicle_id("EUW", 0).unwrap_or_default()
        );
        assert_eq!(fleet.bays[20].id, demo_bay_id("EUN", 0).unwrap_or_default());

        let ids: Vec<Uuid> = fleet
            .bays
            .iter()
            .map(|b| b.id)
            .chain(fleet.vehicles.iter().map(|v| v.id))
            .chain(time_multipliers().iter().map(|m| m.id))
            .chain(discount_rules().iter().map(|d| d.id))
            .collect();
        let distinct: HashSet<Uuid> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in ids {
            assert_eq!(id.get_version_num(), 8, "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
    }

    #[test]
    fn plates_are_unique_and_well_formed_for_500_vehicles_per_city() {
        let fleet = demo_fleet(500);
        assert_eq!(fleet.vehicles.len(), 1_000);
        let plates: HashSet<&str> = fleet.vehicles.iter().map(|v| v.plate.as_str()).collect();
        assert_eq!(plates.len(), fleet.vehicles.len());
        for v in &fleet.vehicles {
            let p = v.plate.as_str();
            if v.region == "EUW" {
                let rest = p.strip_prefix("F-").unwrap_or_else(|| panic!("{p}"));
                let (letters, number) = rest.split_once(' ').unwrap_or_else(|| panic!("{p}"));
                assert!(
                    letters.len() == 2 && letters.chars().all(|c| c.is_ascii_uppercase()),
                    "{p}"
                );
                let digits = match (v.fuel, number.strip_suffix('E')) {
                    (Fuel::Electric, Some(d)) => d,
                    (Fuel::Electric, None) => panic!("EV without E suffix: {p}"),
                    (_, _) => number,
                };
                assert!((1..=4).contains(&digits.len()), "{p}");
                assert!(
                    digits.chars().all(|c| c.is_ascii_digit()) && !digits.starts_with('0'),
                    "{p}"
                );
            } else {
                let b = p.as_bytes();
                assert_eq!(b.len(), 7, "{p}");
                assert!(
                    b[..3]
                        .iter()
                        .all(|c| c.is_ascii_uppercase() && !b"IQV".contains(c)),
                    "{p}"
                );
                assert_eq!(b[3], b' ', "{p}");
                assert!(b[4..6].iter().all(u8::is_ascii_digit), "{p}");
                assert!(
                    b[6].is_ascii_digit() || (b[6].is_ascii_uppercase() && b[6] != b'O'),
                    "{p}"
                );
            }
        }
    }

    #[test]
    fn bays_are_plausible_and_within_ten_km_of_the_centre() {
        let fleet = demo_fleet(0);
        assert!(fleet.vehicles.is_empty());
        for (city, centre) in CITIES.iter().zip(CENTRES) {
            assert!((18..=25).contains(&city.bays.len()), "{}", city.city);
            let names: HashSet<&str> = city.bays.iter().map(|b| b.name).collect();
            assert_eq!(names.len(), city.bays.len(), "{}", city.city);
            for b in city.bays {
                let km = km_between(centre, (b.lat, b.lon));
                assert!(km <= 10.0, "{} is {km:.1} km out", b.name);
                assert!((5..=30).contains(&b.capacity), "{}", b.name);
            }
        }
        assert!(fleet.bays.iter().all(|b| {
            (b.region == "EUW" && b.timezone == "Europe/Berlin" && b.city == "Frankfurt am Main")
                || (b.region == "EUN" && b.timezone == "Europe/Stockholm" && b.city == "Stockholm")
        }));
    }

    #[test]
    fn the_demo_fleet_has_a_realistic_mix_and_fits_its_bays() {
        let fleet = demo_fleet(120);
        let mut ev_share = Vec::new();
        for city in &CITIES {
            let vehicles = city_of(&fleet, city.region);
            assert_eq!(vehicles.len(), 120);
            for class in Class::ALL {
                assert!(
                    vehicles.iter().any(|v| v.class == class),
                    "{} lacks {class:?}",
                    city.city
                );
            }
            for v in &vehicles {
                let (lo, hi) = match v.class {
                    Class::Compact => (4, 5),
                    Class::Sedan => (5, 5),
                    Class::Suv => (5, 7),
                    Class::Van => (7, 9),
                    Class::Premium => (4, 7),
                };
                assert!((lo..=hi).contains(&v.seats), "{v:?}");
            }
            let evs = vehicles.iter().filter(|v| v.fuel == Fuel::Electric).count();
            ev_share.push(evs as f64 / vehicles.len() as f64);
            let in_maintenance = vehicles
                .iter()
                .filter(|v| v.status == "maintenance")
                .count();
            assert!(in_maintenance <= 10, "{in_maintenance}");
            let bay_capacity: Vec<(Uuid, i32)> = fleet
                .bays
                .iter()
                .filter(|b| b.region == city.region)
                .map(|b| (b.id, b.capacity))
                .collect();
            for (id, capacity) in bay_capacity {
                let parked = vehicles.iter().filter(|v| v.bay_id == id).count();
                assert!(
                    parked <= usize::try_from(capacity).unwrap_or(0),
                    "bay {id} overfull"
                );
            }
        }
        assert!(
            (0.25..=0.55).contains(&ev_share[0]),
            "Frankfurt EV share {}",
            ev_share[0]
        );
        assert!(
            (0.40..=0.70).contains(&ev_share[1]),
            "Stockholm EV share {}",
            ev_share[1]
        );
        assert!(ev_share[1] > ev_share[0]);
        assert!(fleet.vehicles.iter().any(|v| v.status == "maintenance"));
    }

    #[test]
    fn rate_cards_cover_both_regions_and_every_class() {
        let rates = base_rates();
        let configs = vehicle_configs();
        assert_eq!(rates.len(), 10);
        assert_eq!(configs.len(), 10);
        for r in &rates {
            assert_eq!(r.currency, if r.region == "EUW" { "EUR" } else { "SEK" });
            assert_eq!(r.per_day_minor, r.per_hour_minor * 6, "{r:?}");
            if r.region == "EUN" {
                assert_eq!(r.per_hour_minor % 100, 0, "{r:?}");
                assert_eq!(r.per_hour_minor, r.class.eur_per_hour_minor() * 11, "{r:?}");
            }
        }
        assert!(configs
            .iter()
            .all(|c| 0 <= c.floor_minor && c.floor_minor <= c.ceiling_minor));
        let discounts = discount_rules();
        assert_eq!(discounts.len(), 6);
        assert!(discounts
            .iter()
            .all(|d| d.percent_bp > 0 && d.percent_bp <= 5_000));
    }
}
