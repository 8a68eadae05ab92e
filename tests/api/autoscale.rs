//! `warmer autoscale` against the Heroku Platform API stand-in and the real RabbitMQ.

use serde_json::json;
use warmer::autoscale::Autoscaler;
use warmer::autoscale::plan::SCALE_DOWN_AFTER;

use warmer_testkit::heroku::{APP, HerokuStandIn, TOKEN};
use warmer_testkit::*;

async fn spawn_autoscaled_app(heroku: &HerokuStandIn, token: &str) -> TestApp {
    let url = heroku.url();
    TestApp::builder()
        .envs(&[
            ("HEROKU_API_TOKEN", token),
            ("HEROKU_APP_NAME", APP),
            ("WARMER_HEROKU_API_URL", url.as_str()),
            ("WARMER_AUTOSCALE_MAX", "4"),
        ])
        .start()
        .await
}

async fn publish_requests(app: &TestApp, n: usize) {
    let requester = app.requester().await;
    for _ in 0..n {
        requester
            .publish(TRAVIS_REQUEST.as_bytes(), Requester::properties())
            .await;
    }
    eventually("the requests to be queued", || async {
        app.queue_counts(&app.names.checkout_queue()).await.0 as usize >= n
    })
    .await;
}

#[tokio::test]
async fn a_backlog_of_checkout_requests_adds_checkout_dynos_up_to_the_maximum() {
    let heroku = HerokuStandIn::start(&[("checkout", 1), ("refill", 1), ("reconcile", 1)]).await;
    let app = spawn_autoscaled_app(&heroku, TOKEN).await;
    let mut autoscaler = Autoscaler::new(app.ctx.clone()).unwrap();

    publish_requests(&app, 100).await; // 2 prefetches' worth: 1 + 2 dynos
    let changes = autoscaler.check().await.unwrap();

    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(heroku.quantity("checkout"), 3);
    assert_eq!(heroku.quantity("refill"), 1, "nothing waits for refill");
    assert_eq!(
        heroku.with(|s| s.patches.clone()),
        [json!({"updates": [{"type": "checkout", "quantity": 3}]})]
    );

    publish_requests(&app, 400).await;
    autoscaler.check().await.unwrap();
    assert_eq!(
        heroku.quantity("checkout"),
        4,
        "never above WARMER_AUTOSCALE_MAX"
    );
    assert!(
        autoscaler.check().await.unwrap().is_empty(),
        "at the maximum: nothing to do"
    );
    assert_eq!(heroku.with(|s| s.patches.len()), 2);
}

#[tokio::test]
async fn quiet_queues_lose_one_dyno_at_a_time_and_never_the_last() {
    let heroku = HerokuStandIn::start(&[("checkout", 3), ("refill", 1)]).await;
    let app = spawn_autoscaled_app(&heroku, TOKEN).await;
    let mut autoscaler = Autoscaler::new(app.ctx.clone()).unwrap();

    let mut seen = Vec::new();
    for _ in 0..4 * SCALE_DOWN_AFTER {
        autoscaler.check().await.unwrap();
        seen.push(heroku.quantity("checkout"));
    }

    let n = SCALE_DOWN_AFTER as usize;
    let mut expected = vec![3; n - 1];
    expected.extend(vec![2; n]);
    expected.extend(vec![1; 4 * n - expected.len()]);
    assert_eq!(seen, expected);
    assert_eq!(heroku.quantity("refill"), 1);
    assert!(
        heroku
            .with(|s| s.patches.clone())
            .iter()
            .all(|p| p["updates"].as_array().unwrap().len() == 1),
        "only what changes is sent"
    );
}

#[tokio::test]
async fn api_errors_skip_a_check_and_the_next_one_scales() {
    let heroku = HerokuStandIn::start(&[("checkout", 1), ("web", 1)]).await;
    let app = spawn_autoscaled_app(&heroku, TOKEN).await;
    let mut autoscaler = Autoscaler::new(app.ctx.clone()).unwrap();
    publish_requests(&app, 10).await;

    heroku.with(|s| s.faults.extend([429, 503]));
    let limited = autoscaler.check().await.unwrap_err();
    assert!(format!("{limited:#}").contains("rate limit"), "{limited:#}");
    let unavailable = autoscaler.check().await.unwrap_err();
    assert!(
        format!("{unavailable:#}").contains("HTTP 503"),
        "{unavailable:#}"
    );

    // refill is not in this app's formation: left alone, checkout still scaled.
    let changes = autoscaler.check().await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(heroku.quantity("checkout"), 2);
}

#[tokio::test]
async fn a_failed_scale_down_is_retried_at_the_next_check() {
    let heroku = HerokuStandIn::start(&[("checkout", 2), ("refill", 1)]).await;
    let app = spawn_autoscaled_app(&heroku, TOKEN).await;
    let mut autoscaler = Autoscaler::new(app.ctx.clone()).unwrap();
    for _ in 1..SCALE_DOWN_AFTER {
        assert!(autoscaler.check().await.unwrap().is_empty());
    }

    heroku.with(|s| s.patch_faults.push_back(503));
    assert!(autoscaler.check().await.is_err(), "the PATCH failed");
    assert_eq!(heroku.quantity("checkout"), 2);

    let changes = autoscaler.check().await.unwrap();
    assert_eq!(
        changes.len(),
        1,
        "not another {SCALE_DOWN_AFTER} quiet checks"
    );
    assert_eq!(heroku.quantity("checkout"), 1);
}

#[tokio::test]
async fn pools_short_of_their_target_add_refill_dynos_unless_the_brake_is_on() {
    let heroku = HerokuStandIn::start(&[("checkout", 1), ("refill", 1)]).await;
    let app = spawn_autoscaled_app(&heroku, TOKEN).await;
    let mut autoscaler = Autoscaler::new(app.ctx.clone()).unwrap();
    // 12 VMs missing, none booting; WARMER_BOOT_CONCURRENCY is 8: 1 + 2 refill dynos.
    app.seed(POOL, 12, &[]).await;
    let _: () = redis::AsyncCommands::set(&mut app.redis.clone(), app.names.brake(), "1")
        .await
        .unwrap();

    assert!(
        autoscaler.check().await.unwrap().is_empty(),
        "boots are held"
    );

    let _: () = redis::AsyncCommands::del(&mut app.redis.clone(), app.names.brake())
        .await
        .unwrap();
    autoscaler.check().await.unwrap();
    assert_eq!(heroku.quantity("refill"), 3);
    assert_eq!(heroku.quantity("checkout"), 1);
}

#[tokio::test]
async fn a_rejected_token_is_reported_without_the_token() {
    let heroku = HerokuStandIn::start(&[("checkout", 1)]).await;
    let app = spawn_autoscaled_app(&heroku, "wrong-secret-token").await;
    let mut autoscaler = Autoscaler::new(app.ctx.clone()).unwrap();

    let error = format!("{:#}", autoscaler.check().await.unwrap_err());

    assert!(error.contains("HEROKU_API_TOKEN"), "{error}");
    assert!(!error.contains("wrong-secret-token"), "{error}");
    assert!(heroku.with(|s| s.patches.is_empty()));
}

#[tokio::test]
async fn autoscale_without_heroku_settings_names_what_is_missing() {
    let app = TestApp::builder().start().await;
    let error = Autoscaler::new(app.ctx.clone()).err().unwrap().to_string();
    assert!(error.contains("HEROKU_API_TOKEN"), "{error}");
}

#[tokio::test]
async fn the_autoscale_process_scales_and_exits_zero_on_sigterm() {
    let heroku = HerokuStandIn::start(&[("checkout", 1), ("refill", 1)]).await;
    let app = spawn_autoscaled_app(&heroku, TOKEN).await;
    publish_requests(&app, 5).await;
    let mut child = crate::lifecycle::spawn_process(&app, "autoscale");

    eventually("the first scaling", || async {
        heroku.quantity("checkout") == 2
    })
    .await;
    let status = crate::lifecycle::terminate(&mut child).await;

    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn refill_with_a_minimum_of_zero_scales_to_zero_when_quiet_and_work_brings_it_back() {
    let heroku = HerokuStandIn::start(&[("checkout", 1), ("refill", 2)]).await;
    let url = heroku.url();
    let app = TestApp::builder()
        .envs(&[
            ("HEROKU_API_TOKEN", TOKEN),
            ("HEROKU_APP_NAME", APP),
            ("WARMER_HEROKU_API_URL", url.as_str()),
            ("WARMER_AUTOSCALE_REFILL_MIN", "0"),
            ("WARMER_AUTOSCALE_REFILL_PER_DYNO", "2"),
        ])
        .start()
        .await;
    app.seed(POOL, 1, &[vm("a")]).await; // full: nothing for refill to do
    let mut autoscaler = Autoscaler::new(app.ctx.clone()).unwrap();

    for _ in 0..2 * SCALE_DOWN_AFTER {
        autoscaler.check().await.unwrap();
    }
    assert_eq!(heroku.quantity("refill"), 0, "quiet: no refill dyno");
    assert_eq!(heroku.quantity("checkout"), 1, "checkout keeps its one");

    // Five VMs missing: ceil(5 / 2) refill dynos at the next check.
    operator_set(&app, 6).await;
    autoscaler.check().await.unwrap();
    assert_eq!(heroku.quantity("refill"), 3);
}

async fn operator_set(app: &TestApp, target: u32) {
    warmer::operator::pool_set(&app.ctx, &POOL.parse().unwrap(), target)
        .await
        .unwrap();
}
