//! `origin` binary: `serve [--role api|booking|pricing|relay|jobs|all]` (default), `migrate`,
//! `dev-token <user> [--ops]`.
//!
//! `--role` (or `ORIGIN_ROLE`; the flag wins) picks what the process serves and runs, so one
//! image runs as every Deployment: see `origin::role`.
//!
//! `serve` runs until SIGTERM or SIGINT, then stops gracefully (see `startup.rs`): it exits 0
//! once requests have drained and every background job has stopped, and 1 if that did not
//! happen within `SHUTDOWN_GRACE_SECS`. The demo fleet is seeded by the `seed-demo` binary of
//! the `demo-fleet` crate, so its fixtures are not compiled into the server.

use anyhow::Context;
use origin::config::Config;
use origin::role::Role;

/// mimalloc instead of glibc's malloc: per-thread free lists and no `malloc_consolidate`
/// passes; glibc's allocator was about a quarter of the origin's CPU per cached quote.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let telemetry = match origin::telemetry::init(config.log_json, config.otel_endpoint.as_deref())
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("origin: {e:#}");
            std::process::exit(2);
        }
    };
    let result = run(command, &args, config).await;
    // The spans still queued go out before the exit (bounded by the exporter's timeout).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    result
}

async fn run(command: &str, args: &[String], mut config: Config) -> anyhow::Result<()> {
    match command {
        "serve" => {
            if let Some(role) = role_flag(&args[1..]) {
                config.role = match role {
                    Ok(role) => role,
                    Err(e) => {
                        eprintln!("origin: --role: {e}");
                        std::process::exit(2);
                    }
                };
            }
            let pool = origin::startup::connect(&config).await?;
            let running = origin::startup::start(config, pool, true).await?;
            running.wait().await
        }
        "migrate" => {
            let pool = origin::startup::connect(&config).await?;
            origin::startup::migrate(&config, &pool)
                .await
                .context("run migrations")?;
            println!("migrations applied");
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
            eprintln!("origin: unknown command {other:?} (serve [--role R], migrate, dev-token <user> [--ops]; the demo fleet: seed-demo [N])");
            std::process::exit(2);
        }
    }
}

/// `--role <name>` or `--role=<name>` among `serve`'s arguments, if given.
fn role_flag(args: &[String]) -> Option<Result<Role, String>> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--role" {
            return Some(match args.next() {
                Some(name) => name
                    .parse()
                    .map_err(|e: origin::role::UnknownRole| e.to_string()),
                None => Err("needs a role name".into()),
            });
        }
        if let Some(name) = arg.strip_prefix("--role=") {
            return Some(
                name.parse()
                    .map_err(|e: origin::role::UnknownRole| e.to_string()),
            );
        }
    }
    None
}
