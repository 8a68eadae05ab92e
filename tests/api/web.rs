//! `warmer web`: health, Prometheus metrics and the HireFire endpoint, over real HTTP.

use serde_json::{Value, json};

use warmer_testkit::*;

async fn get(url: &str, header: Option<(&str, &str)>) -> (u16, String, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    crate::answer_of(request).await
}

/// Polls `url` until its JSON body equals `expected` (queue counts settle asynchronously).
async fn wait_for_json(url: &str, header: Option<(&str, &str)>, expected: Value) {
    eventually(&format!("{url} to answer {expected}"), || async {
        let (status, content_type, body) = get(url, header).await;
        status == 200
            && content_type == "application/json"
            && serde_json::from_str::<Value>(&body).ok().as_ref() == Some(&expected)
    })
    .await
}

#[tokio::test]
async fn hirefire_gets_the_backlog_of_each_process_type_for_the_right_token_only() {
    let mut app = TestApp::builder()
        .envs(&[("HIREFIRE_TOKEN", "hf-s3cret")])
        .start()
        .await;
    let requester = app.requester().await;
    for _ in 0..3 {
        requester
            .publish(TRAVIS_REQUEST.as_bytes(), Requester::properties())
            .await;
    }
    // 5 wanted, 2 ready, none booting: 3 VMs for refill to boot. Fill commands in its queue
    // are hints, not work, and do not count.
    app.seed(POOL, 5, &[vm("a"), vm("b")]).await;
    warmer::operator::fill(&app.ctx, None, None).await.unwrap();
    let url = app.start_web().await;
    let expected = json!([
        {"name": "checkout", "value": 3, "quantity": 3},
        {"name": "refill", "value": 3, "quantity": 3},
    ]);

    wait_for_json(
        &format!("{url}/hirefire/hf-s3cret/info"),
        None,
        expected.clone(),
    )
    .await;
    wait_for_json(
        &format!("{url}/hirefire"),
        Some(("HireFire-Token", "hf-s3cret")),
        expected,
    )
    .await;
    for (path, header) in [
        ("/hirefire/wrong/info", None),
        ("/hirefire", Some(("HireFire-Token", "wrong"))),
        ("/hirefire", None),
    ] {
        let (status, _, body) = get(&format!("{url}{path}"), header).await;
        assert_eq!(status, 404, "{path} with {header:?}");
        assert!(!body.contains("s3cret"));
    }
    app.stop_consumers().await;
}

#[tokio::test]
async fn without_a_hirefire_token_the_hirefire_routes_do_not_exist() {
    let mut app = TestApp::builder().start().await;
    let url = app.start_web().await;

    let (status, _, _) = get(&format!("{url}/hirefire//info"), None).await;
    assert_eq!(status, 404);
    let (status, _, _) = get(&format!("{url}/hirefire"), Some(("HireFire-Token", ""))).await;
    assert_eq!(status, 404);
    app.stop_consumers().await;
}

#[tokio::test]
async fn metrics_show_every_pool_the_orphans_the_brake_and_the_queues() {
    let mut app = spawn_app().await; // one checkout consumer
    app.seed(POOL, 3, &[vm("a"), vm("b")]).await;
    let _: () = redis::AsyncCommands::rpush(
        &mut app.redis.clone(),
        app.names.orphaned(),
        json!({"name": "lost", "zone": "us-central1-c"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(app.checkout().await["name"], "a");
    let url = app.start_web().await;

    let (status, content_type, body) = get(&format!("{url}/metrics"), None).await;

    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    let checkout_queue = app.names.checkout_queue();
    let samples = samples(&body);
    for (series, value) in [
        (format!("warmer_pool_target{{pool=\"{POOL}\"}}"), 3.0),
        (format!("warmer_pool_ready{{pool=\"{POOL}\"}}"), 1.0),
        (format!("warmer_pool_booting{{pool=\"{POOL}\"}}"), 0.0),
        (format!("warmer_pool_handed_out{{pool=\"{POOL}\"}}"), 1.0),
        ("warmer_orphaned_vms".to_string(), 1.0),
        ("warmer_safety_brake".to_string(), 0.0),
        (
            format!("warmer_queue_consumers{{queue=\"{checkout_queue}\"}}"),
            1.0,
        ),
        (
            format!("warmer_queue_ready_messages{{queue=\"{checkout_queue}\"}}"),
            0.0,
        ),
    ] {
        assert_eq!(samples.get(&series), Some(&value), "{series} in\n{body}");
    }
    // "b" (booted at 1_700_000_000, like every test VM) is the oldest left.
    let age = samples[&format!("warmer_pool_oldest_age_seconds{{pool=\"{POOL}\"}}")];
    let expected = (warmer::now_ms() / 1000 - 1_700_000_000) as f64;
    assert!(
        (age - expected).abs() < 60.0,
        "age {age}, expected about {expected}"
    );
    assert!(!body.contains("ssh_private_key") && !body.contains("KEY"));
    app.stop_consumers().await;
}

#[tokio::test]
async fn health_names_the_dependency_that_is_down_and_recovers_with_it() {
    let proxy = Proxy::start(redis_addr()).await;
    let mut app = TestApp::builder()
        .redis_url(&format!("redis://127.0.0.1:{}/0", proxy.port))
        .start()
        .await;
    let url = app.start_web().await;
    let health = format!("{url}/health");
    wait_for_json(&health, None, json!({"redis": "ok", "rabbitmq": "ok"})).await;

    proxy.cut();
    let (status, content_type, body) = get(&health, None).await;
    assert_eq!(status, 503);
    assert_eq!(content_type, "application/json");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_ne!(body["redis"], "ok");
    assert_eq!(body["rabbitmq"], "ok");

    proxy.restore();
    wait_for_json(&health, None, json!({"redis": "ok", "rabbitmq": "ok"})).await;
    let (status, _, _) = reqwest::Client::new()
        .post(&health)
        .send()
        .await
        .map(|r| (r.status().as_u16(), (), ()))
        .unwrap();
    assert_eq!(status, 405);
    app.stop_consumers().await;
}

#[tokio::test]
async fn without_rabbitmq_health_fails_and_metrics_keep_the_pools_until_it_returns() {
    let proxy = Proxy::start(amqp_addr()).await;
    let mut app = TestApp::builder()
        .amqp_url(&format!("amqp://127.0.0.1:{}/%2f", proxy.port))
        .start()
        .await;
    app.seed(POOL, 2, &[vm("a")]).await;
    let url = app.start_web().await;
    let health = format!("{url}/health");
    wait_for_json(&health, None, json!({"redis": "ok", "rabbitmq": "ok"})).await;

    proxy.cut();
    let (status, _, body) = get(&health, None).await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"redis": "ok", "rabbitmq": "unavailable"})
    );
    let (status, _, metrics) = get(&format!("{url}/metrics"), None).await;
    assert_eq!(status, 200);
    let ready = format!("warmer_pool_ready{{pool=\"{POOL}\"}}");
    assert_eq!(samples(&metrics).get(&ready), Some(&1.0), "{metrics}");
    assert!(
        !metrics.contains("warmer_queue_ready_messages{"),
        "{metrics}"
    );

    proxy.restore(); // the web process reconnects by itself
    wait_for_json(&health, None, json!({"redis": "ok", "rabbitmq": "ok"})).await;
    app.stop_consumers().await;
}

#[tokio::test]
async fn metrics_with_a_token_are_served_only_to_its_bearer() {
    let mut app = TestApp::builder()
        .envs(&[("WARMER_METRICS_TOKEN", "m3trics-t0ken")])
        .start()
        .await;
    app.seed(POOL, 1, &[]).await;
    let url = format!("{}/metrics", app.start_web().await);

    for header in [
        None,
        Some(("authorization", "Bearer wrong")),
        Some(("authorization", "m3trics-t0ken")),
        Some(("authorization", "Basic bTNyaWNzLXQwa2Vu")),
    ] {
        let (status, _, body) = get(&url, header).await;
        assert_eq!(status, 401, "{header:?}");
        assert!(!body.contains(POOL) && !body.contains("m3trics"), "{body}");
    }
    let (status, _, body) = get(&url, Some(("authorization", "Bearer m3trics-t0ken"))).await;
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("warmer_pool_target{{pool=\"{POOL}\"}} 1")),
        "{body}"
    );
    // Health stays open (Heroku and load balancers ask it) and says nothing of the pools.
    let (status, _, body) = get(
        &format!("{}/health", url.trim_end_matches("/metrics")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(!body.contains(POOL));
}

#[tokio::test]
async fn warmer_web_starts_without_redis_and_names_it_in_health_until_it_is_back() {
    let app = TestApp::builder().start().await;
    let redis = Proxy::start(redis_addr()).await;
    redis.cut();
    let port = free_port();
    let _web = crate::warmer("web")
        .envs(&app.env)
        .env(
            "WARMER_REDIS_URL",
            format!("redis://127.0.0.1:{}/0", redis.port),
        )
        .env("PORT", port.to_string())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    let health = |url: String| async move {
        let response = reqwest::get(&url).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json::<Value>().await.ok()?))
    };
    eventually("/health to name Redis as unavailable", || async {
        matches!(health(url.clone()).await, Some((503, body)) if body["redis"] != "ok")
    })
    .await;

    redis.restore();
    eventually("/health to answer 200 once Redis is back", || async {
        matches!(health(url.clone()).await, Some((200, body)) if body["redis"] == "ok")
    })
    .await;
}
