//! `warmer check`, the release phase: what every process needs, verified in order, one line per
//! check on stdout as it passes; the first failure ends it with its reason (exit 2), so Heroku
//! aborts the release instead of starting dynos that cannot work.

use std::io::Write;

use anyhow::Context as _;

use crate::cloud::Cloud;
use crate::config::{Config, Provider};
use crate::context::Context;

/// Runs every check; `Ok` when all passed.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let provider = match config.provider {
        Provider::Gce => "gce",
        Provider::Local => "local",
    };
    if config.provider == Provider::Gce {
        config.require_google().context("configuration")?;
        if config.ssh_key_passphrase.is_none() {
            anyhow::bail!(
                "configuration: WARMER_SSH_KEY_PASSPHRASE must be set for WARMER_PROVIDER=gce (refill encrypts each VM's key with it)"
            );
        }
    }
    passed(
        "configuration",
        &format!(
            "provider {provider}, prefix {}, namespace {}{}",
            config.amqp_prefix,
            config.redis_namespace,
            match config.warnings.len() {
                0 => String::new(),
                n => format!(" ({n} warnings above)"),
            }
        ),
    );

    let redis_url = config.redis_url.to_string();
    let ctx = Context::new(config)
        .await
        .with_context(|| format!("redis: connecting to {redis_url}"))?;
    ctx.store
        .ping()
        .await
        .with_context(|| format!("redis: {redis_url} does not answer"))?;
    let pools = ctx
        .store
        .targets()
        .await
        .with_context(|| format!("redis: reading the pools at {redis_url}"))?
        .len();
    passed("redis", &format!("{redis_url}, {pools} pools"));

    let amqp_url = ctx.config.amqp_url.to_string();
    let connection = ctx
        .amqp("check")
        .await
        .with_context(|| format!("rabbitmq: connecting to {amqp_url}"))?;
    let declared = crate::topology::declare(&connection, &ctx.names).await;
    let breadth = match &declared {
        Ok(()) => Some(crate::topology::probe_permissions(&connection, &ctx.names).await),
        Err(_) => None,
    };
    let _ = connection.close(200, "checked".into()).await;
    declared.with_context(|| format!("rabbitmq: declaring the topology at {amqp_url}"))?;
    let names = &ctx.names;
    passed(
        "rabbitmq",
        &format!(
            "{amqp_url}, topology declared ({}, {}, {}, {})",
            names.checkout_queue(),
            names.refill_queue(),
            names.dead_letter_queue(),
            names.events_exchange()
        ),
    );

    let user = ctx.config.amqp_user();
    match breadth {
        Some(Ok(breadth)) if breadth.describe().is_empty() => passed(
            "permissions",
            &format!("broker user `{user}` may do what warmer's processes need and no more"),
        ),
        Some(Ok(breadth)) => warned(
            "permissions",
            &format!(
                "broker user `{user}` may also {}: anyone holding its password can; give warmer's processes a user of their own (`warmer permissions` prints the commands)",
                breadth.describe().join(", ")
            ),
        ),
        Some(Err(error)) => warned(
            "permissions",
            &format!(
                "could not ask the broker what `{user}` may do: {}",
                crate::telemetry::report(&error)
            ),
        ),
        None => {}
    }
    let wanted: u64 = ctx
        .store
        .targets()
        .await
        .context("redis: reading the pools")?
        .values()
        .sum();
    let cap = u64::from(ctx.config.max_vms);
    if wanted > cap {
        warned(
            "fleet",
            &format!(
                "the pools' targets add up to {wanted}, above WARMER_MAX_VMS ({cap}): boots stop at {cap} VMs"
            ),
        );
    } else {
        passed(
            "fleet",
            &format!("the pools' targets add up to {wanted}, within WARMER_MAX_VMS ({cap})"),
        );
    }

    let cloud = Cloud::from_config(&ctx.config, &ctx.store)
        .await
        .context("cloud credentials")?;
    let found = cloud
        .check(names.namespace())
        .await
        .context("compute engine")?;
    passed("cloud", &found);
    Ok(())
}

/// One line on stdout, at once (a release log shows how far it got).
fn passed(what: &str, detail: &str) {
    line("ok  ", what, detail);
}

/// A line for something that works but should not be left so: the release goes on.
fn warned(what: &str, detail: &str) {
    line("warn ", what, detail);
}

fn line(mark: &str, what: &str, detail: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{mark}{what}: {detail}");
    let _ = stdout.flush();
}
