//! Redis probe: PINGs one Redis connection every [`PROBE_INTERVAL`], whatever its state, so
//! the link's up/down flag follows Redis both ways (see [`crate::redis::link`]). The origin
//! runs one per connection: the main link (locks, GEO index) and each cache layer.

use tokio_util::sync::CancellationToken;

use crate::redis::link::{RedisLink, PROBE_INTERVAL};

/// PINGs `link` until `stop` fires.
pub(crate) async fn run(link: RedisLink, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        // Bounded by the command timeout.
        link.probe().await;
    }
}
