//! `inference` binary: the reference AI inference service.
//!
//! Configuration (environment): `INFERENCE_DATABASE_URL` (required; connect as the read-only
//! role, e.g. `postgres://inference_ro@127.0.0.1:5432/booking_dev`), `INFERENCE_BIND_ADDR`
//! (default `127.0.0.1:8090`), `RUST_LOG`.

use std::net::SocketAddr;

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let url = match std::env::var("INFERENCE_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            eprintln!("inference: configuration error: INFERENCE_DATABASE_URL is missing");
            std::process::exit(2);
        }
    };
    let addr: SocketAddr = match std::env::var("INFERENCE_BIND_ADDR") {
        Ok(raw) => match raw.trim().parse() {
            Ok(addr) => addr,
            Err(e) => {
                eprintln!("inference: configuration error: INFERENCE_BIND_ADDR is invalid: {e}");
                std::process::exit(2);
            }
        },
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 8090)),
    };
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&url)
        .await
        .context("connect to PostgreSQL (INFERENCE_DATABASE_URL)")?;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let (bound, server) = inference::serve(db, addr, stop).await?;
    tracing::info!(%bound, model = inference::model::MODEL_VERSION, "inference service listening");
    server.await??;
    Ok(())
}
