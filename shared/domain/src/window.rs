//! Booking time windows and the policy that limits them.
//!
//! A [`TimeWindow`] is a half-open UTC interval `[start, end)` on whole minutes. Half-open means
//! a booking ending at 10:00 and the next one starting at 10:00 do not overlap — exactly the
//! semantics of PostgreSQL's default `tstzrange '[)'`, whose exclusion constraint is the real
//! guard against double booking. Whole minutes keep pricing, hashing and cache keys canonical.
//! Construction (including deserialisation) goes through [`TimeWindow::new`], so code holding a
//! `TimeWindow` never needs to re-check it.

use chrono::{DateTime, Duration, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// Why a window was rejected. Messages are precise enough to show to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// `end == start`.
    #[error("end must be after start (the window is empty)")]
    Empty,
    /// `end < start`.
    #[error("end must be after start")]
    Inverted,
    /// A bound has non-zero seconds or sub-second part.
    #[error("start and end must be on a whole minute (seconds must be zero)")]
    NotWholeMinute,
    /// An extension that does not move the end later.
    #[error("the new end must be after the current end")]
    NotLater,
    /// The start is closer to `now` than the minimum notice (or in the past).
    #[error("start must be at least {min_notice_minutes} minutes from now")]
    TooSoon {
        /// Required notice in minutes.
        min_notice_minutes: i64,
    },
    /// The window is shorter than the minimum booking duration.
    #[error("booking must last at least {min_duration_minutes} minutes")]
    TooShort {
        /// Minimum duration in minutes.
        min_duration_minutes: i64,
    },
    /// The window is longer than the maximum booking duration.
    #[error("booking must last at most {max_duration_minutes} minutes")]
    TooLong {
        /// Maximum duration in minutes.
        max_duration_minutes: i64,
    },
    /// The start is further in the future than bookings may be made.
    #[error("start must be at most {max_advance_minutes} minutes from now")]
    TooFarAhead {
        /// Maximum advance in minutes.
        max_advance_minutes: i64,
    },
}

/// A non-empty, minute-aligned, half-open UTC interval `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct TimeWindow {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

fn on_whole_minute(t: DateTime<Utc>) -> bool {
    t.second() == 0 && t.nanosecond() == 0
}

impl TimeWindow {
    /// The only way to build a window: `end > start`, both on a whole minute.
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<Self, WindowError> {
        if end == start {
            return Err(WindowError::Empty);
        }
        if end < start {
            return Err(WindowError::Inverted);
        }
        if !on_whole_minute(start) || !on_whole_minute(end) {
            return Err(WindowError::NotWholeMinute);
        }
        Ok(TimeWindow { start, end })
    }

    /// Inclusive start.
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    /// Exclusive end.
    pub fn end(&self) -> DateTime<Utc> {
        self.end
    }

    /// Length in whole minutes (always > 0).
    pub fn duration_minutes(&self) -> i64 {
        (self.end - self.start).num_minutes()
    }

    /// Length as a duration.
    pub fn duration(&self) -> Duration {
        self.end - self.start
    }

    /// Whether the two windows share at least one instant; touching windows do not overlap.
    pub fn overlaps(&self, other: &TimeWindow) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// Whether `instant` lies in `[start, end)`.
    pub fn contains(&self, instant: DateTime<Utc>) -> bool {
        self.start <= instant && instant < self.end
    }

    /// The same window with a later end (a booking extension).
    pub fn extended_to(&self, new_end: DateTime<Utc>) -> Result<TimeWindow, WindowError> {
        if new_end <= self.end {
            return Err(WindowError::NotLater);
        }
        TimeWindow::new(self.start, new_end)
    }
}

impl<'de> Deserialize<'de> for TimeWindow {
    /// `{"start": RFC 3339, "end": RFC 3339}`, validated by [`TimeWindow::new`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            start: DateTime<Utc>,
            end: DateTime<Utc>,
        }
        let raw = Raw::deserialize(deserializer)?;
        TimeWindow::new(raw.start, raw.end).map_err(serde::de::Error::custom)
    }
}

/// Business limits on when and how long a vehicle can be booked.
///
/// Kept separate from [`TimeWindow`] because the same window is valid as a *fact* (an existing
/// booking, an extension) even when it would not be accepted as a *new* request today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookingPolicy {
    /// Minimum time between `now` and the start, so a car can be prepared.
    pub min_notice: Duration,
    /// Shortest bookable window.
    pub min_duration: Duration,
    /// Longest bookable window.
    pub max_duration: Duration,
    /// How far in the future a booking may start.
    pub max_advance: Duration,
}

impl Default for BookingPolicy {
    /// 5 min notice, 30 min to 30 days long, starting at most 180 days ahead.
    fn default() -> Self {
        BookingPolicy {
            min_notice: Duration::minutes(5),
            min_duration: Duration::minutes(30),
            max_duration: Duration::days(30),
            max_advance: Duration::days(180),
        }
    }
}

impl BookingPolicy {
    /// Checks a requested window against the policy at time `now`.
    pub fn check(&self, window: &TimeWindow, now: DateTime<Utc>) -> Result<(), WindowError> {
        if window.start() < now + self.min_notice {
            return Err(WindowError::TooSoon {
                min_notice_minutes: self.min_notice.num_minutes(),
            });
        }
        if window.start() > now + self.max_advance {
            return Err(WindowError::TooFarAhead {
                max_advance_minutes: self.max_advance.num_minutes(),
            });
        }
        if window.duration() < self.min_duration {
            return Err(WindowError::TooShort {
                min_duration_minutes: self.min_duration.num_minutes(),
            });
        }
        if window.duration() > self.max_duration {
            return Err(WindowError::TooLong {
                max_duration_minutes: self.max_duration.num_minutes(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 5, 10, h, m, 0).unwrap()
    }

    fn w(a: (u32, u32), b: (u32, u32)) -> TimeWindow {
        TimeWindow::new(t(a.0, a.1), t(b.0, b.1)).unwrap()
    }

    #[test]
    fn new_rejects_empty_inverted_and_unaligned_windows() {
        assert_eq!(TimeWindow::new(t(10, 0), t(10, 0)), Err(WindowError::Empty));
        assert_eq!(
            TimeWindow::new(t(11, 0), t(10, 0)),
            Err(WindowError::Inverted)
        );
        let odd = t(10, 0) + Duration::seconds(30);
        assert_eq!(
            TimeWindow::new(odd, t(11, 0)),
            Err(WindowError::NotWholeMinute)
        );
        let nanos = t(11, 0) + Duration::nanoseconds(1);
        assert_eq!(
            TimeWindow::new(t(10, 0), nanos),
            Err(WindowError::NotWholeMinute)
        );
        assert_eq!(w((10, 0), (11, 30)).duration_minutes(), 90);
    }

    #[test]
    fn touching_windows_do_not_overlap() {
        let a = w((10, 0), (11, 0));
        let b = w((11, 0), (12, 0));
        assert!(!a.overlaps(&b) && !b.overlaps(&a));
        let c = w((10, 59), (12, 0));
        assert!(a.overlaps(&c) && c.overlaps(&a));
        assert!(a.overlaps(&a));
        assert!(a.contains(t(10, 0)) && !a.contains(t(11, 0)));
    }

    #[test]
    fn extension_must_move_the_end_later() {
        let a = w((10, 0), (11, 0));
        assert_eq!(a.extended_to(t(11, 0)), Err(WindowError::NotLater));
        assert_eq!(a.extended_to(t(10, 30)), Err(WindowError::NotLater));
        assert_eq!(a.extended_to(t(12, 0)).unwrap(), w((10, 0), (12, 0)));
    }

    #[test]
    fn serde_round_trips_as_rfc3339_and_refuses_invalid_windows() {
        let a = w((10, 0), (11, 0));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"start":"2027-05-10T10:00:00Z","end":"2027-05-10T11:00:00Z"}"#
        );
        assert_eq!(serde_json::from_str::<TimeWindow>(&json).unwrap(), a);
        let inverted = r#"{"start":"2027-05-10T11:00:00Z","end":"2027-05-10T10:00:00Z"}"#;
        let err = serde_json::from_str::<TimeWindow>(inverted).unwrap_err();
        assert!(err.to_string().contains("end must be after start"), "{err}");
        // Offsets are accepted and normalised to UTC.
        let offset = r#"{"start":"2027-05-10T12:00:00+02:00","end":"2027-05-10T11:00:00Z"}"#;
        assert_eq!(serde_json::from_str::<TimeWindow>(offset).unwrap(), a);
        let seconds = r#"{"start":"2027-05-10T10:00:30Z","end":"2027-05-10T11:00:00Z"}"#;
        assert!(serde_json::from_str::<TimeWindow>(seconds).is_err());
    }

    #[test]
    fn policy_checks_notice_duration_and_advance() {
        let p = BookingPolicy::default();
        let now = t(9, 0);
        assert_eq!(p.check(&w((10, 0), (11, 0)), now), Ok(()));
        assert_eq!(
            p.check(&w((9, 4), (11, 0)), now),
            Err(WindowError::TooSoon {
                min_notice_minutes: 5
            })
        );
        assert_eq!(p.check(&w((9, 5), (11, 0)), now), Ok(()));
        assert_eq!(
            p.check(&w((10, 0), (10, 29)), now),
            Err(WindowError::TooShort {
                min_duration_minutes: 30
            })
        );
        let long = TimeWindow::new(t(10, 0), t(10, 1) + Duration::days(30)).unwrap();
        assert_eq!(
            p.check(&long, now),
            Err(WindowError::TooLong {
                max_duration_minutes: 43_200
            })
        );
        let far = TimeWindow::new(
            t(10, 0) + Duration::days(181),
            t(11, 0) + Duration::days(181),
        )
        .unwrap();
        assert_eq!(
            p.check(&far, now),
            Err(WindowError::TooFarAhead {
                max_advance_minutes: 259_200
            })
        );
    }
}
