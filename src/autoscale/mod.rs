//! `warmer autoscale`: scales the consumer process types on Heroku by the length of their queues
//! (SPEC §5), through the Platform API.
//!
//! Every `WARMER_AUTOSCALE_INTERVAL` it reads the ready messages of `<prefix>.checkout` and
//! `<prefix>.refill` and the app's formation, decides each type's dynos with the pure
//! [`plan::desired`], and sends one `PATCH` with the types that change. Types absent from the
//! formation (not in the Procfile's release) are left alone and logged. An API or broker error
//! skips that check; the next one tries again. Run one `autoscale` dyno: the API limit (4,500
//! requests an hour) is shared by every tool using the token, and a check costs one request,
//! two when it scales.

pub mod heroku;
pub mod plan;

use std::collections::HashMap;

use anyhow::Context as _;

use crate::amqp::QueueMonitor;
use crate::context::Context;
use crate::shutdown::Shutdown;
use heroku::{Formation, Heroku};

/// One change of a process type's dynos.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaling {
    pub process: String,
    pub from: u32,
    pub to: u32,
    pub ready: u32,
}

/// One autoscale process.
pub struct Autoscaler {
    ctx: Context,
    heroku: Heroku,
    queues: QueueMonitor,
    /// Consecutive checks that found nothing waiting, per process type.
    quiet: HashMap<&'static str, u32>,
}

impl Autoscaler {
    /// Fails, naming the variable, without `HEROKU_API_TOKEN` or `HEROKU_APP_NAME`.
    pub fn new(ctx: Context) -> anyhow::Result<Self> {
        let heroku = Heroku::from_config(&ctx.config)?;
        let queues = QueueMonitor::new(
            ctx.config.amqp_url.clone(),
            format!("{}.autoscale", ctx.names.prefix()),
            ctx.names.clone(),
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
            max = self.ctx.config.autoscale_max,
            "autoscaling"
        );
        loop {
            if let Err(error) = self.check().await {
                tracing::error!(error = %format!("{error:#}"), "autoscale check failed; trying again next interval");
            }
            if !shutdown.sleep(interval).await {
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
        let formation = self
            .heroku
            .formation()
            .await
            .context("reading the app's formation")?;
        let max = self.ctx.config.autoscale_max;
        let mut changes = Vec::new();
        for depth in depths {
            let Some(running) = formation.iter().find(|f| f.process == depth.process) else {
                tracing::warn!(
                    process = depth.process,
                    "process type not in the app's formation (add it to the Procfile): not scaled"
                );
                continue;
            };
            let ready = depth.ready.unwrap_or(0);
            let quiet = self.quiet.entry(depth.process).or_default();
            *quiet = if ready == 0 { *quiet + 1 } else { 0 };
            let to = plan::desired(
                running.quantity,
                ready,
                *quiet,
                per_dyno(depth.process),
                max,
            );
            if to < running.quantity {
                *quiet = 0;
            }
            if to != running.quantity {
                changes.push(Scaling {
                    process: depth.process.to_string(),
                    from: running.quantity,
                    to,
                    ready,
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
            tracing::info!(
                process = %change.process,
                from = change.from,
                to = change.to,
                ready = change.ready,
                "scaled"
            );
        }
        Ok(changes)
    }
}

/// Waiting messages that justify one more dyno: what one consumer process takes at once.
fn per_dyno(process: &str) -> u32 {
    match process {
        "checkout" => u32::from(crate::checkout::PREFETCH),
        _ => u32::from(crate::refill::PREFETCH),
    }
}
