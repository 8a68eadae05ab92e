//! `warmer dev`: checkout, refill, reconcile and web in one process with the local provider, for
//! trying warmer on one machine, under names of its own (`warmer-dev`, see `Config::for_dev`). Creates a small example pool when none exists. (`autoscale`
//! needs Heroku, so it is not part of it.)

use crate::context::Context;
use crate::pool::PoolName;
use crate::shutdown::Shutdown;

/// The pool `warmer dev` creates when there is none.
pub const EXAMPLE_POOL: &str = "warmer-example-image:n1-standard-1";
const EXAMPLE_TARGET: u32 = 3;

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
