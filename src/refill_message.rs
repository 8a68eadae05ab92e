//! The refill queue's one message type (`<prefix>.refill`, docs/protocol.md): a hint that a pool
//! may want VMs (coalesced in Redis to one pending per pool), or a fill command. Written by
//! checkout (hints), the reconciler and `warmer fill` (fills), and read back by the refill
//! consumer, judged by who sent it (see [`crate::auth`]): the body and its parse side by side.

use std::time::Duration;

use lapin::BasicProperties;
use serde_json::Value;

use crate::amqp::{Publisher, json_properties};
use crate::clock::now_ms;
use crate::config::Secret;
use crate::names::Names;
use crate::pool::PoolName;

/// How long a fill command may wait in the refill queue: after that the reconciler has sent
/// another for any pool still short, so an old one is dead-lettered (as `expired`) unread.
pub const FILL_TTL: Duration = Duration::from_secs(600);

/// What the refill consumer reads from its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefillMessage {
    /// `{"pool":…}`: the pool may want VMs (a checkout took one, or found none). Coalesced: at
    /// most one is pending per pool (`<ns>:_hints`).
    Hint(PoolName),
    /// An operator's or the reconciler's fill command.
    Fill(FillCommand),
}

impl RefillMessage {
    /// The JSON body (a fill signed now, if it has a signer).
    pub fn body(&self) -> Vec<u8> {
        match self {
            RefillMessage::Hint(pool) => serde_json::json!({"pool": pool.to_string()})
                .to_string()
                .into_bytes(),
            RefillMessage::Fill(command) => command.body(now_ms()),
        }
    }

    /// Persistent JSON from the broker user `sender` (the `user_id` the broker vouches for);
    /// a fill expires after [`FILL_TTL`].
    pub fn properties(&self, sender: &str) -> BasicProperties {
        let properties = json_properties().with_user_id(sender.into());
        match self {
            RefillMessage::Hint(_) => properties,
            RefillMessage::Fill(_) => {
                properties.with_expiration(FILL_TTL.as_millis().to_string().as_str().into())
            }
        }
    }

    /// Publishes to the refill queue as the broker user `sender` (the publisher's connection's)
    /// and waits for the broker's confirm.
    pub async fn send(
        &self,
        publisher: &Publisher,
        names: &Names,
        sender: &str,
    ) -> anyhow::Result<()> {
        publisher
            .publish(
                "",
                &names.refill_queue(),
                &self.body(),
                self.properties(sender),
            )
            .await
    }
}

/// A fill command for the refill queue: `{"command":"fill"}` for every pool, with `"pool"` for
/// one. An operator's is signed with a token (`"issued_at"`, `"signature"`; see [`crate::auth`]):
/// the token itself is never in the message. `Debug` hides the signer.
#[derive(Clone, PartialEq, Eq)]
pub struct FillCommand {
    pub pool: Option<PoolName>,
    /// The operator token that signs it; `None` for warmer's own processes, whose broker user
    /// vouches for them.
    pub signer: Option<Secret>,
}

impl FillCommand {
    /// The JSON body, signed as issued at `now` (ms) if there is a signer.
    pub fn body(&self, now: u64) -> Vec<u8> {
        let mut command = serde_json::json!({"command": "fill"});
        if let Some(pool) = &self.pool {
            command["pool"] = pool.to_string().into();
        }
        if let Some(signature) = self
            .signer
            .as_ref()
            .and_then(|token| crate::auth::sign_fill(token, self.pool.as_ref(), now))
        {
            command["issued_at"] = now.into();
            command["signature"] = signature.into();
        }
        command.to_string().into_bytes()
    }
}

impl std::fmt::Debug for FillCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillCommand")
            .field("pool", &self.pool)
            .field("signed", &self.signer.is_some())
            .finish()
    }
}

impl RefillMessage {
    /// The pool it is about; `None`: every pool (a fill of all).
    pub fn pool(&self) -> Option<&PoolName> {
        match self {
            RefillMessage::Hint(pool) => Some(pool),
            RefillMessage::Fill(command) => command.pool.as_ref(),
        }
    }
}

/// Who the broker says sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// Warmer's own processes' broker user (the message's validated `user_id`).
    Warmer,
    /// Anyone else: a fill must prove an operator token.
    Other,
}

/// Reads a refill message sent `from`, at `now` (ms) (a fill read has no signer: it was
/// checked here). When `tokens` are configured, only warmer's
/// own user may send hints, and a fill from anyone else must be signed with one of them (or,
/// as earlier versions sent it, carry one). The error never contains a token.
pub fn parse(
    body: &[u8],
    tokens: &[Secret],
    from: From,
    now: u64,
) -> Result<RefillMessage, String> {
    if body.len() > 4096 {
        return Err(format!(
            "message is {} bytes; at most 4096 are accepted",
            body.len()
        ));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("message is not valid JSON: {e}"))?;
    let Some(fields) = value.as_object() else {
        return Err("message must be a JSON object".into());
    };
    let pool = match fields.get("pool") {
        None | Some(Value::Null) => None,
        Some(Value::String(pool)) => Some(pool.parse::<PoolName>()?),
        Some(_) => return Err("pool must be a string".into()),
    };
    let trusted = from == From::Warmer || tokens.is_empty();
    match fields.get("command") {
        None => {
            if !trusted {
                return Err(
                    "refill hint refused: only warmer's own broker user sends hints".into(),
                );
            }
            pool.map(RefillMessage::Hint)
                .ok_or_else(|| "a hint must name its pool".to_string())
        }
        Some(Value::String(command)) if command == "fill" => {
            if !trusted {
                let signed = match (fields.get("issued_at"), fields.get("signature")) {
                    (Some(Value::Number(at)), Some(Value::String(signature))) => {
                        at.as_u64().is_some_and(|at| {
                            crate::auth::fill_is_signed(tokens, pool.as_ref(), at, signature, now)
                        })
                    }
                    _ => false,
                };
                let carried = fields
                    .get("token")
                    .and_then(Value::as_str)
                    .is_some_and(|given| tokens.iter().any(|t| t.matches(given.as_bytes())));
                if !(signed || carried) {
                    return Err("fill command refused: not from warmer's own broker user, and not signed with a valid operator token (or signed too long ago)".into());
                }
            }
            Ok(RefillMessage::Fill(FillCommand { pool, signer: None }))
        }
        Some(other) => Err(format!(
            "unknown command {}",
            other.to_string().chars().take(40).collect::<String>()
        )),
    }
}

/// Whether a message carries a `token` field: it must never reach a dead letter as it is.
pub fn carries_token(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|value| value.get("token").is_some())
}

/// A message with its `token` field replaced, for a dead letter; `None` if it has none.
pub fn redacted(body: &[u8]) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let token = value.as_object_mut()?.get_mut("token")?;
    *token = Value::String("[redacted]".into());
    Some(value.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(pool: Option<PoolName>) -> RefillMessage {
        RefillMessage::Fill(FillCommand { pool, signer: None })
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn hints_and_commands_from_warmer_are_read() {
        let pool: PoolName = "img:n1-standard-2".parse().unwrap();
        let parse = |body: &[u8]| super::parse(body, &[], From::Warmer, NOW);
        assert_eq!(
            parse(br#"{"pool":"img:n1-standard-2"}"#),
            Ok(RefillMessage::Hint(pool.clone()))
        );
        assert_eq!(parse(br#"{"command":"fill"}"#), Ok(fill(None)));
        assert_eq!(
            parse(br#"{"command":"fill","pool":"img:n1-standard-2"}"#),
            Ok(fill(Some(pool)))
        );
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"command":"drain"}"#,
            br#"{"pool":"a/b:c"}"#,
            br#"{}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn with_tokens_others_need_a_signature_or_a_token_and_send_no_hints() {
        let tokens = [Secret::new("s3cret")];
        let other = |body: &[u8]| super::parse(body, &tokens, From::Other, NOW);
        let pool: PoolName = "img:n1-standard-2".parse().unwrap();
        let signature = crate::auth::sign_fill(&tokens[0], Some(&pool), NOW).unwrap();
        let signed = serde_json::json!({"command": "fill", "pool": pool.to_string(),
            "issued_at": NOW, "signature": signature});
        assert_eq!(
            other(signed.to_string().as_bytes()),
            Ok(fill(Some(pool.clone())))
        );
        // The signature is the pool's: it does not fill every pool.
        let widened =
            serde_json::json!({"command": "fill", "issued_at": NOW, "signature": signature});
        assert!(other(widened.to_string().as_bytes()).is_err());
        assert!(other(br#"{"command":"fill","token":"s3cret"}"#).is_ok());
        let error = other(br#"{"command":"fill","token":"guess"}"#).unwrap_err();
        assert!(!error.contains("guess"));
        assert!(other(br#"{"command":"fill"}"#).is_err());
        assert!(
            other(br#"{"pool":"img:n1-standard-2"}"#).is_err(),
            "hints are warmer's"
        );
        // Warmer's own user needs neither.
        let warmer = super::parse(
            br#"{"pool":"img:n1-standard-2"}"#,
            &tokens,
            From::Warmer,
            NOW,
        );
        assert_eq!(warmer, Ok(RefillMessage::Hint(pool)));
    }

    #[test]
    fn a_token_never_reaches_a_dead_letter() {
        let body = br#"{"command":"fill","pool":"bad/pool","token":"s3cret"}"#;
        assert!(carries_token(body));
        let copy = String::from_utf8(redacted(body).unwrap()).unwrap();
        assert!(!copy.contains("s3cret") && copy.contains("bad/pool"));
        assert!(!carries_token(br#"{"command":"fill"}"#));
        assert_eq!(redacted(br#"{"command":"fill"}"#), None);
    }

    #[test]
    fn a_signed_fill_reads_as_the_refill_consumer_expects_and_never_holds_its_token() {
        let token = Secret::new("s3cret");
        let command = FillCommand {
            pool: Some("img:n1-standard-1".parse().unwrap()),
            signer: Some(token.clone()),
        };
        let now = 1_800_000_000_000;
        let body = command.body(now);
        let parsed = parse(&body, &[token], From::Other, now);
        assert_eq!(parsed, Ok(fill(Some("img:n1-standard-1".parse().unwrap()))));
        assert!(!String::from_utf8_lossy(&body).contains("s3cret"));
        assert!(!format!("{command:?}").contains("s3cret"));
        let all = FillCommand {
            pool: None,
            signer: None,
        };
        assert_eq!(all.body(now), br#"{"command":"fill"}"#);
    }
}
