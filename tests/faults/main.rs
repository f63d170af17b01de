//! Fault injection during a booking run, checked by the history checker (`e2e::history`).
//!
//! Two origin processes share one private PostgreSQL (through a fault proxy each way to
//! PostgreSQL and Redis), a private Redis and a private tansu broker (`e2e::cluster`). Client
//! tasks run a steady mixed workload against both origins — quote, hold (with an
//! Idempotency-Key, retried with the same key after a failure, and replayed once after a
//! success as a client that lost the answer would), then confirm, cancel or extend — on a few
//! vehicles and overlapping windows, so contention is constant. Meanwhile the harness injects,
//! one after the other: SIGKILL of an origin and its restart; a Redis restart; Redis
//! unreachable (half-open); a broker SIGKILL and restart; `pg_terminate_backend` of every
//! origin connection; a PostgreSQL restart; latency and then resets on the PostgreSQL link;
//! latency and resets on the Redis link; an overload burst past `MAX_IN_FLIGHT` (shed fast,
//! recovered by itself). Then the faults heal, the outbox drains, and the
//! checker runs. The report (operations checked, faults injected, every invariant's count) is
//! printed and written to `target/faults/report.json`.
//!
//! Bounded by default (one pass of the 11 faults, about a minute and a half); `FAULTS_ROUNDS=N`
//! repeats the cycle for a long run. Ports 18420–18439. Run through `scripts/faults.sh`,
//! which builds the origin binary first.
//!
//! One module per part: `cluster` (the private dependencies and the two origins), `workload`
//! (the clients and their recorded history), `faults` (what is injected), and the two tests:
//! `run` (the fault run itself) and `checker` (the checker must be able to fail).

mod checker;
mod cluster;
mod faults;
mod run;
mod workload;

/// Ports of the private dependencies and the origins (the harness's range, 18420–18439).
pub(crate) const PG_PORT: u16 = 18420;
pub(crate) const REDIS_PORT: u16 = 18421;
pub(crate) const BROKER_PORT: u16 = 18422;
pub(crate) const PG_PROXY: u16 = 18423;
pub(crate) const REDIS_PROXY: u16 = 18424;
pub(crate) const ORIGIN_PORTS: [u16; 2] = [18425, 18426];
/// The origins' sweeper interval (the checker allows an expired hold this much time).
pub(crate) const SWEEPER_MS: u64 = 500;
/// Client tasks, each running the workload.
pub(crate) const CLIENTS: usize = 6;
/// Vehicles the clients contend for (a few, so contention is constant).
pub(crate) const VEHICLES: usize = 6;
