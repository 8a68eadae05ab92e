//! `warmer dev`: checkout, refill, reconcile and web in one process with the local provider, for
//! trying warmer on one machine, under names of its own (`warmer-dev`, see `Config::for_dev`).
//! Creates a small example pool when none exists, and starts a private Redis and RabbitMQ when
//! none answers ([`servers`], `WARMER_DEV_SERVERS`). (`autoscale` needs Heroku, so it is not part
//! of it.)

pub mod servers;

use crate::config::Config;
use crate::context::Context;
use crate::pool::PoolName;
use crate::shutdown::Shutdown;

/// The pool `warmer dev` creates when there is none.
pub const EXAMPLE_POOL: &str = "warmer-example-image:n1-standard-1";
const EXAMPLE_TARGET: u32 = 3;

/// Starts the private servers `config` asks for (see [`servers::Servers::bring_up`]) and
/// returns the configuration that uses them.
pub async fn bring_up(config: Config) -> anyhow::Result<(Config, servers::Servers)> {
    let (redis, amqp) = config.given_urls();
    let mode = config.dev_servers;
    let (redis_url, amqp_url) = (
        config.redis_url.expose().to_string(),
        config.amqp_url.expose().to_string(),
    );
    let servers = tokio::task::spawn_blocking(move || {
        servers::Servers::bring_up(mode, (&redis_url, redis), (&amqp_url, amqp))
    })
    .await??;
    let config = config.on_servers(
        servers.url(servers::Kind::Redis),
        servers.url(servers::Kind::RabbitMq),
    )?;
    if let Some(summary) = servers.summary() {
        tracing::info!("{summary}");
        // Only the private servers' URLs: one given explicitly may hold a password.
        let mut vars = Vec::new();
        for (var, kind) in [
            ("WARMER_REDIS_URL", servers::Kind::Redis),
            ("WARMER_AMQP_URL", servers::Kind::RabbitMq),
        ] {
            if let Some(url) = servers.url(kind) {
                vars.push(format!("{var}={url}"));
            }
        }
        tracing::info!(
            "other commands reach them with: export {} WARMER_AMQP_PREFIX={} WARMER_REDIS_NAMESPACE={}",
            vars.join(" "),
            config.amqp_prefix,
            config.redis_namespace
        );
    }
    Ok((config, servers))
}

/// Runs checkout, refill, reconcile and web with the local provider until `shutdown`.
pub async fn run(ctx: Context, shutdown: Shutdown) -> anyhow::Result<()> {
    // Fail at once, before anything runs, when the web port is taken.
    let listener = crate::web::bind(&ctx.config).await?;
    let targets = ctx.store.targets().await?;
    if targets.is_empty() {
        let pool: PoolName = EXAMPLE_POOL.parse().map_err(anyhow::Error::msg)?;
        ctx.store.set_target(&pool, EXAMPLE_TARGET).await?;
        tracing::info!(
            pool = EXAMPLE_POOL,
            target = EXAMPLE_TARGET,
            "no pools yet: created an example pool"
        );
    }
    tracing::info!(
        "try: warmer request --image warmer-example-image --machine-type n1-standard-1   (and `warmer status`)"
    );
    let connection = ctx.amqp("dev").await?;
    crate::topology::declare(&connection, &ctx.names).await?;
    let _ = connection.close(200, "declared".into()).await;
    let checkout = tokio::spawn(crate::checkout::run(ctx.clone(), shutdown.clone()));
    let refill = tokio::spawn(crate::refill::run(ctx.clone(), shutdown.clone()));
    let reconcile = tokio::spawn(crate::reconcile::run(ctx.clone(), shutdown.clone()));
    let web = tokio::spawn(crate::web::serve(ctx.clone(), listener, shutdown.clone()));
    // Fill every pool at start: the local cloud starts empty.
    crate::operator::fill(&ctx, None, None).await?;
    let (checkout, refill, reconcile, web) = tokio::join!(checkout, refill, reconcile, web);
    checkout??;
    refill??;
    reconcile??;
    web??;
    Ok(())
}
