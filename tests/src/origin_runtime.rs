//! The origin's own multi-thread runtime in the api and edge suites.
//!
//! `#[sqlx::test]` runs each test on a current-thread runtime. An origin started there would
//! run every handler, job and database call on the test's one thread, interleaved with the
//! test's client and never in parallel — unlike production (`#[tokio::main]`: one worker per
//! core), where two requests for one vehicle really do race. So [`crate::spawn_app_with`]
//! starts every origin on a multi-thread runtime of its own with [`WORKERS`] workers, and opens
//! the origin's pool there too: a socket belongs to the runtime whose reactor registered it,
//! so the test's pool stays the test's and the origin never depends on the test's thread.
//!
//! Stopping: [`OriginRuntime::shutdown`] (after the origin drained, from `TestApp::stop`)
//! waits for the workers on a blocking thread — a runtime may not be dropped inside another
//! runtime's task. A runtime dropped without it (a test that failed before `stop`) is shut
//! down in the background: its tasks are dropped, its sockets closed, nothing waited for.

use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};

/// Worker threads of each origin's runtime: enough for two handlers to run at the same
/// instant, few enough for many tests in parallel on a small machine.
pub const WORKERS: usize = 2;

/// How long [`OriginRuntime::shutdown`] waits for tasks still on the runtime after the
/// origin's own stop (there should be none).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// A multi-thread runtime owned by one test origin.
#[derive(Debug)]
pub struct OriginRuntime {
    handle: Handle,
    runtime: Option<Runtime>,
}

impl OriginRuntime {
    /// A runtime with [`WORKERS`] workers, I/O and timers enabled (as `#[tokio::main]`).
    pub fn new() -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("test-origin")
            .enable_all()
            .build()?;
        Ok(OriginRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// The runtime's handle: spawn the origin on it; tests read its flavour and workers.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Shuts the runtime down and waits (bounded) for its worker threads to end.
    pub async fn shutdown(mut self) {
        if let Some(runtime) = self.runtime.take() {
            let joined =
                tokio::task::spawn_blocking(move || runtime.shutdown_timeout(SHUTDOWN_WAIT)).await;
            if let Err(e) = joined {
                tracing::warn!(error = %e, "origin runtime shutdown");
            }
        }
    }
}

impl Drop for OriginRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
