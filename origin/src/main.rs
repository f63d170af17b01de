//! `origin` binary: `serve` (default), `migrate`, `seed-demo [N]`, `dev-token <user> [--ops]`.

use anyhow::Context;
use origin::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("serve");
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("origin: configuration error: {e}");
            std::process::exit(2);
        }
    };
    origin::init_tracing(config.log_json);
    match command {
        "serve" => {
            let pool = origin::startup::connect(&config).await?;
            let running = origin::startup::start(config, pool, true).await?;
            running.wait().await
        }
        "migrate" => {
            let pool = origin::startup::connect(&config).await?;
            origin::startup::MIGRATOR
                .run(&pool)
                .await
                .context("run migrations")?;
            println!("migrations applied");
            Ok(())
        }
        "seed-demo" => {
            let per_city: usize = match args.get(1) {
                Some(n) => n
                    .parse()
                    .context("seed-demo takes a vehicle count per city")?,
                None => 120,
            };
            let pool = origin::startup::connect(&config).await?;
            origin::startup::MIGRATOR
                .run(&pool)
                .await
                .context("run migrations")?;
            let summary = origin::demo::seed_demo(&pool, per_city).await?;
            println!(
                "demo fleet: {} bays, {} vehicles",
                summary.bays, summary.vehicles
            );
            Ok(())
        }
        "dev-token" => {
            let user = args.get(1).context("dev-token needs a user id")?;
            let ops = args.iter().any(|a| a == "--ops");
            let secret = config
                .jwt
                .hs256_secret
                .as_ref()
                .context("dev-token needs JWT_HS256_SECRET")?;
            let now = chrono::Utc::now().timestamp();
            let claims = domain::auth::Claims {
                sub: user.clone(),
                iss: config.jwt.issuer.clone(),
                aud: serde_json::Value::String(config.jwt.audience.clone()),
                exp: now + 30 * 24 * 3600,
                nbf: Some(now - 60),
                iat: Some(now),
                roles: if ops { vec!["ops".into()] } else { vec![] },
                membership: None,
            };
            let token =
                domain::auth::sign_hs256(&claims, &secret.0, config.jwt.hs256_kid.as_deref())
                    .map_err(|e| anyhow::anyhow!("sign: {e}"))?;
            println!("{token}");
            Ok(())
        }
        other => {
            eprintln!("origin: unknown command {other:?} (serve, migrate, seed-demo [N], dev-token <user> [--ops])");
            std::process::exit(2);
        }
    }
}
