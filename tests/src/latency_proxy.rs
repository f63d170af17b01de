//! A userspace delay line between an edge and the other region's origin: inter-region latency
//! on one machine.
//!
//! The right tool would be network namespaces with `tc qdisc … netem delay`, but this VM's
//! kernel has no `sch_netem` (`tc qdisc add dev lo root netem delay 1ms` in a fresh namespace
//! fails with "Specified qdisc kind is unknown"), and no crate injects latency in-process, so
//! this is hand-written (as `fault_proxy` is; that one delays chunk after chunk, which adds
//! latency per chunk instead of once per direction).
//!
//! Every accepted connection first waits one round trip (the TCP handshake a real
//! inter-region connection pays), then each direction is a delay line: a reader stamps every
//! chunk with its arrival time and a writer forwards it at `arrival + rtt / 2`, so a
//! request/response exchange pays exactly one round trip however many chunks it has, and
//! bytes stay in order. Close and EOF travel the same way (after the same delay).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A running delay line; dropping it stops accepting (open connections end with their peers).
#[derive(Debug)]
pub struct LatencyProxy {
    /// The port the proxy listens on (127.0.0.1).
    pub port: u16,
    /// The injected round trip.
    pub rtt: Duration,
    connections: Arc<AtomicU64>,
    upstream_bytes: Arc<AtomicU64>,
    turns: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LatencyProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream` with `rtt` added to
    /// every round trip (half each way) and one more `rtt` per new connection.
    pub async fn start(upstream: u16, rtt: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let connections = Arc::new(AtomicU64::new(0));
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let turns = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        let bytes = upstream_bytes.clone();
        let turned = turns.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let bytes = bytes.clone();
                let turned = turned.clone();
                tokio::spawn(async move {
                    // The handshake of a connection across regions: one round trip, which
                    // stands for the local connect too (made meanwhile, not added to it).
                    let (_, server) = tokio::join!(
                        tokio::time::sleep(rtt),
                        TcpStream::connect(("127.0.0.1", upstream))
                    );
                    // A dead upstream (the region is down) closes the client's connection.
                    let Ok(server) = server else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let last = Arc::new(AtomicU8::new(NONE));
                    let up = Side {
                        dir: UP,
                        last: last.clone(),
                        bytes: Some(bytes),
                        turns: Some(turned),
                    };
                    let down = Side {
                        dir: DOWN,
                        last,
                        bytes: None,
                        turns: None,
                    };
                    tokio::join!(
                        delay_line(cr, sw, rtt / 2, up),
                        delay_line(sr, cw, rtt / 2, down)
                    );
                });
            }
        });
        Ok(LatencyProxy {
            port,
            rtt,
            connections,
            upstream_bytes,
            turns,
            task,
        })
    }

    /// The proxy's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far (a test can prove its traffic went through the proxy).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Bytes forwarded to the upstream so far: unlike [`Self::connections`] this grows with
    /// requests on a kept-alive connection too (workerd pools its connections).
    pub fn upstream_bytes(&self) -> u64 {
        self.upstream_bytes.load(Ordering::Relaxed)
    }

    /// Round trips charged so far: one per connection (its handshake) and one per exchange,
    /// an exchange being the client speaking after the server did (or first) on a
    /// connection. A count, so a test can bound what a request costs across regions
    /// whatever else the machine is doing; the time it took is only printed beside it.
    pub fn round_trips(&self) -> u64 {
        self.connections() + self.turns.load(Ordering::Relaxed)
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const NONE: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One direction of a connection: which way it carries bytes, the direction the connection
/// last carried (shared by both sides, for counting exchanges), and its counters.
struct Side {
    dir: u8,
    last: Arc<AtomicU8>,
    bytes: Option<Arc<AtomicU64>>,
    turns: Option<Arc<AtomicU64>>,
}

/// Forwards `from` to `to`, each chunk `delay` after it arrived; EOF is forwarded as a
/// shutdown of the write side, after the same delay. `side` counts bytes and exchanges.
async fn delay_line(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration, side: Side) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    // An empty chunk marks the end.
                    let _ = tx.send((Instant::now() + delay, Vec::new()));
                    return;
                }
                Ok(n) => {
                    if let Some(c) = &side.bytes {
                        c.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let before = side.last.swap(side.dir, Ordering::Relaxed);
                    if let (Some(t), true) = (&side.turns, before != side.dir) {
                        t.fetch_add(1, Ordering::Relaxed);
                    }
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if chunk.is_empty() {
                let _ = to.shutdown().await;
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line must add one round trip per exchange (plus one per connection), not per chunk.
    #[tokio::test]
    async fn an_exchange_pays_one_round_trip_and_a_new_connection_one_more() -> anyhow::Result<()> {
        let echo = TcpListener::bind(("127.0.0.1", 0)).await?;
        let echo_port = echo.local_addr()?.port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let rtt = Duration::from_millis(40);
        let proxy = LatencyProxy::start(echo_port, rtt).await?;
        let started = Instant::now();
        let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).await?;
        let payload = vec![7u8; 200 * 1024]; // many chunks
        conn.write_all(&payload).await?;
        let mut back = vec![0u8; payload.len()];
        conn.read_exact(&mut back).await?;
        let first = started.elapsed();
        assert_eq!(back, payload);
        assert!(first >= rtt * 2, "handshake + exchange took {first:?}");
        assert!(
            first < rtt * 4,
            "chunks were delayed one after another: {first:?}"
        );

        let again = Instant::now();
        conn.write_all(b"ping").await?;
        let mut four = [0u8; 4];
        conn.read_exact(&mut four).await?;
        let second = again.elapsed();
        assert!(
            second >= rtt && second < rtt * 2,
            "second exchange {second:?}"
        );
        assert_eq!(proxy.connections(), 1);
        assert_eq!(proxy.round_trips(), 3, "one handshake and two exchanges");
        assert_eq!(proxy.upstream_bytes(), payload.len() as u64 + 4);
        Ok(())
    }
}
