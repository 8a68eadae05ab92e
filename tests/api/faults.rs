//! Guarantees 2, 3 and 6 under faults: a consumer killed mid-flight, RabbitMQ and
//! Redis going away and coming back.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use crate::lifecycle::{signal, spawn_binary};
use warmer_testkit::*;

#[tokio::test]
async fn a_consumer_killed_mid_flight_hands_no_vm_twice_and_leaks_none() {
    const VMS: usize = 150;
    const REQUESTERS: usize = 16;
    const EACH: usize = 6; // 96 requests
    let app = TestApp::builder().start().await;
    let vms: Vec<Value> = (0..VMS).map(|i| vm(&format!("vm-{i:04}"))).collect();
    app.seed(POOL, VMS as u32, &vms).await;
    let mut doomed = spawn_binary(&app);
    app.wait_for_consumers(1).await;

    let mut tasks = Vec::new();
    for r in 0..REQUESTERS {
        let mut requester = app.requester().await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..EACH {
                let id = format!("req-{r}-{i}");
                let reply = requester
                    .send_with(
                        TRAVIS_REQUEST.as_bytes(),
                        Requester::properties()
                            .with_message_id(id.as_str().into())
                            .with_correlation_id(id.as_str().into()),
                    )
                    .await;
                got.push((id, reply));
            }
            got
        }));
    }
    // Kill it while it serves, then let a fresh process take the redeliveries.
    eventually("the first checkouts", || async {
        app.leases().await.len() >= 10
    })
    .await;
    signal(&doomed, "KILL");
    doomed.wait().await.unwrap();
    let _survivor = spawn_binary(&app);

    let mut by_request: HashMap<String, String> = HashMap::new();
    for task in tasks {
        for (id, reply) in task.await.unwrap() {
            by_request.insert(id, reply["name"].as_str().expect("a VM").to_string());
        }
    }

    // A requester may have its reply before the survivor has settled the redelivery of its
    // request: wait until no lease is still pending (popped, reply not yet settled).
    eventually("the redeliveries to settle", || async {
        app.leases()
            .await
            .values()
            .all(|(_, state)| state != "pending")
    })
    .await;

    // At most once: distinct requests got distinct VMs.
    let handed: HashSet<&String> = by_request.values().collect();
    assert_eq!(handed.len(), by_request.len(), "a VM went to two requests");
    // No leak: every VM is in exactly one place.
    let pool: HashSet<String> = app.pool_vms(POOL).await.into_iter().collect();
    let leases = app.leases().await;
    let orphaned: HashSet<String> = app.orphaned().await.into_iter().collect();
    for (id, vm) in &by_request {
        assert!(
            !pool.contains(vm),
            "{vm} is handed out and still in the pool"
        );
        // Handed out, or (its requester left before a redelivery re-checked it) of unknown fate,
        // hence recorded for deletion: never back in the pool.
        let handed = leases
            .values()
            .any(|lease| *lease == (vm.clone(), "handed".to_string()));
        assert!(
            handed || orphaned.contains(vm),
            "{vm} of {id} is unaccounted for"
        );
    }
    let leased: HashSet<&String> = leases.values().map(|(vm, _)| vm).collect();
    for i in 0..VMS {
        let name = format!("vm-{i:04}");
        let places = [
            pool.contains(&name),
            leased.contains(&name),
            orphaned.contains(&name),
        ];
        assert_eq!(
            places.iter().filter(|p| **p).count(),
            1,
            "{name} is in {places:?}"
        );
    }
}

#[tokio::test]
async fn rabbitmq_going_away_and_coming_back_is_survived() {
    let proxy = Proxy::start(amqp_addr()).await;
    let mut app = TestApp::builder()
        .amqp_url(&format!("amqp://127.0.0.1:{}/%2f", proxy.port))
        .start()
        .await;
    app.start_consumer().await;
    app.seed(POOL, 2, &[vm("before"), vm("after")]).await;
    assert_eq!(app.checkout().await["name"], "before");

    proxy.cut();
    app.wait_for_no_consumers(&app.names.checkout_queue()).await;
    // A request sent while warmer is disconnected waits in the queue.
    let mut requester = app.requester().await;
    let correlation = requester
        .publish_travis_request(Requester::properties())
        .await;
    proxy.restore();

    assert_eq!(requester.reply_to(&correlation).await["name"], "after");
    app.stop_consumers().await;
}

#[tokio::test]
async fn redis_going_away_and_coming_back_is_survived() {
    let proxy = Proxy::start(redis_addr()).await;
    let url = format!("redis://127.0.0.1:{}/0", proxy.port);
    let app = TestApp::builder()
        .redis_url(&url)
        .checkout_consumers(1)
        .start()
        .await;
    app.seed(POOL, 2, &[vm("before"), vm("after")]).await;
    assert_eq!(app.checkout().await["name"], "before");

    proxy.cut();
    let mut requester = app.requester().await;
    let properties = requester.fresh_properties();
    let correlation = properties.correlation_id().clone().unwrap();
    requester
        .publish(TRAVIS_REQUEST.as_bytes(), properties)
        .await;
    // Redis stays away for 3 s, longer than one try takes to fail (the client's own reconnect
    // attempts included): no answer may come meanwhile, as the consumer keeps trying within the
    // request's 10 s budget, and the VM comes once Redis is back.
    app.wait_for_empty(&app.names.checkout_queue()).await;
    let early = tokio::time::timeout(
        Duration::from_secs(3),
        requester.reply_to(correlation.as_str()),
    )
    .await;
    assert!(early.is_err(), "answered during the outage: {early:?}");
    assert!(
        proxy.refused() > 0,
        "the consumer tried Redis during the outage"
    );
    proxy.restore();

    let reply = requester.reply_to(correlation.as_str()).await;
    assert_eq!(reply["name"], "after", "{reply}");
    assert_eq!(app.checkout().await["code"], "pool_empty");
}

#[tokio::test]
async fn a_refill_message_that_keeps_failing_is_dead_lettered_not_retried_forever() {
    let proxy = Proxy::start(redis_addr()).await;
    let mut app = TestApp::builder()
        .redis_url(&format!("redis://127.0.0.1:{}/0", proxy.port))
        .start()
        .await;
    app.start_refill().await;
    let mut dead = app.dead_letters().await;

    // Redis is gone: every delivery of the fill fails and warmer requeues it.
    proxy.cut();
    warmer::operator::fill(&app.ctx, None, None).await.unwrap();

    let letter = within(
        "the fill to be dead-lettered",
        futures_lite::StreamExt::next(&mut dead),
    )
    .await
    .unwrap()
    .unwrap();
    let body: Value = serde_json::from_slice(&letter.data).unwrap();
    assert_eq!(body, serde_json::json!({"command": "fill"}));
    let reason = letter
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-first-death-reason").cloned());
    assert!(
        matches!(&reason, Some(lapin::types::AMQPValue::LongString(r)) if r.as_bytes() == b"delivery_limit"),
        "{reason:?}"
    );
    proxy.restore();
    app.stop_consumers().await;
}

#[tokio::test]
async fn a_stalled_redis_gets_an_internal_reply_within_the_requests_budget() {
    let redis = PrivateRedis::start(&[]).await;
    let app = TestApp::builder().on_redis(&redis).start().await;
    app.seed(POOL, 1, &[vm("kept")]).await;
    let mut app = app;
    app.start_consumer().await;
    let mut requester = app.requester().await;

    // Redis accepts connections and answers nothing, for longer than any request waits.
    redis.stall();
    let sent = std::time::Instant::now();
    let reply = requester
        .send_with(
            TRAVIS_REQUEST.as_bytes(),
            requester.fresh_properties().with_expiration("3000".into()),
        )
        .await;
    let waited = sent.elapsed();
    redis.resume();

    assert_eq!(reply["code"], "internal", "{reply}");
    // The budget is the request's own 3 s: each try's wait for an answer is part of it.
    assert!(
        waited < Duration::from_secs(5),
        "the reply took {waited:?}, past the request's 3 s budget"
    );
    let mut dead = app.dead_letters().await;
    within(
        "the request to be dead-lettered",
        futures_lite::StreamExt::next(&mut dead),
    )
    .await
    .unwrap()
    .unwrap();
}

/// Waits until `redis` has closed every connection but the one asking (its idle `timeout`).
async fn idle_connections_closed(redis: &PrivateRedis) {
    let client = redis::Client::open(redis.url()).unwrap();
    eventually("the server to close idle connections", || async {
        let mut asking = client.get_multiplexed_async_connection().await.unwrap();
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut asking)
            .await
            .unwrap();
        clients.lines().count() <= 1
    })
    .await
}

#[tokio::test]
async fn connections_the_redis_server_closed_for_idleness_cost_no_failed_answer_or_requeue() {
    // Heroku Redis closes connections idle for 300 s; this one after 1 s.
    let redis = PrivateRedis::start(&["--timeout", "1"]).await;
    let token = "hirefire-token";
    let mut app = TestApp::builder()
        .on_redis(&redis)
        .envs(&[("HIREFIRE_TOKEN", token)])
        .start()
        .await;
    app.seed(POOL, 1, &[]).await;
    let web = app.start_web().await;
    let cloud = warmer::Cloud::from_config(&app.ctx.config, &app.ctx.store)
        .await
        .unwrap();
    let (_trigger, shutdown) = warmer::shutdown::channel();
    let refill = warmer::refill::Refill::new(app.ctx.clone(), cloud.clone(), shutdown).unwrap();
    let reconciler = warmer::reconcile::Reconciler::new(app.ctx.clone(), cloud);
    let fill = || warmer::Incoming {
        data: br#"{"command":"fill"}"#.to_vec(),
        properties: lapin::BasicProperties::default(),
        redelivered: false,
    };
    assert!(matches!(
        refill.handle(fill()).await,
        warmer::refill::Outcome::Refilled { .. }
    ));
    reconciler.pass(None).await.unwrap();

    for round in 0..2 {
        idle_connections_closed(&redis).await;
        for path in ["/health", "/metrics", &format!("/hirefire/{token}/info")] {
            let answer = within("an answer", reqwest::get(format!("{web}{path}")))
                .await
                .unwrap();
            assert_eq!(
                answer.status(),
                200,
                "{path} after an idle close (round {round})"
            );
        }
        idle_connections_closed(&redis).await;
        let outcome = refill.handle(fill()).await;
        assert!(
            matches!(outcome, warmer::refill::Outcome::Refilled { .. }),
            "{outcome:?} after an idle close (round {round})"
        );
        idle_connections_closed(&redis).await;
        reconciler
            .pass(None)
            .await
            .expect("a reconcile pass after an idle close");
    }
}
