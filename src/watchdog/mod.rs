//! `warmer watchdog`: restarts a Heroku dyno before it swaps, as whacamole does, but relative to
//! each dyno's quota, on `R14` too, and never two dynos of one process type at once.
//!
//! It follows the app's system logs through the Platform API (a log session, then its
//! `logplex_url`, reopened whenever the stream ends or goes quiet), reads each dyno's runtime
//! metrics and memory errors ([`logline`]), decides ([`plan`]) and restarts with
//! `DELETE /apps/{app}/dynos/{dyno}`. Events `dyno.memory` and `dyno.restarted` go to
//! `<prefix>.events` when RabbitMQ is there; the watch does not depend on it.

mod logline;
mod plan;

use std::time::Duration;

pub use crate::config::Threshold;

use crate::clock::now_ms;
use crate::config::Secret;
use crate::context::Context;
use crate::events::{Event, Events};
use crate::heroku::{Heroku, HerokuError};
use crate::process::ProcessType;
use crate::shutdown::Shutdown;
use logline::{Sighting, process_type};
use plan::{Decision, Watch};

/// Runtime metrics arrive about every 20 s per dyno: a stream silent this long is dead.
const QUIET_STREAM: Duration = Duration::from_secs(120);
/// A longer line is no Heroku system line: skipped, and the stream's memory stays bounded.
const LONGEST_LINE: usize = 16 * 1024;
/// Tries of a restart the API rate-limited.
const RESTART_TRIES: usize = 3;

pub async fn run(ctx: Context, shutdown: Shutdown) -> anyhow::Result<()> {
    let heroku = Heroku::from_config(&ctx.config, ProcessType::Watchdog)?;
    let settings = &ctx.config.watchdog;
    let window_ms = settings.restart_window.as_millis() as u64;
    let mut watchdog = Watchdog {
        watch: Watch::new(settings.threshold, window_ms, settings.dynos.clone()),
        events: ctx.events(),
        heroku,
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(QUIET_STREAM)
            .user_agent(concat!("warmer/", env!("CARGO_PKG_VERSION")))
            .build()?,
    };
    let amqp = match ctx.amqp(ProcessType::Watchdog).await {
        Ok(connection) => {
            match connection.create_channel().await {
                Ok(channel) => watchdog.events.attach(channel),
                Err(error) => tracing::warn!(%error, "no events channel: watching without events"),
            }
            Some(connection)
        }
        Err(error) => {
            tracing::warn!(error = %crate::telemetry::report(&error), "RabbitMQ unreachable: watching without events");
            None
        }
    };
    tracing::info!(
        threshold = ?settings.threshold,
        window = ?settings.restart_window,
        dynos = %settings.dynos.join(","),
        "watching dyno memory"
    );
    let mut backoff = backon::BackoffBuilder::build(crate::retry::heroku_logs());
    loop {
        let followed = tokio::select! {
            _ = shutdown.wait() => break,
            followed = watchdog.follow() => followed,
        };
        let pause = match followed {
            Ok(()) => {
                backoff = backon::BackoffBuilder::build(crate::retry::heroku_logs());
                tracing::info!("the log stream ended; reopening it");
                Duration::from_secs(1)
            }
            // A token that is refused stays refused: say so and stop (Heroku restarts the
            // dyno, with backoff, until an operator fixes it).
            Err(error @ HerokuError::Unauthorized { .. }) => return Err(error.into()),
            Err(error) => {
                let backoff = backoff.next().unwrap_or(Duration::from_secs(60));
                let pause = match &error {
                    HerokuError::RateLimited {
                        retry_after: Some(after),
                        ..
                    } => backoff.max(*after),
                    _ => backoff,
                };
                tracing::warn!(%error, next_in = ?pause, "following the app's logs failed");
                pause
            }
        };
        if !shutdown.sleep(pause).await {
            break;
        }
    }
    if let Some(channel) = watchdog.events.detach() {
        let _ = channel.close(200, "bye".into()).await;
    }
    if let Some(connection) = amqp {
        let _ = connection.close(200, "bye".into()).await;
    }
    tracing::info!("watchdog stopped");
    Ok(())
}

struct Watchdog {
    watch: Watch,
    events: Events,
    heroku: Heroku,
    /// For the log stream (the Platform API client has a short overall timeout).
    http: reqwest::Client,
}

impl Watchdog {
    /// Opens a log session and handles its lines until the stream ends.
    async fn follow(&mut self) -> Result<(), HerokuError> {
        let url = self.heroku.log_session().await?;
        let mut response = self.stream(&url).await?;
        tracing::info!("following the app's logs");
        let mut pending: Vec<u8> = Vec::new();
        let mut skipping = false;
        while let Some(chunk) = response.chunk().await.map_err(stream_error)? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if !std::mem::take(&mut skipping) {
                    self.handle(&String::from_utf8_lossy(&line)).await;
                }
            }
            if pending.len() > LONGEST_LINE {
                pending.clear();
                skipping = true;
            }
        }
        Ok(())
    }

    async fn stream(&self, url: &Secret) -> Result<reqwest::Response, HerokuError> {
        let response = self
            .http
            .get(url.expose())
            .send()
            .await
            .map_err(stream_error)?;
        if !response.status().is_success() {
            return Err(HerokuError::Transport(format!(
                "the log stream answered HTTP {}",
                response.status().as_u16()
            )));
        }
        Ok(response)
    }

    async fn handle(&mut self, line: &str) {
        let Some(sighting) = logline::parse(line) else {
            return;
        };
        let dyno = sighting.dyno().to_string();
        if !self.watch.watches(&dyno) {
            return;
        }
        if let Sighting::Memory {
            total_mb, quota_mb, ..
        } = &sighting
        {
            self.events
                .emit(Event::DynoMemory {
                    dyno: dyno.clone(),
                    process_type: process_type(&dyno).to_string(),
                    size: *total_mb,
                    quota: *quota_mb,
                    units: "MB",
                })
                .await;
        }
        match self.watch.decide(&sighting, now_ms()) {
            Decision::Nothing => {}
            Decision::Restart(reason) => match self.restart(&dyno).await {
                Ok(()) => {
                    self.watch.restarted(&dyno, now_ms());
                    tracing::info!(%dyno, reason = reason.label(), ?sighting, "count#warmer.watchdog.restarts" = 1, "restarted a dyno");
                    self.events
                        .emit(Event::DynoRestarted {
                            dyno,
                            reason: reason.label(),
                        })
                        .await;
                }
                Err(error) => {
                    tracing::error!(%dyno, reason = reason.label(), %error, "could not restart a dyno; trying at its next sample");
                }
            },
            Decision::HeldByWindow(reason, ago) => {
                tracing::debug!(%dyno, reason = reason.label(), ago_s = crate::clock::secs(ago), "over the threshold, but restarted within the window");
            }
            Decision::HeldByRolling(reason, other) => {
                tracing::info!(%dyno, reason = reason.label(), restarting = %other, "over the threshold; waits until the dyno of its type being restarted is back");
            }
        }
    }

    /// Restarts `dyno`, waiting out a rate limit (at most a minute) up to [`RESTART_TRIES`].
    async fn restart(&self, dyno: &str) -> Result<(), HerokuError> {
        let mut tries = 0;
        loop {
            match self.heroku.restart(dyno).await {
                Err(HerokuError::RateLimited {
                    retry_after: Some(after),
                    ..
                }) if tries + 1 < RESTART_TRIES => {
                    tries += 1;
                    tokio::time::sleep(after.min(Duration::from_secs(60))).await;
                }
                result => return result,
            }
        }
    }
}

/// A stream error with its causes and without the URL (it carries the session's credentials).
fn stream_error(error: reqwest::Error) -> HerokuError {
    HerokuError::Transport(format!(
        "the log stream: {:#}",
        anyhow::Error::new(error.without_url())
    ))
}
