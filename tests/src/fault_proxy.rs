//! A TCP fault proxy between the origin and one dependency: latency, resets and half-open
//! connections on demand.
//!
//! Hand-written (about 100 lines) because the candidates are separate services (toxiproxy is
//! a Go daemon with an HTTP API; no maintained Rust crate does this in-process), and the
//! harness needs to flip modes from the test's own clock. Every accepted connection is
//! piped both ways in small chunks; before each chunk the current mode is read:
//! * `Pass` forwards;
//! * `Latency(ms)` sleeps before forwarding each chunk;
//! * `Reset` drops every connection (open and new): the peer sees a reset or EOF;
//! * `Blackhole` keeps connections open but forwards nothing and answers nothing: a half-open
//!   link, the nastiest case for a client without timeouts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Latency(u64),
    Reset,
    Blackhole,
}

/// A running proxy; dropping it stops accepting.
#[derive(Debug)]
pub struct FaultProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Listens on `port` and forwards to `127.0.0.1:upstream`.
    pub async fn start(port: u16, upstream: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let rx = rx.clone();
                tokio::spawn(async move {
                    if *rx.borrow() == Mode::Reset {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pipe(cr, sw, rx.clone()) => {}
                        _ = pipe(sr, cw, rx) => {}
                    }
                });
            }
        });
        Ok(FaultProxy {
            port,
            mode,
            task,
            connections,
        })
    }

    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // A switch to Reset ends idle connections too.
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == Mode::Reset {
                    return;
                }
                continue;
            }
        };
        loop {
            let current = *mode.borrow();
            match current {
                Mode::Pass => break,
                Mode::Latency(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    break;
                }
                Mode::Reset => return,
                // Hold the bytes until the mode changes: nothing flows, nothing closes.
                Mode::Blackhole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
