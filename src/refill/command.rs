//! What arrives on the refill queue (docs/protocol.md): refill hints and fill commands, read
//! and judged by who sent them (see [`crate::auth`]). Pure.

use serde_json::Value;

use crate::config::Secret;
use crate::pool::PoolName;

/// Which pools a message asks to refill.
#[derive(Debug, PartialEq, Eq)]
pub enum Work {
    Pool(PoolName),
    AllPools,
}

/// Who the broker says sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// Warmer's own processes' broker user (the message's validated `user_id`).
    Warmer,
    /// Anyone else: a fill must prove an operator token.
    Other,
}

/// Reads a refill message sent `from`, at `now` (ms). When `tokens` are configured, only warmer's
/// own user may send hints, and a fill from anyone else must be signed with one of them (or,
/// as earlier versions sent it, carry one). The error never contains a token.
pub fn parse(body: &[u8], tokens: &[Secret], from: From, now: u64) -> Result<Work, String> {
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
            pool.map(Work::Pool)
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
            Ok(pool.map_or(Work::AllPools, Work::Pool))
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

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn hints_and_commands_from_warmer_are_read() {
        let pool: PoolName = "img:n1-standard-2".parse().unwrap();
        let parse = |body: &[u8]| super::parse(body, &[], From::Warmer, NOW);
        assert_eq!(
            parse(br#"{"pool":"img:n1-standard-2"}"#),
            Ok(Work::Pool(pool.clone()))
        );
        assert_eq!(parse(br#"{"command":"fill"}"#), Ok(Work::AllPools));
        assert_eq!(
            parse(br#"{"command":"fill","pool":"img:n1-standard-2"}"#),
            Ok(Work::Pool(pool))
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
            Ok(Work::Pool(pool.clone()))
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
        assert_eq!(warmer, Ok(Work::Pool(pool)));
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
}
