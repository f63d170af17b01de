//! The booking lifecycle as a closed state machine.
//!
//! Every state change in the origin goes through [`BookingStatus::apply`], so an illegal
//! transition (confirming a cancelled booking, cancelling a completed one) is impossible to write
//! rather than merely checked somewhere. [`BookingStatus::occupies_vehicle`] is the set the
//! database exclusion constraint covers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a booking is in its lifecycle. Serialised as SCREAMING_SNAKE_CASE (`"PRICE_QUOTED"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BookingStatus {
    /// The user is looking for a vehicle; nothing is held.
    Searching,
    /// A signed quote was issued; nothing is held yet.
    PriceQuoted,
    /// A hold on the vehicle exists and expires unless confirmed.
    Reserving,
    /// The booking is firm.
    Confirmed,
    /// The trip has started.
    InProgress,
    /// The trip ended normally.
    Completed,
    /// The hold expired or the reservation failed.
    Failed,
    /// Cancelled by the user or operations.
    Cancelled,
}

/// Something that happens to a booking. Displayed lower case ("confirm").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookingEvent {
    /// A price was quoted.
    Quote,
    /// The vehicle was held.
    Hold,
    /// The hold was confirmed.
    Confirm,
    /// The trip started.
    Start,
    /// The trip ended.
    Complete,
    /// The user or operations cancelled.
    Cancel,
    /// The hold expired or reservation failed.
    Fail,
}

/// The event is not allowed in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a booking that is {from}")]
pub struct InvalidTransition {
    /// State the booking was in.
    pub from: BookingStatus,
    /// Event that was refused.
    pub event: BookingEvent,
}

/// The status string is not one of the known states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown booking status {0:?}")]
pub struct UnknownStatus(pub String);

impl BookingStatus {
    /// Every state, for exhaustive tests and database enum checks.
    pub const ALL: [BookingStatus; 8] = [
        BookingStatus::Searching,
        BookingStatus::PriceQuoted,
        BookingStatus::Reserving,
        BookingStatus::Confirmed,
        BookingStatus::InProgress,
        BookingStatus::Completed,
        BookingStatus::Failed,
        BookingStatus::Cancelled,
    ];

    /// The wire / database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BookingStatus::Searching => "SEARCHING",
            BookingStatus::PriceQuoted => "PRICE_QUOTED",
            BookingStatus::Reserving => "RESERVING",
            BookingStatus::Confirmed => "CONFIRMED",
            BookingStatus::InProgress => "IN_PROGRESS",
            BookingStatus::Completed => "COMPLETED",
            BookingStatus::Failed => "FAILED",
            BookingStatus::Cancelled => "CANCELLED",
        }
    }

    /// Whether a booking in this state blocks the vehicle for its window (the states covered by
    /// the exclusion constraint).
    pub fn occupies_vehicle(self) -> bool {
        matches!(
            self,
            BookingStatus::Reserving | BookingStatus::Confirmed | BookingStatus::InProgress
        )
    }

    /// Whether no further event can change this state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BookingStatus::Completed | BookingStatus::Failed | BookingStatus::Cancelled
        )
    }

    /// The state after `event`, or why the event is not allowed now.
    pub fn apply(self, event: BookingEvent) -> Result<BookingStatus, InvalidTransition> {
        use BookingEvent as E;
        use BookingStatus as S;
        match (self, event) {
            (S::Searching, E::Quote) => Ok(S::PriceQuoted),
            (S::PriceQuoted, E::Hold) => Ok(S::Reserving),
            (S::Reserving, E::Confirm) => Ok(S::Confirmed),
            (S::Reserving, E::Fail) => Ok(S::Failed),
            (S::Reserving, E::Cancel) => Ok(S::Cancelled),
            (S::Confirmed, E::Start) => Ok(S::InProgress),
            (S::Confirmed, E::Cancel) => Ok(S::Cancelled),
            (S::InProgress, E::Complete) => Ok(S::Completed),
            (from, event) => Err(InvalidTransition { from, event }),
        }
    }
}

impl fmt::Display for BookingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BookingStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BookingStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl BookingEvent {
    /// Every event, for exhaustive tests.
    pub const ALL: [BookingEvent; 7] = [
        BookingEvent::Quote,
        BookingEvent::Hold,
        BookingEvent::Confirm,
        BookingEvent::Start,
        BookingEvent::Complete,
        BookingEvent::Cancel,
        BookingEvent::Fail,
    ];

    /// Lower-case verb, used in messages and event names.
    pub fn as_str(self) -> &'static str {
        match self {
            BookingEvent::Quote => "quote",
            BookingEvent::Hold => "hold",
            BookingEvent::Confirm => "confirm",
            BookingEvent::Start => "start",
            BookingEvent::Complete => "complete",
            BookingEvent::Cancel => "cancel",
            BookingEvent::Fail => "fail",
        }
    }
}

impl fmt::Display for BookingEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BookingEvent as E;
    use BookingStatus as S;

    #[test]
    fn transition_table_is_exactly_the_specified_one() {
        let allowed = [
            (S::Searching, E::Quote, S::PriceQuoted),
            (S::PriceQuoted, E::Hold, S::Reserving),
            (S::Reserving, E::Confirm, S::Confirmed),
            (S::Reserving, E::Fail, S::Failed),
            (S::Reserving, E::Cancel, S::Cancelled),
            (S::Confirmed, E::Start, S::InProgress),
            (S::Confirmed, E::Cancel, S::Cancelled),
            (S::InProgress, E::Complete, S::Completed),
        ];
        let mut checked = 0;
        for from in S::ALL {
            for event in E::ALL {
                let expected = allowed
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to);
                match expected {
                    Some(to) => assert_eq!(from.apply(event), Ok(to), "{from} {event}"),
                    None => assert_eq!(
                        from.apply(event),
                        Err(InvalidTransition { from, event }),
                        "{from} {event}"
                    ),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 56);
    }

    #[test]
    fn terminal_states_accept_no_event() {
        for s in S::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(E::ALL.into_iter().all(|e| s.apply(e).is_err()));
        }
    }

    #[test]
    fn occupying_states_are_reserving_confirmed_in_progress() {
        let occ: Vec<_> = S::ALL
            .into_iter()
            .filter(|s| s.occupies_vehicle())
            .collect();
        assert_eq!(occ, [S::Reserving, S::Confirmed, S::InProgress]);
    }

    #[test]
    fn error_message_names_event_and_state() {
        let err = S::Completed.apply(E::Cancel).unwrap_err();
        assert_eq!(err.to_string(), "cannot cancel a booking that is COMPLETED");
    }

    #[test]
    fn status_spelling_is_consistent_across_serde_display_and_from_str() {
        for s in S::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(s.to_string().parse::<S>(), Ok(s));
        }
        assert_eq!(S::PriceQuoted.as_str(), "PRICE_QUOTED");
        assert!("confirmed".parse::<S>().is_err());
        assert_eq!(E::Confirm.to_string(), "confirm");
    }
}
