//! Values that must never be printed: [`Secret`], and [`ServerUrl`], which masks its passwords.

use std::fmt;

/// A value that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this secret, compared in constant time (no timing hint of a prefix).
    pub fn matches(&self, given: &[u8]) -> bool {
        let own = self.0.as_bytes();
        own.len() == given.len()
            && own.iter().zip(given).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A server URL that may carry a password; printed with the password replaced by `***`. An
/// AMQP URL may list several brokers, comma-separated, each a whole URL (the nodes of a
/// cluster): see [`Self::addresses`].
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl(Secret);

/// Splits a list of URLs at each comma that starts another URL (`,<scheme>://`), so that a raw
/// comma inside a password does not split it.
pub(super) fn split_urls(list: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in list.match_indices(',') {
        let next = list[i + 1..].trim_start();
        let scheme_len = next.find("://").filter(|&n| n > 0).filter(|&n| {
            next[..n]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        });
        if scheme_len.is_some() {
            parts.push(&list[start..i]);
            start = i + 1;
        }
    }
    parts.push(&list[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

impl ServerUrl {
    /// A URL (or list of URLs) as given; [`super::parse`] checks it first.
    pub(super) fn new(value: String) -> Self {
        ServerUrl(Secret::new(value))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// Each server of a list (comma-separated whole URLs), in order; one for a plain URL.
    pub fn addresses(&self) -> Vec<ServerUrl> {
        split_urls(self.0.expose())
            .into_iter()
            .map(|url| ServerUrl(Secret::new(url)))
            .collect()
    }

    /// The password of the (first) URL's user info, as written (percent-encoded), if any.
    pub fn password(&self) -> Option<&str> {
        let first = split_urls(self.0.expose()).into_iter().next()?;
        let (_, rest) = first.split_once("://")?;
        let (userinfo, _) = rest.rsplit_once('@')?;
        let (_, password) = userinfo.split_once(':')?;
        Some(password)
    }

    /// The passwords of every URL of the list, as written.
    pub fn passwords(&self) -> Vec<String> {
        self.addresses()
            .iter()
            .filter_map(|url| url.password().map(String::from))
            .collect()
    }

    /// The user of the (first) URL's user info, percent-decoded, if any.
    pub fn user(&self) -> Option<String> {
        let first = split_urls(self.0.expose()).into_iter().next()?;
        let (_, rest) = first.split_once("://")?;
        let (userinfo, _) = rest.rsplit_once('@')?;
        let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
        (!user.is_empty()).then(|| percent_decode(user))
    }

    /// The URL (each URL of a list) with any password masked, safe for logs.
    pub fn redacted(&self) -> String {
        split_urls(self.0.expose())
            .into_iter()
            .map(redact_one)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[unparseable url]".into();
    };
    // The user info ends at the last `@`, so a password holding a raw `/` or `@` is still
    // hidden (an `@` in the path hides more than needed, never less).
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (Some(userinfo), rest),
        None => (None, rest),
    };
    let userinfo = match userinfo {
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@"),
            None => format!("{userinfo}@"),
        },
        None => String::new(),
    };
    let rest = rest.split('#').next().unwrap_or_default();
    format!("{scheme}://{userinfo}{rest}")
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `text` with every byte but ASCII letters, digits, `-`, `_`, `.` and those of `keep` written
/// as `%XX`: a URL's path segment or query value.
pub(crate) fn percent_encode(text: &str, keep: &[u8]) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b if keep.contains(&b) => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Decodes `%XX` escapes (as in a URL's user info); anything else is kept as it is.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
