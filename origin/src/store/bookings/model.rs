//! A booking row as PostgreSQL stores it, parsed once into the domain's
//! [`Booking`](domain::booking::Booking) so the rest of the code works with typed ids, windows,
//! states and money.

use chrono::{DateTime, Utc};
use domain::booking::{Booking, Extension, Reschedule};
use domain::ids::{BookingId, VehicleId};
use domain::money::{Currency, Money};
use domain::pricing::PriceLine;
use domain::region::Region;
use domain::window::TimeWindow;
use sqlx::types::Json;
use uuid::Uuid;

use super::StoreError;

/// A raw booking row, in the column order of every booking query (see `booking_rows!`).
#[derive(Debug)]
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
    pub reschedules: Json<Vec<Reschedule>>,
    pub quote_id: Uuid,
    pub hold_expires_at: Option<DateTime<Utc>>,
    pub cancellation_fee_minor: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<BookingRow> for Booking {
    type Error = StoreError;

    fn try_from(row: BookingRow) -> Result<Self, Self::Error> {
        let corrupt = |what: String| StoreError::Corrupt {
            id: row.id,
            detail: what,
        };
        let region: Region = row
            .region
            .parse()
            .map_err(|_| corrupt(format!("bad region {}", row.region)))?;
        let currency: Currency = row
            .currency
            .parse()
            .map_err(|_| corrupt(format!("bad currency {}", row.currency)))?;
        let window = TimeWindow::new(row.start_at, row.end_at)
            .map_err(|e| corrupt(format!("stored window: {e}")))?;
        let status = row
            .status
            .parse()
            .map_err(|_| corrupt(format!("bad status {}", row.status)))?;
        Ok(Booking {
            id: BookingId::new(region, row.id),
            vehicle_id: VehicleId::new(region, row.vehicle_id),
            user_id: row.user_id,
            bay_id: row.bay_id,
            destination_bay_id: row.destination_bay_id,
            window,
            status,
            price: Money::new(row.price_minor, currency),
            breakdown: row.breakdown.0,
            extensions: row.extensions.0,
            reschedules: row.reschedules.0,
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
