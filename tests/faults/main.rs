//! Fault injection during a booking run, checked by the history checker (`e2e::history`).
//!
//! Two origin processes share one private PostgreSQL (through a fault proxy each way to
//! PostgreSQL and Redis), a private Redis and a private tansu broker on a small tmpfs of its own
//! (`e2e::cluster`). Client tasks run a steady mixed workload against both origins — quote,
//! hold (with an Idempotency-Key, retried with the same key after a failure, and replayed once
//! after a success as a client that lost the answer would), then confirm, cancel or extend —
//! on a few vehicles and overlapping windows, so contention is constant. Meanwhile a nemesis
//! (`nemesis`), driven by a seed (`FAULTS_SEED`, printed; random when unset), picks faults,
//! targets and timings and runs them, overlapping where their targets differ: SIGKILL, or
//! SIGSTOP longer than the lock TTL, of either origin; a clock skew of ±30 s or ±5 min on one
//! origin (libfaketime); a PostgreSQL crash (`kill -9`, `fsync=on`, crash recovery);
//! `pg_terminate_backend`; on the PostgreSQL and Redis links: RSTs, dead peers left open for
//! good (the origin must notice by itself), two-way partitions, latency; a Redis SIGKILL; a
//! broker SIGKILL; the broker's disk full; an overload burst. Every fault checks that it had
//! an effect (`faults`). Then the faults heal, the outbox drains, and the checker runs. The
//! report (per fault: what, when, its effect, the operations acknowledged/failed/unanswered
//! while it lasted; every invariant's count) is printed and written to
//! `target/faults/report.json`.
//!
//! Bounded by default (one seed, every fault kind once plus a few more, under four minutes);
//! `scripts/faults.sh` runs `FAULTS_SEEDS=N` seeds for a long run. Contended holds:
//! `FAULTS_HOLDS=10000 FAULTS_VEHICLES=50` runs until that many holds were attempted, the
//! nemesis cycling meanwhile. Ports 18420–18439. Run through `scripts/faults.sh`, which
//! builds the origin binary first.
//!
//! One module per part: `cluster` (the private dependencies and the two origins), `workload`
//! (the clients and their recorded history), `faults` (what each fault does and how it shows
//! its effect), `nemesis` (the seeded schedule), and the two tests: `run` (the fault run
//! itself) and `checker` (the checker must be able to fail).

mod checker;
mod cluster;
mod dead_peers;
mod faults;
mod nemesis;
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
/// The origins' Redis lock TTL: a SIGSTOP lasts longer, so the paused origin wakes up holding
/// a lock it no longer owns.
pub(crate) const LOCK_TTL_MS: u64 = 2_000;
/// Client tasks, each running the workload (`FAULTS_CLIENTS` overrides).
pub(crate) const CLIENTS: usize = 6;
/// Vehicles the clients contend for (a few, so contention is constant; `FAULTS_VEHICLES`
/// overrides).
pub(crate) const VEHICLES: usize = 6;

/// A numeric knob from the environment, or its default.
pub(crate) fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
