//! Pools that size themselves, through the real reconciler on Redis and RabbitMQ: demand
//! recorded by checkouts, policies raising and lowering targets on a clock the test sets,
//! schedules, bounds, the brake, and rollovers completing, aborting and resuming.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use warmer::clock::Clock;
use warmer::policy::Policy;
use warmer::reconcile::Reconciler;
use warmer::sizing::plan::IDLE_SECS;
use warmer::{PoolName, now_ms, operator};

use warmer_testkit::compute::ComputeStandIn;
use warmer_testkit::*;

const ZONE: &str = "us-central1-a";
const NEW_POOL: &str = "travis-ci-garnet-trusty-1600000000:n1-standard-2";

fn pool(name: &str) -> PoolName {
    name.parse().expect("a pool name")
}

fn policy(min: u32, max: u32, adaptive: bool, schedules: &[&str]) -> Policy {
    Policy {
        min,
        max,
        adaptive,
        hit: 0.99,
        schedules: schedules.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

/// A pool's target as stored in `poolconfigs`.
async fn target(app: &TestApp, name: &str) -> Option<String> {
    redis::AsyncCommands::hget(&mut app.redis.clone(), app.names.pool_configs(), name)
        .await
        .unwrap()
}

/// `<ns>:_policies` as stored.
async fn stored_policies(app: &TestApp) -> BTreeMap<String, String> {
    app.redis
        .clone()
        .hgetall(app.names.policies())
        .await
        .unwrap()
}

/// The sizer's recorded reason for a pool.
async fn reason(app: &TestApp, name: &str) -> Option<String> {
    let view = app.ctx.store.sizing_view().await.unwrap();
    view.decisions.get(name).map(|d| d.reason.clone())
}

/// `warmer pool rollover <from> <to> --deadline <secs>s`.
async fn rollover(app: &TestApp, from: &str, to: &str, secs: u64) -> anyhow::Result<String> {
    operator::pool_rollover(&app.ctx, &pool(from), &pool(to), Duration::from_secs(secs)).await
}

async fn pass(app: &TestApp, reconciler: &Reconciler) -> warmer::reconcile::Report {
    reconciler.pass(Some(&app.broker().await)).await.unwrap()
}

/// `n` warmed VMs that exist at the stand-in, in `pool`'s list, with the pool at `target`.
async fn seed_booted(app: &TestApp, compute: &ComputeStandIn, pool: &str, target: u32, n: usize) {
    let mut vms = Vec::new();
    for i in 0..n {
        let image = pool.split(':').next().unwrap_or_default();
        let name = format!("{image}-seeded-{i}");
        compute.add_instance(
            &name,
            ZONE,
            json!({"warmth": "warmed", "warmer": app.names.namespace()}),
        );
        let mut entry = vm(&name);
        entry["zone"] = json!(ZONE);
        entry["booted_at"] = json!(now_ms() / 1000);
        vms.push(entry);
    }
    app.seed(pool, target, &vms).await;
}

#[tokio::test]
async fn checkouts_record_hits_and_misses_per_bucket_and_boots_their_durations() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let mut app = TestApp::builder()
        .gce(&compute)
        .checkout_consumers(1)
        .start()
        .await;
    app.seed(POOL, 0, &[vm("warm-1"), vm("warm-2")]).await;
    for _ in 0..5 {
        app.checkout().await;
    }
    let day = now_ms() / 1000 / 86_400;
    let key = app.names.demand(day, POOL);
    let mut redis = app.redis.clone();
    // The day may have turned during the checkouts: read yesterday's hash too.
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for day in [day - 1, day] {
        let hash: BTreeMap<String, u32> = redis.hgetall(app.names.demand(day, POOL)).await.unwrap();
        for (field, n) in hash {
            *counts.entry(field[..1].to_string()).or_default() += n;
        }
    }
    assert_eq!(counts, BTreeMap::from([("h".into(), 2), ("m".into(), 3)]));
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!(ttl > 8 * 86_400 && ttl <= 9 * 86_400, "ttl {ttl}");

    app.start_refill().await;
    app.ctx.store.set_target(&pool(POOL), 2).await.unwrap();
    app.fill(POOL).await;
    app.wait_until_settled(POOL, 2).await;
    let boots: Vec<u64> = redis
        .lrange(app.names.boot_times(POOL), 0, -1)
        .await
        .unwrap();
    assert_eq!(boots.len(), 2, "{boots:?}");
}

#[tokio::test]
async fn demand_raises_the_target_at_once_with_a_fill_and_lowers_it_only_after_the_idle_time() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let mut app = TestApp::builder()
        .gce(&compute)
        .checkout_consumers(1)
        .start()
        .await;
    seed_booted(&app, &compute, POOL, 1, 1).await;
    operator::pool_policy(&app.ctx, &pool(POOL), Some(&policy(1, 4, true, &[])))
        .await
        .unwrap();
    // A pipeline of 10 jobs: 1 finds a VM, 9 miss.
    for _ in 0..10 {
        app.checkout().await;
    }
    app.start_refill().await;
    let now = now_ms() / 1000;
    let clock = Clock::manual(now);
    let reconciler = app.reconciler().await.with_clock(clock.clone());

    let report = pass(&app, &reconciler).await;
    // 10 arrivals within a boot time (at least 5 in one bucket) ask for more than max 4.
    assert_eq!(target(&app, POOL).await.as_deref(), Some("4"));
    assert_eq!(reason(&app, POOL).await.as_deref(), Some("max"));
    assert_eq!(report.sizing.changed.len(), 1);
    // The same pass published a fill: the refill consumer boots to 4.
    app.wait_until_settled(POOL, 4).await;

    // Two hours on, the burst is still within the idle time: nothing changes.
    clock.set(now + IDLE_SECS - 600);
    let report = pass(&app, &reconciler).await;
    assert!(report.sizing.changed.is_empty());
    assert_eq!(target(&app, POOL).await.as_deref(), Some("4"));

    // Once the VMs sat unused for the idle time, the target comes back to min, and the
    // surplus is evicted.
    clock.set(now + IDLE_SECS + 60);
    let report = pass(&app, &reconciler).await;
    assert_eq!(target(&app, POOL).await.as_deref(), Some("1"));
    assert_eq!(reason(&app, POOL).await.as_deref(), Some("min"));
    assert_eq!(report.evicted, 3);
    assert_eq!(app.pool_vms(POOL).await.len(), 1);
}

#[tokio::test]
async fn a_schedule_holds_its_minimum_in_its_time_zone_and_bounds_always_hold() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[]).await;
    app.seed(NEW_POOL, 5, &[]).await;
    let office = "* 9-17 * * MON-FRI@Europe/Berlin=6";
    operator::pool_policy(&app.ctx, &pool(POOL), Some(&policy(1, 8, true, &[office])))
        .await
        .unwrap();
    // A static policy: its min, whatever the target was.
    operator::pool_policy(&app.ctx, &pool(NEW_POOL), Some(&policy(3, 3, false, &[])))
        .await
        .unwrap();
    // Monday 2026-11-30, 09:30 in Berlin.
    let monday_morning = 1_796_027_400;
    let clock = Clock::manual(monday_morning);
    let reconciler = app.reconciler().await.with_clock(clock.clone());

    pass(&app, &reconciler).await;
    assert_eq!(target(&app, POOL).await.as_deref(), Some("6"));
    assert_eq!(reason(&app, POOL).await.as_deref(), Some("schedule"));
    assert_eq!(target(&app, NEW_POOL).await.as_deref(), Some("3"));

    // 18:00 in Berlin: the schedule is over, the lowered minimum applies at once.
    clock.set(monday_morning + 8 * 3600 + 1800);
    pass(&app, &reconciler).await;
    assert_eq!(target(&app, POOL).await.as_deref(), Some("1"));
    assert_eq!(reason(&app, POOL).await.as_deref(), Some("min"));

    // Every target a week of passes writes is within the policy's bounds.
    for hour in 0..7 * 24 {
        clock.set(monday_morning + hour * 3600);
        pass(&app, &reconciler).await;
        let t: u32 = target(&app, POOL).await.unwrap().parse().unwrap();
        assert!((1..=8).contains(&t), "target {t} at hour {hour}");
    }
    // `warmer status` says how each pool is sized.
    let status = operator::status(&app.ctx, &Default::default())
        .await
        .unwrap();
    let line = status.lines().find(|l| l.starts_with(NEW_POOL)).unwrap();
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[1..5], ["3", "3", "3", "min"], "{status}");
    let line = status.lines().find(|l| l.starts_with(POOL)).unwrap();
    assert!(line.contains(" 8 "), "{status}");
}

#[tokio::test]
async fn bad_policies_are_refused_and_change_nothing() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[]).await;
    let good = policy(1, 5, true, &[]);
    operator::pool_policy(&app.ctx, &pool(POOL), Some(&good))
        .await
        .unwrap();
    let before = stored_policies(&app).await;

    let high = policy(0, 5, false, &["* * * * *@UTC=9"]);
    for (name, refused, wanted) in [
        (POOL, policy(6, 5, true, &[]), "min 6 is above max 5"),
        (POOL, high, "above max 5"),
        (NEW_POOL, good, "create it with `warmer pool set"),
    ] {
        let error = operator::pool_policy(&app.ctx, &pool(name), Some(&refused))
            .await
            .unwrap_err();
        assert!(error.to_string().contains(wanted), "{error}");
    }
    assert_eq!(stored_policies(&app).await, before);

    // From the command line: a bad cron and an unknown zone are named.
    for (schedule, wanted) in [
        ("* 25 * * *@UTC=2", "bad cron `* 25 * * *`"),
        (
            "* * * * *@Europe/Atlantis=2",
            "unknown time zone `Europe/Atlantis`",
        ),
    ] {
        let output = crate::warmer("pool")
            .args(["policy", POOL, "--max", "5", "--schedule", schedule])
            .envs(&app.env)
            .stderr(std::process::Stdio::piped())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(wanted), "{stderr}");
    }
    assert_eq!(stored_policies(&app).await, before);
}

#[tokio::test]
async fn while_the_brake_holds_the_sizer_changes_nothing() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[]).await;
    operator::pool_policy(&app.ctx, &pool(POOL), Some(&policy(7, 9, false, &[])))
        .await
        .unwrap();
    app.ctx
        .store
        .engage_brake(100, 10, warmer::now_ms() / 1000)
        .await
        .unwrap();
    let reconciler = app.reconciler().await;

    // The pass finds nothing unaccounted and releases the brake, but only after sizing.
    let report = pass(&app, &reconciler).await;
    assert!(report.sizing.frozen);
    assert_eq!(target(&app, POOL).await.as_deref(), Some("2"));

    let report = pass(&app, &reconciler).await;
    assert!(!report.sizing.frozen);
    assert_eq!(target(&app, POOL).await.as_deref(), Some("7"));
}

#[tokio::test]
async fn a_rollover_gets_back_the_time_the_brake_held() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[]).await;
    let now = now_ms() / 1000;
    rollover(&app, POOL, NEW_POOL, 600).await.unwrap();
    let clock = Clock::manual(now);
    let reconciler = app.reconciler().await.with_clock(clock.clone());
    pass(&app, &reconciler).await;

    // The brake holds for 500 s (each pass releases it: nothing is unaccounted).
    app.ctx
        .store
        .engage_brake(100, 10, warmer::now_ms() / 1000)
        .await
        .unwrap();
    clock.set(now + 500);
    assert!(pass(&app, &reconciler).await.sizing.frozen);
    // Past the original deadline, not past the postponed one.
    clock.set(now + 700);
    let report = pass(&app, &reconciler).await;
    assert!(report.sizing.finished.is_empty(), "{:?}", report.sizing);
    assert_eq!(target(&app, NEW_POOL).await.as_deref(), Some("2"));
    clock.set(now + 1101);
    let report = pass(&app, &reconciler).await;
    assert_eq!(report.sizing.finished.len(), 1, "{:?}", report.sizing);
}

#[tokio::test]
async fn a_rollover_moves_target_and_policy_and_completes_once_the_new_pool_is_warm() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let mut app = TestApp::builder().gce(&compute).start().await;
    seed_booted(&app, &compute, POOL, 3, 3).await;
    let static3 = policy(3, 6, false, &[]);
    operator::pool_policy(&app.ctx, &pool(POOL), Some(&static3))
        .await
        .unwrap();
    let mut started = app.listen("rollover.started").await;
    let mut completed = app.listen("rollover.completed").await;

    rollover(&app, POOL, NEW_POOL, 1800).await.unwrap();
    assert_eq!(started.next().await, json!({"from": POOL, "to": NEW_POOL}));
    assert_eq!(target(&app, NEW_POOL).await.as_deref(), Some("3"));
    // Refused while it rolls: either pool again, or a new pool that has a target.
    for (from, to, wanted) in [
        (POOL, "other-image:n1-standard-2", "already takes part"),
        ("other-image:n1-standard-2", NEW_POOL, "already takes part"),
    ] {
        app.seed("other-image:n1-standard-2", 2, &[]).await;
        let error = rollover(&app, from, to, 60).await.unwrap_err();
        assert!(error.to_string().contains(wanted), "{error}");
    }
    operator::pool_delete(&app.ctx, &pool("other-image:n1-standard-2"))
        .await
        .unwrap();

    // The first reconciler sees the new pool cold and lets it boot; then it is replaced (a
    // restart): the next one picks the rollover up from Redis.
    let first = app.reconciler().await;
    let report = pass(&app, &first).await;
    assert!(report.sizing.finished.is_empty());
    // As on SIGTERM: the lock goes with it.
    app.ctx.store.unlock(first.owner()).await.unwrap();
    drop(first);
    app.start_refill().await;
    app.fill(NEW_POOL).await;
    app.wait_until_settled(NEW_POOL, 3).await;
    let status = operator::status(&app.ctx, &Default::default())
        .await
        .unwrap();
    assert!(
        status.contains(&format!("ROLLOVER {POOL} -> {NEW_POOL}: in progress")),
        "{status}"
    );

    let report = pass(&app, &app.reconciler().await).await;
    assert_eq!(report.sizing.finished.len(), 1);
    assert_eq!(
        completed.next().await,
        json!({"from": POOL, "to": NEW_POOL})
    );
    assert_eq!(target(&app, POOL).await.as_deref(), Some("0"));
    assert_eq!(target(&app, NEW_POOL).await.as_deref(), Some("3"));
    let view = app.ctx.store.sizing_view().await.unwrap();
    assert!(!view.policies.contains_key(POOL));
    assert_eq!(view.policies[NEW_POOL], Ok(static3));
    // The old pool's warmed VMs went for deletion in the same pass; the new pool's stay.
    assert!(app.pool_vms(POOL).await.is_empty());
    assert_eq!(app.pool_vms(NEW_POOL).await.len(), 3);
    let status = operator::status(&app.ctx, &Default::default())
        .await
        .unwrap();
    assert!(status.contains("completed"), "{status}");
}

#[tokio::test]
async fn a_rollover_to_an_image_that_cannot_boot_is_aborted_and_the_old_pool_is_untouched() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    compute.with(|s| {
        s.missing_images
            .insert("travis-ci-garnet-trusty-1600000000".into());
    });
    let mut app = TestApp::builder().gce(&compute).start().await;
    seed_booted(&app, &compute, POOL, 3, 3).await;
    let adaptive = policy(3, 6, true, &[]);
    operator::pool_policy(&app.ctx, &pool(POOL), Some(&adaptive))
        .await
        .unwrap();
    let mut aborted = app.listen("rollover.aborted").await;
    let reconciler = app.reconciler().await;
    pass(&app, &reconciler).await;
    let pool_target = target(&app, POOL).await;
    assert_eq!(pool_target.as_deref(), Some("3"));
    let before = app.pool_vms(POOL).await;

    rollover(&app, POOL, NEW_POOL, 1800).await.unwrap();
    app.start_refill().await;
    app.fill(NEW_POOL).await;
    eventually("three failed boots of the new image", || async {
        let counters = app.counters(Some(NEW_POOL)).await;
        counters
            .iter()
            .filter(|(k, _)| k.contains("|failed"))
            .map(|(_, n)| n)
            .sum::<i64>()
            >= 3
    })
    .await;

    let report = pass(&app, &reconciler).await;
    assert_eq!(report.sizing.finished.len(), 1);
    let event = aborted.next().await;
    assert_eq!(
        (&event["from"], &event["to"]),
        (&json!(POOL), &json!(NEW_POOL))
    );
    assert!(
        event["reason"].as_str().unwrap().contains("boots failing"),
        "{event}"
    );
    assert_eq!(target(&app, NEW_POOL).await.as_deref(), Some("0"));
    let view = app.ctx.store.sizing_view().await.unwrap();
    assert!(!view.policies.contains_key(NEW_POOL));
    assert_eq!(view.policies[POOL], Ok(adaptive));
    assert_eq!(target(&app, POOL).await, pool_target);
    assert_eq!(app.pool_vms(POOL).await, before);
    let status = operator::status(&app.ctx, &Default::default())
        .await
        .unwrap();
    assert!(
        status.contains("aborted") && status.contains("boots failing"),
        "{status}"
    );
}

#[tokio::test]
async fn a_rollover_that_makes_no_progress_is_aborted_at_its_deadline() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("old-1"), vm("old-2")]).await;
    let no_pool = rollover(&app, NEW_POOL, POOL, 60).await.unwrap_err();
    assert!(
        no_pool.to_string().contains(&format!("no pool {NEW_POOL}")),
        "{no_pool}"
    );
    app.seed(NEW_POOL, 0, &[]).await;
    let no_target = rollover(&app, NEW_POOL, POOL, 60).await.unwrap_err();
    assert!(
        no_target.to_string().contains("no target above 0"),
        "{no_target}"
    );
    app.seed(NEW_POOL, 1, &[]).await;
    let has_target = rollover(&app, POOL, NEW_POOL, 60).await.unwrap_err();
    assert!(
        has_target.to_string().contains("has target 1 already"),
        "{has_target}"
    );
    app.ctx.store.set_target(&pool(NEW_POOL), 0).await.unwrap();

    let now = now_ms() / 1000;
    rollover(&app, POOL, NEW_POOL, 600).await.unwrap();
    // No refill consumer runs: nothing boots.
    let clock = Clock::manual(now + 300);
    let reconciler = app.reconciler().await.with_clock(clock.clone());
    assert!(pass(&app, &reconciler).await.sizing.finished.is_empty());
    clock.set(now + 601);
    let report = pass(&app, &reconciler).await;
    let (_, _, verdict) = &report.sizing.finished[0];
    assert!(
        format!("{verdict:?}").contains("0 of 2 ready"),
        "{verdict:?}"
    );
    assert_eq!(target(&app, POOL).await.as_deref(), Some("2"));
    assert_eq!(target(&app, NEW_POOL).await.as_deref(), Some("0"));
    let rollovers: BTreeMap<String, String> = app
        .redis
        .clone()
        .hgetall(app.names.rollovers())
        .await
        .unwrap();
    let record: Value = serde_json::from_str(&rollovers[POOL]).unwrap();
    assert_eq!(record["state"], "aborted");
}
