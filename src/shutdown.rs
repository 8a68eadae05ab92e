//! The shutdown signal passed into every loop (SIGTERM from Heroku, Ctrl-C from a terminal).
//!
//! Loops check it only where stopping is safe; the AMQP consume loop turns it into a
//! `basic.cancel`, then finishes or requeues in-flight work (see `amqp::consume`).

use tokio::sync::watch;

/// Fires the [`Shutdown`] signals made with it.
#[derive(Clone)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

/// A cheap-to-clone view of whether the process is stopping.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new trigger and its signal.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown is triggered (never, if every trigger was dropped unfired).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|stopping| *stopping).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Sleeps for `duration`; returns false if shutdown came first.
    pub async fn sleep(&self, duration: std::time::Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => true,
            _ = self.wait() => false,
        }
    }
}

/// A signal fired by SIGTERM or SIGINT.
pub fn on_signals() -> anyhow::Result<Shutdown> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (trigger, shutdown) = channel();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down: finishing in-flight work");
        trigger.fire();
    });
    Ok(shutdown)
}
