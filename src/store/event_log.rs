//! The events an operator must know (`<ns>:_events`): rollovers, the brake, the fleet cap,
//! failed boots, restarted dynos — kept whether or not a broker took them, newest first, the
//! last [`EVENTS_KEPT`], for the operators' page.

use anyhow::Context as _;
use redis::AsyncCommands;

use super::Store;
use crate::events::Log;

/// Events kept; older ones are dropped.
pub const EVENTS_KEPT: isize = 1_000;

impl Store {
    /// Keeps one event: its routing key, when, and its fields.
    pub async fn log_event(&self, key: &str, body: &[u8]) -> anyhow::Result<()> {
        let mut event: serde_json::Value =
            serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        if !event.is_object() {
            event = serde_json::json!({});
        }
        event["event"] = key.into();
        event["at"] = crate::clock::now_secs().into();
        let list = &self.names.event_log();
        let entry = &event.to_string();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lpush(list, entry)
            .ignore()
            .ltrim(list, 0, EVENTS_KEPT - 1)
            .ignore();
        let pipe = &pipe;
        self.call(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
            .context("keeping the event")
    }

    /// What [`crate::events::Events`] calls to keep a notable event: in the background, a
    /// failure logged.
    pub fn event_log(&self) -> Log {
        let store = self.clone();
        std::sync::Arc::new(move |key: &'static str, body: Vec<u8>| {
            let store = store.clone();
            tokio::spawn(async move {
                if let Err(error) = store.log_event(key, &body).await {
                    tracing::warn!(error = %crate::telemetry::report(&error), key, "event not kept");
                }
            });
        })
    }

    /// The newest `limit` events kept, newest first (an entry that cannot be read is left out).
    pub async fn events_kept(&self, limit: isize) -> anyhow::Result<Vec<serde_json::Value>> {
        let list = &self.names.event_log();
        let raw: Vec<String> =
            self.call(|mut conn| async move {
                conn.lrange(list, 0, limit.clamp(1, EVENTS_KEPT) - 1).await
            })
            .await
            .context("reading the events kept")?;
        Ok(raw
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect())
    }
}
