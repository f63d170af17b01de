//! The surge grid: supply and demand per H3 cell, turned into a demand multiplier.
//!
//! Each region's bays are bucketed into H3 cells (the `h3o` crate) at `SURGE_H3_RESOLUTION`
//! (default **8**: hexagons of about 0.74 km², edge ≈ 460 m — a few streets, small enough that
//! a busy station does not raise prices across town, large enough to hold several bays). Per
//! cell:
//!
//! * **supply** = active vehicles parked at the cell's bays;
//! * **demand** = live holds (bookings made in the last hour that still hold or have confirmed
//!   a vehicle of the cell) + the AI demand model's prediction for the current hour;
//! * **pressure** = demand / supply.
//!
//! **Curve** ([`curve`]): ×1.0 up to a pressure of 0.5 (half the cars wanted), then rising
//! linearly by 2.0 per unit of pressure, **capped at ×3.0** (reached at pressure 1.5). Then
//! **smoothing**: a cell's published multiplier is 60 % its own and 40 % the mean of its
//! neighbours in the grid (the six cells around it that have vehicles), so crossing a street
//! does not change the price by a factor of three. Smoothing is a weighted mean of capped
//! values, so it never exceeds the cap. A cell without vehicles is not in the grid and is ×1.0.
//! Everything is integer basis points after the curve, and cells are visited in a fixed order,
//! so the same inputs always give the same grid.
//!
//! The grid is recomputed every `SURGE_RECOMPUTE_SECS` (default 60) and on
//! `POST /v1/admin/surge/recompute`, kept in process and in L2 for 15 min; `GET /v1/surge`
//! shows it. A quote prices its own cell with a fresh demand prediction for its own window
//! (see `pricing/fetch.rs`) and falls back to this grid's value when the model is away.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use domain::multiplier::Multiplier;
use domain::region::Region;
use h3o::{CellIndex, LatLng, Resolution};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::inference::{DemandRequest, InferenceClient};
use crate::redis::cache::Caches;
use crate::store;

/// Highest surge multiplier (×3.0).
pub(crate) const SURGE_CAP: Multiplier = Multiplier::from_bp(30_000);
/// How long a grid is trusted (the seed's 15 min for the surge layer of L2).
pub(crate) const GRID_TTL: Duration = Duration::from_secs(15 * 60);
/// Pressure under which there is no surge.
const PRESSURE_FREE: f64 = 0.5;
/// Multiplier added per unit of pressure above [`PRESSURE_FREE`].
const SLOPE: f64 = 2.0;
/// Share of a cell's own value in its published multiplier (the rest is its neighbours' mean).
const OWN_WEIGHT: u64 = 6;
const NEIGHBOUR_WEIGHT: u64 = 4;

/// The surge curve: pressure (demand / supply) → multiplier, ×1.0 to ×3.0 in basis points.
/// A NaN or negative pressure is no surge.
pub(crate) fn curve(pressure: f64) -> Multiplier {
    if pressure == f64::INFINITY {
        return SURGE_CAP;
    }
    if pressure.is_nan() || pressure <= PRESSURE_FREE {
        return Multiplier::ONE;
    }
    let factor = 1.0 + SLOPE * (pressure - PRESSURE_FREE);
    let bp = (factor * f64::from(Multiplier::SCALE)).round();
    let cap = f64::from(SURGE_CAP.bp());
    // In range 10_000..=30_000 after the clamp, so the cast is exact.
    Multiplier::from_bp(bp.clamp(f64::from(Multiplier::SCALE), cap) as u32)
}

/// Pressure of a cell; no supply means any demand is full pressure (and none is none).
pub fn pressure(demand: f64, supply: f64) -> f64 {
    if supply <= 0.0 {
        return if demand > 0.0 { f64::INFINITY } else { 0.0 };
    }
    demand / supply
}

/// What one cell brings to the grid.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CellInput {
    pub cell: CellIndex,
    pub supply: u32,
    pub holds: u32,
    pub predicted: f64,
}

/// One cell of a computed grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct CellSurge {
    /// H3 cell index (hex).
    pub cell: String,
    pub supply: u32,
    pub holds: u32,
    /// Predicted bookings for the current hour (0 when the model was unavailable).
    pub predicted: f64,
    pub pressure: f64,
    /// The curve's value for this cell alone, in basis points.
    pub raw_bp: u32,
    /// The published, smoothed multiplier, in basis points.
    pub multiplier_bp: u32,
}

/// A region's grid at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct SurgeGrid {
    pub region: String,
    pub resolution: u8,
    pub computed_at: DateTime<Utc>,
    /// Whether the demand model answered for this grid.
    pub prediction_available: bool,
    /// Cells with vehicles, by H3 index.
    pub cells: BTreeMap<String, CellSurge>,
}

impl SurgeGrid {
    /// The published multiplier of a cell (×1.0 for a cell without vehicles).
    pub(crate) fn multiplier(&self, cell: CellIndex) -> Multiplier {
        self.cells
            .get(&cell.to_string())
            .map(|c| Multiplier::from_bp(c.multiplier_bp))
            .unwrap_or(Multiplier::ONE)
    }

    /// Live holds counted in a cell.
    pub(crate) fn holds(&self, cell: CellIndex) -> u32 {
        self.cells.get(&cell.to_string()).map_or(0, |c| c.holds)
    }

    /// Whether the grid is younger than [`GRID_TTL`].
    pub(crate) fn is_fresh(&self, now: DateTime<Utc>) -> bool {
        now.signed_duration_since(self.computed_at)
            .to_std()
            .map_or(true, |age| age < GRID_TTL)
    }
}

/// Computes a grid from per-cell inputs (pure; see the module docs for the rules). Inputs for
/// the same cell are summed; cells without supply are left out (×1.0).
pub(crate) fn compute(
    region: Region,
    resolution: u8,
    inputs: &[CellInput],
    prediction_available: bool,
    computed_at: DateTime<Utc>,
) -> SurgeGrid {
    // A fixed order first: float sums depend on the order of their terms, and the same inputs
    // must give the same grid bit for bit.
    let mut sorted: Vec<&CellInput> = inputs.iter().collect();
    sorted.sort_by(|a, b| {
        a.cell
            .cmp(&b.cell)
            .then(a.supply.cmp(&b.supply))
            .then(a.holds.cmp(&b.holds))
            .then(a.predicted.total_cmp(&b.predicted))
    });
    let mut merged: BTreeMap<CellIndex, (u32, u32, f64)> = BTreeMap::new();
    for input in sorted {
        let entry = merged.entry(input.cell).or_insert((0, 0, 0.0));
        entry.0 = entry.0.saturating_add(input.supply);
        entry.1 = entry.1.saturating_add(input.holds);
        if input.predicted.is_finite() && input.predicted > 0.0 {
            entry.2 += input.predicted;
        }
    }
    merged.retain(|_, (supply, _, _)| *supply > 0);
    let raw: BTreeMap<CellIndex, (f64, Multiplier)> = merged
        .iter()
        .map(|(cell, (supply, holds, predicted))| {
            let p = pressure(f64::from(*holds) + predicted, f64::from(*supply));
            (*cell, (p, curve(p)))
        })
        .collect();
    let mut cells = BTreeMap::new();
    for (cell, (supply, holds, predicted)) in &merged {
        let Some((p, own)) = raw.get(cell) else {
            continue;
        };
        let mut neighbours: Vec<CellIndex> = cell.grid_disk::<Vec<_>>(1);
        neighbours.sort_unstable();
        let around: Vec<u64> = neighbours
            .iter()
            .filter(|n| *n != cell)
            .filter_map(|n| raw.get(n).map(|(_, m)| u64::from(m.bp())))
            .collect();
        let published = if around.is_empty() {
            u64::from(own.bp())
        } else {
            let n = around.len() as u64;
            let sum: u64 = around.iter().sum();
            // (6·own·n + 4·Σ) / (10·n), rounded half up: integer, order-independent.
            let num = OWN_WEIGHT * u64::from(own.bp()) * n + NEIGHBOUR_WEIGHT * sum;
            let den = (OWN_WEIGHT + NEIGHBOUR_WEIGHT) * n;
            (num + den / 2) / den
        };
        let published = published.clamp(u64::from(Multiplier::SCALE), u64::from(SURGE_CAP.bp()));
        cells.insert(
            cell.to_string(),
            CellSurge {
                cell: cell.to_string(),
                supply: *supply,
                holds: *holds,
                predicted: *predicted,
                pressure: if p.is_finite() { *p } else { f64::MAX },
                raw_bp: own.bp(),
                multiplier_bp: u32::try_from(published).unwrap_or(SURGE_CAP.bp()),
            },
        );
    }
    SurgeGrid {
        region: region.code().to_owned(),
        resolution,
        computed_at,
        prediction_available,
        cells,
    }
}

/// Parses a resolution already validated by the configuration.
pub fn resolution(res: u8) -> Resolution {
    Resolution::try_from(res).unwrap_or(Resolution::Eight)
}

/// The cell of a point, `None` for an invalid coordinate.
pub fn cell_of(lat: f64, lon: f64, res: u8) -> Option<CellIndex> {
    LatLng::new(lat, lon)
        .ok()
        .map(|p| p.to_cell(resolution(res)))
}

/// The running grids of the served regions.
#[derive(Debug, Clone)]
pub(crate) struct Surge {
    db: PgPool,
    caches: Caches,
    inference: InferenceClient,
    resolution: u8,
    budget: Duration,
    grids: Arc<RwLock<HashMap<Region, Arc<SurgeGrid>>>>,
}

fn grid_key(region: Region) -> String {
    format!("l2:surge:{}", region.code())
}

impl Surge {
    /// A grid holder; nothing is computed until [`Surge::recompute`] (called by the `surge` job,
    /// [`crate::jobs::surge`], at start and every `SURGE_RECOMPUTE_SECS`).
    pub(crate) fn new(
        db: PgPool,
        caches: Caches,
        inference: InferenceClient,
        resolution: u8,
        budget: Duration,
    ) -> Self {
        Surge {
            db,
            caches,
            inference,
            resolution,
            budget,
            grids: Arc::default(),
        }
    }

    /// The configured H3 resolution.
    pub(crate) fn resolution(&self) -> u8 {
        self.resolution
    }

    /// The freshest grid of a region younger than 15 min: this process's, else L2's (computed
    /// by another instance), else none.
    pub(crate) async fn grid(&self, region: Region) -> Option<Arc<SurgeGrid>> {
        let now = Utc::now();
        let local = self.grids.read().ok().and_then(|g| g.get(&region).cloned());
        if let Some(grid) = local.filter(|g| g.is_fresh(now)) {
            return Some(grid);
        }
        let stored: SurgeGrid = self.caches.l2_get_json("surge", &grid_key(region)).await?;
        if !stored.is_fresh(now) || stored.resolution != self.resolution {
            return None;
        }
        let stored = Arc::new(stored);
        if let Ok(mut grids) = self.grids.write() {
            grids.insert(region, Arc::clone(&stored));
        }
        Some(stored)
    }

    /// The grid kept in this process, whatever its age (for the quote path, which must not
    /// wait on Redis for live holds).
    pub(crate) fn local(&self, region: Region) -> Option<Arc<SurgeGrid>> {
        self.grids.read().ok().and_then(|g| g.get(&region).cloned())
    }

    /// Recomputes a region's grid from PostgreSQL and the demand model, stores it in process
    /// and in L2.
    pub(crate) async fn recompute(&self, region: Region) -> anyhow::Result<Arc<SurgeGrid>> {
        use anyhow::Context;
        let now = Utc::now();
        let loads = store::vehicles::bay_loads(&self.db, region)
            .await
            .context("load surge inputs")?;
        let mut inputs: Vec<CellInput> = loads
            .into_iter()
            .filter_map(|bay| {
                Some(CellInput {
                    cell: cell_of(bay.lat, bay.lon, self.resolution)?,
                    supply: u32::try_from(bay.supply).unwrap_or(0),
                    holds: u32::try_from(bay.holds).unwrap_or(0),
                    predicted: 0.0,
                })
            })
            .collect();
        let mut zones: Vec<String> = inputs.iter().map(|i| i.cell.to_string()).collect();
        zones.sort();
        zones.dedup();
        let mut prediction_available = false;
        if self.inference.is_configured() && !zones.is_empty() {
            let bucket = now
                .duration_trunc(chrono::Duration::hours(1))
                .unwrap_or(now);
            let request = DemandRequest {
                region: region.code().to_owned(),
                zones,
                buckets: vec![bucket],
            };
            // A background job: more patient than a quote, still bounded.
            let answer =
                tokio::time::timeout(self.budget * 4, self.inference.demand(&request)).await;
            if let Ok(Ok(answer)) = answer {
                prediction_available = true;
                let mut by_zone: HashMap<String, f64> = HashMap::new();
                for p in answer.predictions {
                    *by_zone.entry(p.zone).or_default() += p.demand;
                }
                // The zone's prediction goes to its first input only (inputs of one cell are
                // summed by `compute`).
                let mut seen = std::collections::HashSet::new();
                for input in &mut inputs {
                    let zone = input.cell.to_string();
                    if seen.insert(zone.clone()) {
                        input.predicted = by_zone.get(&zone).copied().unwrap_or(0.0);
                    }
                }
            }
        }
        let grid = Arc::new(compute(
            region,
            self.resolution,
            &inputs,
            prediction_available,
            now,
        ));
        if let Ok(mut grids) = self.grids.write() {
            grids.insert(region, Arc::clone(&grid));
        }
        self.caches
            .l2_put_json(&grid_key(region), grid.as_ref(), GRID_TTL)
            .await;
        metrics::counter!("surge_recomputes_total", "region" => region.code()).increment(1);
        Ok(grid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lat: f64, lon: f64) -> CellIndex {
        cell_of(lat, lon, 8).unwrap_or_else(|| panic!("valid point"))
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    #[test]
    fn the_curve_is_flat_then_linear_then_capped() {
        assert_eq!(curve(0.0), Multiplier::ONE);
        assert_eq!(curve(0.5), Multiplier::ONE);
        assert_eq!(curve(0.75), Multiplier::from_bp(15_000));
        assert_eq!(curve(1.0), Multiplier::from_bp(20_000));
        assert_eq!(curve(1.5), SURGE_CAP);
        assert_eq!(curve(40.0), SURGE_CAP);
        assert_eq!(curve(f64::INFINITY), SURGE_CAP);
        assert_eq!(curve(f64::NAN), Multiplier::ONE);
        assert_eq!(curve(-3.0), Multiplier::ONE);
        let mut last = Multiplier::ONE;
        for step in 0..400 {
            let m = curve(f64::from(step) / 100.0);
            assert!(m >= last && m <= SURGE_CAP);
            last = m;
        }
    }

    #[test]
    fn more_holds_in_a_cell_raise_it_up_to_the_cap_and_never_above() {
        let cell = at(50.1071, 8.6638);
        let mut last = 0;
        for holds in 0..20 {
            let grid = compute(
                Region::Euw,
                8,
                &[CellInput {
                    cell,
                    supply: 4,
                    holds,
                    predicted: 0.0,
                }],
                false,
                now(),
            );
            let m = grid.multiplier(cell).bp();
            assert!(m >= last, "{holds} holds: {m} < {last}");
            assert!(m <= SURGE_CAP.bp());
            last = m;
        }
        assert_eq!(last, SURGE_CAP.bp());
    }

    #[test]
    fn an_empty_cell_is_neutral_and_cells_without_demand_are_neutral() {
        let busy = at(50.1071, 8.6638);
        let far = at(50.2, 8.9);
        let grid = compute(
            Region::Euw,
            8,
            &[
                CellInput {
                    cell: far,
                    supply: 3,
                    holds: 0,
                    predicted: 0.0,
                },
                CellInput {
                    cell: busy,
                    supply: 0,
                    holds: 5,
                    predicted: 2.0,
                },
            ],
            true,
            now(),
        );
        assert_eq!(grid.multiplier(far), Multiplier::ONE);
        assert_eq!(
            grid.multiplier(busy),
            Multiplier::ONE,
            "no vehicles: not in grid"
        );
        assert_eq!(grid.cells.len(), 1);
    }

    #[test]
    fn neighbours_smooth_a_spike_and_the_same_inputs_give_the_same_grid() {
        let centre = at(50.1071, 8.6638);
        let ring: Vec<CellIndex> = centre
            .grid_disk::<Vec<_>>(1)
            .into_iter()
            .filter(|c| *c != centre)
            .collect();
        let mut inputs = vec![CellInput {
            cell: centre,
            supply: 2,
            holds: 10,
            predicted: 0.0,
        }];
        inputs.extend(ring.iter().map(|c| CellInput {
            cell: *c,
            supply: 2,
            holds: 0,
            predicted: 0.0,
        }));
        let grid = compute(Region::Euw, 8, &inputs, false, now());
        let centre_m = grid.multiplier(centre).bp();
        // 60 % of ×3.0 + 40 % of the neighbours' ×1.0 = ×2.2.
        assert_eq!(centre_m, 22_000);
        for c in &ring {
            let m = grid.multiplier(*c).bp();
            assert!(m > 10_000 && m < centre_m, "{m}");
        }
        let mut reversed = inputs.clone();
        reversed.reverse();
        let again = compute(Region::Euw, 8, &reversed, false, now());
        assert_eq!(grid, again);
    }

    #[test]
    fn predicted_demand_counts_like_holds() {
        let cell = at(59.33, 18.06);
        let grid = compute(
            Region::Eun,
            8,
            &[CellInput {
                cell,
                supply: 4,
                holds: 1,
                predicted: 3.0,
            }],
            true,
            now(),
        );
        // pressure 4 / 4 = 1 → ×2.0
        assert_eq!(grid.multiplier(cell), Multiplier::from_bp(20_000));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Up to 19 cells (a centre and two rings) with random supply, holds and prediction.
        fn inputs() -> impl Strategy<Value = Vec<CellInput>> {
            let cells: Vec<CellIndex> = at(50.1071, 8.6638).grid_disk::<Vec<_>>(2);
            proptest::collection::vec((0..cells.len(), 0u32..6, 0u32..12, 0.0f64..8.0), 1..30)
                .prop_map(move |raw| {
                    raw.into_iter()
                        .map(|(i, supply, holds, predicted)| CellInput {
                            cell: cells[i],
                            supply,
                            holds,
                            predicted,
                        })
                        .collect()
                })
        }

        proptest! {
            #[test]
            fn every_cell_is_between_neutral_and_the_cap(inputs in inputs()) {
                let grid = compute(Region::Euw, 8, &inputs, true, now());
                for c in grid.cells.values() {
                    prop_assert!((10_000..=30_000).contains(&c.multiplier_bp), "{c:?}");
                    prop_assert!((10_000..=30_000).contains(&c.raw_bp), "{c:?}");
                    prop_assert!(c.supply > 0);
                }
            }

            #[test]
            fn the_grid_does_not_depend_on_input_order(inputs in inputs(), seed in any::<u64>()) {
                let mut shuffled = inputs.clone();
                let n = shuffled.len();
                for i in 0..n {
                    let j = (seed as usize).wrapping_mul(31).wrapping_add(i * 17) % n;
                    shuffled.swap(i, j);
                }
                prop_assert_eq!(
                    compute(Region::Euw, 8, &inputs, true, now()),
                    compute(Region::Euw, 8, &shuffled, true, now())
                );
            }

            #[test]
            fn one_more_hold_never_lowers_any_cell(inputs in inputs(), pick in any::<prop::sample::Index>()) {
                let before = compute(Region::Euw, 8, &inputs, true, now());
                let mut more = inputs.clone();
                let i = pick.index(more.len());
                more[i].holds += 1;
                let after = compute(Region::Euw, 8, &more, true, now());
                for (cell, b) in &before.cells {
                    let a = after.cells.get(cell).map_or(0, |c| c.multiplier_bp);
                    prop_assert!(a >= b.multiplier_bp, "{cell}: {} -> {a}", b.multiplier_bp);
                }
            }
        }
    }
}
