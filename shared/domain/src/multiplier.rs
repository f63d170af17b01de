//! Price multipliers in integer basis points.
//!
//! A multiplier of 10 000 bp is ×1.0. Basis points keep every price product exact in integer
//! arithmetic (see [`crate::money`] for the rounding rule); the `f64` view exists only for
//! display and for models that produce floats.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A factor applied to a price, in basis points (10 000 = ×1.0).
///
/// Serialised as the integer number of basis points. Deserialisation goes through
/// [`Multiplier::try_from_bp`], so a stored or transmitted multiplier is always in the valid
/// range `0 < bp <= 100_000` (×10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Multiplier(u32);

/// A multiplier outside `0 < bp <= 100_000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("multiplier must be between 1 and {max} basis points, got {0}", max = Multiplier::MAX_BP)]
pub struct InvalidMultiplier(pub u32);

impl Multiplier {
    /// Basis points of ×1.0.
    pub const SCALE: u32 = 10_000;
    /// Largest accepted multiplier (×10): guards against a fat-fingered rule or model output.
    pub const MAX_BP: u32 = 100_000;
    /// ×1.0, the neutral multiplier.
    pub const ONE: Multiplier = Multiplier(Self::SCALE);

    /// Unchecked constructor for constants and already-validated values.
    pub const fn from_bp(bp: u32) -> Self {
        Multiplier(bp)
    }

    /// Checked constructor for anything configurable: `0 < bp <= 100_000`.
    pub fn try_from_bp(bp: u32) -> Result<Self, InvalidMultiplier> {
        if bp == 0 || bp > Self::MAX_BP {
            Err(InvalidMultiplier(bp))
        } else {
            Ok(Multiplier(bp))
        }
    }

    /// The factor in basis points.
    pub const fn bp(self) -> u32 {
        self.0
    }

    /// The factor as a float, for display and float-based models only, never for money.
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / f64::from(Self::SCALE)
    }

    /// Whether the multiplier is within the range accepted for rules and inputs.
    pub fn is_valid(self) -> bool {
        self.0 > 0 && self.0 <= Self::MAX_BP
    }
}

impl Default for Multiplier {
    fn default() -> Self {
        Multiplier::ONE
    }
}

impl TryFrom<u32> for Multiplier {
    type Error = InvalidMultiplier;

    fn try_from(bp: u32) -> Result<Self, Self::Error> {
        Multiplier::try_from_bp(bp)
    }
}

impl From<Multiplier> for u32 {
    fn from(m: Multiplier) -> u32 {
        m.0
    }
}

impl fmt::Display for Multiplier {
    /// "×1.25", "×1.00", "×0.8765": at least two decimals, trailing zeros beyond that trimmed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / Self::SCALE;
        let frac = format!("{:04}", self.0 % Self::SCALE);
        let trimmed = frac.trim_end_matches('0');
        let shown = if trimmed.len() < 2 {
            &frac[..2]
        } else {
            trimmed
        };
        write!(f, "×{whole}.{shown}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_a_factor() {
        assert_eq!(Multiplier::from_bp(12_500).to_string(), "×1.25");
        assert_eq!(Multiplier::ONE.to_string(), "×1.00");
        assert_eq!(Multiplier::from_bp(8_765).to_string(), "×0.8765");
        assert_eq!(Multiplier::from_bp(12_340).to_string(), "×1.234");
        assert_eq!(Multiplier::from_bp(100_000).to_string(), "×10.00");
    }

    #[test]
    fn checked_constructor_enforces_the_rule_range() {
        assert!(Multiplier::try_from_bp(0).is_err());
        assert!(Multiplier::try_from_bp(1).is_ok());
        assert!(Multiplier::try_from_bp(100_000).is_ok());
        assert!(Multiplier::try_from_bp(100_001).is_err());
        assert_eq!(Multiplier::ONE.as_f64(), 1.0);
    }

    #[test]
    fn serialises_as_integer_basis_points_and_validates_on_the_way_in() {
        assert_eq!(
            serde_json::to_string(&Multiplier::from_bp(12_500)).unwrap(),
            "12500"
        );
        assert_eq!(
            serde_json::from_str::<Multiplier>("11000").unwrap(),
            Multiplier::from_bp(11_000)
        );
        assert!(serde_json::from_str::<Multiplier>("0").is_err());
        assert!(serde_json::from_str::<Multiplier>("1.5").is_err());
    }
}
