//! Metrics: after a scripted workload across two processes of each type, `/metrics` holds
//! exactly what happened, and Prometheus's own parser accepts it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use warmer::now_ms;

use warmer_testkit::compute::ComputeStandIn;
use warmer_testkit::*;

const BOOT: Duration = Duration::from_millis(300);
const ZONE: &str = "us-central1-b";
/// A pool that exists with nothing in it: its requests miss.
const EMPTY: &str = "travis-ci-empty-1:n1-standard-2";
/// A pool whose VMs vanish or stop behind warmer's back.
const GHOSTS: &str = "travis-ci-ghosts-1:n1-standard-2";

/// The travis worker's request for `image` on n1-standard-2.
fn request_for(image: &str) -> Vec<u8> {
    json!({
        "site": "org",
        "image_name": format!("https://www.googleapis.com/compute/v1/projects/p/global/images/{image}"),
        "machine_type": "n1-standard-2",
        "public_ip": false,
    })
    .to_string()
    .into_bytes()
}

/// A pool entry in [`ZONE`] booted an hour ago.
fn old_entry(name: &str) -> serde_json::Value {
    let mut entry = vm(name);
    entry["zone"] = json!(ZONE);
    entry["booted_at"] = json!(now_ms() / 1000 - 3600);
    entry
}

async fn scrape(url: &str, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(format!("{url}/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = within("/metrics", request.send()).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (content_type, response.text().await.unwrap())
}

/// The samples of the families warmer counts (levels left out), for comparing whole.
fn counted(samples: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|(series, _)| {
            [
                "warmer_checkouts_total",
                "warmer_boots_total",
                "warmer_evictions_total",
                "warmer_deletions_total",
                "warmer_reconcile_passes_total",
                "warmer_checkout_wait_seconds_count",
                "warmer_boot_duration_seconds_count",
                "warmer_reconcile_duration_seconds_count",
            ]
            .iter()
            .any(|family| series.starts_with(&format!("{family}{{")) || *series == family)
        })
        .map(|(series, value)| (series.clone(), *value))
        .collect()
}

async fn release_reconciler_lock(app: &TestApp) {
    let _: () = redis::AsyncCommands::del(&mut app.redis.clone(), app.names.reconciler_lock())
        .await
        .unwrap();
}

#[tokio::test]
async fn after_a_scripted_workload_the_metrics_are_exactly_what_happened() {
    let compute = ComputeStandIn::start(BOOT).await;
    compute.add_instance(
        "stopped",
        ZONE,
        json!({"warmth": "warmed", "warmer": "set below"}),
    );
    let mut app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_GOOGLE_CLOUD_ZONES", ZONE)])
        .checkout_consumers(2)
        .start()
        .await;
    compute.with(|s| {
        let stopped = s.instances.get_mut("stopped").unwrap();
        stopped["labels"]["warmer"] = json!(app.names.namespace());
        stopped["status"] = json!("TERMINATED");
    });
    app.start_refill().await;
    app.start_refill().await;
    app.seed(POOL, 3, &[]).await;
    app.seed(EMPTY, 0, &[]).await;
    app.fill(POOL).await;
    app.wait_until_settled(POOL, 3).await; // 3 boots

    // 3 hits (each booting a replacement), 2 misses, an unknown pool, 2 unreadable requests,
    // one without reply_to (dead-lettered).
    let mut requester = app.requester().await;
    for _ in 0..3 {
        let reply = requester.send(TRAVIS_REQUEST.as_bytes()).await;
        assert!(reply["name"].is_string(), "{reply}");
    }
    for body in [
        request_for("travis-ci-empty-1"),
        request_for("travis-ci-empty-1"),
        request_for("travis-ci-unknown-1"),
        b"not json".to_vec(),
        b"{\"image_name\": 7}".to_vec(),
    ] {
        let reply = requester.send(&body).await;
        assert!(reply["error"].is_string(), "{reply}");
    }
    let no_reply_to = lapin::BasicProperties::default().with_correlation_id("lost".into());
    requester
        .publish(TRAVIS_REQUEST.as_bytes(), no_reply_to)
        .await;
    eventually(
        "the request without reply_to to be dead-lettered",
        || async { app.queue_counts(&app.names.dead_letter_queue()).await.0 == 1 },
    )
    .await;
    app.wait_until_settled(POOL, 3).await; // 3 replacement boots

    // One VM vanished and one stopped behind warmer's back: the first reconciler evicts both,
    // the second finds the pool short and asks for a fill, whose boot fails on the quota; an
    // operator's fill succeeds. A third reconciler is misconfigured.
    app.seed(GHOSTS, 1, &[old_entry("vanished"), old_entry("stopped")])
        .await;
    let broker = app.broker().await;
    app.reconciler().await.pass(Some(&broker)).await.unwrap();
    assert!(app.pool_vms(GHOSTS).await.is_empty());
    compute.with(|s| s.quota_exhausted = true);
    let mut failed = app.listen("boot.failed").await;
    release_reconciler_lock(&app).await; // as when its holder dies and the lock expires
    app.reconciler().await.pass(Some(&broker)).await.unwrap();
    assert_eq!(failed.next().await["kind"], "quota");
    app.wait_until_settled(GHOSTS, 0).await;
    compute.with(|s| s.quota_exhausted = false);
    app.fill(GHOSTS).await;
    app.wait_until_settled(GHOSTS, 1).await; // 1 boot
    eventually("the evicted VMs to be deleted", || async {
        app.orphaned().await.is_empty()
    })
    .await;
    // (A URL the stand-in does not serve: refused at once, where an unreachable one is retried
    // for two minutes.)
    let mut misconfigured = app.env.clone();
    misconfigured.insert(
        "WARMER_GOOGLE_COMPUTE_URL".into(),
        format!("http://127.0.0.1:{}/nowhere/v1", compute.port),
    );
    let misconfigured = warmer::Config::from_vars(misconfigured).unwrap();
    let cloud = warmer::Cloud::from_config(&misconfigured, &app.ctx.store)
        .await
        .unwrap();
    let failing = warmer::reconcile::Reconciler::new(app.ctx.clone(), cloud);
    release_reconciler_lock(&app).await;
    assert!(failing.pass(None).await.is_err());

    // Two web processes: both export the sum of every process's counts.
    let (first, second) = (app.start_web().await, app.start_web().await);
    let (content_type, body) = scrape(&first, None).await;
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    let exported = samples(&body);
    let pool = |pool: &str, rest: &str| format!("{{pool=\"{pool}\",{rest}}}");
    let expected: BTreeMap<String, f64> = [
        (
            format!(
                "warmer_checkouts_total{}",
                pool(POOL, "outcome=\"handed_out\"")
            ),
            3.0,
        ),
        (
            format!(
                "warmer_checkouts_total{}",
                pool(POOL, "outcome=\"pool_empty\"")
            ),
            0.0,
        ),
        (
            format!(
                "warmer_checkouts_total{}",
                pool(EMPTY, "outcome=\"handed_out\"")
            ),
            0.0,
        ),
        (
            format!(
                "warmer_checkouts_total{}",
                pool(EMPTY, "outcome=\"pool_empty\"")
            ),
            2.0,
        ),
        (
            format!(
                "warmer_checkouts_total{}",
                pool(GHOSTS, "outcome=\"handed_out\"")
            ),
            0.0,
        ),
        (
            format!(
                "warmer_checkouts_total{}",
                pool(GHOSTS, "outcome=\"pool_empty\"")
            ),
            0.0,
        ),
        (
            format!("warmer_checkouts_total{}", pool("", "outcome=\"no_pool\"")),
            1.0,
        ),
        (
            format!(
                "warmer_checkouts_total{}",
                pool("", "outcome=\"bad_request\"")
            ),
            2.0,
        ),
        (
            format!(
                "warmer_checkouts_total{}",
                pool("", "outcome=\"no_reply_to\"")
            ),
            1.0,
        ),
        ("warmer_checkout_wait_seconds_count".into(), 3.0),
        (
            format!(
                "warmer_boots_total{}",
                pool(POOL, &format!("zone=\"{ZONE}\",result=\"ready\""))
            ),
            6.0,
        ),
        (
            format!(
                "warmer_boots_total{}",
                pool(GHOSTS, &format!("zone=\"{ZONE}\",result=\"ready\""))
            ),
            1.0,
        ),
        (
            format!(
                "warmer_boots_total{}",
                pool(GHOSTS, &format!("zone=\"{ZONE}\",result=\"failed_quota\""))
            ),
            1.0,
        ),
        (
            format!("warmer_boot_duration_seconds_count{{zone=\"{ZONE}\"}}"),
            7.0,
        ),
        (
            format!("warmer_evictions_total{}", pool(GHOSTS, "reason=\"gone\"")),
            1.0,
        ),
        (
            format!(
                "warmer_evictions_total{}",
                pool(GHOSTS, "reason=\"not_running\"")
            ),
            1.0,
        ),
        ("warmer_deletions_total{reason=\"gone\"}".into(), 1.0),
        ("warmer_deletions_total{reason=\"not_running\"}".into(), 1.0),
        ("warmer_reconcile_passes_total{result=\"ok\"}".into(), 2.0),
        (
            "warmer_reconcile_passes_total{result=\"failed\"}".into(),
            1.0,
        ),
        ("warmer_reconcile_duration_seconds_count".into(), 2.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(counted(&exported), expected, "in\n{body}");
    for (series, value) in [
        (format!("warmer_pool_ready{{pool=\"{POOL}\"}}"), 3.0),
        (format!("warmer_pool_ready{{pool=\"{GHOSTS}\"}}"), 1.0),
        (format!("warmer_pool_ready{{pool=\"{EMPTY}\"}}"), 0.0),
        (
            format!("warmer_pool_oldest_age_seconds{{pool=\"{EMPTY}\"}}"),
            0.0,
        ),
        (format!("warmer_pool_handed_out{{pool=\"{POOL}\"}}"), 3.0),
        ("warmer_dead_letter_messages".into(), 1.0),
        ("warmer_orphaned_vms".into(), 0.0),
    ] {
        assert_eq!(exported.get(&series), Some(&value), "{series} in\n{body}");
    }
    let build_info = format!(
        "warmer_build_info{{version=\"{}\",commit=\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(body.lines().any(|l| l.starts_with(&build_info)), "{body}");
    let last_success = exported["warmer_reconcile_last_success_timestamp_seconds"];
    assert!((now_ms() as f64 / 1000.0 - last_success).abs() < 120.0);
    let wait_sum = exported["warmer_checkout_wait_seconds_sum"];
    assert!(wait_sum > 0.0 && wait_sum < 30.0, "{wait_sum}");
    let boot_inf =
        exported[&format!("warmer_boot_duration_seconds_bucket{{zone=\"{ZONE}\",le=\"+Inf\"}}")];
    assert_eq!(boot_inf, 7.0);

    promtool_check_metrics(&body);
    let (_, again) = scrape(&second, None).await;
    assert_eq!(counted(&samples(&again)), expected);
    let (content_type, open) = scrape(
        &second,
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains(&format!(
        "warmer_checkouts_total{{pool=\"{POOL}\",outcome=\"handed_out\"}} 3"
    )));
    app.stop_consumers().await;
}

#[tokio::test]
async fn the_exposition_passes_promtool_with_odd_pool_names_and_no_rabbitmq() {
    let proxy = Proxy::start(amqp_addr()).await;
    let mut app = TestApp::builder()
        .amqp_url(&format!("amqp://127.0.0.1:{}/%2f", proxy.port))
        .start()
        .await;
    app.seed(POOL, 1, &[vm("a")]).await;
    // A pool name no operator command accepts, written into Redis by someone else.
    let odd = "travis-ci-\"quoted\"\\image\n:n1-standard-2";
    let mut redis = app.redis.clone();
    let _: () = redis::AsyncCommands::hset(&mut redis, app.names.pool_configs(), odd, "2")
        .await
        .unwrap();
    let odd_counters = format!("{}{odd}", app.names.pool_metrics_key_prefix());
    let _: () = redis::AsyncCommands::hincr(&mut redis, odd_counters, "checkouts|handed_out", 1)
        .await
        .unwrap();
    let url = app.start_web().await;
    proxy.cut();

    let (_, body) = scrape(&url, None).await;

    promtool_check_metrics(&body);
    let handed_out = "warmer_checkouts_total{pool=\"travis-ci-\\\"quoted\\\"\\\\image\\n:n1-standard-2\",outcome=\"handed_out\"}";
    let exported = samples(&body);
    assert_eq!(exported.get(handed_out), Some(&1.0), "{body}");
    assert!(
        !exported.contains_key("warmer_dead_letter_messages"),
        "{body}"
    );
    app.stop_consumers().await;
}

/// The dashboard's queries with Grafana's variables given values, as Prometheus would get them.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/grafana-dashboard.json")).unwrap();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().clone())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    // The pool variable's query (label_values is Grafana's): its metric must exist too.
    let variable = dashboard["templating"]["list"][0]["definition"]
        .as_str()
        .unwrap();
    let metric = variable
        .trim_start_matches("label_values(")
        .split(',')
        .next()
        .unwrap();
    queries.push(metric.to_string());
    queries
        .into_iter()
        .map(|q| {
            q.replace("$__rate_interval", "5m")
                .replace("$__range", "1d")
                .replace("$pool", ".*")
        })
        .collect()
}

#[tokio::test]
async fn every_query_of_the_grafana_dashboard_parses_and_names_only_families_warmer_exports() {
    let queries = dashboard_queries();
    assert!(queries.len() > 20, "{queries:?}");

    // Prometheus's own parser: each query as a recording rule under `promtool check rules`.
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, expr)| json!({"record": format!("warmer:dashboard:query_{i}"), "expr": expr}))
        .collect();
    let file = std::env::temp_dir().join(format!("warmer-dashboard-{}.yml", fresh_prefix()));
    // JSON is YAML.
    std::fs::write(
        &file,
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    let checked = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs (scripts/setup installs it)");
    let _ = std::fs::remove_file(&file);
    assert!(
        checked.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Every family a query names is one a real /metrics exports (a sized pool, a rollover).
    let mut app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("a")]).await;
    let pool: warmer::PoolName = POOL.parse().unwrap();
    let policy = warmer::policy::Policy {
        min: 1,
        max: 4,
        adaptive: true,
        hit: 0.99,
        schedules: Vec::new(),
    };
    warmer::operator::pool_policy(&app.ctx, &pool, Some(&policy))
        .await
        .unwrap();
    let base = app.start_web().await;
    let (_, body) = scrape(&base, None).await;
    let exported: std::collections::BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for query in &queries {
        for name in query
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("warmer_"))
        {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|f| exported.contains(f))
                .unwrap_or(name);
            assert!(
                exported.contains(family),
                "{name} (in `{query}`) is not exported: {exported:?}"
            );
        }
    }
}
