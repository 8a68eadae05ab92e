//! Reading Heroku's system log lines, as a log session streams them: runtime metrics (one line
//! per dyno about every 20 s) and memory errors.
//!
//! ```text
//! 2026-11-29T08:00:00.000000+00:00 heroku[web.1]: source=web.1 dyno=heroku.2808254.d97d0ea7-… sample#memory_total=21.00MB sample#memory_rss=21.22MB … sample#memory_quota=512.00MB
//! 2026-11-29T08:00:01.000000+00:00 heroku[web.1]: Process running mem=627M(122.7%)
//! 2026-11-29T08:00:01.000000+00:00 heroku[web.1]: Error R14 (Memory quota exceeded)
//! ```
//!
//! Anything else — application lines, router lines, lines cut short, values that are not
//! numbers — is no sighting: the stream comes from outside, and a line never stops the watch.

/// What a line says about a dyno's memory.
#[derive(Debug, Clone, PartialEq)]
pub enum Sighting {
    /// A runtime-metrics sample: total memory (RSS and swap) and the dyno's quota, in MB (the
    /// quota is absent on apps with the oldest log format).
    Memory {
        dyno: String,
        total_mb: f64,
        quota_mb: Option<f64>,
    },
    /// `Error R14 (Memory quota exceeded)`: the dyno swaps.
    R14 { dyno: String },
    /// `Error R15 (Memory quota vastly exceeded)`: Heroku kills the dyno itself.
    R15 { dyno: String },
}

impl Sighting {
    pub fn dyno(&self) -> &str {
        match self {
            Sighting::Memory { dyno, .. } | Sighting::R14 { dyno } | Sighting::R15 { dyno } => dyno,
        }
    }
}

/// The process type of a dyno name: `web` for `web.1`.
pub fn process_type(dyno: &str) -> &str {
    dyno.split_once('.').map_or(dyno, |(process, _)| process)
}

/// What `line` says, if it is a Heroku system line about memory.
pub fn parse(line: &str) -> Option<Sighting> {
    let (_, rest) = line.split_once(" heroku[")?;
    let (dyno, message) = rest.split_once("]: ")?;
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if dyno.is_empty() || !dyno.chars().all(valid) {
        return None;
    }
    let dyno = dyno.to_string();
    let message = message.trim_end();
    if message.starts_with("Error R14 ") {
        return Some(Sighting::R14 { dyno });
    }
    if message.starts_with("Error R15 ") {
        return Some(Sighting::R15 { dyno });
    }
    let field = |key: &str| {
        message
            .split(' ')
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
    };
    let total_mb = megabytes(field("sample#memory_total")?)?;
    let quota_mb = field("sample#memory_quota").and_then(megabytes);
    Some(Sighting::Memory {
        dyno,
        total_mb,
        quota_mb,
    })
}

/// `21.00MB` (Heroku's unit), `1.5GB` or `512kB`, in MB; `None` for anything else.
fn megabytes(value: &str) -> Option<f64> {
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit {
        "MB" => 1.0,
        "GB" => 1024.0,
        "kB" | "KB" => 1.0 / 1024.0,
        _ => return None,
    };
    (number.is_finite() && number >= 0.0).then_some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "2026-11-29T08:00:00.000000+00:00 heroku[web.1]: source=web.1 dyno=heroku.2808254.d97d0ea7-cf3d-411b-b453-d2943a50b456 sample#memory_total=21.00MB sample#memory_rss=21.22MB sample#memory_cache=0.00MB sample#memory_swap=0.00MB sample#memory_pgpgin=348836pages sample#memory_pgpgout=343403pages sample#memory_quota=512.00MB";

    #[test]
    fn a_runtime_metrics_line_gives_total_and_quota() {
        assert_eq!(
            parse(SAMPLE),
            Some(Sighting::Memory {
                dyno: "web.1".into(),
                total_mb: 21.0,
                quota_mb: Some(512.0)
            })
        );
        let old = SAMPLE.replace(" sample#memory_quota=512.00MB", "");
        assert!(matches!(
            parse(&old),
            Some(Sighting::Memory { quota_mb: None, .. })
        ));
        let gigabytes = SAMPLE
            .replace("memory_total=21.00MB", "memory_total=1.50GB")
            .replace("heroku[web.1]", "heroku[checkout.12]");
        assert_eq!(
            parse(&gigabytes),
            Some(Sighting::Memory {
                dyno: "checkout.12".into(),
                total_mb: 1536.0,
                quota_mb: Some(512.0)
            })
        );
    }

    #[test]
    fn memory_errors_are_sighted() {
        let r14 = "2026-11-29T08:00:01+00:00 heroku[refill.2]: Error R14 (Memory quota exceeded)";
        assert_eq!(
            parse(r14),
            Some(Sighting::R14 {
                dyno: "refill.2".into()
            })
        );
        let r15 =
            "2026-11-29T08:00:01+00:00 heroku[refill.2]: Error R15 (Memory quota vastly exceeded)";
        assert_eq!(
            parse(r15),
            Some(Sighting::R15 {
                dyno: "refill.2".into()
            })
        );
        assert_eq!(process_type("refill.2"), "refill");
    }

    #[test]
    fn other_and_malformed_lines_are_no_sighting() {
        for line in [
            "",
            "garbage",
            "2026-11-29T08:00:00+00:00 app[web.1]: sample#memory_total=999.00MB",
            "2026-11-29T08:00:00+00:00 heroku[router]: at=info method=GET path=\"/metrics\"",
            "2026-11-29T08:00:00+00:00 heroku[web.1]: Process running mem=627M(122.7%)",
            "2026-11-29T08:00:00+00:00 heroku[web.1]: source=web.1 sample#memory_total=NaNMB",
            "2026-11-29T08:00:00+00:00 heroku[web.1]: source=web.1 sample#memory_total=-5.00MB",
            "2026-11-29T08:00:00+00:00 heroku[web.1]: source=web.1 sample#memory_total=21.00",
            "2026-11-29T08:00:00+00:00 heroku[web.1]: source=web.1 sample#memory_total=",
            "2026-11-29T08:00:00+00:00 heroku[we b.1]: sample#memory_total=21.00MB",
            "2026-11-29T08:00:00+00:00 heroku[]: sample#memory_total=21.00MB",
            "2026-11-29T08:00:00+00:00 heroku[web.1] sample#memory_total=21.00MB",
            "2026-11-29T08:00:00+00:00 heroku[web.1]: Error R14",
        ] {
            assert_eq!(parse(line), None, "{line}");
        }
    }
}
