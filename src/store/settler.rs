//! Settling leases in batches, for a checkout process: each call to `settle.lua` takes every
//! request answered since the previous call was sent, so under load a checkout costs less than
//! one Redis round trip of its own for its settle, and alone it costs one.

use tokio::sync::{mpsc, oneshot};

use super::{Error, Result, Settled, Store, ToSettle};

/// Settles leases in batches of at most [`SETTLE_BATCH`] (see the module).
#[derive(Clone)]
pub struct Settler {
    requests: mpsc::UnboundedSender<SettleRequest>,
}

type SettleRequest = (ToSettle, oneshot::Sender<Result<Settled>>);

/// Leases settled by one script call at most.
const SETTLE_BATCH: usize = 64;

impl Settler {
    /// Starts the batching task; it ends when every [`Settler`] is dropped.
    pub fn start(store: Store) -> Self {
        let (requests, mut queue) = mpsc::unbounded_channel::<SettleRequest>();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut batch = vec![first];
                while batch.len() < SETTLE_BATCH {
                    match queue.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                let (leases, answers): (Vec<ToSettle>, Vec<_>) = batch.into_iter().unzip();
                match store.settle(&leases).await {
                    Ok(settled) => {
                        for (answer, settled) in answers.into_iter().zip(settled) {
                            let _ = answer.send(Ok(settled));
                        }
                    }
                    Err(error) => {
                        for answer in answers {
                            let _ = answer.send(Err(error.clone()));
                        }
                    }
                }
            }
        });
        Self { requests }
    }

    /// Marks a lease handed out (see [`Store::settle`]).
    pub async fn settle(&self, lease: ToSettle) -> Result<Settled> {
        let (answer, settled) = oneshot::channel();
        let stopped = || Error::Unavailable("the settling task stopped".into());
        self.requests.send((lease, answer)).map_err(|_| stopped())?;
        settled.await.map_err(|_| stopped())?
    }
}
