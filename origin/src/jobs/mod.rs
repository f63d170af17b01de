//! Background jobs, owned: every task the origin runs besides serving requests is spawned here,
//! hears one stop signal, and is awaited at shutdown.
//!
//! The shape is mini-redis's shutdown (a signal every task selects on, and a way for `main` to
//! know the last task is gone) as tokio-util's library types: one [`CancellationToken`] that
//! every job watches, and one [`TaskTracker`] that every job — and every short task a job or
//! request starts, such as an edge-cache bump — is spawned on. [`Jobs::stop`] cancels the
//! token, closes the tracker and waits for it to empty, up to a deadline; a job that ignores
//! the token keeps the tracker open and makes the stop fail (and the process exit non-zero)
//! instead of being silently abandoned.
//!
//! Each job logs `job started` and `job stopped` with its name (`job` field), so an operator —
//! and the SIGTERM test — can see that every job that started also stopped.
//!
//! The jobs, one file each:
//! - [`sweeper`]: ends expired holds, purges old idempotency keys;
//! - [`surge`]: recomputes the surge grids;
//! - [`availability`]: rebuilds the GEO availability index, at once when Redis comes back;
//! - [`redis_probe`]: PINGs each Redis connection so its up/down state follows Redis;
//! - [`relay`]: the outbox relay to Kafka (when `KAFKA_BROKERS` is set);
//! - [`replica`]: probes the read replica's lag (when `DATABASE_READ_URL` is set);
//! - [`limit_sync`]: copies the edges' rate-limit counts to the other regions' edge databases
//!   (when `EDGE_PEER_<REGION>_REST_URL` is set);
//! - [`leader`]: the `jobs` role's election, so N replicas run the sweeper, surge refresh and
//!   index rebuild once (see [`crate::role`] for which role runs which job).

pub(crate) mod availability;
pub(crate) mod consumer;
pub(crate) mod leader;
pub(crate) mod limit_sync;
pub(crate) mod redis_probe;
pub(crate) mod relay;
pub(crate) mod replica;
pub(crate) mod surge;
pub(crate) mod sweeper;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The longest one step of a periodic job (an index rebuild, a surge recompute) may take.
/// A pooled connection whose peer went silent (a dead host, a blackholed link: no RST, no
/// FIN) never answers; unbounded, the job would wait on it for good.
pub(crate) const STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The origin's background jobs: their stop signal and their tracker. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Jobs {
    stop: CancellationToken,
    tracker: TaskTracker,
    /// Named jobs still running, with how many of each (for the stop report).
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

/// Jobs (or short tasks) still running when the stop deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("background jobs still running at the shutdown deadline: {jobs:?} ({tasks} tasks in all)")]
pub(crate) struct StillRunning {
    /// Names of the jobs that had not stopped.
    pub jobs: Vec<&'static str>,
    /// Tasks of any kind still on the tracker (jobs and short tasks such as edge-cache bumps).
    pub tasks: usize,
}

/// Removes a job from the running set and logs its end, however the job ends: returned, or
/// dropped unfinished (a panic, or still running when the process exits past the deadline).
struct Registration {
    name: &'static str,
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
    stop: CancellationToken,
    /// Set when the job's future returned.
    returned: bool,
}

impl Registration {
    /// The job's future returned: its end is a stop, not an abort.
    fn finish(&mut self) {
        self.returned = true;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = running.get_mut(self.name) {
            *n -= 1;
            if *n == 0 {
                running.remove(self.name);
            }
        }
        if !self.returned {
            tracing::error!(
                job = self.name,
                "job aborted: panicked, or dropped unfinished"
            );
        } else if self.stop.is_cancelled() {
            tracing::info!(job = self.name, "job stopped");
        } else {
            tracing::warn!(job = self.name, "job stopped before shutdown was asked for");
        }
    }
}

impl Jobs {
    /// No jobs yet, nothing stopped.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The tracker, for short tasks that must finish before the process exits (they are
    /// awaited by [`Jobs::stop`] but do not watch the token: keep them bounded).
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Spawns the job `name`: `job` gets the stop token and must return soon after it fires.
    pub(crate) fn spawn<F, Fut>(&self, name: &'static str, job: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name)
            .or_default() += 1;
        let mut registration = Registration {
            name,
            running: Arc::clone(&self.running),
            stop: self.stop.clone(),
            returned: false,
        };
        let work = job(self.stop.clone());
        tracing::info!(job = name, "job started");
        self.tracker.spawn(async move {
            work.await;
            registration.finish();
        });
    }

    /// Names of the jobs running now.
    pub(crate) fn running(&self) -> Vec<&'static str> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// Asks every job to stop and waits until every tracked task has ended, or `deadline`.
    pub(crate) async fn stop(&self, deadline: Instant) -> Result<(), StillRunning> {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        Err(StillRunning {
            jobs: self.running(),
            tasks: self.tracker.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_stop_waits_for_every_job_to_see_the_token_and_end() -> Result<(), StillRunning> {
        let jobs = Jobs::new();
        let ended = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for name in ["a", "b"] {
            let ended = Arc::clone(&ended);
            jobs.spawn(name, move |stop| async move {
                stop.cancelled().await;
                // Some cleanup after the signal, which the stop must wait for.
                tokio::time::sleep(Duration::from_millis(20)).await;
                ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        assert_eq!(jobs.running(), ["a", "b"]);
        jobs.stop(Instant::now() + Duration::from_secs(5)).await?;
        assert_eq!(ended.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(jobs.running().is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn a_job_that_ignores_the_token_makes_the_stop_fail_and_is_named() {
        let jobs = Jobs::new();
        jobs.spawn("polite", |stop| async move { stop.cancelled().await });
        jobs.spawn("deaf", |_stop| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let result = jobs.stop(Instant::now() + Duration::from_millis(100)).await;
        let err = result.err().map(|e| (e.jobs, e.tasks));
        assert_eq!(err, Some((vec!["deaf"], 1)));
    }

    #[tokio::test]
    async fn a_short_task_on_the_tracker_is_awaited_by_the_stop() -> Result<(), StillRunning> {
        let jobs = Jobs::new();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&done);
        jobs.tracker().spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        jobs.stop(Instant::now() + Duration::from_secs(5)).await?;
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
        Ok(())
    }
}
