//! The reconciler on the Compute Engine stand-in: each rule, the lock, the brake, idempotence.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use warmer::PoolName;
use warmer::now_ms;

use warmer_testkit::compute::ComputeStandIn;
use warmer_testkit::*;

const ZONE: &str = "us-central1-a";

/// Labels this deployment's VMs carry.
fn labels(app: &TestApp) -> Value {
    json!({"warmth": "warmed", "warmer": app.names.namespace()})
}

/// A pool entry for a VM that exists at the stand-in, booted `age` seconds ago.
fn entry(name: &str, age: u64) -> Value {
    let mut vm = vm(name);
    vm["zone"] = json!(ZONE);
    vm["booted_at"] = json!(now_ms() / 1000 - age);
    vm
}

#[tokio::test]
async fn recorded_orphans_are_deleted_and_a_missing_vm_counts_as_deleted() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder().gce(&compute).start().await;
    compute.add_instance("orphan-1", ZONE, labels(&app));
    for name in ["orphan-1", "already-gone"] {
        let record = json!({"name": name, "zone": format!("https://www.googleapis.com/compute/v1/projects/p/zones/{ZONE}")});
        app.push_orphan_record(&record).await;
    }
    let mut deleted = app.listen("instance.deleted").await;

    let report = app
        .reconciler()
        .await
        .pass(Some(&app.broker().await))
        .await
        .unwrap();

    assert_eq!(report.deleted, 2);
    assert_eq!(compute.with(|s| s.deleted.clone()), ["orphan-1"]);
    assert!(app.orphaned().await.is_empty());
    assert_eq!(deleted.next().await["reason"], "orphaned");
}

#[tokio::test]
async fn an_unaccounted_vm_is_deleted_on_the_second_pass_but_a_boot_in_progress_never() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder().gce(&compute).start().await;
    app.seed(POOL, 1, &[]).await;
    compute.add_instance("stray", ZONE, labels(&app));
    compute.add_instance("booting-now", ZONE, labels(&app));
    let pool: PoolName = POOL.parse().unwrap();
    let _: () = app
        .redis
        .clone()
        .zadd(app.names.booting(&pool), "booting-now", now_ms() + 60_000)
        .await
        .unwrap();
    let reconciler = app.reconciler().await;

    let first = reconciler.pass(None).await.unwrap();
    assert_eq!(first.plan.mark, ["stray"]);
    assert!(
        compute.with(|s| s.deleted.is_empty()),
        "nothing is deleted on first sight"
    );

    let second = reconciler.pass(None).await.unwrap();
    assert_eq!(second.deleted, 1);
    assert_eq!(compute.with(|s| s.deleted.clone()), ["stray"]);
    assert!(compute.instances().contains("booting-now"));
}

#[tokio::test]
async fn dead_and_stopped_vms_leave_their_pool_before_anyone_checks_them_out() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder().gce(&compute).start().await;
    compute.add_instance("stopped", ZONE, labels(&app));
    compute.with(|s| s.instances.get_mut("stopped").unwrap()["status"] = json!("TERMINATED"));
    compute.add_instance("healthy", ZONE, labels(&app));
    app.seed(
        POOL,
        3,
        &[
            entry("vanished", 3600),
            entry("stopped", 3600),
            entry("healthy", 3600),
        ],
    )
    .await;
    let mut evicted = app.listen("instance.evicted").await;

    app.reconciler()
        .await
        .pass(Some(&app.broker().await))
        .await
        .unwrap();

    assert_eq!(app.pool_vms(POOL).await, ["healthy"]);
    let mut reasons: Vec<String> = Vec::new();
    for _ in 0..2 {
        reasons.push(evicted.next().await["reason"].as_str().unwrap().into());
    }
    reasons.sort();
    assert_eq!(reasons, ["gone", "not_running"]);
    assert!(
        !compute.instances().contains("stopped"),
        "the stopped VM is deleted"
    );
}

#[tokio::test]
async fn stale_surplus_and_poolless_vms_are_evicted_and_deleted() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_MAX_VM_AGE", "1h")])
        .start()
        .await;
    for name in ["stale", "a", "b", "c", "lonely"] {
        compute.add_instance(name, ZONE, labels(&app));
    }
    app.seed(
        POOL,
        2,
        &[
            entry("stale", 7200),
            entry("a", 300),
            entry("b", 200),
            entry("c", 100),
        ],
    )
    .await;
    let other = "other-image:n1-standard-2";
    let _: () = app
        .redis
        .clone()
        .rpush(
            app.names.pool(&other.parse().unwrap()),
            entry("lonely", 10).to_string(),
        )
        .await
        .unwrap();

    let report = app.reconciler().await.pass(None).await.unwrap();

    assert_eq!(report.evicted, 3);
    assert_eq!(app.pool_vms(POOL).await, ["b", "c"]);
    assert!(app.pool_vms(other).await.is_empty());
    let mut left: Vec<String> = compute.instances().into_iter().collect();
    left.sort();
    assert_eq!(left, ["b", "c"]);
}

#[tokio::test]
async fn handed_out_vms_are_labelled_cooled_and_deleted_past_the_handout_age() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let mut app = TestApp::builder().gce(&compute).start().await;
    app.start_consumer().await;
    compute.add_instance("handed", ZONE, labels(&app));
    app.seed(POOL, 1, &[entry("handed", 100)]).await;
    let reply = app.checkout().await;
    assert_eq!(reply["name"], "handed");
    // A worker that vanished seven hours ago, whose record Redis no longer has.
    compute.add_instance(
        "abandoned",
        ZONE,
        json!({"warmth": "cooled", "warmer": app.names.namespace(), "checked-out-at": (now_ms() / 1000 - 7 * 3600).to_string()}),
    );
    compute.with(|s| s.stale_fingerprint_once = true);
    let reconciler = app.reconciler().await;

    let report = reconciler.pass(None).await.unwrap();

    let labels = compute.labels("handed");
    assert_eq!(labels["warmth"], "cooled");
    let at: u64 = labels["checked-out-at"].as_str().unwrap().parse().unwrap();
    assert!(now_ms() / 1000 - at < 60);
    assert_eq!(
        labels["warmer"],
        app.names.namespace(),
        "other labels are kept"
    );
    assert_eq!(
        compute.with(|s| s.set_labels_calls),
        2,
        "a stale fingerprint is re-read once"
    );
    assert_eq!(
        report.plan.delete,
        [warmer::OrphanRecord::new(
            "abandoned",
            Some(ZONE),
            "handout_expired"
        )]
    );
    assert!(!compute.instances().contains("abandoned"));
    let again = reconciler.pass(None).await.unwrap().plan;
    assert!(
        again.label.is_empty() && again.delete.is_empty(),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_pool_below_target_with_nothing_booting_gets_a_fill() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder().gce(&compute).start().await;
    app.seed(POOL, 2, &[]).await;

    app.reconciler()
        .await
        .pass(Some(&app.broker().await))
        .await
        .unwrap();

    let command = app.take_refill_message().await;
    assert_eq!(command["command"], "fill");
    assert_eq!(command["pool"], POOL);
}

#[tokio::test]
async fn the_brake_stops_boots_everywhere_and_releases_them() {
    let compute = ComputeStandIn::start(Duration::from_millis(50)).await;
    let mut app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_ORPHAN_THRESHOLD", "1")])
        .start()
        .await;
    compute.add_instance("leak-1", ZONE, labels(&app));
    compute.add_instance("leak-2", ZONE, labels(&app));
    app.seed(POOL, 1, &[]).await;
    let reconciler = app.reconciler().await;
    let broker = app.broker().await;
    let mut engaged = app.listen("brake.engaged").await;
    let mut released = app.listen("brake.released").await;
    let mut booted = app.listen("instance.booted").await;

    reconciler.pass(Some(&broker)).await.unwrap();
    assert_eq!(engaged.next().await["unaccounted"], 2);
    app.start_refill().await;
    app.fill(POOL).await;
    app.wait_for_empty(&app.names.refill_queue()).await;
    // Stopping drains in-flight work: the fill has been handled, and acked (not requeued).
    app.stop_consumers().await;
    assert_eq!(app.queue_counts(&app.names.refill_queue()).await.0, 0);
    assert!(
        compute.with(|s| s.inserts.is_empty()),
        "no boot while the brake is on"
    );
    assert!(
        warmer::operator::status(&app.ctx, &Default::default())
            .await
            .unwrap()
            .contains("SAFETY BRAKE ON")
    );

    reconciler.pass(Some(&broker)).await.unwrap();
    assert!(
        compute.with(|s| s.deleted.is_empty()),
        "so many unaccounted VMs are held, not deleted"
    );
    // An operator looks, and deletes the leaked VMs.
    compute.with(|s| {
        s.instances.remove("leak-1");
        s.instances.remove("leak-2");
    });
    app.start_refill().await;
    reconciler.pass(Some(&broker)).await.unwrap(); // sees none: releases, and fills
    assert_eq!(released.next().await["unaccounted"], 0);
    booted.next().await;
    assert_eq!(compute.with(|s| s.inserts.len()), 1);
}

#[tokio::test]
async fn vms_booted_by_travis_ci_warmer_are_adopted_not_evicted() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder().gce(&compute).start().await;
    // The Ruby service labelled its VMs warmth=warmed only, and wrote full-URL zones.
    compute.add_instance("travis-job-legacy", ZONE, json!({"warmth": "warmed"}));
    let legacy = json!({"name": "travis-job-legacy", "zone": format!("https://www.googleapis.com/compute/v1/projects/p/zones/{ZONE}"),
                        "ip": "10.0.0.9", "public_ip": null, "ssh_private_key": "KEY"});
    let _: () = redis::cmd("HSET")
        .arg(app.names.pool_configs())
        .arg(POOL)
        .arg("1")
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    let _: () = app
        .redis
        .clone()
        .rpush(app.names.pool(&POOL.parse().unwrap()), legacy.to_string())
        .await
        .unwrap();
    let reconciler = app.reconciler().await;

    reconciler.pass(None).await.unwrap();
    let second = reconciler.pass(None).await.unwrap();

    assert_eq!(app.pool_vms(POOL).await, ["travis-job-legacy"]);
    assert_eq!(
        compute.labels("travis-job-legacy")["warmer"],
        app.names.namespace()
    );
    assert!(compute.with(|s| s.deleted.is_empty()));
    assert!(second.plan.is_idle(), "{:?}", second.plan);
}

#[tokio::test]
async fn only_one_reconciler_is_active_and_another_takes_over_when_it_dies() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_RECONCILE_INTERVAL", "1")])
        .start()
        .await;
    let (first, second) = (app.reconciler().await, app.reconciler().await);
    let owners = [first.owner().to_string(), second.owner().to_string()];
    let (trigger, shutdown) = warmer::shutdown::channel();
    let tasks = [
        tokio::spawn(first.run(shutdown.clone())),
        tokio::spawn(second.run(shutdown)),
    ];
    let holder = || async {
        let owner: Option<String> = app
            .redis
            .clone()
            .get(app.names.reconciler_lock())
            .await
            .unwrap();
        owner
    };
    let active = eventually_found("a reconciler to take the lock", holder).await;
    let index = owners.iter().position(|o| *o == active).unwrap();
    // Both keep running while the holder makes four more passes, one a second: longer than the
    // lock's 3 s expiry, so the holder renews it, and the lock never moves meanwhile.
    let passes = compute.with(|s| s.listings);
    eventually("four more passes", || async {
        assert_eq!(holder().await.as_deref(), Some(active.as_str()));
        compute.with(|s| s.listings) >= passes + 4
    })
    .await;
    assert_eq!(holder().await.as_deref(), Some(active.as_str()));

    tasks[index].abort(); // killed: it cannot release its lock
    let killed = std::time::Instant::now();
    let left: i64 = app
        .redis
        .clone()
        .pttl(app.names.reconciler_lock())
        .await
        .unwrap();

    let successor = eventually_found("the other reconciler to take over", || async {
        holder().await.filter(|owner| *owner != active)
    })
    .await;
    assert_eq!(successor, owners[1 - index]);
    // The standby asks every tenth of the 1 s interval: it takes over about 0.1 s after the
    // lock expires (0.7 s allowed for a loaded machine), not up to a whole interval later.
    let late = killed
        .elapsed()
        .saturating_sub(Duration::from_millis(left.max(0) as u64));
    assert!(
        late < Duration::from_millis(700),
        "took over {late:?} after the lock expired"
    );
    trigger.fire();
    let _ = tokio::time::timeout(PATIENCE, async {
        for task in tasks {
            let _ = task.await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_second_pass_over_an_unchanged_world_does_nothing() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder().gce(&compute).start().await;
    for name in ["a", "b", "c", "dead-orphan"] {
        compute.add_instance(name, ZONE, labels(&app));
    }
    app.seed(POOL, 2, &[entry("a", 100), entry("b", 50), entry("c", 10)])
        .await;
    let _: () = app
        .redis
        .clone()
        .rpush(
            app.names.orphaned(),
            json!({"name": "dead-orphan", "zone": ZONE}).to_string(),
        )
        .await
        .unwrap();
    let reconciler = app.reconciler().await;

    let first = reconciler.pass(None).await.unwrap();
    let second = reconciler.pass(None).await.unwrap();

    assert!(!first.plan.is_idle());
    assert!(second.plan.is_idle(), "{:?}", second.plan);
    assert_eq!(second.deleted + second.evicted, 0);
}

#[tokio::test]
async fn after_faults_every_labelled_vm_is_accounted_for_or_deleted_within_two_passes() {
    let compute = ComputeStandIn::start(Duration::from_millis(100)).await;
    compute.with(|s| {
        s.insert_faults.extend([503, 429]);
        s.stockout_zones.insert("us-central1-b".into());
    });
    let mut app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_GOOGLE_CLOUD_ZONES", "us-central1-a,us-central1-b")])
        .start()
        .await;
    app.seed(POOL, 3, &[]).await;
    app.start_refill().await;
    app.start_consumer().await;
    app.fill(POOL).await;
    eventually("the pool to fill", || async {
        app.pool_vms(POOL).await.len() >= 3
    })
    .await;
    let handed = app.checkout().await["name"].as_str().unwrap().to_string();
    // Faults: a VM leaked by a crashed booter, an entry whose VM died, a target lowered.
    compute.add_instance("leaked", "us-central1-a", labels(&app));
    let died = app.pool_vms(POOL).await[0].clone();
    compute.with(|s| s.instances.remove(&died));
    warmer::operator::pool_set(&app.ctx, &POOL.parse().unwrap(), 1)
        .await
        .unwrap();
    app.stop_consumers().await;
    let reconciler = app.reconciler().await;

    reconciler.pass(None).await.unwrap();
    reconciler.pass(None).await.unwrap();

    let pool = app.pool_vms(POOL).await;
    let leases = app.leases().await;
    for vm in compute.instances() {
        let accounted = pool.contains(&vm)
            || leases
                .values()
                .any(|(name, state)| *name == vm && state == "handed");
        assert!(
            accounted,
            "{vm} is at the stand-in but neither ready nor handed out"
        );
    }
    assert!(compute.instances().contains(&handed));
    assert!(pool.len() <= 1, "the surplus went: {pool:?}");
    assert!(!compute.instances().contains("leaked"));
}

#[tokio::test]
async fn orphans_are_deleted_at_the_pace_the_rate_limit_allows_and_never_twice() {
    const ORPHANS: usize = 300;
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    // A per-second write limit and calls that take a while: the pace must learn both.
    compute.with(|s| {
        s.delete_rate = Some((150.0, 10.0));
        s.delete_delay = Duration::from_millis(20);
    });
    let mut app = TestApp::builder().gce(&compute).start().await;
    let records: Vec<warmer::OrphanRecord> = (0..ORPHANS)
        .map(|i| {
            let name = format!("orphan-{i:03}");
            compute.add_instance(&name, ZONE, labels(&app));
            warmer::OrphanRecord::new(&name, Some(ZONE), "surplus")
        })
        .collect();
    app.ctx.store.record_orphans(&records).await.unwrap();

    // Two deleters at once, in two processes' roles: the refill consumer's and a reconcile
    // pass's. Their claims keep them off each other's VMs.
    app.start_refill().await;
    let report = app.reconciler().await.pass(None).await.unwrap();
    eventually("every orphan deleted", || async {
        compute.instances().is_empty() && app.ctx.store.orphan_count().await.unwrap() == 0
    })
    .await;

    assert!(report.deleted > 0, "the pass deleted its share");
    let (calls, refused) = compute.with(|s| (s.delete_calls, s.rate_limited));
    assert!(refused > 0, "the rate limit was met");
    assert_eq!(
        calls - refused,
        ORPHANS,
        "each VM deleted once, by one deleter"
    );
    let mut deleted = compute.with(|s| s.deleted.clone());
    deleted.sort();
    deleted.dedup();
    assert_eq!(deleted.len(), ORPHANS);
}

#[tokio::test]
async fn an_operator_sees_every_vm_the_brake_holds_for_and_releasing_it_deletes_them_and_resumes_boots()
 {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_ORPHAN_THRESHOLD", "10")])
        .start()
        .await;
    let leaks: Vec<String> = (0..105).map(|i| format!("leak-{i:03}")).collect();
    for leak in &leaks {
        compute.add_instance(leak, ZONE, labels(&app));
    }
    let reconciler = app.reconciler().await;
    let broker = app.broker().await;
    reconciler.pass(Some(&broker)).await.unwrap();

    // The event is kept for the operators' page, broker or not.
    eventually("brake.engaged in the events kept", || async {
        let kept = app.ctx.store.events_kept(10).await.unwrap();
        kept.iter()
            .any(|e| e["event"] == "brake.engaged" && e["unaccounted"] == 105)
    })
    .await;
    let first = warmer::operator::brake::show(&app.ctx, 1).await.unwrap();
    assert!(
        first.starts_with("SAFETY BRAKE ON for ") && first.contains("105 VMs labelled for this deployment were unaccounted for, more than WARMER_ORPHAN_THRESHOLD (10)"),
        "{first}"
    );
    assert!(
        first.contains("105 unaccounted VM(s) at the last reconcile pass, page 1 of 2"),
        "{first}"
    );
    let second = warmer::operator::brake::show(&app.ctx, 2).await.unwrap();
    let listed: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|page| page.lines().filter_map(|l| l.strip_prefix("  ")))
        .map(String::from)
        .collect();
    assert_eq!(listed, leaks, "every VM, once, over the pages");

    // Not without --yes.
    let refused = warmer::operator::brake::release(&app.ctx, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("not released") && refused.contains("105"),
        "{refused}"
    );
    assert!(app.ctx.store.brake_state().await.unwrap().is_some());

    let released = warmer::operator::brake::release(&app.ctx, true)
        .await
        .unwrap();
    assert!(
        released.contains("105 VM(s) released for deletion"),
        "{released}"
    );
    assert!(
        app.ctx.store.brake_state().await.unwrap().is_none(),
        "off at once"
    );
    let history = warmer::operator::history(&app.ctx, 5, None, false)
        .await
        .unwrap();
    assert!(history.contains("brake release"), "{history}");

    // The next pass deletes them and does not engage it again; new leaks count again.
    compute.add_instance("late-leak", ZONE, labels(&app));
    reconciler.pass(Some(&broker)).await.unwrap();
    let mut deleted = compute.with(|s| s.deleted.clone());
    deleted.sort();
    assert_eq!(deleted, leaks);
    assert!(app.ctx.store.brake_state().await.unwrap().is_none());
    let again = warmer::operator::brake::release(&app.ctx, true)
        .await
        .unwrap();
    assert_eq!(again, "the safety brake is off: nothing to release\n");
}

#[tokio::test]
async fn a_pools_points_stay_within_their_rings_after_a_simulated_month() {
    use warmer::points::{MINUTES, POINT_BYTES, Point, TEN_MINUTES};
    let app = TestApp::builder().start().await;
    let pool: PoolName = POOL.parse().unwrap();
    let start = now_ms() / 60_000 - 30 * 24 * 60;
    let month: Vec<(PoolName, Point)> = (0..30 * 24 * 60)
        .map(|i| {
            let point = Point {
                minute: (start + i) as u32,
                target: 5,
                ready: (i % 6) as u16,
                hits: i as u32,
                idle_seconds: (i * 150) as u32,
                reason: Point::reason_index("demand"),
                ..Point::default()
            };
            (pool.clone(), point)
        })
        .collect();

    app.ctx.store.record_points(&month).await.unwrap();

    let mut redis = app.redis.clone();
    for (resolution, slots) in [(MINUTES, 2_880), (TEN_MINUTES, 2_160)] {
        let key = app.names.points(resolution.name, &pool);
        let length: usize = redis.strlen(&key).await.unwrap();
        assert_eq!(length, slots * POINT_BYTES + 1, "{}", resolution.name);
        let memory: usize = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        // The allocator's size class above the exact length, and no growth by doubling.
        assert!(
            memory <= length + length / 5,
            "{} uses {memory} bytes",
            resolution.name
        );
        eprintln!("{}: {length} bytes, MEMORY USAGE {memory}", resolution.name);
        let end = start + 30 * 24 * 60;
        let since = end - resolution.minutes * resolution.slots;
        let points = app
            .ctx
            .store
            .points(&pool, resolution, since)
            .await
            .unwrap();
        assert_eq!(points.len(), slots, "{}", resolution.name);
        assert!(
            points
                .windows(2)
                .all(|w| w[1].minute as u64 - w[0].minute as u64 == resolution.minutes)
        );
        let last = month.last().unwrap().1;
        let newest = points.last().unwrap();
        assert_eq!((newest.hits, newest.reason()), (last.hits, "demand"));
    }
}

#[tokio::test]
async fn a_pass_records_each_pools_point_of_its_minute() {
    use warmer::points::MINUTES;
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let app = TestApp::builder().gce(&compute).start().await;
    compute.add_instance("a-1", ZONE, labels(&app));
    app.seed(POOL, 3, &[entry("a-1", 30)]).await;
    let reconciler = app.reconciler().await;

    reconciler.pass(None).await.unwrap();

    let pool: PoolName = POOL.parse().unwrap();
    let minute = now_ms() / 60_000;
    let points = app
        .ctx
        .store
        .points(&pool, MINUTES, minute - 1)
        .await
        .unwrap();
    let point = points.last().expect("a point of this minute");
    assert!(u64::from(point.minute) >= minute - 1);
    assert_eq!(
        (point.target, point.ready, point.reason()),
        (3, 1, "static")
    );
}
