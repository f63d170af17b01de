//! A booking as the origin holds it, parsed from its row once so the rest of the code works
//! with typed ids, windows, states and money.

use chrono::{DateTime, Utc};
use domain::ids::{BookingId, VehicleId};
use domain::money::{Currency, Money};
use domain::pricing::PriceLine;
use domain::region::Region;
use domain::state::BookingStatus;
use domain::window::TimeWindow;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

/// One extension of a booking's end, priced when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Extension {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub amount_minor: i64,
}

/// The columns every booking query selects, in [`BookingRow`]'s order.
pub const COLUMNS: &str = "id, region, vehicle_id, user_id, bay_id, destination_bay_id, \
     lower(period) as start_at, upper(period) as end_at, status, currency, price_minor, \
     breakdown, extensions, quote_id, hold_expires_at, cancellation_fee_minor, created_at, updated_at";

/// A raw booking row.
#[derive(Debug, sqlx::FromRow)]
pub struct BookingRow {
    pub id: Uuid,
    pub region: String,
    pub vehicle_id: Uuid,
    pub user_id: String,
    pub bay_id: Uuid,
    pub destination_bay_id: Option<Uuid>,
    pub start_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub status: String,
    pub currency: String,
    pub price_minor: i64,
    pub breakdown: Json<Vec<PriceLine>>,
    pub extensions: Json<Vec<Extension>>,
    pub quote_id: Uuid,
    pub hold_expires_at: Option<DateTime<Utc>>,
    pub cancellation_fee_minor: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A parsed booking.
#[derive(Debug, Clone)]
pub struct Booking {
    pub id: BookingId,
    pub vehicle_id: VehicleId,
    pub user_id: String,
    pub bay_id: Uuid,
    pub destination_bay_id: Option<Uuid>,
    pub window: TimeWindow,
    pub status: BookingStatus,
    pub price: Money,
    pub breakdown: Vec<PriceLine>,
    pub extensions: Vec<Extension>,
    pub quote_id: Uuid,
    pub hold_expires_at: Option<DateTime<Utc>>,
    pub cancellation_fee: Option<Money>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Booking {
    /// The region this booking lives in.
    pub fn region(&self) -> Region {
        self.id.region
    }
}

impl TryFrom<BookingRow> for Booking {
    type Error = anyhow::Error;

    fn try_from(row: BookingRow) -> Result<Self, Self::Error> {
        let region: Region = row
            .region
            .parse()
            .map_err(|_| anyhow::anyhow!("bad region {}", row.region))?;
        let currency: Currency = row
            .currency
            .parse()
            .map_err(|_| anyhow::anyhow!("bad currency {}", row.currency))?;
        Ok(Booking {
            id: BookingId {
                region,
                uuid: row.id,
            },
            vehicle_id: VehicleId {
                region,
                uuid: row.vehicle_id,
            },
            user_id: row.user_id,
            bay_id: row.bay_id,
            destination_bay_id: row.destination_bay_id,
            window: TimeWindow::new(row.start_at, row.end_at)
                .map_err(|e| anyhow::anyhow!("stored window: {e}"))?,
            status: row
                .status
                .parse()
                .map_err(|_| anyhow::anyhow!("bad status {}", row.status))?,
            price: Money::new(row.price_minor, currency),
            breakdown: row.breakdown.0,
            extensions: row.extensions.0,
            quote_id: row.quote_id,
            hold_expires_at: row.hold_expires_at,
            cancellation_fee: row
                .cancellation_fee_minor
                .map(|fee| Money::new(fee, currency)),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}
