//! Guarantee 6: SIGTERM stops consuming, finishes in-flight work and exits 0.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Child;

use warmer_testkit::*;

/// Starts `warmer checkout` as its own process with the app's environment.
pub fn spawn_binary(app: &TestApp) -> Child {
    spawn_process(app, "checkout")
}

/// Starts `warmer <process>` as its own process with the app's environment.
pub fn spawn_process(app: &TestApp, process: &str) -> Child {
    crate::warmer(process)
        .envs(&app.env)
        .env(
            "RUST_LOG",
            std::env::var("CHILD_LOG").unwrap_or("warn".into()),
        )
        .stderr(Stdio::inherit())
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
async fn a_checkout_process_that_served_shuts_down_without_an_error_line() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("vm-1"), vm("vm-2")]).await;
    let mut child = crate::warmer("checkout")
        .envs(&app.env)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("warmer binary");
    app.wait_for_consumers(1).await;
    // Direct reply-to requests open the presence probe's channels and connection.
    assert_eq!(app.checkout().await["name"], "vm-1");
    assert_eq!(app.checkout().await["name"], "vm-2");

    let status = terminate(&mut child).await;

    assert!(status.success(), "exit status {status:?}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    // An ERROR at every dyno restart would page whoever alerts on ERROR lines.
    assert!(!stderr.lines().any(|l| l.contains("ERROR")), "{stderr}");
    assert!(stderr.contains("stopped consuming"), "{stderr}");
}

#[tokio::test]
async fn a_stopped_consumer_leaves_unanswered_requests_for_the_next_one() {
    let mut app = spawn_app().await;
    app.seed(POOL, 1, &[vm("vm-1")]).await;
    app.stop_consumers().await;
    let mut requester = app.requester().await;
    let correlation = requester
        .publish_travis_request(Requester::properties())
        .await;

    app.start_consumer().await;

    assert_eq!(requester.reply_to(&correlation).await["name"], "vm-1");
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

/// Runs `warmer dev` with `env` (and the test run's servers) and returns its exit status and stderr,
/// or kills it after `patience`.
async fn run_dev(env: &[(&str, &str)], patience: Duration) -> (Option<i32>, String) {
    let mut child = crate::warmer("dev")
        .env("WARMER_AMQP_URL", amqp_url())
        .env("WARMER_REDIS_URL", redis_url())
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("warmer binary");
    let status = tokio::time::timeout(patience, child.wait()).await;
    let _ = child.kill().await;
    let output = child.wait_with_output().await.unwrap();
    let code = status.ok().map(|s| s.unwrap().code().unwrap_or(-1));
    (code, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn dev_refuses_a_production_looking_setup_and_a_taken_port_at_once() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let test_names = format!("test-dev-{}", free_port());
    for (env, reason) in [
        (vec![("WARMER_PROVIDER", "gce")], "WARMER_PROVIDER=gce"),
        (vec![("DYNO", "web.1")], "DYNO is set"),
        (
            vec![("WARMER_REDIS_NAMESPACE", "warmer")],
            "WARMER_REDIS_NAMESPACE=warmer",
        ),
        (
            vec![
                ("PORT", port.as_str()),
                ("WARMER_AMQP_PREFIX", test_names.as_str()),
                ("WARMER_REDIS_NAMESPACE", test_names.as_str()),
            ],
            "binding PORT",
        ),
    ] {
        let (code, stderr) = run_dev(&env, Duration::from_secs(10)).await;
        assert_eq!(code, Some(2), "{env:?} did not exit at once: {stderr}");
        assert!(stderr.contains(reason), "{env:?}: {stderr}");
    }
    // Nothing was created under the test's names: dev stopped before touching Redis.
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{test_names}:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn dev_starts_under_names_of_its_own_not_productions() {
    // A Redis nobody listens on: dev says who it is, then cannot go on, and touches nothing.
    let nowhere = format!("redis://127.0.0.1:{}/0", free_port());
    let mut child = crate::warmer("dev")
        .env("WARMER_REDIS_URL", &nowhere)
        .env("PORT", free_port().to_string())
        .env("WARMER_LOG_FORMAT", "l2met")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("warmer binary");
    let start = crate::Stderr::of(&mut child)
        .until("the start line", |line, _| {
            line.contains("msg=\"warmer starting\"")
        })
        .await;
    assert!(
        start.contains(&format!(
            "process=dev prefix={0} namespace={0}",
            warmer::DEV_NAMES
        )),
        "{start}"
    );
    let _ = child.kill().await;
}

/// example.env's active lines, as `heroku local` reads them from `.env`.
fn example_env() -> Vec<(String, String)> {
    include_str!("../../example.env")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(var, value)| (var.to_string(), value.to_string()))
        .collect()
}

#[tokio::test]
async fn every_procfile_process_runs_locally_with_example_env_as_heroku_local_would() {
    let app = TestApp::builder().start().await;
    let procfile: Vec<&str> = include_str!("../../Procfile")
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(process, _)| *process != "release")
        .map(|(process, _)| process)
        .collect();
    let port = free_port().to_string();
    let mut children = Vec::new();
    for process in &procfile {
        let child = crate::warmer(process)
            .envs(example_env())
            // The test run's servers, its own names and a fast simulated cloud.
            .env("WARMER_AMQP_URL", amqp_url())
            .env("WARMER_REDIS_URL", redis_url())
            .env("WARMER_AMQP_PREFIX", app.names.prefix())
            .env("WARMER_REDIS_NAMESPACE", app.names.namespace())
            .env("WARMER_LOCAL_BOOT_DELAY", "100ms")
            .env("PORT", &port)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .expect("warmer binary");
        children.push((*process, child));
    }
    app.wait_for_consumers(1).await;
    app.wait_for_queue_consumers(&app.names.refill_queue(), 1)
        .await;

    // refill boots into the shared simulated cloud, checkout hands out, and reconcile (another
    // process, listing the same cloud) evicts nothing.
    app.seed(POOL, 2, &[]).await;
    app.fill(POOL).await;
    app.wait_until_settled(POOL, 2).await;
    let reply = app.checkout().await;
    assert!(
        reply["name"].as_str().unwrap().starts_with("travis-job-"),
        "{reply}"
    );
    app.wait_until_settled(POOL, 2).await;
    let reconcile_lock: Option<String> =
        redis::AsyncCommands::get(&mut app.redis.clone(), app.names.reconciler_lock())
            .await
            .unwrap();
    assert!(reconcile_lock.is_some(), "a reconciler is active");

    for (process, child) in &mut children {
        assert!(
            child.try_wait().unwrap().is_none(),
            "`warmer {process}` exited under heroku local"
        );
    }
    for (process, mut child) in children {
        let status = terminate(&mut child).await;
        assert!(status.success(), "{process}: {status:?}");
    }
}

#[tokio::test]
async fn the_simulated_cloud_is_shared_by_the_processes_of_a_deployment() {
    let app = TestApp::builder().start().await;
    let (refill, reconcile) = (app.cloud().await, app.cloud().await);
    let spec = warmer::VmSpec {
        name: "travis-job-shared".into(),
        pool: POOL.parse().unwrap(),
        ssh_public_key: "ssh-rsa AAAA".into(),
        namespace: app.names.namespace().into(),
    };

    refill.boot(&spec).await.unwrap();

    let listed = reconcile.list(app.names.namespace()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "travis-job-shared");
    reconcile
        .delete("travis-job-shared", "local-a")
        .await
        .unwrap();
    assert_eq!(
        refill.get("travis-job-shared", "local-a").await.unwrap(),
        None
    );
}
