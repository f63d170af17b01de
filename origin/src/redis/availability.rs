//! The availability manager: a Redis GEO index of bookable vehicles per region, rebuilt from
//! PostgreSQL.
//!
//! # What the index answers — and what it does not
//!
//! Every availability key carries the hash tag `{avail}`, so in a Redis Cluster they share one
//! slot: the search script reads every served region's keys at once and a rebuild `RENAME`s
//! over them, and both need their keys on one node.
//!
//! `{prefix}{avail}:geo:{REGION}` (a GEO sorted set) holds every *active* vehicle of the region at its
//! bay's coordinates, member = the vehicle's uuid (32 hex digits). Search asks it for the
//! nearest candidates (`GEOSEARCH … FROMLONLAT … BYRADIUS … ASC COUNT`), a sorted-set range
//! walk instead of a bounding-box scan over bays; PostgreSQL then does the authoritative part
//! for exactly those ids: the vehicle is still active, the filters, and no occupying booking
//! overlaps the window.
//!
//! # Occupancy: which candidates are taken for the window
//!
//! With the availability consumer running ([`crate::jobs::consumer`], on whenever
//! `KAFKA_BROKERS` is set), the index also mirrors *when* each vehicle is taken:
//! `{prefix}{avail}:occ:{REGION}` is a hash, field = vehicle uuid, value = its future taken ranges
//! (`start,end,expiry;…` in epoch milliseconds: bookings' occupied ranges, turnaround buffers
//! included, and active maintenance blocks; a hold's expiry, after which its range no longer
//! counts, else 0). Search's candidate step ([`Availability::candidates`], one Lua script)
//! leaves out vehicles taken for part of the searched window, so a fully booked street does not
//! use up the candidate budget, and PostgreSQL then checks only vehicles likely to be free.
//!
//! "Free from 10:00 to 12:00" is a property of a time window, and PostgreSQL's exclusion
//! constraint stays its only truth: the search re-checks every candidate there. The mirror can
//! only be late. A booking the consumer has not applied yet leaves a taken vehicle among the
//! candidates (PostgreSQL drops it); a cancellation not applied yet hides a free vehicle for
//! that long — the consumer's lag, well under a second, or at worst one rebuild interval.
//! Expired holds need no event: the script compares their expiry with the clock. The consumer
//! recomputes a vehicle's value from PostgreSQL on each of its events
//! ([`Availability::refresh_vehicle`]), so events arriving out of order across topics cannot
//! leave an older state behind: the last one applied read the newest.
//!
//! //! Membership *is* the status: a vehicle is in the set iff it is active (maintenance and
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
//!   `{prefix}{avail}:geo:{REGION}:built`: readers see the old index or the new one, never a half.
//! - **Rebuilds reconcile the occupancy too**, counting the vehicles whose value they had to
//!   change (`availability_index_drift_total{region}`: entries the consumer missed or got
//!   wrong; zero while it keeps up). The swap is a script that checks the hash's version
//!   counter (every consumer update bumps it): a rebuild whose snapshot an update overtook does
//!   not overwrite that update with older data; it tries again.
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

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use domain::window::TimeWindow;

use crate::redis::link::{RedisLink, Unavailable};
use crate::store;
use crate::store::vehicles::Taken;

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
    /// Vehicles whose occupancy the rebuild found wrong and fixed (0 without occupancy, or
    /// when a consumer update overtook every attempt and the consumer's state was kept).
    pub drift: usize,
}

/// Search's candidate step: per region (keys `built`, `geo`, `occ`), the nearest members
/// within the radius, less those whose occupancy overlaps the window `[ARGV[5], ARGV[6])` at
/// `ARGV[7]` (all epoch ms), at most `ARGV[4]` per region out of `ARGV[8]` looked at. A region
/// never built answers `false` for the whole call (the caller searches PostgreSQL).
const CANDIDATES: &str = r"
local out = {}
local ws, we, now = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local want = tonumber(ARGV[4])
for i = 1, #KEYS, 3 do
  if redis.call('EXISTS', KEYS[i]) == 0 then return false end
  local ids = redis.call('GEOSEARCH', KEYS[i + 1], 'FROMLONLAT', ARGV[1], ARGV[2],
    'BYRADIUS', ARGV[3], 'm', 'ASC', 'COUNT', ARGV[8])
  if #ids > 0 then
    -- HMGET in chunks: Lua's unpack stops at a few thousand values.
    local occ = {}
    for from = 1, #ids, 1000 do
      local part = redis.call('HMGET', KEYS[i + 2], unpack(ids, from, math.min(from + 999, #ids)))
      for k = 1, #part do occ[from + k - 1] = part[k] end
    end
    local n = 0
    for j, id in ipairs(ids) do
      if n >= want then break end
      local free = true
      if occ[j] then
        for s, e, x in string.gmatch(occ[j], '(%d+),(%d+),(%d+)') do
          local ex = tonumber(x)
          if tonumber(s) < we and tonumber(e) > ws and (ex == 0 or ex > now) then
            free = false
            break
          end
        end
      end
      if free then
        out[#out + 1] = id
        n = n + 1
      end
    end
  end
end
return out
";

/// A rebuild's occupancy swap: only if no consumer update happened since the rebuild read the
/// version (`ARGV[1]`); else the new hash is dropped and 0 returned.
const SWAP_OCCUPANCY: &str = r"
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PERSIST', KEYS[2])
else
  redis.call('DEL', KEYS[2])
end
return 1
";

static CANDIDATES_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(CANDIDATES));
static SWAP_OCCUPANCY_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(SWAP_OCCUPANCY));

/// How many times a rebuild retries its occupancy swap after a consumer update overtook it.
const SWAP_ATTEMPTS: usize = 3;

/// The occupancy values of `taken` (ordered by vehicle), by vehicle: `start,end,expiry;…`.
fn encode(taken: &[Taken]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for t in taken {
        let value = out.entry(t.vehicle.simple().to_string()).or_default();
        value.push_str(&format!(
            "{},{},{};",
            t.start.timestamp_millis(),
            t.end.timestamp_millis(),
            t.expires.map_or(0, |x| x.timestamp_millis())
        ));
    }
    out
}

/// A cloneable handle on the index.
#[derive(Debug, Clone)]
pub struct Availability {
    redis: RedisLink,
    db: PgPool,
    regions: Arc<[Region]>,
    /// Whether the index mirrors occupancy (the availability consumer keeps it current).
    occupancy: bool,
}

impl Availability {
    pub fn new(redis: RedisLink, db: PgPool, regions: &[Region]) -> Self {
        Availability {
            redis,
            db,
            regions: regions.into(),
            occupancy: false,
        }
    }

    /// Makes rebuilds mirror occupancy too (see the module docs): only where the availability
    /// consumer keeps it current between rebuilds.
    pub fn with_occupancy(mut self, on: bool) -> Self {
        self.occupancy = on;
        self
    }

    /// Whether rebuilds mirror occupancy.
    pub fn tracks_occupancy(&self) -> bool {
        self.occupancy
    }

    /// The occupancy hash of a region.
    pub fn occupancy_key(&self, region: Region) -> String {
        self.redis.key(&format!("{{avail}}:occ:{}", region.code()))
    }

    fn occupancy_version_key(&self, region: Region) -> String {
        self.redis
            .key(&format!("{{avail}}:occ:{}:version", region.code()))
    }

    /// Recomputes one vehicle's occupancy from PostgreSQL (on `conn`, e.g. the consumer's
    /// transaction) and writes it, bumping the region's version. With Redis down it does
    /// nothing: the rebuild that follows Redis's recovery reconciles.
    pub async fn refresh_vehicle(
        &self,
        conn: &mut sqlx::PgConnection,
        vehicle: &VehicleId,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let taken = store::vehicles::taken(&mut *conn, None, Some(vehicle.uuid), now)
            .await
            .context("read the vehicle's occupancy")?;
        let member = vehicle.uuid.simple().to_string();
        let value = encode(&taken).remove(&member);
        let (key, version) = (
            self.occupancy_key(vehicle.region),
            self.occupancy_version_key(vehicle.region),
        );
        let mut pipe = redis::pipe();
        pipe.atomic();
        match &value {
            Some(v) => pipe.hset(&key, &member, v).ignore(),
            None => pipe.hdel(&key, &member).ignore(),
        };
        pipe.incr(&version, 1).ignore();
        match self
            .redis
            .run("availability: occupancy", |mut conn| async move {
                pipe.query_async::<()>(&mut conn).await
            })
            .await
        {
            Ok(()) => Ok(()),
            Err(Unavailable::Down) => {
                tracing::debug!(%vehicle, "Redis down: occupancy left to the next rebuild");
                Ok(())
            }
            Err(e) => Err(anyhow::Error::new(e).context("write the vehicle's occupancy")),
        }
    }

    /// Rebuilds a region's occupancy hash from PostgreSQL, unless consumer updates keep
    /// overtaking it; returns how many vehicles' values it changed.
    async fn rebuild_occupancy(&self, region: Region) -> anyhow::Result<usize> {
        let (live, version) = (
            self.occupancy_key(region),
            self.occupancy_version_key(region),
        );
        for _ in 0..SWAP_ATTEMPTS {
            let (seen, old): (Option<String>, BTreeMap<String, String>) = {
                let mut read = redis::pipe();
                read.get(&version).hgetall(&live);
                self.redis
                    .run("availability: read occupancy", |mut conn| async move {
                        read.query_async(&mut conn).await
                    })
                    .await
                    .context("read the occupancy")?
            };
            let taken = store::vehicles::taken(&self.db, Some(region), None, Utc::now())
                .await
                .with_context(|| format!("read the occupancy of {region}"))?;
            let new = encode(&taken);
            let tmp = self.redis.key(&format!(
                "{{avail}}:occ:{}:tmp:{}",
                region.code(),
                Uuid::new_v4().simple()
            ));
            let entries: Vec<(&String, &String)> = new.iter().collect();
            for (n, chunk) in entries.chunks(CHUNK).enumerate() {
                let mut pipe = redis::pipe();
                if n == 0 {
                    pipe.del(&tmp).ignore();
                }
                pipe.hset_multiple(&tmp, chunk)
                    .ignore()
                    .expire(&tmp, TMP_TTL_SECS as i64)
                    .ignore();
                self.redis
                    .run("availability: build occupancy", |mut conn| async move {
                        pipe.query_async::<()>(&mut conn).await
                    })
                    .await
                    .context("build the temporary occupancy")?;
            }
            let mut swap = SWAP_OCCUPANCY_SCRIPT.prepare_invoke();
            swap.key(&tmp)
                .key(&live)
                .key(&version)
                .arg(seen.unwrap_or_else(|| "0".into()));
            let swapped: i64 = self
                .redis
                .run("availability: swap occupancy", |mut conn| async move {
                    swap.invoke_async(&mut conn).await
                })
                .await
                .context("swap the occupancy in")?;
            if swapped == 1 {
                let drift = old
                    .keys()
                    .chain(new.keys())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|k| old.get(*k) != new.get(*k))
                    .count();
                metrics::counter!("availability_index_drift_total", "region" => region.code())
                    .increment(drift as u64);
                return Ok(drift);
            }
        }
        tracing::debug!(%region, "occupancy rebuild overtaken by consumer updates; kept theirs");
        Ok(0)
    }

    /// The live GEO key of a region.
    pub fn geo_key(&self, region: Region) -> String {
        self.redis.key(&format!("{{avail}}:geo:{}", region.code()))
    }

    fn built_key(&self, region: Region) -> String {
        self.redis
            .key(&format!("{{avail}}:geo:{}:built", region.code()))
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
                "{{avail}}:geo:{}:tmp:{}",
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
        let drift = if self.occupancy {
            self.rebuild_occupancy(region).await?
        } else {
            0
        };
        Ok(RebuildReport {
            region,
            members: new.len(),
            added: new.difference(&old).count(),
            removed: old.difference(&new).count(),
            drift,
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

    /// The ids of vehicles within `radius_m` of `center` in the served regions that are not
    /// taken for part of `window` at `now` as far as the index knows, nearest first, at most
    /// `max` per region; `None` when the index cannot answer (Redis down, or a region never
    /// built) and the caller must use PostgreSQL.
    pub async fn candidates(
        &self,
        center: GeoPoint,
        radius_m: u32,
        max: i64,
        window: &TimeWindow,
        now: DateTime<Utc>,
    ) -> Option<Vec<Uuid>> {
        // Padding: Redis's Earth radius is 0.03 % larger than ours and positions are quantised.
        let padded = f64::from(radius_m) * 1.01 + 5.0;
        let mut invocation = CANDIDATES_SCRIPT.prepare_invoke();
        for region in self.regions.iter().copied() {
            invocation
                .key(self.built_key(region))
                .key(self.geo_key(region))
                .key(self.occupancy_key(region));
        }
        invocation
            .arg(center.lon())
            .arg(center.lat())
            .arg(padded)
            .arg(max)
            .arg(window.start().timestamp_millis())
            .arg(window.end().timestamp_millis())
            .arg(now.timestamp_millis())
            // Looked at: taken vehicles are skipped, so more than `max`, bounded.
            .arg(max.saturating_mul(2));
        let found: Option<Vec<String>> = match self
            .redis
            .run("availability: search", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await
        {
            Ok(found) => found,
            Err(Unavailable::Down) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "GEO search failed; searching PostgreSQL");
                return None;
            }
        };
        Some(
            found?
                .iter()
                .filter_map(|id| Uuid::try_parse(id).ok())
                .collect(),
        )
    }
}
