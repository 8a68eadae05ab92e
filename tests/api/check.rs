//! `warmer check`, the release phase: the real binary, each failure against the real servers
//! and the Compute Engine stand-in.

use std::collections::HashMap;
use std::time::Duration;

use tokio::process::Command;

use warmer_testkit::compute::ComputeStandIn;
use warmer_testkit::*;

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `warmer check` with `env`, at most 60 s.
async fn check(env: &HashMap<String, String>) -> Checked {
    let run = Command::new(env!("CARGO_BIN_EXE_warmer"))
        .arg("check")
        .env_clear()
        .envs(env)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let output = within("warmer check to finish", run).await.unwrap();
    Checked {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A failure: its name, the variables that cause it, the checks that pass before, its reason.
type Case = (
    &'static str,
    Vec<(&'static str, String)>,
    &'static [&'static str],
    &'static str,
);

/// The checks that passed, by name.
fn passed(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ok  ")?.split(':').next())
        .collect()
}

#[tokio::test]
async fn a_good_release_passes_every_check_and_declares_the_topology() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder().gce(&compute).start().await;
    let queue = app.names.checkout_queue();
    let channel = app.amqp.create_channel().await.unwrap();
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();

    let checked = check(&app.env).await;

    assert_eq!(
        checked.code,
        Some(0),
        "{}{}",
        checked.stdout,
        checked.stderr
    );
    assert_eq!(
        passed(&checked.stdout),
        ["configuration", "redis", "rabbitmq", "fleet", "cloud"]
    );
    // The shared server's guest may do anything: the release says so, and goes on.
    assert!(
        checked.stdout.lines().any(|l| l.starts_with("warn permissions: broker user `guest` may also configure queues and exchanges that are not warmer's")),
        "{}",
        checked.stdout
    );
    assert!(
        checked
            .stdout
            .contains("project warmer-test, region us-central1"),
        "{}",
        checked.stdout
    );
    assert_eq!(app.queue_counts(&queue).await, (0, 0), "declared again");
    assert_eq!(compute.with(|s| s.listings), 1);
}

#[tokio::test]
async fn each_failure_stops_the_release_with_its_reason() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder().gce(&compute).start().await;
    let nowhere = format!("127.0.0.1:{}", free_port());
    let unreachable_token = {
        let mut keyfile: serde_json::Value =
            serde_json::from_str(&app.env["WARMER_GOOGLE_CLOUD_KEYFILE_JSON"]).unwrap();
        keyfile["token_uri"] = format!("http://{nowhere}/token").into();
        keyfile.to_string()
    };
    let cases: Vec<Case> = vec![
        (
            "no project",
            vec![("WARMER_GOOGLE_CLOUD_PROJECT", String::new())],
            &[],
            "WARMER_GOOGLE_CLOUD_PROJECT",
        ),
        (
            "no passphrase",
            vec![("WARMER_SSH_KEY_PASSPHRASE", String::new())],
            &[],
            "WARMER_SSH_KEY_PASSPHRASE",
        ),
        (
            "Redis down",
            vec![("WARMER_REDIS_URL", format!("redis://{nowhere}/0"))],
            &["configuration"],
            "redis: connecting to redis://",
        ),
        (
            "RabbitMQ down",
            vec![("WARMER_AMQP_URL", format!("amqp://{nowhere}/%2f"))],
            &["configuration", "redis"],
            "rabbitmq: connecting to amqp://",
        ),
        (
            "no token",
            vec![("WARMER_GOOGLE_CLOUD_KEYFILE_JSON", unreachable_token)],
            &["configuration", "redis", "rabbitmq", "fleet"],
            "getting an access token",
        ),
        (
            "a zone the region lacks",
            vec![("WARMER_GOOGLE_CLOUD_ZONES", "us-central1-z".into())],
            &["configuration", "redis", "rabbitmq", "fleet"],
            "WARMER_GOOGLE_CLOUD_ZONES names us-central1-z",
        ),
    ];
    for (case, overrides, passing, reason) in cases {
        let mut env = app.env.clone();
        for (var, value) in overrides {
            env.insert(var.into(), value);
        }
        let checked = check(&env).await;
        assert_eq!(checked.code, Some(2), "{case}: {}", checked.stderr);
        assert_eq!(passed(&checked.stdout), passing, "{case}");
        let error = checked.stderr.lines().last().unwrap_or_default();
        assert!(
            error.starts_with("error: ") && error.contains(reason),
            "{case}: {}",
            checked.stderr
        );
        assert!(!checked.stderr.contains("PRIVATE KEY"), "{case}");
    }

    // Listing refused (a service account without compute.instances.list).
    compute.with(|s| s.refused_listings = 1);
    let checked = check(&app.env).await;
    assert_eq!(checked.code, Some(2));
    assert!(
        checked
            .stderr
            .contains("listing instances of project warmer-test")
            && checked.stderr.contains("compute.instances.list"),
        "{}",
        checked.stderr
    );
}
