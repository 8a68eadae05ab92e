//! A checkout request as the travis worker sends it, validated field by field.
//!
//! Pure: bytes and AMQP properties in, a [`CheckoutRequest`] or a message saying what was wrong
//! out. Nothing from outside can make this panic.

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use serde_json::Value;

use crate::pool::{PoolName, resource_name};

/// Bodies larger than this are refused before parsing (a real request is ~300 bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// Header carrying an absolute deadline: milliseconds since the Unix epoch, or an AMQP timestamp.
pub const DEADLINE_HEADER: &str = "x-warmer-deadline";
/// A request without any deadline must be answered within this (milliseconds).
pub const DEFAULT_BUDGET_MS: u64 = 30_000;

const FIELDS: [&str; 5] = ["site", "zone", "image_name", "machine_type", "public_ip"];

/// A valid checkout request.
#[derive(Debug, PartialEq)]
pub struct CheckoutRequest {
    pub pool: PoolName,
    pub site: Option<String>,
    pub zone: Option<String>,
}

/// Parses and validates a request body; the error says which field is wrong and why.
pub fn parse(body: &[u8]) -> Result<CheckoutRequest, String> {
    if body.len() > MAX_BODY {
        return Err(format!(
            "request body is {} bytes; at most {MAX_BODY} are accepted",
            body.len()
        ));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err(format!(
            "request body must be a JSON object, got {}",
            kind(&value)
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{}`; expected only {}",
            unknown.escape_debug(),
            FIELDS.join(", ")
        ));
    }
    let image_value = string(&fields, "image_name")?.ok_or("image_name is required")?;
    let machine_value = string(&fields, "machine_type")?.ok_or("machine_type is required")?;
    let image = resource_name(image_value, "images").map_err(|e| format!("image_name {e}"))?;
    let machine_type =
        resource_name(machine_value, "machineTypes").map_err(|e| format!("machine_type {e}"))?;
    let public_ip = match fields.get("public_ip") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" => true,
        Some(Value::String(s)) if s == "false" || s.is_empty() => false,
        Some(other) => {
            return Err(format!(
                "public_ip must be true, false, \"true\" or \"false\", got {}",
                kind(other)
            ));
        }
    };
    let zone = string(&fields, "zone")?
        .map(|z| resource_name(z, "zones").map_err(|e| format!("zone {e}")))
        .transpose()?
        .map(String::from);
    let site = string(&fields, "site")?;
    if let Some(site) = site
        && (site.len() > 64 || !site.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return Err(format!(
            "site must be a short name such as `org` or `com`, got `{}`",
            site.chars().take(64).collect::<String>().escape_debug()
        ));
    }
    Ok(CheckoutRequest {
        pool: PoolName {
            image: image.into(),
            machine_type: machine_type.into(),
            public_ip,
        },
        site: site.map(String::from),
        zone,
    })
}

fn string<'a>(
    fields: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{name} must be a string, got {}", kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The request's identity: the same for every delivery of one request, different between
/// requests, and bound to the address its replies go to, so that nobody who sends another
/// request's ids from another connection can be given that request's lease: a SHA-256 of the
/// reply address and the message id if the requester set one, else its correlation id. Hashed,
/// so that Redis never holds a reply address (knowing a direct reply-to name lets one send that
/// requester a forged reply). `None` without `reply_to`, or without both `message_id` and
/// `correlation_id` (a reply address alone is shared by every request of a channel: two
/// requests would share a VM).
pub fn identity(properties: &BasicProperties) -> Option<String> {
    let reply_to = properties.reply_to().as_ref()?;
    let (kind, id) = match (properties.message_id(), properties.correlation_id()) {
        (Some(id), _) => ("message_id", id),
        (None, Some(id)) => ("correlation_id", id),
        (None, None) => return None,
    };
    let mut hashed = openssl::sha::Sha256::new();
    for part in [reply_to.as_str(), kind, id.as_str()] {
        // Length-prefixed, so that no two different triples hash the same bytes.
        hashed.update(&(part.len() as u64).to_be_bytes());
        hashed.update(part.as_bytes());
    }
    let digest = hashed.finish();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("i:{hex}"))
}

/// When the requester stops waiting (ms since epoch): the `x-warmer-deadline` header, else
/// `timestamp` + `expiration`, else `received` + `expiration`, else `received` + 30 s.
///
/// The header is milliseconds since the epoch as an integer or a decimal string, or an AMQP
/// `timestamp` field, which is seconds by the AMQP specification. Any other type, and a number
/// too small to be milliseconds of this century (seconds sent as milliseconds), is refused: a
/// deadline read in the wrong unit would drop the request without a reply.
pub fn deadline(properties: &BasicProperties, received_ms: u64) -> Result<u64, String> {
    let header = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(DEADLINE_HEADER));
    if let Some(value) = header {
        let ms = match value {
            AMQPValue::Timestamp(secs) => secs.saturating_mul(1000),
            AMQPValue::LongLongInt(n) => non_negative(*n)?,
            AMQPValue::LongInt(n) => non_negative(i64::from(*n))?,
            AMQPValue::LongUInt(n) => u64::from(*n),
            AMQPValue::LongString(s) => decimal(&String::from_utf8_lossy(s.as_bytes()))?,
            AMQPValue::ShortString(s) => decimal(s.as_str())?,
            other => {
                return Err(format!(
                    "header {DEADLINE_HEADER} must be milliseconds since the epoch as an integer \
                     or a decimal string, or an AMQP timestamp (seconds); got a field of type {}",
                    other.get_type()
                ));
            }
        };
        if ms < MIN_DEADLINE_MS {
            return Err(format!(
                "header {DEADLINE_HEADER} is {ms}, which is before 2001 as milliseconds since \
                 the epoch: send milliseconds (or an AMQP timestamp for seconds)"
            ));
        }
        // Clamp: a deadline further than an hour away is not a deadline.
        return Ok(ms.min(received_ms.saturating_add(3_600_000)));
    }
    let expiration = properties
        .expiration()
        .as_ref()
        .and_then(|e| e.as_str().parse::<u64>().ok());
    Ok(match (expiration, properties.timestamp()) {
        (Some(ttl), Some(sent_secs)) => sent_secs.saturating_mul(1000).saturating_add(ttl),
        (Some(ttl), None) => received_ms.saturating_add(ttl),
        (None, _) => received_ms.saturating_add(DEFAULT_BUDGET_MS),
    })
}

/// The smallest plausible deadline: 2001-09-09 in milliseconds. A deadline in seconds of any
/// date since 1970 is below it for the next 30,000 years.
const MIN_DEADLINE_MS: u64 = 1_000_000_000_000;

fn non_negative(n: i64) -> Result<u64, String> {
    u64::try_from(n).map_err(|_| format!("header {DEADLINE_HEADER} is negative ({n})"))
}

fn decimal(text: &str) -> Result<u64, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "header {DEADLINE_HEADER} must be a whole number of milliseconds, got `{}`",
            text.chars().take(40).collect::<String>().escape_debug()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_travis_request_parses_with_urls_or_short_names() {
        let travis = br#"{"site":"org","zone":"us-central1-c",
          "image_name":"https://www.googleapis.com/compute/v1/projects/p/global/images/travis-ci-garnet-trusty-1503417006",
          "machine_type":"https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-c/machineTypes/n1-standard-2",
          "public_ip":false}"#;
        let short = br#"{"image_name":"travis-ci-garnet-trusty-1503417006","machine_type":"n1-standard-2","public_ip":"false"}"#;
        let a = parse(travis).unwrap();
        let b = parse(short).unwrap();
        assert_eq!(a.pool, b.pool);
        assert_eq!(
            a.pool.to_string(),
            "travis-ci-garnet-trusty-1503417006:n1-standard-2"
        );
        let public = parse(br#"{"image_name":"i","machine_type":"m","public_ip":"true"}"#).unwrap();
        assert_eq!(public.pool.to_string(), "i:m:public");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 8] = [
            (b"{", "not valid JSON"),
            (b"[]", "JSON object"),
            (br#"{"machine_type":"m"}"#, "image_name is required"),
            (
                br#"{"image_name":7,"machine_type":"m"}"#,
                "image_name must be a string",
            ),
            (
                br#"{"image_name":"i","machine_type":"m","public_ip":"yes"}"#,
                "public_ip",
            ),
            (
                br#"{"image_name":"i","machine_type":"m","extra":1}"#,
                "unknown field `extra`",
            ),
            (
                br#"{"image_name":"i/../j","machine_type":"m"}"#,
                "image_name",
            ),
            (
                br#"{"image_name":"i","machine_type":"m","site":"a b"}"#,
                "site",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(body).unwrap_err();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn an_identity_is_bound_to_the_reply_address_and_never_shows_it() {
        let reply_to = "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAy";
        let request = BasicProperties::default()
            .with_reply_to(reply_to.into())
            .with_message_id("job-42".into())
            .with_correlation_id("c-1".into());
        let same = identity(&request.clone().with_correlation_id("c-2".into()));
        let elsewhere = identity(
            &request
                .clone()
                .with_reply_to("amq.rabbitmq.reply-to.other".into()),
        );
        let by_correlation = BasicProperties::default()
            .with_reply_to(reply_to.into())
            .with_correlation_id("job-42".into());
        let id = identity(&request).unwrap();
        assert_eq!(Some(&id), same.as_ref(), "the message id names the request");
        assert_ne!(
            Some(&id),
            elsewhere.as_ref(),
            "another reply address, another request"
        );
        assert_ne!(
            Some(&id),
            identity(&by_correlation).as_ref(),
            "an id's kind counts"
        );
        assert!(!id.contains(reply_to) && !id.contains("job-42"));
        assert_eq!(
            identity(&BasicProperties::default().with_message_id("x".into())),
            None
        );
        assert_eq!(
            identity(&BasicProperties::default().with_reply_to(reply_to.into())),
            None
        );
    }

    #[test]
    fn deadlines_come_from_header_timestamp_or_expiration() {
        let props = BasicProperties::default();
        assert_eq!(deadline(&props, 1_000), Ok(1_000 + DEFAULT_BUDGET_MS));
        let props = BasicProperties::default().with_expiration("5000".into());
        assert_eq!(deadline(&props, 1_000), Ok(6_000));
        let props = props.with_timestamp(10);
        assert_eq!(deadline(&props, 99_000), Ok(15_000));
        let now = 1_800_000_000_000;
        let header = |value: AMQPValue| {
            let mut headers = lapin::types::FieldTable::default();
            headers.insert(DEADLINE_HEADER.into(), value);
            props.clone().with_headers(headers)
        };
        assert_eq!(
            deadline(&header(AMQPValue::LongLongInt(now as i64 + 42)), now),
            Ok(now + 42)
        );
        assert_eq!(
            deadline(
                &header(AMQPValue::LongString("18446744073709551615".into())),
                now
            ),
            Ok(now + 3_600_000),
            "clamped, no overflow"
        );
    }

    #[test]
    fn an_amqp_timestamp_deadline_is_seconds() {
        let now = 1_800_000_000_000;
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            DEADLINE_HEADER.into(),
            AMQPValue::Timestamp(now / 1000 + 60),
        );
        let props = BasicProperties::default().with_headers(headers);
        assert_eq!(deadline(&props, now), Ok(now + 60_000));
    }

    #[test]
    fn a_deadline_of_another_type_or_unit_is_refused_with_the_reason() {
        let now = 1_800_000_000_000;
        let cases = [
            (AMQPValue::Double(1.8e12), "type"),
            (AMQPValue::Boolean(true), "type"),
            (AMQPValue::LongLongInt(-5), "negative"),
            (AMQPValue::LongLongInt(1_800_000_060), "before 2001"),
            (AMQPValue::LongUInt(1_800_000_060), "before 2001"),
            (AMQPValue::LongString("soon".into()), "whole number"),
        ];
        for (value, why) in cases {
            let mut headers = lapin::types::FieldTable::default();
            headers.insert(DEADLINE_HEADER.into(), value.clone());
            let props = BasicProperties::default().with_headers(headers);
            let error = deadline(&props, now).unwrap_err();
            assert!(
                error.contains(DEADLINE_HEADER) && error.contains(why),
                "{value:?}: {error}"
            );
        }
    }
}
