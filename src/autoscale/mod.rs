//! `warmer autoscale`: scales the consumer process types on Heroku by the length of their queues
//! through the Platform API.
//!
//! Every `WARMER_AUTOSCALE_INTERVAL` it reads each consumer type's backlog (`load.rs`)
//! (requests waiting in `<prefix>.checkout`; VMs the pools lack with no boot reserved) and the
//! app's formation, decides each type's dynos with the pure [`plan::desired`], and sends one
//! `PATCH` with the types that change. Types absent from the formation (not in the Procfile's
//! release) are left alone and logged. An API, broker or Redis error skips that check; the next
//! one tries again (after `Retry-After` when rate limited). Run one `autoscale` dyno: the API
//! limit (4,500 requests an hour) is shared by every tool using the token, and a check costs one
//! request, two when it scales. SIGTERM interrupts a check.

pub mod plan;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;

use crate::context::Context;
use crate::heroku::{Formation, Heroku, HerokuError};
use crate::process::ProcessType;
use crate::shutdown::Shutdown;
use crate::topology::QueueMonitor;

/// One change of a process type's dynos.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaling {
    pub process: String,
    pub from: u32,
    pub to: u32,
    /// The backlog that decided it.
    pub waiting: u32,
}

/// One autoscale process.
pub struct Autoscaler {
    ctx: Context,
    heroku: Heroku,
    queues: QueueMonitor,
    /// Consecutive checks that found nothing waiting, per process type.
    quiet: HashMap<ProcessType, u32>,
}

/// Scales the consumer process types until `shutdown`; fails, naming the variable, without
/// `HEROKU_API_TOKEN` or `HEROKU_APP_NAME`.
pub async fn run(ctx: Context, shutdown: Shutdown) -> anyhow::Result<()> {
    Autoscaler::new(ctx)?.run(shutdown).await
}

impl Autoscaler {
    /// Fails, naming the variable, without `HEROKU_API_TOKEN` or `HEROKU_APP_NAME`.
    pub fn new(ctx: Context) -> anyhow::Result<Self> {
        let heroku = Heroku::from_config(&ctx.config, ProcessType::Autoscale)?;
        let queues = QueueMonitor::new(
            ctx.config.amqp_url.clone(),
            format!("{}.autoscale", ctx.names.prefix()),
            ctx.names.clone(),
            Duration::from_secs(10),
        );
        Ok(Self {
            ctx,
            heroku,
            queues,
            quiet: HashMap::new(),
        })
    }

    /// Checks every `WARMER_AUTOSCALE_INTERVAL` until `shutdown`.
    pub async fn run(mut self, shutdown: Shutdown) -> anyhow::Result<()> {
        let interval = self.ctx.config.autoscale_interval;
        tracing::info!(
            ?interval,
            checkout = ?self.ctx.config.autoscale_checkout,
            refill = ?self.ctx.config.autoscale_refill,
            "autoscaling"
        );
        loop {
            let checked = tokio::select! {
                _ = shutdown.wait() => break,
                checked = self.check() => checked,
            };
            let mut pause = interval;
            if let Err(error) = checked {
                if let Some(HerokuError::RateLimited {
                    retry_after: Some(after),
                    ..
                }) = error.downcast_ref()
                {
                    pause = pause.max(*after);
                }
                tracing::error!(error = %crate::telemetry::report(&error), next_in = ?pause, "autoscale check failed; trying again later");
            }
            if !shutdown.sleep(pause).await {
                break;
            }
        }
        self.queues.close().await;
        tracing::info!("autoscale stopped");
        Ok(())
    }

    /// One check: reads the queues and the formation, scales what needs it, says what changed.
    pub async fn check(&mut self) -> anyhow::Result<Vec<Scaling>> {
        let depths = self.queues.depths().await?;
        let (pools, brake) = self.ctx.store.levels().await?;
        let backlogs =
            crate::load::backlogs(&depths, &pools, brake, self.ctx.config.boot_concurrency);
        let formation = self
            .heroku
            .formation()
            .await
            .context("reading the app's formation")?;
        let mut changes = Vec::new();
        for backlog in backlogs {
            let Some(running) = formation
                .iter()
                .find(|f| f.process == backlog.process.name())
            else {
                tracing::warn!(
                    process = backlog.process.name(),
                    "process type not in the app's formation (add it to the Procfile): not scaled"
                );
                continue;
            };
            let quiet = self.quiet.entry(backlog.process).or_default();
            *quiet = if backlog.waiting == 0 { *quiet + 1 } else { 0 };
            let config = &self.ctx.config;
            let limits = match backlog.process {
                ProcessType::Checkout => config.autoscale_checkout,
                _ => config.autoscale_refill,
            };
            let to = plan::desired(
                running.quantity,
                backlog.waiting,
                *quiet,
                limits.per_dyno.unwrap_or(backlog.per_dyno),
                (limits.min, limits.max),
            );
            if to != running.quantity {
                changes.push(Scaling {
                    process: backlog.process.name().to_string(),
                    from: running.quantity,
                    to,
                    waiting: backlog.waiting,
                });
            }
        }
        if changes.is_empty() {
            return Ok(changes);
        }
        let updates: Vec<Formation> = changes
            .iter()
            .map(|c| Formation {
                process: c.process.clone(),
                quantity: c.to,
            })
            .collect();
        self.heroku
            .scale(&updates)
            .await
            .context("scaling the app's formation")?;
        for change in &changes {
            if change.to < change.from {
                // The next step down waits for another run of quiet checks.
                self.quiet
                    .retain(|process, _| process.name() != change.process);
            }
            tracing::info!(
                process = %change.process,
                from = change.from,
                to = change.to,
                waiting = change.waiting,
                "scaled"
            );
        }
        Ok(changes)
    }
}
