//! Wire types shared by the v1 and v2 handlers.
//!
//! v1 is the stable, compact form (prices as decimal strings, flat windows); v2 is the richer
//! form (money in minor units with currency, itemised breakdown, multipliers, extensions).
//! Requests are strict: unknown fields are refused, so a typo is a 422, not a silent default.

use chrono::{DateTime, Utc};
use domain::booking::{Booking, Extension, Reschedule};
use domain::cancellation::{CancellationFee, FeeTier};
use domain::money::Money;
use domain::pricing::PriceLine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::search::Hit;

/// Money in minor units (v2).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct MoneyDto {
    /// Amount in minor units (cents, öre).
    pub minor: i64,
    /// ISO 4217 code: EUR or SEK.
    pub currency: String,
}

impl From<Money> for MoneyDto {
    fn from(m: Money) -> Self {
        MoneyDto {
            minor: m.minor,
            currency: m.currency.code().to_owned(),
        }
    }
}

/// A decimal string with two fraction digits, e.g. "12.50" (v1).
pub(crate) fn decimal(m: Money) -> String {
    let sign = if m.minor < 0 { "-" } else { "" };
    let abs = m.minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// One line of a price breakdown (v2). The lines sum exactly to the total.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct PriceLineDto {
    /// base, time_of_day, surge, risk, discount, floor or ceiling.
    pub kind: String,
    pub label: String,
    pub amount_minor: i64,
}

impl From<&PriceLine> for PriceLineDto {
    fn from(line: &PriceLine) -> Self {
        PriceLineDto {
            kind: serde_json::to_value(line.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            label: line.label.clone(),
            amount_minor: line.amount_minor,
        }
    }
}

/// A half-open time window [start, end) in UTC.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct WindowDto {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Body of `POST /v{1,2}/quotes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuoteRequest {
    /// e.g. `veh_euw_0190…`
    #[schema(pattern = "^veh_(euw|eun)_[0-9A-Fa-f]{32}$")]
    pub vehicle_id: String,
    /// RFC 3339, on a whole minute.
    pub start: DateTime<Utc>,
    /// RFC 3339, on a whole minute, after `start`.
    pub end: DateTime<Utc>,
    #[serde(default)]
    pub destination_bay_id: Option<Uuid>,
    #[serde(default)]
    pub promo_code: Option<String>,
}

/// A quote (v1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct QuoteV1 {
    pub quote_id: Uuid,
    /// Present this token to `POST /v1/bookings` before `expires_at`.
    pub quote_token: String,
    pub vehicle_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Decimal total, e.g. "42.50".
    pub price: String,
    pub currency: String,
    pub expires_at: DateTime<Utc>,
}

/// The multipliers a quote applied (v2), as factors (1.25 = +25 %).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct MultipliersDto {
    pub time_of_day: f64,
    pub surge: f64,
    pub risk: f64,
    /// Total discount in basis points (1500 = 15 %).
    pub discount_bp: u32,
}

/// A quote (v2).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct QuoteV2 {
    pub quote_id: Uuid,
    pub quote_token: String,
    pub vehicle_id: String,
    pub region: String,
    pub window: WindowDto,
    pub total: MoneyDto,
    pub breakdown: Vec<PriceLineDto>,
    pub multipliers: MultipliersDto,
    pub expires_at: DateTime<Utc>,
    /// Pricing inputs that used a fallback (cached or neutral) because their source was slow
    /// or down: `risk`, `demand`. Empty when every input was fresh.
    pub degraded: Vec<String>,
}

/// Body of `POST /v{1,2}/bookings`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBookingRequest {
    /// The token of a quote made for the caller.
    pub quote_token: String,
}

/// Body of `POST /v{1,2}/bookings/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtendRequest {
    /// The new end, later than the current one, on a whole minute.
    pub end: DateTime<Utc>,
}

/// Body of `POST /v{1,2}/bookings/{id}/reschedule`: the booking's new window, on whole minutes,
/// which the booking policy must accept as for a new booking.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RescheduleRequest {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// One move of a booking to another window (v2), priced when it was made: the booking's price
/// changed by `difference` (today's price of the new window minus the old one's; negative is
/// refunded, and the price never goes below zero) plus `fee` (the cancellation policy's fee at
/// the time of the move, zero before its free period ends and for holds).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct RescheduleDto {
    pub from: WindowDto,
    pub to: WindowDto,
    pub difference: MoneyDto,
    pub fee: MoneyDto,
    pub at: DateTime<Utc>,
}

impl RescheduleDto {
    fn render(r: &Reschedule, booking: &Booking) -> Self {
        let currency = booking.price.currency;
        let window = |w: &domain::window::TimeWindow| WindowDto {
            start: w.start(),
            end: w.end(),
        };
        RescheduleDto {
            from: window(&r.from),
            to: window(&r.to),
            difference: Money::new(r.difference_minor, currency).into(),
            fee: Money::new(r.fee_minor, currency).into(),
            at: r.at,
        }
    }
}

/// What a cancellation costs (v1 decimals).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct CancellationV1 {
    pub fee: String,
    pub refund: String,
    /// free, late or very_late (present in the cancel response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// What a cancellation costs (v2).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct CancellationV2 {
    pub fee: MoneyDto,
    pub refund: MoneyDto,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// A booking (v1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct BookingV1 {
    pub id: String,
    pub vehicle_id: String,
    /// RESERVING, CONFIRMED, IN_PROGRESS, COMPLETED, FAILED or CANCELLED.
    pub status: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub price: String,
    pub currency: String,
    /// When an unconfirmed hold lapses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<CancellationV1>,
    pub created_at: DateTime<Utc>,
}

// The wire form of `domain::booking::Extension` (the domain has no OpenAPI derive). Named and
// documented exactly as that type was, so `/openapi.json` is unchanged: no field docs.
/// One extension of a booking's end, priced when it was made.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Extension)]
pub(crate) struct ExtensionDto {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub amount_minor: i64,
}

impl From<&Extension> for ExtensionDto {
    fn from(e: &Extension) -> Self {
        ExtensionDto {
            from: e.from,
            to: e.to,
            amount_minor: e.amount_minor,
        }
    }
}

/// A booking (v2).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct BookingV2 {
    pub id: String,
    pub vehicle_id: String,
    pub region: String,
    pub status: String,
    pub window: WindowDto,
    /// Total price, extensions included.
    pub price: MoneyDto,
    /// The quote's breakdown.
    pub breakdown: Vec<PriceLineDto>,
    pub extensions: Vec<ExtensionDto>,
    /// Moves to other windows, oldest first.
    #[serde(default)]
    pub reschedules: Vec<RescheduleDto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<CancellationV2>,
    pub bay_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_bay_id: Option<Uuid>,
    pub quote_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn tier_name(tier: FeeTier) -> String {
    serde_json::to_value(tier)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn cancellation_parts(
    booking: &Booking,
    fee: Option<&CancellationFee>,
) -> Option<(Money, Money, Option<String>)> {
    if let Some(fee) = fee {
        return Some((fee.fee, fee.refund, Some(tier_name(fee.tier))));
    }
    booking.cancellation_fee.map(|f| {
        (
            f,
            Money::new(booking.price.minor - f.minor, booking.price.currency),
            None,
        )
    })
}

impl BookingV1 {
    /// Renders a booking; `fee` is the cancellation just computed, if any.
    pub(crate) fn render(b: &Booking, fee: Option<&CancellationFee>) -> Self {
        BookingV1 {
            id: b.id.to_string(),
            vehicle_id: b.vehicle_id.to_string(),
            status: b.status.as_str().to_owned(),
            start: b.window.start(),
            end: b.window.end(),
            price: decimal(b.price),
            currency: b.price.currency.code().to_owned(),
            hold_expires_at: b.hold_expires_at,
            cancellation: cancellation_parts(b, fee).map(|(fee, refund, tier)| CancellationV1 {
                fee: decimal(fee),
                refund: decimal(refund),
                tier,
            }),
            created_at: b.created_at,
        }
    }
}

impl BookingV2 {
    /// Renders a booking; `fee` is the cancellation just computed, if any.
    pub(crate) fn render(b: &Booking, fee: Option<&CancellationFee>) -> Self {
        BookingV2 {
            id: b.id.to_string(),
            vehicle_id: b.vehicle_id.to_string(),
            region: b.region().code().to_owned(),
            status: b.status.as_str().to_owned(),
            window: WindowDto {
                start: b.window.start(),
                end: b.window.end(),
            },
            price: b.price.into(),
            breakdown: b.breakdown.iter().map(PriceLineDto::from).collect(),
            extensions: b.extensions.iter().map(ExtensionDto::from).collect(),
            reschedules: b
                .reschedules
                .iter()
                .map(|r| RescheduleDto::render(r, b))
                .collect(),
            hold_expires_at: b.hold_expires_at,
            cancellation: cancellation_parts(b, fee).map(|(fee, refund, tier)| CancellationV2 {
                fee: fee.into(),
                refund: refund.into(),
                tier,
            }),
            bay_id: b.bay_id,
            destination_bay_id: b.destination_bay_id,
            quote_id: b.quote_id,
            created_at: b.created_at,
            updated_at: b.updated_at,
        }
    }
}

/// A page of bookings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct BookingPage<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Query of `GET /v{1,2}/bookings`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only bookings in this status.
    pub status: Option<String>,
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// Ops only: list another user's bookings.
    pub user_id: Option<String>,
}

/// Query of `GET /v{1,2}/vehicles/search`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SearchParams {
    /// Latitude of the search centre (inside a service area, or 422).
    #[param(minimum = -90.0, maximum = 90.0)]
    pub lat: f64,
    /// Longitude of the search centre.
    #[param(minimum = -180.0, maximum = 180.0)]
    pub lon: f64,
    /// Radius in metres, 1–50000 (default 2000).
    #[param(minimum = 1, maximum = 50_000)]
    pub radius_m: Option<u32>,
    /// Window start, RFC 3339 (encode `+` as `%2B`).
    pub start: DateTime<Utc>,
    /// Window end, RFC 3339.
    pub end: DateTime<Utc>,
    /// compact, sedan, suv, van or premium.
    #[param(pattern = "^(compact|sedan|suv|van|premium)$")]
    pub class: Option<String>,
    /// At least this many seats (1–9).
    #[param(minimum = 1, maximum = 9)]
    pub min_seats: Option<i16>,
    /// petrol, diesel, hybrid or electric.
    #[param(pattern = "^(petrol|diesel|hybrid|electric)$")]
    pub fuel: Option<String>,
    /// Only electric vehicles (same as fuel=electric).
    pub electric: Option<bool>,
    /// Highest indicative price in minor units.
    #[param(minimum = 0)]
    pub max_price_minor: Option<i64>,
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// A parking bay in a search hit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct BayDto {
    pub id: Uuid,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
}

/// Writes a search-hit type and its conversion from [`Hit`]: the vehicle and bay fields both
/// versions show, in this order, then the version's own price fields, each with the
/// expression that computes it from the hit named after `from`. One list, so v1 and v2 cannot
/// drift (`serde(flatten)` would share it too, but turns the OpenAPI schema into an `allOf`).
macro_rules! vehicle_hit {
    (
        $(#[$doc:meta])* $name:ident from $hit:ident {
            $($(#[$field_doc:meta])* pub $field:ident: $ty:ty = $value:expr,)*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
        pub(crate) struct $name {
            pub vehicle_id: String,
            pub class: String,
            pub make: String,
            pub model: String,
            pub seats: i16,
            pub fuel: String,
            pub bay: BayDto,
            pub distance_m: u32,
            $($(#[$field_doc])* pub $field: $ty,)*
        }

        impl From<&Hit> for $name {
            fn from($hit: &Hit) -> Self {
                let vehicle = &$hit.vehicle;
                $name {
                    vehicle_id: vehicle.vehicle_id.to_string(),
                    class: vehicle.class.as_str().to_owned(),
                    make: vehicle.make.clone(),
                    model: vehicle.model.clone(),
                    seats: vehicle.seats,
                    fuel: vehicle.fuel.clone(),
                    bay: BayDto {
                        id: vehicle.bay_id,
                        name: vehicle.bay_name.clone(),
                        lat: vehicle.lat,
                        lon: vehicle.lon,
                    },
                    distance_m: $hit.distance_m,
                    $($field: $value,)*
                }
            }
        }
    };
}

vehicle_hit! {
    /// A search hit (v1: decimal price; v2: minor units).
    VehicleHitV1 from hit {
        /// Indicative price for the window (time of day included; surge, risk and discounts not).
        pub price: String = decimal(hit.price()),
        pub currency: String = hit.currency.code().to_owned(),
    }
}

vehicle_hit! {
    /// A search hit (v2).
    VehicleHitV2 from hit {
        pub indicative_price: MoneyDto = MoneyDto::from(hit.price()),
    }
}

/// A page of search hits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct SearchPage<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
