//! Who may ask the refill consumer for work, and how it tells. Pure.
//!
//! RabbitMQ's permissions cannot tell one routing key of the default exchange from another:
//! whoever may publish checkout requests may publish to `<prefix>.refill` as well. So a refill
//! message is believed only when
//!
//! - the broker vouches for its sender: RabbitMQ refuses a message whose `user_id` is not the
//!   user of the connection that publishes it (unless that user has the `impersonator` tag, which
//!   no role of warmer's has; `warmer check` warns of it), and the `user_id` is warmer's own
//!   processes' broker user. Hints, the reconciler's fills, and operators who run as warmer's
//!   user are believed this way: no token travels with them; or
//! - it is a fill command *signed* with an operator token (`WARMER_AUTH_TOKENS`): the HMAC-SHA256,
//!   under the token, of what it asks and when it was issued. The token itself never leaves the
//!   operator's machine, so it never sits in a queue or a dead letter; a signature is good for
//!   [`SIGNATURE_LIFETIME`], so a copy taken from a queue can only repeat the same fill soon
//!   after (and a fill is idempotent); or
//! - it is a fill command carrying a token itself (the form of earlier versions, still accepted;
//!   the refill consumer never dead-letters one with its token in it).
//!
//! Without `WARMER_AUTH_TOKENS`, nothing is checked: the deployment has not set operators up.
//!
//! Over HTTP (travis-ci/warmer's API, the page of `warmer web`), an operator or a worker sends a
//! token as the password of basic auth ([`basic`]).

use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

use crate::config::Secret;
use crate::pool::PoolName;

/// How long a signed fill command is good for after it was issued; also how far ahead of the
/// refill consumer's clock it may have been issued.
pub const SIGNATURE_LIFETIME: Duration = Duration::from_secs(600);
const CLOCK_SKEW_MS: u64 = 60_000;

/// The signature of a fill command of `pool` (`None`: every pool) issued at `issued_at` (ms
/// since the epoch), under `token`, as lowercase hex.
pub fn sign_fill(token: &Secret, pool: Option<&PoolName>, issued_at: u64) -> Option<String> {
    let key = PKey::hmac(token.expose().as_bytes()).ok()?;
    let mut signer = Signer::new(MessageDigest::sha256(), &key).ok()?;
    let pool = pool.map_or_else(|| "*".to_string(), PoolName::to_string);
    signer
        .update(format!("warmer fill\n{pool}\n{issued_at}").as_bytes())
        .ok()?;
    let mac = signer.sign_to_vec().ok()?;
    Some(mac.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `signature` signs a fill of `pool` issued at `issued_at` under one of `tokens`, and
/// is still good at `now` (ms). Compared in constant time.
pub fn fill_is_signed(
    tokens: &[Secret],
    pool: Option<&PoolName>,
    issued_at: u64,
    signature: &str,
    now: u64,
) -> bool {
    let fresh = issued_at <= now.saturating_add(CLOCK_SKEW_MS)
        && now.saturating_sub(issued_at) <= SIGNATURE_LIFETIME.as_millis() as u64;
    fresh
        && tokens.iter().any(|token| {
            sign_fill(token, pool, issued_at).is_some_and(|expected| {
                expected.len() == signature.len()
                    && openssl::memcmp::eq(expected.as_bytes(), signature.as_bytes())
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_good_for_its_pool_its_time_and_its_token_only() {
        let tokens = [Secret::new("ops-token-1"), Secret::new("ops-token-2")];
        let pool: PoolName = "img:n1-standard-1".parse().unwrap();
        let other: PoolName = "img:n1-standard-2".parse().unwrap();
        let now = 1_800_000_000_000;
        let signed = sign_fill(&tokens[1], Some(&pool), now).unwrap();
        assert!(fill_is_signed(&tokens, Some(&pool), now, &signed, now));
        assert!(fill_is_signed(
            &tokens,
            Some(&pool),
            now,
            &signed,
            now + 599_000
        ));
        assert!(!signed.contains("ops-token"));
        for (pool, issued_at, at) in [
            (Some(&other), now, now),
            (None, now, now),
            (Some(&pool), now + 1, now),
            (Some(&pool), now, now + 601_000),
        ] {
            assert!(!fill_is_signed(&tokens, pool, issued_at, &signed, at));
        }
        let guessed = sign_fill(&Secret::new("guess"), Some(&pool), now).unwrap();
        assert!(!fill_is_signed(&tokens, Some(&pool), now, &guessed, now));
        assert!(!fill_is_signed(&tokens, Some(&pool), now, "", now));
        // Issued a little ahead of this clock: another machine's.
        let ahead = sign_fill(&tokens[0], None, now + 30_000).unwrap();
        assert!(fill_is_signed(&tokens, None, now + 30_000, &ahead, now));
    }
}

/// What a request's `Authorization` header holds, against the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basic {
    /// Basic auth whose password is the token at this index.
    Token(usize),
    /// No header, or no token's password.
    Missing,
    /// Another scheme than basic auth.
    OtherScheme,
}

/// Which of `tokens` the `Authorization` header's basic-auth password is. Every token is
/// compared, so the time taken says nothing of which one matched.
pub fn basic(header: Option<&[u8]>, tokens: &[Secret]) -> Basic {
    let Some(value) = header else {
        return Basic::Missing;
    };
    let Some((scheme, encoded)) = value.split_at_checked(6) else {
        return Basic::OtherScheme;
    };
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return Basic::OtherScheme;
    }
    let password = std::str::from_utf8(encoded)
        .ok()
        .and_then(|encoded| openssl::base64::decode_block(encoded.trim()).ok())
        .and_then(|decoded| {
            let split = decoded.iter().position(|b| *b == b':')?;
            Some(decoded[split + 1..].to_vec())
        });
    let Some(password) = password else {
        return Basic::Missing;
    };
    let mut found = None;
    for (index, token) in tokens.iter().enumerate() {
        if token.matches(&password) && found.is_none() {
            found = Some(index);
        }
    }
    found.map_or(Basic::Missing, Basic::Token)
}
