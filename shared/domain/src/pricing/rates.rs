//! Rate cards and the hour-of-week multiplier table.
//!
//! Time-of-day rules are configured as (days, hours, multiplier) and compiled once into a
//! 168-slot table indexed by local weekday and hour, so pricing a 30-day window is 720 array
//! lookups and overlapping or malformed rules are rejected when the configuration is loaded,
//! not when a customer asks for a price.

use chrono::Weekday;
use serde::{Deserialize, Serialize};

use super::PricingError;
use crate::money::Currency;
use crate::multiplier::Multiplier;

/// Base rates of a vehicle class in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCard {
    /// Currency all amounts of the card are in.
    pub currency: Currency,
    /// Price of each started hour, minor units.
    pub per_hour_minor: i64,
    /// Price of a whole day (also the cap on the hours of a partial day), minor units.
    pub per_day_minor: i64,
    /// Lowest total ever charged, minor units.
    pub floor_minor: i64,
    /// Highest total ever charged, minor units.
    pub ceiling_minor: i64,
}

impl RateCard {
    /// Checks rates > 0 and 0 <= floor <= ceiling.
    pub fn validate(&self) -> Result<(), PricingError> {
        if self.per_hour_minor <= 0 {
            return Err(PricingError::InvalidRateCard(
                "per_hour_minor must be positive".into(),
            ));
        }
        if self.per_day_minor <= 0 {
            return Err(PricingError::InvalidRateCard(
                "per_day_minor must be positive".into(),
            ));
        }
        if self.floor_minor < 0 {
            return Err(PricingError::InvalidRateCard(
                "floor_minor must not be negative".into(),
            ));
        }
        if self.floor_minor > self.ceiling_minor {
            return Err(PricingError::InvalidRateCard(
                "floor_minor must not exceed ceiling_minor".into(),
            ));
        }
        Ok(())
    }
}

/// A time-of-day multiplier rule in the bay's local time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeMultiplierRule {
    /// Weekday bitmask: Monday = bit 0 … Sunday = bit 6.
    pub days: u8,
    /// First local hour covered (0..=23).
    pub start_hour: u8,
    /// Local hour the rule stops at, exclusive (1..=24, greater than `start_hour`).
    pub end_hour: u8,
    /// Factor applied during those hours.
    pub multiplier: Multiplier,
}

impl TimeMultiplierRule {
    /// Bitmask bit of a weekday (Monday = bit 0).
    pub fn day_bit(day: Weekday) -> u8 {
        1 << day.num_days_from_monday()
    }

    fn validate(&self) -> Result<(), PricingError> {
        if self.days == 0 || self.days >= 1 << 7 {
            return Err(PricingError::InvalidRateCard(
                "time rule: days must be a non-empty bitmask of bits 0 (Monday) to 6 (Sunday)"
                    .into(),
            ));
        }
        if self.start_hour >= self.end_hour || self.end_hour > 24 {
            return Err(PricingError::InvalidRateCard(
                "time rule: hours must satisfy start_hour < end_hour <= 24".into(),
            ));
        }
        if !self.multiplier.is_valid() {
            return Err(PricingError::InvalidMultiplier);
        }
        Ok(())
    }
}

/// Multiplier for each of the 168 local hours of a week (index = weekday_from_monday × 24 +
/// hour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourOfWeekTable([Multiplier; 168]);

impl HourOfWeekTable {
    /// All hours ×1.0: pricing without time-of-day effects.
    pub fn neutral() -> Self {
        HourOfWeekTable([Multiplier::ONE; 168])
    }

    /// Compiles rules into the table. Hours no rule covers are ×1.0; two rules covering the same
    /// hour are an error rather than "last one wins", because silent precedence between
    /// configuration rows is how prices go wrong unnoticed.
    pub fn from_rules(rules: &[TimeMultiplierRule]) -> Result<Self, PricingError> {
        let mut table = [Multiplier::ONE; 168];
        let mut covered = [false; 168];
        for rule in rules {
            rule.validate()?;
            for day in 0..7usize {
                if rule.days & (1 << day) == 0 {
                    continue;
                }
                for hour in usize::from(rule.start_hour)..usize::from(rule.end_hour) {
                    let i = day * 24 + hour;
                    if covered[i] {
                        return Err(PricingError::OverlappingTimeRules);
                    }
                    covered[i] = true;
                    table[i] = rule.multiplier;
                }
            }
        }
        Ok(HourOfWeekTable(table))
    }

    /// The multiplier of a local weekday and hour; `hour` is taken modulo 24.
    pub fn get(&self, weekday: Weekday, hour: u32) -> Multiplier {
        let day = weekday.num_days_from_monday() as usize;
        let hour = (hour % 24) as usize;
        self.0[day * 24 + hour]
    }
}

impl Default for HourOfWeekTable {
    fn default() -> Self {
        Self::neutral()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(days: u8, start: u8, end: u8, bp: u32) -> TimeMultiplierRule {
        TimeMultiplierRule {
            days,
            start_hour: start,
            end_hour: end,
            multiplier: Multiplier::from_bp(bp),
        }
    }

    #[test]
    fn rules_fill_their_hours_and_leave_the_rest_neutral() {
        let fri = TimeMultiplierRule::day_bit(Weekday::Fri);
        let t = HourOfWeekTable::from_rules(&[
            rule(fri, 16, 19, 15_000),
            rule(0b110_0000, 0, 24, 9_000),
        ])
        .unwrap();
        assert_eq!(t.get(Weekday::Fri, 15), Multiplier::ONE);
        assert_eq!(t.get(Weekday::Fri, 16), Multiplier::from_bp(15_000));
        assert_eq!(t.get(Weekday::Fri, 18), Multiplier::from_bp(15_000));
        assert_eq!(t.get(Weekday::Fri, 19), Multiplier::ONE);
        assert_eq!(t.get(Weekday::Sat, 0), Multiplier::from_bp(9_000));
        assert_eq!(t.get(Weekday::Sun, 23), Multiplier::from_bp(9_000));
        assert_eq!(t.get(Weekday::Mon, 12), Multiplier::ONE);
    }

    #[test]
    fn overlapping_rules_are_rejected() {
        let r = HourOfWeekTable::from_rules(&[rule(0b1, 8, 10, 12_000), rule(0b11, 9, 11, 11_000)]);
        assert_eq!(r, Err(PricingError::OverlappingTimeRules));
        // Adjacent hours do not overlap.
        assert!(HourOfWeekTable::from_rules(&[
            rule(0b1, 8, 10, 12_000),
            rule(0b1, 10, 11, 11_000)
        ])
        .is_ok());
    }

    #[test]
    fn malformed_rules_are_rejected() {
        for bad in [
            rule(0, 8, 10, 12_000),
            rule(0x80, 8, 10, 12_000),
            rule(1, 10, 10, 12_000),
            rule(1, 10, 25, 12_000),
        ] {
            assert!(matches!(
                HourOfWeekTable::from_rules(&[bad]),
                Err(PricingError::InvalidRateCard(_))
            ));
        }
        assert_eq!(
            HourOfWeekTable::from_rules(&[rule(1, 8, 10, 0)]),
            Err(PricingError::InvalidMultiplier)
        );
    }

    #[test]
    fn rate_card_validation() {
        let ok = RateCard {
            currency: Currency::EUR,
            per_hour_minor: 500,
            per_day_minor: 4000,
            floor_minor: 0,
            ceiling_minor: 100_000,
        };
        assert_eq!(ok.validate(), Ok(()));
        assert!(RateCard {
            per_hour_minor: 0,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(RateCard {
            per_day_minor: -1,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(RateCard {
            floor_minor: -1,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(RateCard {
            floor_minor: 200_000,
            ..ok
        }
        .validate()
        .is_err());
    }
}
