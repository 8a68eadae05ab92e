//! What arrives on the refill queue (docs/protocol.md): pool-drop events and operator fill commands,
//! validated. Pure.

use serde_json::Value;

use crate::config::Secret;
use crate::pool::PoolName;

/// Which pools a message asks to refill.
#[derive(Debug, PartialEq, Eq)]
pub enum Work {
    Pool(PoolName),
    AllPools,
}

/// Reads a refill message. Fill commands must carry one of `tokens` when any are configured;
/// events (`pool.dropped`, `pool.empty`) are hints and need none. The error never contains the
/// token.
pub fn parse(body: &[u8], tokens: &[Secret]) -> Result<Work, String> {
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
    match fields.get("command") {
        None => pool
            .map(Work::Pool)
            .ok_or_else(|| "an event must name its pool".to_string()),
        Some(Value::String(command)) if command == "fill" => {
            if !tokens.is_empty() {
                let given = fields.get("token").and_then(Value::as_str);
                let valid =
                    given.is_some_and(|given| tokens.iter().any(|t| t.matches(given.as_bytes())));
                if !valid {
                    return Err("fill command without a valid token".into());
                }
            }
            Ok(pool.map_or(Work::AllPools, Work::Pool))
        }
        Some(other) => Err(format!("unknown command {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_commands_are_read() {
        let pool: PoolName = "img:n1-standard-2".parse().unwrap();
        assert_eq!(
            parse(
                br#"{"pool":"img:n1-standard-2","instance":"vm","zone":"z"}"#,
                &[]
            ),
            Ok(Work::Pool(pool.clone()))
        );
        assert_eq!(parse(br#"{"command":"fill"}"#, &[]), Ok(Work::AllPools));
        assert_eq!(
            parse(br#"{"command":"fill","pool":"img:n1-standard-2"}"#, &[]),
            Ok(Work::Pool(pool))
        );
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"command":"drain"}"#,
            br#"{"pool":"a/b:c"}"#,
            br#"{}"#,
        ] {
            assert!(parse(bad, &[]).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn commands_need_a_valid_token_when_tokens_are_configured() {
        let tokens = [Secret::new("s3cret")];
        assert!(parse(br#"{"command":"fill","token":"s3cret"}"#, &tokens).is_ok());
        let err = parse(br#"{"command":"fill","token":"guess"}"#, &tokens).unwrap_err();
        assert!(!err.contains("guess"));
        assert!(parse(br#"{"command":"fill"}"#, &tokens).is_err());
        // Events are hints and carry no token.
        assert!(parse(br#"{"pool":"img:n1-standard-2"}"#, &tokens).is_ok());
    }
}
