//! Maintenance blocks: windows in which operations take a vehicle out of service (a repair, an
//! inspection, a deep clean longer than the turnaround buffer), as Fleetbase and Shelf do.
//!
//! A block occupies its vehicle as a booking does: while it is active no booking may overlap
//! it (the database enforces both directions, see `migrations/…_vehicle_blocks.sql`), and
//! search and quotes leave the vehicle out for its window. The rules here are the ones that
//! need no database: what a block's window and reason may be, and what ending or changing one
//! does at `now`.
//!
//! Ending a block is not deleting it: a block that has not begun is *cancelled* (it never took
//! the vehicle), one under way is *cut* at the next whole minute (the vehicle is back from
//! then); both stay on record for the fleet's history.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Serialize;

use crate::window::TimeWindow;

/// The longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// Why a block request was refused. Messages are shown to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// A block whose window has already passed would change nothing.
    #[error("end must be in the future: a block over the past takes nothing out of service")]
    EndInPast,
    /// No reason, or only spaces.
    #[error("reason must not be empty: say why the vehicle is out of service")]
    EmptyReason,
    /// A reason longer than [`MAX_REASON_CHARS`].
    #[error("reason must be at most {MAX_REASON_CHARS} characters")]
    ReasonTooLong,
    /// A reason with control characters (a log or a report would show them raw).
    #[error("reason must not contain control characters")]
    ReasonControl,
    /// The block's window has passed: there is nothing left to change or end.
    #[error("the block is over (it ended at {0}); create a new one")]
    Over(DateTime<Utc>),
    /// The block was ended already.
    #[error("the block was already ended at {0}")]
    AlreadyEnded(DateTime<Utc>),
}

impl BlockError {
    /// The request field at fault, when one is (the others are about the block's state).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            BlockError::EndInPast => Some("end"),
            BlockError::EmptyReason | BlockError::ReasonTooLong | BlockError::ReasonControl => {
                Some("reason")
            }
            BlockError::Over(_) | BlockError::AlreadyEnded(_) => None,
        }
    }
}

/// Why a vehicle is out of service: trimmed, non-empty, at most [`MAX_REASON_CHARS`]
/// characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Reason(String);

impl Reason {
    /// The only way to build a reason.
    pub fn parse(text: &str) -> Result<Self, BlockError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(BlockError::EmptyReason);
        }
        if text.chars().count() > MAX_REASON_CHARS {
            return Err(BlockError::ReasonTooLong);
        }
        if text.chars().any(char::is_control) {
            return Err(BlockError::ReasonControl);
        }
        Ok(Reason(text.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A window a new or changed block may have at `now`: any window that has not passed (it may
/// have begun: "out of service from now until Friday" starts in the past by the time it is
/// written).
pub fn check_window(window: &TimeWindow, now: DateTime<Utc>) -> Result<(), BlockError> {
    if window.end() <= now {
        return Err(BlockError::EndInPast);
    }
    Ok(())
}

/// What ending a block at `now` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The block had not begun: it never takes the vehicle.
    Cancelled,
    /// The block was under way: it keeps its past, up to this window's end.
    Cut(TimeWindow),
}

/// Ends a block of `window` (ended before at `ended_at`, if it was) at `now`.
pub fn end(
    window: &TimeWindow,
    ended_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Ending, BlockError> {
    changeable(window, ended_at, now)?;
    if window.start() >= now {
        return Ok(Ending::Cancelled);
    }
    // The next whole minute: windows are on whole minutes, and rounding up keeps the vehicle
    // out for the part of a minute already begun (no booking can start inside it anyway).
    let minute = TimeDelta::minutes(1);
    let floor = now.duration_trunc(minute).unwrap_or(now);
    let back = if floor == now { now } else { floor + minute };
    match TimeWindow::new(window.start(), back.min(window.end())) {
        Ok(cut) => Ok(Ending::Cut(cut)),
        // Only when `back` is the start itself, which `start < now` rules out.
        Err(_) => Ok(Ending::Cancelled),
    }
}

/// Whether a block of `window` (ended at `ended_at`, if it was) can still be changed at `now`:
/// not ended, not over.
pub fn changeable(
    window: &TimeWindow,
    ended_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), BlockError> {
    if let Some(at) = ended_at {
        return Err(BlockError::AlreadyEnded(at));
    }
    if window.end() <= now {
        return Err(BlockError::Over(window.end()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 3, 1, h, m, s)
            .single()
            .expect("valid time")
    }

    fn window(from: (u32, u32), to: (u32, u32)) -> TimeWindow {
        TimeWindow::new(at(from.0, from.1, 0), at(to.0, to.1, 0)).expect("valid window")
    }

    #[test]
    fn a_reason_is_trimmed_and_must_say_something_short_and_printable() {
        assert_eq!(
            Reason::parse("  brake pads ").map(|r| r.as_str().to_owned()),
            Ok("brake pads".to_owned())
        );
        assert_eq!(Reason::parse(" \t "), Err(BlockError::EmptyReason));
        assert_eq!(
            Reason::parse(&"x".repeat(MAX_REASON_CHARS + 1)),
            Err(BlockError::ReasonTooLong)
        );
        assert!(Reason::parse(&"é".repeat(MAX_REASON_CHARS)).is_ok());
        assert_eq!(Reason::parse("tyres\u{7}"), Err(BlockError::ReasonControl));
        assert_eq!(BlockError::ReasonControl.field(), Some("reason"));
    }

    #[test]
    fn a_window_may_have_begun_but_not_passed() {
        let w = window((9, 0), (12, 0));
        assert_eq!(check_window(&w, at(10, 0, 0)), Ok(()));
        assert_eq!(check_window(&w, at(8, 0, 0)), Ok(()));
        assert_eq!(check_window(&w, at(12, 0, 0)), Err(BlockError::EndInPast));
        assert_eq!(BlockError::EndInPast.field(), Some("end"));
    }

    #[test]
    fn ending_before_the_start_cancels_and_under_way_cuts_at_the_next_whole_minute() {
        let w = window((9, 0), (12, 0));
        assert_eq!(end(&w, None, at(8, 59, 59)), Ok(Ending::Cancelled));
        assert_eq!(end(&w, None, at(9, 0, 0)), Ok(Ending::Cancelled));
        assert_eq!(
            end(&w, None, at(9, 0, 1)),
            Ok(Ending::Cut(window((9, 0), (9, 1))))
        );
        assert_eq!(
            end(&w, None, at(10, 30, 0)),
            Ok(Ending::Cut(window((9, 0), (10, 30))))
        );
        assert_eq!(
            end(&w, None, at(11, 59, 30)),
            Ok(Ending::Cut(window((9, 0), (12, 0))))
        );
    }

    #[test]
    fn a_block_that_is_over_or_ended_cannot_be_ended_or_changed_again() {
        let w = window((9, 0), (12, 0));
        assert_eq!(
            end(&w, None, at(12, 0, 0)),
            Err(BlockError::Over(at(12, 0, 0)))
        );
        assert_eq!(
            end(&w, Some(at(10, 0, 0)), at(10, 5, 0)),
            Err(BlockError::AlreadyEnded(at(10, 0, 0)))
        );
        assert_eq!(changeable(&w, None, at(11, 0, 0)), Ok(()));
        assert_eq!(BlockError::Over(at(12, 0, 0)).field(), None);
    }
}
