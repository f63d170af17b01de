//! Domain events written to the transactional outbox.
//!
//! Every state change writes its events in the same transaction as the booking row and its
//! history row, so nothing is published that was not committed and nothing committed is lost.
//! Each event carries a stable UUIDv7 id (consumers deduplicate on it) and is keyed by the
//! vehicle id, so one vehicle's events keep their order through the broker's partitioning.

pub mod consumer;
pub(crate) mod outbox;
pub mod relay;

use chrono::{DateTime, Utc};
use domain::booking::{Booking, EventKind};
use serde::Serialize;
use uuid::Uuid;

/// The outbox topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum Topic {
    #[serde(rename = "booking.created")]
    BookingCreated,
    #[serde(rename = "booking.confirmed")]
    BookingConfirmed,
    #[serde(rename = "booking.started")]
    BookingStarted,
    #[serde(rename = "booking.completed")]
    BookingCompleted,
    #[serde(rename = "booking.cancelled")]
    BookingCancelled,
    #[serde(rename = "booking.failed")]
    BookingFailed,
    #[serde(rename = "booking.extended")]
    BookingExtended,
    #[serde(rename = "booking.rescheduled")]
    BookingRescheduled,
    #[serde(rename = "vehicle.reserved")]
    VehicleReserved,
    #[serde(rename = "vehicle.released")]
    VehicleReleased,
    /// A maintenance block was made or changed (`store::blocks::BlockEvent`).
    #[serde(rename = "vehicle.blocked")]
    VehicleBlocked,
    /// A maintenance block was ended.
    #[serde(rename = "vehicle.unblocked")]
    VehicleUnblocked,
    /// A waiter's window is free and offered to them for a short while (written by the
    /// database's release triggers, migration `20261208000001_waitlist.sql`; documented as
    /// `WaitlistEvent`).
    #[serde(rename = "waitlist.available")]
    WaitlistAvailable,
}

impl Topic {
    /// Every topic, for topic creation and consumers.
    pub const ALL: [Topic; 13] = [
        Topic::BookingCreated,
        Topic::BookingConfirmed,
        Topic::BookingStarted,
        Topic::BookingCompleted,
        Topic::BookingCancelled,
        Topic::BookingFailed,
        Topic::BookingExtended,
        Topic::BookingRescheduled,
        Topic::VehicleReserved,
        Topic::VehicleReleased,
        Topic::VehicleBlocked,
        Topic::VehicleUnblocked,
        Topic::WaitlistAvailable,
    ];

    /// The topic's name on the broker.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::BookingCreated => "booking.created",
            Topic::BookingConfirmed => "booking.confirmed",
            Topic::BookingStarted => "booking.started",
            Topic::BookingCompleted => "booking.completed",
            Topic::BookingCancelled => "booking.cancelled",
            Topic::BookingFailed => "booking.failed",
            Topic::BookingExtended => "booking.extended",
            Topic::BookingRescheduled => "booking.rescheduled",
            Topic::VehicleReserved => "vehicle.reserved",
            Topic::VehicleReleased => "vehicle.released",
            Topic::VehicleBlocked => "vehicle.blocked",
            Topic::VehicleUnblocked => "vehicle.unblocked",
            Topic::WaitlistAvailable => "waitlist.available",
        }
    }
}

impl From<EventKind> for Topic {
    /// The topic of each event the booking aggregate emits.
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::BookingCreated => Topic::BookingCreated,
            EventKind::BookingConfirmed => Topic::BookingConfirmed,
            EventKind::BookingStarted => Topic::BookingStarted,
            EventKind::BookingCompleted => Topic::BookingCompleted,
            EventKind::BookingCancelled => Topic::BookingCancelled,
            EventKind::BookingFailed => Topic::BookingFailed,
            EventKind::BookingExtended => Topic::BookingExtended,
            EventKind::BookingRescheduled => Topic::BookingRescheduled,
            EventKind::VehicleReserved => Topic::VehicleReserved,
            EventKind::VehicleReleased => Topic::VehicleReleased,
        }
    }
}

/// The booking as events describe it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BookingSnapshot {
    pub id: String,
    pub vehicle_id: String,
    pub user_id: String,
    pub status: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub price_minor: i64,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancellation_fee_minor: Option<i64>,
}

/// A window in an event: `[start, end)`.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct EventWindow {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The event envelope (documented as `Event` in the OpenAPI components).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub topic: Topic,
    pub occurred_at: DateTime<Utc>,
    pub region: String,
    pub booking: BookingSnapshot,
    /// Why the change happened, when it was not the user's own action (e.g. `hold_expired`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `booking.rescheduled`: the window the booking left (now free, unless another booking
    /// took it since), so a consumer of availability needs no other read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_window: Option<EventWindow>,
    /// The booking's uuid (the outbox's aggregate id); not part of the payload.
    #[serde(skip)]
    pub aggregate_id: Uuid,
}

impl Event {
    /// A new event about `booking` (its state after the change).
    pub fn new(topic: Topic, booking: &Booking, at: DateTime<Utc>, reason: Option<&str>) -> Self {
        Event {
            event_id: Uuid::now_v7(),
            topic,
            occurred_at: at,
            region: booking.region().code().to_owned(),
            booking: BookingSnapshot {
                id: booking.id.to_string(),
                vehicle_id: booking.vehicle_id.to_string(),
                user_id: booking.user_id.clone(),
                status: booking.status.as_str().to_owned(),
                start: booking.window.start(),
                end: booking.window.end(),
                price_minor: booking.price.minor,
                currency: booking.price.currency.code().to_owned(),
                hold_expires_at: booking.hold_expires_at,
                cancellation_fee_minor: booking.cancellation_fee.map(|m| m.minor),
            },
            reason: reason.map(str::to_owned),
            previous_window: None,
            aggregate_id: booking.id.uuid,
        }
    }
}
