//! A TCP fault proxy between the origin and one dependency: latency, resets, dead peers and
//! partitions on demand, each counted so a fault can show it had an effect.
//!
//! Hand-written (about 200 lines) because the candidates are separate services (toxiproxy is
//! a Go daemon with an HTTP API; no maintained Rust crate does this in-process), and the
//! harness needs to flip modes from the test's own clock. Every accepted connection is
//! piped both ways in small chunks; before each chunk the current mode is read:
//! * `Pass` forwards;
//! * `Latency(ms)` sleeps before forwarding each chunk;
//! * `Reset` aborts every connection (open and new) with a TCP RST (`SO_LINGER 0` before the
//!   close), both towards the client and towards the dependency;
//! * `Dead` turns every open connection (and every one accepted while the mode lasts) into a
//!   dead peer **for good**: its bytes are read and thrown away, nothing is answered and
//!   nothing is ever closed, even after the mode returns to `Pass`. Only the client's own
//!   timeouts can get it out (the harness never resets it): a host that vanished;
//! * `Partition` stops traffic both ways without closing anything: bytes wait, connections
//!   accepted meanwhile are not connected upstream; when the mode changes back, the waiting
//!   bytes flow (TCP's retransmissions after a healed partition).
//!
//! [`Stats`] counts what each mode did: resets sent, connections killed as dead peers,
//! bytes dropped, chunks held by a partition.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Latency(u64),
    Reset,
    Dead,
    Partition,
}

/// What the proxy did so far (monotonic counters).
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    /// Connections aborted with an RST (each connection counts once).
    pub resets: AtomicU64,
    /// Connections turned into dead peers.
    pub dead: AtomicU64,
    /// Bytes read from a dead connection and thrown away.
    pub dropped_bytes: AtomicU64,
    /// Chunks (or new connections) held back by a partition.
    pub partitioned: AtomicU64,
    /// Chunks delayed by `Latency`.
    pub delayed: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub accepted: u64,
    pub resets: u64,
    pub dead: u64,
    pub dropped_bytes: u64,
    pub partitioned: u64,
    pub delayed: u64,
}

/// A running proxy; dropping it stops accepting.
#[derive(Debug)]
pub struct FaultProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<Stats>,
}

impl FaultProxy {
    /// Listens on `port` and forwards to `127.0.0.1:upstream`.
    pub async fn start(port: u16, upstream: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                st.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(client, upstream, rx.clone(), st.clone()));
            }
        });
        Ok(FaultProxy {
            port,
            mode,
            task,
            stats,
        })
    }

    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    /// What the proxy did so far.
    pub fn counts(&self) -> Counts {
        let s = &self.stats;
        Counts {
            accepted: s.accepted.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            dead: s.dead.load(Ordering::Relaxed),
            dropped_bytes: s.dropped_bytes.load(Ordering::Relaxed),
            partitioned: s.partitioned.load(Ordering::Relaxed),
            delayed: s.delayed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Aborts `stream` with an RST instead of a FIN: `SO_LINGER 0`, then the close.
fn rst(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Reads and discards everything `from` sends, forever: a dead peer.
async fn swallow(mut from: OwnedReadHalf, stats: Arc<Stats>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            // The client gave up on the connection itself: the only way out.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                stats.dropped_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

async fn serve(client: TcpStream, upstream: u16, mut rx: watch::Receiver<Mode>, st: Arc<Stats>) {
    // A connection accepted during a partition waits for the heal before it is connected.
    loop {
        let mode = *rx.borrow_and_update();
        match mode {
            Mode::Reset => {
                st.resets.fetch_add(1, Ordering::Relaxed);
                rst(&client);
                return;
            }
            Mode::Dead => {
                st.dead.fetch_add(1, Ordering::Relaxed);
                let (r, _w) = client.into_split();
                swallow(r, st).await;
                return;
            }
            Mode::Partition => {
                st.partitioned.fetch_add(1, Ordering::Relaxed);
                if rx.changed().await.is_err() {
                    return;
                }
            }
            Mode::Pass | Mode::Latency(_) => break,
        }
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        rst(&client);
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let (up_end, down_end) = tokio::join!(
        pipe(cr, sw, rx.clone(), st.clone(), true),
        pipe(sr, cw, rx, st.clone(), false)
    );
    // A dead connection stays open and silent until the client closes its side (the other
    // direction's halves are kept too: no FIN either way).
    if let End::Dead(r, _w) = up_end {
        let _kept = down_end;
        st.dead.fetch_add(1, Ordering::Relaxed);
        swallow(r, st).await;
    }
}

/// How one direction of a connection ended.
enum End {
    Closed,
    /// Turned dead: the halves are kept (never closed) by the caller.
    Dead(OwnedReadHalf, OwnedWriteHalf),
}

async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    stats: Arc<Stats>,
    // Whether this is the client-to-dependency direction (the one that counts resets).
    client_side: bool,
) -> End {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => n,
            },
            // A switch to Reset or Dead reaches idle connections too.
            changed = mode.changed() => {
                if changed.is_err() {
                    return End::Closed;
                }
                match *mode.borrow_and_update() {
                    Mode::Reset => {
                        abort(&from, to, &stats, client_side);
                        return End::Closed;
                    }
                    Mode::Dead => return End::Dead(from, to),
                    _ => continue,
                }
            }
        };
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Pass => break,
                Mode::Latency(ms) => {
                    stats.delayed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    break;
                }
                Mode::Reset => {
                    abort(&from, to, &stats, client_side);
                    return End::Closed;
                }
                Mode::Dead => {
                    stats.dropped_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    return End::Dead(from, to);
                }
                // Hold the bytes until the mode changes: nothing flows, nothing closes.
                Mode::Partition => {
                    stats.partitioned.fetch_add(1, Ordering::Relaxed);
                    if mode.changed().await.is_err() {
                        return End::Closed;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return End::Closed;
        }
    }
}

/// RSTs both sockets of a connection (both directions call this; only the client-side
/// direction counts, so a connection counts once).
/// The write half is forgotten, not dropped: dropping it would send a FIN first (its drop
/// shuts the write side down), and the peer would read a clean end before the RST.
fn abort(from: &OwnedReadHalf, to: OwnedWriteHalf, stats: &Stats, count: bool) {
    rst(from.as_ref());
    rst(to.as_ref());
    to.forget();
    if count {
        stats.resets.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    //! The proxy's faults are what they are named: an RST (not a FIN), a dead peer that stays
    //! dead after the mode returns to `Pass`, a partition that holds bytes and then delivers.

    use super::*;

    /// An echo server on an ephemeral port; its port.
    async fn echo() -> anyhow::Result<u16> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(port)
    }

    async fn proxy() -> anyhow::Result<FaultProxy> {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .await?
            .local_addr()?
            .port();
        FaultProxy::start(port, echo().await?).await
    }

    async fn round_trip(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn reset_aborts_open_connections_with_an_rst_not_a_fin() -> anyhow::Result<()> {
        let p = proxy().await?;
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).await?;
        assert!(round_trip(&mut s, Duration::from_secs(2)).await.is_some());
        p.set(Mode::Reset);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut buf = [0u8; 4];
        let read = s.read(&mut buf).await;
        // A FIN reads as Ok(0); an RST as ECONNRESET.
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
        assert_eq!(p.counts().resets, 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_dead_connection_stays_open_and_silent_after_the_mode_returns_to_pass(
    ) -> anyhow::Result<()> {
        let p = proxy().await?;
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).await?;
        assert!(round_trip(&mut s, Duration::from_secs(2)).await.is_some());
        p.set(Mode::Dead);
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.set(Mode::Pass);
        // Open (writes succeed), silent (no echo), not closed (no EOF, no reset).
        assert!(round_trip(&mut s, Duration::from_millis(500))
            .await
            .is_none());
        assert!(p.counts().dead >= 1 && p.counts().dropped_bytes >= 4);
        // A new connection works.
        let mut fresh = TcpStream::connect(("127.0.0.1", p.port)).await?;
        assert!(round_trip(&mut fresh, Duration::from_secs(2))
            .await
            .is_some());
        Ok(())
    }

    #[tokio::test]
    async fn a_partition_holds_bytes_both_ways_and_delivers_them_when_healed() -> anyhow::Result<()>
    {
        let p = proxy().await?;
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).await?;
        assert!(round_trip(&mut s, Duration::from_secs(2)).await.is_some());
        p.set(Mode::Partition);
        assert!(round_trip(&mut s, Duration::from_millis(500))
            .await
            .is_none());
        p.set(Mode::Pass);
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"ping");
        assert!(p.counts().partitioned >= 1);
        Ok(())
    }
}
