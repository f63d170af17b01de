//! `seed-demo [vehicles-per-city]`: applies the migrations and loads the demo fleet (default
//! 120 vehicles per city) into the database at `DATABASE_URL`. Idempotent: run it as often as
//! you like (see the crate docs).

use anyhow::Context;

/// The migrations, embedded like the origin's (`origin migrate` applies the same set).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let per_city: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .context("seed-demo takes a vehicle count per city")?,
        None => 120,
    };
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            eprintln!("seed-demo: configuration error: DATABASE_URL is missing");
            std::process::exit(2);
        }
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&url)
        .await
        .context("connect to PostgreSQL (DATABASE_URL)")?;
    MIGRATOR.run(&pool).await.context("run migrations")?;
    let summary = demo_fleet::seed_demo(&pool, per_city).await?;
    println!(
        "demo fleet: {} bays, {} vehicles",
        summary.bays, summary.vehicles
    );
    Ok(())
}
