//! Logs as Heroku reads them: on a dyno, every line of a real `warmer` process is logfmt with
//! no timestamp of its own, and a reconciler that keeps failing reaches ERROR.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use warmer_testkit::compute::ComputeStandIn;
use warmer_testkit::*;

use crate::Stderr;
use crate::lifecycle::terminate;

/// A strict logfmt parser, written from the format's description rather than from warmer's
/// writer: `key=value` pairs separated by one space; a key has no space, `=` or `"`; a value is
/// bare (no space, `=`, `"` or `\`) or quoted with `\"`, `\\`, `\n`, `\r`, `\t` and `\uXXXX`
/// escapes. Anything else is an error naming the offset.
fn parse_logfmt(line: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        let mut key = String::new();
        while let Some(&(at, c)) = chars.peek() {
            match c {
                '=' => break,
                ' ' | '"' | '\\' => return Err(format!("`{c}` in a key at {at}")),
                c => key.push(c),
            }
            chars.next();
        }
        if key.is_empty() || chars.next().map(|(_, c)| c) != Some('=') {
            return Err(format!("a pair without a key or `=` after `{key}`"));
        }
        let mut value = String::new();
        if chars.peek().map(|&(_, c)| c) == Some('"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of {key}")),
                    Some((_, '"')) => break,
                    Some((at, '\\')) => match chars.next().map(|(_, c)| c) {
                        Some('"') => value.push('"'),
                        Some('\\') => value.push('\\'),
                        Some('n') => value.push('\n'),
                        Some('r') => value.push('\r'),
                        Some('t') => value.push('\t'),
                        Some('u') => {
                            let hex: String = (0..4)
                                .filter_map(|_| chars.next())
                                .map(|(_, c)| c)
                                .collect();
                            let code = u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or(format!("bad \\u escape at {at}"))?;
                            value.push(code);
                        }
                        other => return Err(format!("bad escape {other:?} at {at}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some(&(at, c)) = chars.peek() {
                match c {
                    ' ' => break,
                    '=' | '"' | '\\' => return Err(format!("`{c}` in a bare value at {at}")),
                    c if c.is_control() => return Err(format!("a control character at {at}")),
                    c => value.push(c),
                }
                chars.next();
            }
            if value.is_empty() {
                return Err(format!("an empty bare value of {key}"));
            }
        }
        pairs.push((key, value));
        match chars.next() {
            None => return Ok(pairs),
            Some((_, ' ')) if chars.peek().is_some() => {}
            Some((at, c)) => return Err(format!("`{c}` after a value at {at}")),
        }
    }
}

#[test]
fn the_parser_refuses_what_is_not_logfmt() {
    assert_eq!(
        parse_logfmt(r#"at=info msg="a \"b\"\n" count#x.y=1"#).unwrap(),
        [
            ("at".to_string(), "info".to_string()),
            ("msg".to_string(), "a \"b\"\n".to_string()),
            ("count#x.y".to_string(), "1".to_string())
        ]
    );
    for bad in [
        "2026-11-29T07:00:00Z INFO warmer: started",
        "at=info msg=two words",
        r#"at=info msg="unterminated"#,
        "at=info  msg=x",
        "at=info msg=",
        "=x",
        "at=info msg=x ",
        r#"at=info msg="x"y"#,
    ] {
        assert!(parse_logfmt(bad).is_err(), "{bad} accepted");
    }
}

#[tokio::test]
async fn on_a_dyno_every_line_is_logfmt_and_a_failing_reconciler_reaches_error_then_recovers() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    compute.with(|s| s.refused_listings = 2);
    let app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_RECONCILE_INTERVAL", "1")])
        .start()
        .await;
    app.seed(POOL, 0, &[]).await;
    let mut child = crate::warmer("reconcile")
        .envs(&app.env)
        .env("DYNO", "reconcile.1")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("warmer binary");
    let mut stderr = Stderr::of(&mut child);

    let recovered = |line: &str, before: &[String]| {
        line.contains("msg=reconciled") && before.iter().any(|l| l.contains("recovered"))
    };
    stderr
        .until("a recovery after two failed passes, then a pass", recovered)
        .await;
    assert!(terminate(&mut child).await.success());
    let lines = stderr.rest().await;

    let parsed: Vec<BTreeMap<String, String>> = lines
        .iter()
        .map(|line| {
            let pairs = parse_logfmt(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(pairs[0].0, "at", "the level first, no timestamp: {line}");
            pairs.into_iter().collect()
        })
        .collect();
    let with_msg = |msg: &'static str| parsed.iter().filter(move |l| l["msg"] == msg);
    let start = with_msg("warmer starting").next().expect("a start line");
    assert_eq!(start["at"], "info");
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["process"], "reconcile");
    assert_eq!(start["prefix"], app.names.prefix());
    assert_eq!(start["namespace"], app.names.namespace());
    assert!(!start["commit"].is_empty());
    let failed: Vec<_> = with_msg("reconcile pass failed").collect();
    assert_eq!(failed.len(), 2, "{lines:#?}");
    for (n, line) in failed.iter().enumerate() {
        assert_eq!(line["at"], "error");
        assert_eq!(line["failures"], (n + 1).to_string());
        assert_eq!(line["count#warmer.reconcile.failed"], "1");
        assert!(line["error"].contains("compute.instances.list"), "{line:?}");
    }
    let recovered = with_msg("reconcile recovered after 2 failed passes")
        .next()
        .unwrap_or_else(|| panic!("no recovery line in {lines:#?}"));
    assert_eq!(recovered["at"], "info");
    let pass = with_msg("reconciled").next().expect("a pass line");
    let duration = &pass["measure#warmer.reconcile.duration"];
    assert!(
        duration
            .strip_suffix("ms")
            .is_some_and(|ms| ms.parse::<u64>().is_ok()),
        "{duration}"
    );
    for key in ["sample#warmer.cloud_vms", "count#warmer.reconcile.deleted"] {
        assert!(pass[key].parse::<u64>().is_ok(), "{key} in {pass:?}");
    }
}

#[tokio::test]
async fn with_the_json_format_every_line_is_a_json_object() {
    let app = TestApp::builder().start().await;
    let mut child = crate::warmer("web")
        .envs(&app.env)
        .env("WARMER_LOG_FORMAT", "json")
        .env("PORT", free_port().to_string())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("warmer binary");
    let mut stderr = Stderr::of(&mut child);
    stderr
        .until("the web process to serve", |line, _| {
            line.contains("serving /health")
        })
        .await;
    assert!(terminate(&mut child).await.success());
    let lines = stderr.rest().await;

    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let start = parsed
        .iter()
        .find(|l| l["fields"]["message"] == "warmer starting")
        .expect("a start line");
    assert_eq!(start["level"], "INFO");
    assert_eq!(start["fields"]["process"], "web");
    assert_eq!(start["fields"]["namespace"], app.names.namespace());
    assert!(parsed.iter().all(|l| l["timestamp"].is_string()));
}
