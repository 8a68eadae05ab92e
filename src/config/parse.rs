//! Reading one variable's value: durations, numbers, lists, URLs, names; each error names the
//! variable and what was expected.

use std::time::Duration;

use anyhow::bail;

use super::secret::{ServerUrl, split_urls};

/// Passphrases shorter than this are refused for Compute Engine.
pub(super) const LEAST_PASSPHRASE: usize = 12;
/// Passphrases shorter than this are warned about.
pub(super) const GOOD_PASSPHRASE: usize = 20;

/// How well a passphrase stands an offline guess (the travis worker's key format derives its
/// key with one round of MD5: billions of guesses a second).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Strength {
    /// Refused with the gce provider: why.
    Weak(&'static str),
    /// Accepted with a warning: why.
    Short(&'static str),
    Good,
}

pub(super) fn passphrase_strength(passphrase: &str) -> Strength {
    // travis-ci/warmer's default, and what an example or a quick test would use.
    const KNOWN: [&str; 7] = [
        "fixme_wat",
        "warmer",
        "password",
        "passphrase",
        "changeme",
        "secret",
        "travis",
    ];
    let lowered = passphrase.trim().to_lowercase();
    let distinct = {
        let mut chars: Vec<char> = passphrase.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        chars.len()
    };
    if KNOWN.iter().any(|known| {
        lowered == *known || lowered.trim_end_matches(|c: char| c.is_ascii_digit()) == *known
    }) {
        Strength::Weak("a well-known passphrase")
    } else if passphrase.chars().count() < LEAST_PASSPHRASE {
        Strength::Weak("shorter than 12 characters")
    } else if distinct < 6 {
        Strength::Weak("fewer than 6 different characters")
    } else if passphrase.chars().count() < GOOD_PASSPHRASE {
        Strength::Short("shorter than 20 characters")
    } else {
        Strength::Good
    }
}

/// Whether a Redis URL's host is one of Heroku's (its Redis add-ons run on AWS hosts such as
/// `ec2-3-222-1-2.compute-1.amazonaws.com`).
pub(super) fn is_heroku_redis_host(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
    host.ends_with(".amazonaws.com")
}

/// A URL starting with one of `schemes`; with `list`, several comma-separated.
pub(super) fn server_url(
    var: &str,
    value: String,
    schemes: &[&str],
    list: bool,
) -> anyhow::Result<ServerUrl> {
    let value = value.trim().to_string();
    let urls = split_urls(&value);
    if urls.is_empty() {
        bail!("{var} is empty");
    }
    if urls.len() > 1 && !list {
        bail!("{var} names {} servers: give one URL", urls.len());
    }
    for (i, url) in urls.iter().enumerate() {
        let scheme = url.split_once("://").map(|(s, _)| s);
        if !scheme.is_some_and(|s| schemes.contains(&s)) {
            let which = if urls.len() > 1 {
                format!(" (address {})", i + 1)
            } else {
                String::new()
            };
            bail!(
                "{var}{which} must be a URL starting with {}{}",
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or "),
                if list {
                    ", or several such URLs separated by commas"
                } else {
                    ""
                }
            );
        }
    }
    Ok(ServerUrl::new(value))
}

pub(super) fn prefix(var: &str, value: Option<String>) -> anyhow::Result<String> {
    let value = value.unwrap_or_else(|| super::DEFAULT_NAMES.into());
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(
            "{var} must be 1–64 characters of letters, digits, `-`, `_` or `.`, got `{}`",
            value.escape_debug()
        );
    }
    Ok(value)
}

pub(super) fn number<T: std::str::FromStr + PartialOrd + Default>(
    var: &str,
    value: Option<String>,
    default: T,
) -> anyhow::Result<T> {
    match value {
        None => Ok(default),
        Some(v) => match v.trim().parse::<T>() {
            Ok(n) if n > T::default() => Ok(n),
            _ => bail!("{var} must be a positive whole number, got `{v}`"),
        },
    }
}

/// An http(s) base URL, without a trailing slash.
pub(super) fn http_url(var: &str, value: Option<String>, default: &str) -> anyhow::Result<String> {
    let url = value.unwrap_or_else(|| default.into());
    let url = url.trim();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        bail!("{var} must be an http(s) URL, got `{url}`");
    }
    Ok(url.trim_end_matches('/').to_string())
}

pub(super) fn duration(
    var: &str,
    value: Option<String>,
    default_secs: u64,
) -> anyhow::Result<Duration> {
    match value {
        None => Ok(Duration::from_secs(default_secs)),
        Some(v) => parse_duration(&v).ok_or_else(|| {
            anyhow::anyhow!(
                "{var} must be a duration above zero such as `90s`, `5m`, `1h30m` or `7d` (a bare number is seconds), got `{v}`"
            )
        }),
    }
}

/// Parses `90s`, `5m`, `6h`, `7d`, `500ms`, decimals of them (`1.5s`, to the millisecond),
/// compounds from the largest unit down (`1h30m`, `1m30s`), or a bare number of seconds; zero
/// is refused.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return (secs > 0).then(|| Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = value;
    // Each unit at most once, larger before smaller.
    let mut smallest_so_far = u8::MAX;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let (rank, unit_ms) = match unit {
            "d" => (4, 86_400_000),
            "h" => (3, 3_600_000),
            "m" => (2, 60_000),
            "s" => (1, 1_000),
            "ms" => (0, 1),
            _ => return None,
        };
        // Whole numbers exactly; a decimal (`1.5s`) to the millisecond.
        let part = match number.parse::<u64>() {
            Ok(n) => Duration::from_millis(n.checked_mul(unit_ms)?),
            Err(_) if number.starts_with('.') || number.ends_with('.') => return None,
            Err(_) => {
                let n: f64 = number.parse().ok()?;
                let ms = n * unit_ms as f64;
                if !ms.is_finite() || ms >= u64::MAX as f64 {
                    return None;
                }
                Duration::from_millis(ms.round() as u64)
            }
        };
        if rank >= smallest_so_far {
            return None;
        }
        smallest_so_far = rank;
        total = total.checked_add(part)?;
        rest = next;
    }
    (!total.is_zero()).then_some(total)
}

pub(super) fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
