//! Guarantee 6: SIGTERM stops consuming, finishes in-flight work and exits 0.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use warmer_testkit::*;

/// Starts `warmer checkout` as its own process with the app's environment.
pub fn spawn_binary(app: &TestApp) -> Child {
    spawn_process(app, "checkout")
}

/// Starts `warmer <process>` as its own process with the app's environment.
pub fn spawn_process(app: &TestApp, process: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_warmer"))
        .arg(process)
        .env_clear()
        .envs(&app.env)
        .env(
            "RUST_LOG",
            std::env::var("CHILD_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("warmer binary")
}

pub fn signal(child: &Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends SIGTERM and waits for the exit, which must come within 25 s (guarantee 6).
pub async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    signal(child, "TERM");
    tokio::time::timeout(Duration::from_secs(25), child.wait())
        .await
        .expect("exited within 25 s")
        .unwrap()
}

#[tokio::test]
async fn sigterm_stops_consuming_and_exits_zero() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 1, &[vm("vm-1")]).await;
    let mut child = spawn_binary(&app);
    app.wait_for_consumers(1).await;
    // It serves before the signal...
    assert_eq!(app.checkout().await["name"], "vm-1");

    let status = terminate(&mut child).await;

    assert!(status.success(), "exit status {status:?}");
    // ...and consumes nothing after it: a new request waits in the queue.
    let requester = app.requester().await;
    requester
        .publish(TRAVIS_REQUEST.as_bytes(), Requester::properties())
        .await;
    eventually("the request to be queued", || async {
        app.queue_counts(&app.names.checkout_queue()).await == (1, 0)
    })
    .await;
}

#[tokio::test]
async fn a_stopped_consumer_leaves_unanswered_requests_for_the_next_one() {
    let mut app = spawn_app().await;
    app.seed(POOL, 1, &[vm("vm-1")]).await;
    app.stop_consumers().await;
    let mut requester = app.requester().await;
    let properties = Requester::properties();
    let correlation = properties.correlation_id().clone().unwrap();
    requester
        .publish(TRAVIS_REQUEST.as_bytes(), properties)
        .await;

    app.start_consumer().await;

    assert_eq!(
        requester.reply_to(correlation.as_str()).await["name"],
        "vm-1"
    );
}

#[tokio::test]
async fn sigterm_stops_a_refill_process_with_exit_zero() {
    let compute = warmer_testkit::compute::ComputeStandIn::start(Duration::from_millis(200)).await;
    let app = TestApp::builder().gce(&compute).start().await;
    app.seed(POOL, 2, &[]).await;
    let mut child = spawn_process(&app, "refill");
    app.wait_for_queue_consumers(&app.names.refill_queue(), 1)
        .await;
    let mut booted = app.listen("instance.booted").await;
    app.fill(POOL).await;
    booted.next().await;

    let status = terminate(&mut child).await;

    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn the_web_process_serves_port_and_exits_zero_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut app = TestApp::builder().start().await;
    app.env.insert("PORT".into(), port.to_string());
    let mut child = spawn_process(&app, "web");
    let health = format!("http://127.0.0.1:{port}/health");
    eventually("warmer web to answer", || async {
        reqwest::get(&health)
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;

    let status = terminate(&mut child).await;

    assert!(status.success(), "exit status {status:?}");
}
