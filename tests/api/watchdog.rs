//! `warmer watchdog` against the Platform API stand-in, whose log streams the tests script.

use std::collections::HashMap;
use std::process::Stdio;

use serde_json::json;

use warmer_testkit::heroku::{APP, TOKEN};
use warmer_testkit::*;

use crate::lifecycle::terminate;

/// A runtime-metrics line as Heroku writes it.
fn sample(dyno: &str, total_mb: f64) -> String {
    format!(
        "2026-11-29T08:00:00.000000+00:00 heroku[{dyno}]: source={dyno} dyno=heroku.2808254.d97d0ea7-cf3d sample#memory_total={total_mb:.2}MB sample#memory_rss={total_mb:.2}MB sample#memory_cache=0.00MB sample#memory_swap=0.00MB sample#memory_pgpgin=348836pages sample#memory_pgpgout=343403pages sample#memory_quota=512.00MB"
    )
}

fn r14(dyno: &str) -> String {
    format!("2026-11-29T08:00:01.000000+00:00 heroku[{dyno}]: Error R14 (Memory quota exceeded)")
}

fn watchdog_env(app: &TestApp, heroku: &HerokuStandIn, token: &str) -> HashMap<String, String> {
    let mut env = app.env.clone();
    for (var, value) in [
        ("HEROKU_API_TOKEN", token.to_string()),
        ("HEROKU_APP_NAME", APP.to_string()),
        ("WARMER_HEROKU_API_URL", heroku.url()),
    ] {
        env.insert(var.into(), value);
    }
    env
}

fn spawn_watchdog(env: &HashMap<String, String>, stderr: Stdio) -> tokio::process::Child {
    crate::warmer("watchdog")
        .envs(env)
        .env("RUST_LOG", "warn")
        .stderr(stderr)
        .spawn()
        .expect("warmer binary")
}

#[tokio::test]
async fn dynos_over_their_threshold_are_restarted_once_one_per_type_across_a_reopened_stream() {
    let heroku = HerokuStandIn::start(&[]).await;
    let app = TestApp::builder().start().await;
    let first = vec![
        "garbage".to_string(),
        "2026-11-29T08:00:00+00:00 app[web.1]: sample#memory_total=900.00MB".into(),
        sample("web.1", 300.0),    // under 90 % of 512 MB
        sample("web.1", 470.0),    // over: restarted (after one 429)
        sample("web.1", 500.0),    // restarted within the window: held
        sample("web.2", 480.0),    // web.1 is restarting: held
        r14("checkout.1"),         // another type: restarted
        sample("run.4321", 500.0), // a one-off dyno: not watched
        format!("{} sample#memory_total=999.00MB", "x".repeat(20_000)),
        "2026-11-29T08:00:00+00:00 heroku[web.3]: source=web.3 sample#memory_total=lotsMB".into(),
    ];
    let second = vec![
        sample("web.2", 490.0), // still held: web.1 has not reported since its restart
        sample("refill.1", 300.0),
        r14("refill.1"),
        sample("reconcile.1", 480.0),
    ];
    heroku.with(|s| {
        s.log_streams.extend([first, second]);
        s.restart_faults.push_back(429);
    });
    let mut restarted = app.listen("dyno.restarted").await;
    let mut memory = app.listen("dyno.memory").await;
    let mut child = spawn_watchdog(&watchdog_env(&app, &heroku, TOKEN), Stdio::inherit());

    let events = restarted.take(4).await;

    let expected = ["web.1", "checkout.1", "refill.1", "reconcile.1"];
    assert_eq!(heroku.with(|s| s.restarts.clone()), expected);
    let reasons: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["dyno"].as_str().unwrap().into(),
                e["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("web.1".into(), "memory".into()),
            ("checkout.1".into(), "r14".into()),
            ("refill.1".into(), "r14".into()),
            ("reconcile.1".into(), "memory".into()),
        ]
    );
    assert_eq!(
        memory.next().await,
        json!({"dyno": "web.1", "process_type": "web", "size": 300.0, "quota": 512.0, "units": "MB"})
    );
    assert!(
        heroku.with(|s| s.log_sessions) >= 2,
        "the stream was reopened"
    );
    assert!(terminate(&mut child).await.success());
    assert_eq!(
        heroku.with(|s| s.restarts.clone()),
        expected,
        "nothing more"
    );
}

#[tokio::test]
async fn a_refused_token_stops_the_watchdog_with_the_reason_and_without_the_token() {
    let heroku = HerokuStandIn::start(&[]).await;
    let app = TestApp::builder().start().await;
    let wrong = "wrong-token-0123456789";
    let child = spawn_watchdog(&watchdog_env(&app, &heroku, wrong), Stdio::piped());

    let output = within("the watchdog to stop", child.wait_with_output())
        .await
        .unwrap();

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HEROKU_API_TOKEN") && stderr.contains("401"),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong), "{stderr}");
    assert_eq!(heroku.with(|s| s.log_sessions), 0);
}
