//! `upstash-gateway`: serves the Upstash REST protocol on `UPSTASH_GATEWAY_ADDR`
//! (default 127.0.0.1:8079) in front of `REDIS_URL`, accepting `UPSTASH_GATEWAY_TOKEN`.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_target(false).init();
    let addr = std::env::var("UPSTASH_GATEWAY_ADDR").unwrap_or_else(|_| "127.0.0.1:8079".into());
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let token = std::env::var("UPSTASH_GATEWAY_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .context("UPSTASH_GATEWAY_TOKEN is missing")?;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("bind UPSTASH_GATEWAY_ADDR {addr}"))?;
    let running = upstash_gateway::start(listener, &redis, &token).await?;
    println!("upstash gateway on {}", running.url());
    tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
    running.stop().await;
    Ok(())
}
