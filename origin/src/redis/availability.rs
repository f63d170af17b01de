//! The availability manager: a Redis GEO index of bookable vehicles per region, rebuilt from
//! PostgreSQL.
//!
//! # What the index answers — and what it does not
//!
//! `{prefix}geo:{REGION}` (a GEO sorted set) holds every *active* vehicle of the region at its
//! bay's coordinates, member = the vehicle's uuid (32 hex digits). Search asks it for the
//! nearest candidates (`GEOSEARCH … FROMLONLAT … BYRADIUS … ASC COUNT`), a sorted-set range
//! walk instead of a bounding-box scan over bays; PostgreSQL then does the authoritative part
//! for exactly those ids: the vehicle is still active, the filters, and no occupying booking
//! overlaps the window.
//!
//! Bookings therefore do **not** touch the index. "Free from 10:00 to 12:00" is a property of
//! a time window, not of a vehicle, and PostgreSQL's exclusion constraint is its only truth;
//! a GEO set could at best mirror "booked right now", which no search asks. Only changes of
//! the *fleet* (status, bay) change the index.
//!
//! Membership *is* the status: a vehicle is in the set iff it is active (maintenance and
//! retired vehicles are absent). We keep no separate status hash, because a second copy of the
//! status could disagree with the first; the details come from PostgreSQL anyway.
//!
//! # Keeping it right
//!
//! - **Rebuild** ([`Availability::rebuild`]) at start (before the origin serves, so `/readyz`
//!   never reports a half-built index), then from the `availability` job
//!   ([`crate::jobs::availability`]) every `AVAILABILITY_REBUILD_SECS` and whenever Redis
//!   comes back from an outage (it may have come back empty). It writes a fresh temporary key
//!   and then, in one `MULTI`, `RENAME`s it over the live key and stamps
//!   `{prefix}geo:{REGION}:built`: readers see the old index or the new one, never a half.
//! - **Fleet changes** between rebuilds: no API changes a vehicle's status or bay yet, so the
//!   index has no incremental update; a fleet change shows after the next rebuild. When one
//!   exists (a vehicle event consumer), it will `GEOADD`/`ZREM` the vehicle on the live key. An
//!   update that lands between a rebuild's SQL read and its RENAME would be overwritten by the
//!   older snapshot until the next rebuild; that staleness is safe, because PostgreSQL
//!   re-checks status for every candidate (an extra candidate is filtered out) and only a
//!   just-activated vehicle can be missed, for at most one rebuild interval.
//!
//! # Degrade, don't fail
//!
//! When Redis is down, or a region's index has never been built (`:built` missing), search
//! uses the PostgreSQL bounding box instead ([`Availability::candidates`] returns `None`). Both
//! paths rank by the same haversine over PostgreSQL's bay coordinates, and the GEO radius is
//! padded slightly (Redis uses another Earth radius and quantises coordinates to ~0.6 m), so a
//! search answers the same with or without Redis.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use domain::ids::VehicleId;
use domain::region::Region;
use domain::search::GeoPoint;
use sqlx::PgPool;
use uuid::Uuid;

use crate::redis::link::{RedisLink, Unavailable};
use crate::store;

/// Members per GEOADD command while building (bounds each command's size and time).
const CHUNK: usize = 500;
/// A temporary key that a crashed rebuild leaves behind disappears after this.
const TMP_TTL_SECS: u64 = 300;

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub region: Region,
    /// Vehicles in the new index.
    pub members: usize,
    /// Vehicles that were not in the old index.
    pub added: usize,
    /// Vehicles of the old index that are gone.
    pub removed: usize,
}

/// A cloneable handle on the index.
#[derive(Debug, Clone)]
pub struct Availability {
    redis: RedisLink,
    db: PgPool,
    regions: Arc<[Region]>,
}

impl Availability {
    pub fn new(redis: RedisLink, db: PgPool, regions: &[Region]) -> Self {
        Availability {
            redis,
            db,
            regions: regions.into(),
        }
    }

    /// The live GEO key of a region.
    pub fn geo_key(&self, region: Region) -> String {
        self.redis.key(&format!("geo:{}", region.code()))
    }

    fn built_key(&self, region: Region) -> String {
        self.redis.key(&format!("geo:{}:built", region.code()))
    }

    /// Where search takes its candidates from right now: `redis-geo` or `postgres-bbox`.
    pub fn mode(&self) -> &'static str {
        if self.redis.is_up() {
            "redis-geo"
        } else {
            "postgres-bbox"
        }
    }

    /// Rebuilds every region this origin serves; logs and returns the first failure.
    pub(crate) async fn rebuild_all(&self) -> anyhow::Result<Vec<RebuildReport>> {
        let mut reports = Vec::new();
        for region in self.regions.iter().copied() {
            let report = self.rebuild(region).await?;
            tracing::debug!(?report, "availability index rebuilt");
            reports.push(report);
        }
        Ok(reports)
    }

    /// Rebuilds a region's index from PostgreSQL: build into a temporary key, then swap it in
    /// atomically.
    pub async fn rebuild(&self, region: Region) -> anyhow::Result<RebuildReport> {
        let rows = store::vehicles::active_positions(&self.db, region)
            .await
            .with_context(|| format!("read active vehicles of {region}"))?;

        let live = self.geo_key(region);
        let built = self.built_key(region);
        let old: Vec<String> = self
            .redis
            .run("availability: read index", |mut conn| {
                let cmd = redis::cmd("ZRANGE").arg(&live).arg(0).arg(-1).clone();
                async move { cmd.query_async(&mut conn).await }
            })
            .await
            .context("read the current index")?;
        let old: BTreeSet<String> = old.into_iter().collect();
        let new: BTreeSet<String> = rows
            .iter()
            .map(|r| r.vehicle.simple().to_string())
            .collect();
        let stamp = chrono::Utc::now().to_rfc3339();

        if rows.is_empty() {
            // Nothing to RENAME: an empty region is an absent key, stamped as built.
            let mut swap = redis::pipe();
            swap.atomic()
                .del(&live)
                .ignore()
                .set(&built, &stamp)
                .ignore();
            self.redis
                .run("availability: clear index", |mut conn| async move {
                    swap.query_async::<()>(&mut conn).await
                })
                .await
                .context("clear the index")?;
        } else {
            let tmp = self.redis.key(&format!(
                "geo:{}:tmp:{}",
                region.code(),
                Uuid::new_v4().simple()
            ));
            for (n, chunk) in rows.chunks(CHUNK).enumerate() {
                let mut add = redis::cmd("GEOADD");
                add.arg(&tmp);
                for position in chunk {
                    add.arg(position.lon)
                        .arg(position.lat)
                        .arg(position.vehicle.simple().to_string());
                }
                let mut pipe = redis::pipe();
                if n == 0 {
                    pipe.del(&tmp).ignore();
                }
                pipe.add_command(add)
                    .ignore()
                    .expire(&tmp, TMP_TTL_SECS as i64)
                    .ignore();
                self.redis
                    .run("availability: build index", |mut conn| async move {
                        pipe.query_async::<()>(&mut conn).await
                    })
                    .await
                    .context("build the temporary index")?;
            }
            let mut swap = redis::pipe();
            swap.atomic()
                .rename(&tmp, &live)
                .ignore()
                .persist(&live)
                .ignore()
                .set(&built, &stamp)
                .ignore();
            self.redis
                .run("availability: swap index", |mut conn| async move {
                    swap.query_async::<()>(&mut conn).await
                })
                .await
                .context("swap the new index in")?;
        }
        Ok(RebuildReport {
            region,
            members: new.len(),
            added: new.difference(&old).count(),
            removed: old.difference(&new).count(),
        })
    }

    /// Every member of a region's index with its (lon, lat) as Redis stores them (quantised
    /// to ~0.6 m), ordered by vehicle id.
    pub async fn index_members(
        &self,
        region: Region,
    ) -> anyhow::Result<Vec<(VehicleId, f64, f64)>> {
        let key = self.geo_key(region);
        let ids: Vec<String> = self
            .redis
            .run("availability: list index", |mut conn| {
                let cmd = redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).clone();
                async move { cmd.query_async(&mut conn).await }
            })
            .await
            .context("list the index")?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let positions: Vec<Option<(f64, f64)>> = self
            .redis
            .run("availability: positions", |mut conn| {
                let cmd = redis::cmd("GEOPOS").arg(&key).arg(&ids).clone();
                async move { cmd.query_async(&mut conn).await }
            })
            .await
            .context("read positions")?;
        let mut members = ids
            .iter()
            .zip(positions)
            .filter_map(|(id, pos)| {
                let (lon, lat) = pos?;
                let uuid = Uuid::try_parse(id).ok()?;
                Some((VehicleId::new(region, uuid), lon, lat))
            })
            .collect::<Vec<_>>();
        members.sort_by_key(|m| m.0.uuid);
        Ok(members)
    }

    /// The ids of vehicles within `radius_m` of `center` in the served regions, nearest first,
    /// at most `max` per region; `None` when the index cannot answer (Redis down, or a region
    /// never built) and the caller must use PostgreSQL.
    pub async fn candidates(&self, center: GeoPoint, radius_m: u32, max: i64) -> Option<Vec<Uuid>> {
        // Padding: Redis's Earth radius is 0.03 % larger than ours and positions are quantised.
        let padded = f64::from(radius_m) * 1.01 + 5.0;
        let mut pipe = redis::pipe();
        for region in self.regions.iter().copied() {
            pipe.exists(self.built_key(region));
            pipe.cmd("GEOSEARCH")
                .arg(self.geo_key(region))
                .arg("FROMLONLAT")
                .arg(center.lon())
                .arg(center.lat())
                .arg("BYRADIUS")
                .arg(padded)
                .arg("m")
                .arg("ASC")
                .arg("COUNT")
                .arg(max);
        }
        let answers: Vec<redis::Value> = match self
            .redis
            .run("availability: search", |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await
        {
            Ok(answers) => answers,
            Err(Unavailable::Down) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "GEO search failed; searching PostgreSQL");
                return None;
            }
        };
        let mut ids = Vec::new();
        for pair in answers.chunks(2) {
            let [built, found] = pair else {
                return None;
            };
            if !redis::from_redis_value_ref::<bool>(built).unwrap_or(false) {
                return None;
            }
            let found: Vec<String> = redis::from_redis_value_ref(found).ok()?;
            ids.extend(found.iter().filter_map(|id| Uuid::try_parse(id).ok()));
        }
        Some(ids)
    }
}
