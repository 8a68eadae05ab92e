//! Logging: `RUST_LOG` (default `info`) to stderr, in the format `WARMER_LOG_FORMAT` names, and
//! never a secret.
//!
//! - `text`: human-readable, timestamped, colour only on a terminal (the default off Heroku);
//! - `json`: one JSON object per line, for a log pipeline;
//! - `l2met`: logfmt (`at=info msg="…" key=value`) without a timestamp of the line's own (Heroku's
//!   router adds one), the default when `DYNO` is set. Figures are fields named the way Heroku's
//!   log metrics read them: `count#warmer.checkouts.handed_out=12`, `measure#warmer.boot.duration=41200ms`,
//!   `sample#warmer.orphaned=3`.
//!
//! Two layers keep secrets out, whatever `RUST_LOG` says:
//!
//! 1. The targets that print frames or whole messages are capped: lapin logs every frame it
//!    writes at TRACE (the `Connection.StartOk` frame carries the AMQP user and password as a
//!    byte array) and returned messages, bodies and SSH keys included, at WARN.
//! 2. Every line goes through a [`Redactor`] before it is written: the configured secrets
//!    (passwords of both URLs, raw and percent-decoded, tokens, the SSH passphrase, the service
//!    account key), each also as the decimal byte list that `Debug` prints for bytes, and any
//!    PEM block, are replaced by `[redacted]`.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Targets off whatever `RUST_LOG` says (see also [`never_written`]).
const CAPPED: [&str; 4] = [
    "lapin::returned_messages=off",
    // A lost connection (a broker node killed): lapin logs it at ERROR on each of these, a few
    // dozen lines at once; warmer's supervisor says it once, with what it does next.
    "lapin::channels=off",
    "lapin::io_loop=off",
    // A failed presence probe closes its channel by design; lapin would log each at ERROR.
    "lapin::channel=off",
];

/// Secrets shorter than this are not looked for: they would redact ordinary words.
const SHORTEST_SECRET: usize = 3;

/// Whether an event is one that is never written, whatever the filter says: lapin's and
/// amq-protocol's TRACE (frames, message bodies), and `lapin::frames` below INFO. (A directive
/// such as `lapin=debug` cannot cap: it would raise lapin from the default's WARN.)
pub fn never_written(metadata: &tracing::Metadata<'_>) -> bool {
    let target = metadata.target();
    let level = *metadata.level();
    let amqp = target.starts_with("lapin") || target.starts_with("amq_protocol");
    (amqp && level == tracing::Level::TRACE)
        || (target.starts_with("lapin::frames") && level > tracing::Level::INFO)
}

/// The default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,lapin=warn";

/// The log filter: `RUST_LOG` or `default`, with the secret-bearing targets off.
pub fn filter(default: &str) -> EnvFilter {
    capped(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)))
}

fn capped(mut filter: EnvFilter) -> EnvFilter {
    for directive in CAPPED {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// How log lines are written (`WARMER_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
    L2met,
}

impl LogFormat {
    /// `WARMER_LOG_FORMAT`, or the default: `l2met` on Heroku (`DYNO` set), else `text`.
    pub fn parse(value: Option<&str>, on_heroku: bool) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") if on_heroku => Ok(LogFormat::L2met),
            None | Some("") => Ok(LogFormat::Text),
            Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some("l2met") => Ok(LogFormat::L2met),
            Some(other) => Err(format!(
                "WARMER_LOG_FORMAT must be `text`, `json` or `l2met`, got `{other}`"
            )),
        }
    }
}

/// Installs the process-wide subscriber, writing `format` through `redactor`.
pub fn init(redactor: Redactor, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(DEFAULT_FILTER))
        .with_writer(redactor);
    let caps = tracing_subscriber::filter::filter_fn(|metadata| !never_written(metadata));
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(caps)
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).finish().with(caps).init(),
        LogFormat::L2met => builder
            .with_ansi(false)
            .event_format(Logfmt)
            .finish()
            .with(caps)
            .init(),
    }
}

/// Formats an event as one logfmt line: `at=<level> msg="<message>" <field>=<value> …`, with no
/// timestamp (Heroku's router adds one). warmer opens no spans, so an event's fields are all.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = LogfmtFields::default();
        event.record(&mut fields);
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        write!(writer, "at={level}")?;
        if let Some(message) = &fields.message {
            write!(writer, " msg={}", logfmt_value(message))?;
        }
        writeln!(writer, "{}", fields.pairs)
    }
}

/// An event's fields as logfmt pairs, the message apart.
#[derive(Default)]
struct LogfmtFields {
    message: Option<String>,
    /// ` key=value` for each field.
    pairs: String,
}

impl LogfmtFields {
    fn push(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = Some(value);
        } else {
            let key: String = field
                .name()
                .chars()
                .filter(|c| !c.is_whitespace() && !matches!(c, '=' | '"'))
                .collect();
            self.pairs.push(' ');
            self.pairs.push_str(&key);
            self.pairs.push('=');
            self.pairs.push_str(&logfmt_value(&value));
        }
    }
}

impl Visit for LogfmtFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, format!("{value:?}"));
    }
}

/// A logfmt value: bare when it can be, else quoted with `\`, `"` and control characters
/// escaped.
fn logfmt_value(value: &str) -> Cow<'_, str> {
    let bare = !value.is_empty()
        && !value
            .chars()
            .any(|c| c <= ' ' || matches!(c, '=' | '"' | '\\') || c.is_control());
    if bare {
        return Cow::Borrowed(value);
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    Cow::Owned(quoted)
}

/// Replaces secrets in text. Cheap to clone; as a [`MakeWriter`] it redacts each log line and
/// writes it to stderr.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Each secret, and each as the `Debug` form of its bytes, longest first.
    patterns: Arc<Vec<String>>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut patterns: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= SHORTEST_SECRET)
            .flat_map(|secret| {
                let bytes: Vec<String> = secret.bytes().map(|b| b.to_string()).collect();
                [bytes.join(", "), secret]
            })
            .collect();
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        patterns.dedup();
        Self {
            patterns: Arc::new(patterns),
        }
    }

    /// `text` with every secret and every PEM block replaced by `[redacted]`.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for pattern in self.patterns.iter() {
            if text.contains(pattern.as_str()) {
                text = Cow::Owned(text.replace(pattern.as_str(), "[redacted]"));
            }
        }
        if text.contains(PEM_BEGIN) {
            text = Cow::Owned(redact_pem(&text));
        }
        text
    }
}

/// An error and its causes on one line, `outer: cause: root`, leaving out a cause whose text
/// the line already holds (many errors repeat their source in their own message).
pub fn report(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

const PEM_BEGIN: &str = "-----BEGIN";
const PEM_END: &str = "-----END";

/// Replaces each `-----BEGIN …-----END …-----` block (or the rest of the text, when it has no
/// end) by `[redacted]`.
fn redact_pem(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(PEM_BEGIN) {
        out.push_str(&rest[..start]);
        out.push_str("[redacted]");
        let block = &rest[start..];
        rest = match block.find(PEM_END) {
            Some(end) => {
                let after_end = &block[end + PEM_END.len()..];
                // The END line's label, up to and including its closing dashes.
                match after_end.find("-----") {
                    Some(close) => &after_end[close + 5..],
                    None => "",
                }
            }
            None => "",
        };
    }
    out.push_str(rest);
    out
}

impl<'a> MakeWriter<'a> for Redactor {
    type Writer = RedactingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            redactor: self.clone(),
            line: Vec::new(),
        }
    }
}

/// Collects one event's output and writes it, redacted, to stderr when dropped.
pub struct RedactingWriter {
    redactor: Redactor,
    line: Vec<u8>,
}

impl Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingWriter {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let _ = std::io::stderr().write_all(self.redactor.redact(&text).as_bytes());
    }
}

/// A log writer that keeps what it is given, for unit tests of log lines.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        let bytes = self.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("log lines are UTF-8")
    }
}

#[cfg(test)]
impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a subscriber as `init` builds, with `filter`, writes of a few events.
    fn written(filter: &str) -> String {
        use tracing_subscriber::layer::SubscriberExt as _;
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(capped(EnvFilter::new(filter)))
            .with_writer(move || writer.clone())
            .finish()
            .with(tracing_subscriber::filter::filter_fn(|m| !never_written(m)));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "lapin::internal_rpc", "heartbeat");
            tracing::warn!(target: "lapin::connection", "lapin warns");
            tracing::trace!(target: "lapin::frames", "a frame");
            tracing::info!(target: "lapin::frames", "frames info");
            tracing::trace!(target: "amq_protocol::frame", "protocol trace");
            tracing::trace!(target: "lapin::returned_messages", "a returned body");
            tracing::info!(target: "warmer::checkout", "warmer info");
            tracing::trace!(target: "warmer::checkout", "warmer trace");
        });
        captured.text()
    }

    #[test]
    fn by_default_lapin_says_only_warnings_and_no_filter_lets_frames_through() {
        let default = written(DEFAULT_FILTER);
        assert!(!default.contains("heartbeat"), "{default}");
        assert!(default.contains("lapin warns") && default.contains("warmer info"));
        assert!(!default.contains("warmer trace"));
        let everything = written("trace");
        for never in ["a frame", "protocol trace", "a returned body"] {
            assert!(!everything.contains(never), "{never}: {everything}");
        }
        for shown in ["heartbeat", "frames info", "warmer trace"] {
            assert!(everything.contains(shown), "{shown}: {everything}");
        }
    }

    #[test]
    fn the_log_format_defaults_to_l2met_on_heroku_and_refuses_unknown_names() {
        assert_eq!(LogFormat::parse(None, true), Ok(LogFormat::L2met));
        assert_eq!(LogFormat::parse(Some(""), false), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some(" json "), true), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse(Some("text"), true), Ok(LogFormat::Text));
        let error = LogFormat::parse(Some("logfmt"), false).unwrap_err();
        assert!(error.contains("WARMER_LOG_FORMAT") && error.contains("`logfmt`"));
    }

    #[test]
    fn logfmt_values_are_bare_when_they_can_be_and_quoted_with_escapes_otherwise() {
        for (value, written) in [
            ("checkout", "checkout"),
            ("12ms", "12ms"),
            ("travis-ci-x:n1-standard-2", "travis-ci-x:n1-standard-2"),
            ("", "\"\""),
            ("two words", "\"two words\""),
            ("a=b", "\"a=b\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("C:\\dir", "\"C:\\\\dir\""),
            ("line\nnext\ttab\u{7}", "\"line\\nnext\\ttab\\u0007\""),
        ] {
            assert_eq!(logfmt_value(value), written, "{value:?}");
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused (os error 111)",
        );
        #[derive(Debug)]
        struct Repeats(std::io::Error);
        impl std::fmt::Display for Repeats {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "IO error: {}", self.0)
            }
        }
        impl std::error::Error for Repeats {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = anyhow::Error::new(Repeats(io)).context("connecting to RabbitMQ");
        assert_eq!(
            report(&error),
            "connecting to RabbitMQ: IO error: refused (os error 111)"
        );
        assert_eq!(
            report(&anyhow::anyhow!("root").context("outer")),
            "outer: root"
        );
    }

    #[test]
    fn secrets_their_byte_lists_and_pem_blocks_are_redacted() {
        let redactor = Redactor::new(["hunter2".to_string(), "ab".to_string()]);
        let bytes = "[0, 117, 0, 104, 117, 110, 116, 101, 114, 50]";
        let line = format!(
            "password=hunter2 response={bytes} key=\"-----BEGIN RSA PRIVATE KEY-----\\nMIIE\\n-----END RSA PRIVATE KEY-----\" tab"
        );

        let redacted = redactor.redact(&line);

        assert_eq!(
            redacted,
            "password=[redacted] response=[0, 117, 0, [redacted]] key=\"[redacted]\" tab"
        );
        assert_eq!(
            redactor.redact("ab stays: too short to look for"),
            "ab stays: too short to look for"
        );
        assert_eq!(redact_pem("x -----BEGIN KEY no end"), "x [redacted]");
    }
}
