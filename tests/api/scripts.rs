//! Each Lua script's stated invariant, checked directly through the store on the real Redis.

use std::time::Duration;

use serde_json::{Value, json};
use warmer::{
    Capped, CheckoutOutcome, CheckoutStep, Delivery, Disposal, Finished, GiveBack, PoolEntry,
    PoolName, Settled, ToSettle, now_ms,
};
use warmer_testkit::*;

/// A fleet cap no test of the targets reaches.
const NO_CAP: u32 = u32::MAX;

fn pool() -> &'static PoolName {
    static PARSED: std::sync::LazyLock<PoolName> =
        std::sync::LazyLock::new(|| POOL.parse().unwrap());
    &PARSED
}

/// The orphan records' (name, reason) pairs, in order.
async fn orphan_reasons(app: &TestApp) -> Vec<(String, String)> {
    app.orphan_records()
        .await
        .iter()
        .map(|r| {
            let text = |field: &str| r[field].as_str().unwrap_or_default().to_string();
            (text("name"), text("reason"))
        })
        .collect()
}

/// A lease to settle, of [`POOL`], after a checkout wait of 30 ms.
fn to_settle(identity: &str, keep_until: u64) -> ToSettle {
    ToSettle {
        identity: identity.into(),
        pool: pool().clone(),
        keep_until,
        deadline: keep_until,
        wait: Duration::from_millis(30),
    }
}

fn entry(name: &str) -> PoolEntry {
    serde_json::from_value(vm(name)).unwrap()
}

#[tokio::test]
async fn checkout_pops_the_oldest_into_the_requests_lease_once() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 3, &[vm("old"), vm("young")]).await;
    let store = &app.ctx.store;
    let now = now_ms();
    let first = first_delivery("m:a", now, now + 30_000, now + 60_000);

    let popped = store.checkout(first, pool());
    // The same delivery's step again (its answer was lost with the connection): its own lease.
    let own = store.checkout(first, pool());
    let (popped, own) = (popped.await.unwrap(), own.await.unwrap());
    assert!(matches!(&popped, CheckoutStep::Popped { entry, .. } if entry.contains("\"old\"")));
    assert!(
        matches!(&own, CheckoutStep::Popped { entry, hint: false } if entry.contains("\"old\""))
    );
    assert_eq!(app.pool_vms(POOL).await, ["young"], "one VM left the pool");
    // The broker redelivers the request: the same VM again.
    let redelivery = Delivery {
        nonce: "redelivery",
        redelivered: true,
        ..first
    };
    let again = store.checkout(redelivery, pool()).await.unwrap();
    assert!(matches!(&again, CheckoutStep::Leased(e) if e.contains("\"old\"")));
    // A fresh publish with the same identity is not the same request: nothing, however often.
    let replay = Delivery {
        nonce: "replay",
        ..first
    };
    assert_eq!(
        store.checkout(replay, pool()).await.unwrap(),
        CheckoutStep::Replayed
    );
    assert_eq!(
        app.pool_vms(POOL).await,
        ["young"],
        "the replay took nothing"
    );

    let late = store.checkout(first_delivery("m:b", now + 5, now, now + 60_000), pool());
    assert_eq!(late.await.unwrap(), CheckoutStep::Expired);
    // Within its deadline by the time it was received, but run by Redis more than a second
    // after it (it waited in a stalled server): it takes nothing.
    let stale = first_delivery("m:s", now - 10_000, now - 2_000, now + 60_000);
    assert_eq!(
        store.checkout(stale, pool()).await.unwrap(),
        CheckoutStep::Expired
    );
    let missing: PoolName = "other-image:n1-standard-1".parse().unwrap();
    let none = store.checkout(
        first_delivery("m:c", now, now + 30_000, now + 60_000),
        &missing,
    );
    assert_eq!(none.await.unwrap(), CheckoutStep::NoPool);
    store
        .checkout(
            first_delivery("m:d", now, now + 30_000, now + 60_000),
            pool(),
        )
        .await
        .unwrap();
    let empty = store.checkout(
        first_delivery("m:e", now, now + 30_000, now + 60_000),
        pool(),
    );
    assert!(matches!(empty.await.unwrap(), CheckoutStep::Empty { .. }));
    // A pending lease found past its deadline by a redelivery: its fate is unknown, the VM is
    // deleted. The lease's own deadline counts, even if the redelivery's says later.
    let past = Delivery {
        now: now + 40_000,
        deadline: now + 90_000,
        ..redelivery
    };
    assert!(matches!(
        store.checkout(past, pool()).await.unwrap(),
        CheckoutStep::Orphaned(_)
    ));
    assert_eq!(
        orphan_reasons(&app).await,
        [("old".to_string(), "checkout_unsettled".to_string())]
    );
}

#[tokio::test]
async fn a_handed_out_lease_loses_its_key_at_its_deadline_and_is_sent_no_more() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 1, &[vm("vm")]).await;
    let store = &app.ctx.store;
    let now = now_ms();
    let first = first_delivery("m:a", now, now + 30_000, now + 60_000);
    store.checkout(first, pool()).await.unwrap();
    let mut settled = to_settle("m:a", now + 3_600_000);
    settled.deadline = now + 30_000;
    assert_eq!(store.settle(&[settled]).await.unwrap(), [Settled::Now]);
    let redelivery = Delivery {
        nonce: "redelivery",
        redelivered: true,
        now: now + 1_000,
        ..first
    };
    assert!(matches!(
        store.checkout(redelivery, pool()).await.unwrap(),
        CheckoutStep::Leased(_)
    ));

    // Before the deadline the sweep keeps the key; after it, only the name and zone are left.
    let early = store.sweep_leases(now + 29_000).await.unwrap();
    assert_eq!(early.stripped, 0);
    let raw = || async {
        let leases: std::collections::HashMap<String, String> =
            redis::AsyncCommands::hgetall(&mut app.redis.clone(), app.names.leases())
                .await
                .unwrap();
        leases["m:a"].clone()
    };
    assert!(raw().await.contains("PRIVATE KEY"));
    let swept = store.sweep_leases(now + 31_000).await.unwrap();
    assert_eq!((swept.stripped, swept.handed, swept.pending), (1, 0, 0));
    let lease = raw().await;
    assert!(!lease.contains("PRIVATE KEY"), "{lease}");
    assert_eq!(
        app.leases().await["m:a"],
        ("vm".to_string(), "handed".to_string())
    );
    // A redelivery past the deadline gets nothing, whatever deadline it carries itself.
    let later = Delivery {
        now: now + 31_000,
        deadline: now + 90_000,
        ..redelivery
    };
    assert_eq!(
        store.checkout(later, pool()).await.unwrap(),
        CheckoutStep::Late
    );
    assert!(
        app.orphaned().await.is_empty(),
        "handed out: nobody's to delete yet"
    );
}

#[tokio::test]
async fn a_pool_has_at_most_one_refill_hint_pending_until_the_refill_consumer_looks() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 3, &[vm("a"), vm("b")]).await;
    let store = &app.ctx.store;
    let now = now_ms();
    let hint = |outcome: CheckoutStep| match outcome {
        CheckoutStep::Popped { hint, .. } | CheckoutStep::Empty { hint } => hint,
        other => panic!("{other:?}"),
    };

    let first = store.checkout(
        first_delivery("m:1", now, now + 30_000, now + 60_000),
        pool(),
    );
    let second = store.checkout(
        first_delivery("m:2", now, now + 30_000, now + 60_000),
        pool(),
    );
    let miss = store.checkout(
        first_delivery("m:3", now, now + 30_000, now + 60_000),
        pool(),
    );
    assert_eq!(
        [
            hint(first.await.unwrap()),
            hint(second.await.unwrap()),
            hint(miss.await.unwrap())
        ],
        [true, false, false],
        "one hint for a pool, however many pops and misses"
    );
    // The refill consumer clears it before it looks at the pool: the next drop sends one.
    store.trim_pool(pool()).await.unwrap();
    let after = store.checkout(
        first_delivery("m:4", now, now + 30_000, now + 60_000),
        pool(),
    );
    assert!(hint(after.await.unwrap()));
    // A hint that could not be sent is cleared, so the next drop sends it.
    store.clear_hint(pool()).await.unwrap();
    let next = store.checkout(
        first_delivery("m:5", now, now + 30_000, now + 60_000),
        pool(),
    );
    assert!(hint(next.await.unwrap()));
}

#[tokio::test]
async fn settle_hands_out_once_and_says_when_the_lease_was_swept() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 1, &[vm("vm")]).await;
    let store = &app.ctx.store;
    let now = now_ms();
    store
        .checkout(
            first_delivery("m:a", now, now + 30_000, now + 60_000),
            pool(),
        )
        .await
        .unwrap();

    let batch = [
        to_settle("m:a", now + 1_000),
        to_settle("m:never", now + 1_000),
    ];
    assert_eq!(
        store.settle(&batch).await.unwrap(),
        [Settled::Now, Settled::Swept]
    );
    assert_eq!(store.settle(&batch[..1]).await.unwrap(), [Settled::Already]);
    assert_eq!(
        app.leases().await["m:a"],
        ("vm".to_string(), "handed".to_string())
    );
    // Counted once, with its wait (30 ms: the bucket up to 50 ms, the fourth).
    assert_eq!(
        app.counters(Some(POOL)).await,
        counters(&[("checkouts|handed_out", 1)])
    );
    assert_eq!(
        app.counters(None).await,
        counters(&[("checkout_wait|3", 1), ("checkout_wait|sum_ms", 30)])
    );
}

#[tokio::test]
async fn give_back_returns_only_a_pending_lease_and_never_past_the_target() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("a"), vm("b"), vm("c")]).await;
    let store = &app.ctx.store;
    let now = now_ms();
    for id in ["m:a", "m:b", "m:c"] {
        store
            .checkout(first_delivery(id, now, now + 30_000, now + 60_000), pool())
            .await
            .unwrap();
    }
    store
        .settle(&[to_settle("m:c", now + 1_000)])
        .await
        .unwrap();

    let head = store
        .give_back(
            "m:a",
            pool(),
            Disposal::Head,
            Some(CheckoutOutcome::RequesterGone),
        )
        .await
        .unwrap();
    assert_eq!(head, (GiveBack::Head, "a".to_string()));
    let handed = store
        .give_back(
            "m:c",
            pool(),
            Disposal::Head,
            Some(CheckoutOutcome::RequesterGone),
        )
        .await
        .unwrap();
    assert_eq!(
        handed.0,
        GiveBack::NothingPending,
        "a handed-out VM stays out"
    );
    app.ctx.store.set_target(pool(), 1).await.unwrap();
    let surplus = store
        .give_back(
            "m:b",
            pool(),
            Disposal::Head,
            Some(CheckoutOutcome::RequesterGone),
        )
        .await
        .unwrap();
    assert_eq!(
        surplus,
        (GiveBack::Orphaned("surplus".into()), "b".to_string())
    );
    assert_eq!(app.pool_vms(POOL).await, ["a"]);
    assert_eq!(
        orphan_reasons(&app).await,
        [("b".to_string(), "surplus".to_string())]
    );
    let again = store
        .give_back(
            "m:b",
            pool(),
            Disposal::Head,
            Some(CheckoutOutcome::RequesterGone),
        )
        .await
        .unwrap();
    assert_eq!(
        again.0,
        GiveBack::NothingPending,
        "a give-back happens once"
    );
    assert_eq!(
        app.counters(Some(POOL)).await,
        counters(&[("checkouts|handed_out", 1), ("checkouts|requester_gone", 2)]),
        "each given-back request counted once"
    );
}

#[tokio::test]
async fn sweep_records_pending_and_handed_leases_past_their_time_with_their_reasons() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("pending"), vm("handed")]).await;
    let store = &app.ctx.store;
    let now = now_ms();
    store
        .checkout(first_delivery("m:p", now, now + 1, now + 2), pool())
        .await
        .unwrap();
    store
        .checkout(first_delivery("m:h", now, now + 1, now + 2), pool())
        .await
        .unwrap();
    store.settle(&[to_settle("m:h", now + 3)]).await.unwrap();

    let swept = store.sweep_leases(now + 10).await.unwrap();

    assert_eq!((swept.pending, swept.handed), (1, 1));
    let mut reasons = orphan_reasons(&app).await;
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("handed".to_string(), "handout_expired".to_string()),
            ("pending".to_string(), "lease_expired".to_string())
        ]
    );
    assert!(app.leases().await.is_empty());
    let quiet = store.sweep_leases(now + 10).await.unwrap();
    assert_eq!((quiet.pending, quiet.handed), (0, 0));
}

#[tokio::test]
async fn a_deleted_pools_vms_are_recorded_and_an_unreadable_entry_is_kept_for_an_operator() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("vm-1"), json!("not an entry")])
        .await;
    let store = &app.ctx.store;

    assert_eq!(store.delete_pool(pool()).await.unwrap(), Some(2));
    assert_eq!(store.delete_pool(pool()).await.unwrap(), None);

    let records = app.orphan_records().await;
    assert_eq!(
        records[0],
        json!({"name": "vm-1", "zone": "us-central1-c", "reason": "pool_deleted"})
    );
    assert_eq!(records[1]["name"], Value::Null);
    assert_eq!(records[1]["reason"], "unreadable");
    assert_eq!(records[1]["entry"], "\"not an entry\"");
    assert!(app.pool_vms(POOL).await.is_empty());
}

#[tokio::test]
async fn reservations_never_exceed_the_target_repeat_safely_and_expire_into_orphans() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 3, &[vm("ready")]).await;
    let store = &app.ctx.store;
    let names: Vec<String> = (0..5).map(|i| format!("boot-{i}")).collect();
    let later = now_ms() + 60_000;

    let first = store
        .reserve_boots(pool(), &names, later, NO_CAP)
        .await
        .unwrap();
    assert_eq!(first.names, ["boot-0", "boot-1"], "ready + booting <= 3");
    // The same call again (its answer lost with a connection): the same names, nothing more.
    let again = store
        .reserve_boots(pool(), &names, later, NO_CAP)
        .await
        .unwrap();
    assert_eq!(again.names, ["boot-0", "boot-1"]);
    assert_eq!(app.booting(POOL).await, 2);
    let full = store
        .reserve_boots(pool(), &["boot-9".to_string()], later, NO_CAP)
        .await
        .unwrap();
    assert!(full.names.is_empty());

    // Past their expiry, reservations belong to a booter that died: their VMs are recorded.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let soon = now_ms() + 1;
    let orphaned: PoolName = "expiring-image:n1-standard-1".parse().unwrap();
    store.set_target(&orphaned, 1).await.unwrap();
    store
        .reserve_boots(&orphaned, &["doomed".to_string()], soon, NO_CAP)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let after = store
        .reserve_boots(&orphaned, &["next".to_string()], later, NO_CAP)
        .await
        .unwrap();
    assert_eq!(after.names, ["next"]);
    assert_eq!(
        orphan_reasons(&app).await,
        [("doomed".to_string(), "boot_abandoned".to_string())]
    );
}

#[tokio::test]
async fn the_fleet_cap_holds_over_every_pool_whatever_the_targets_say() {
    let app = TestApp::builder().start().await;
    let lying: PoolName = "other-image:n1-standard-1".parse().unwrap();
    // A target written into Redis by hand (or by an attacker): far beyond any bill.
    app.seed(&lying.to_string(), 4_000_000_000, &[vm("a-1"), vm("a-2")])
        .await;
    app.seed(POOL, 5, &[vm("b-1")]).await;
    let store = &app.ctx.store;
    let now = now_ms();
    // Two VMs out of the pools: one handed out, one popped for a request in flight.
    for id in ["m:handed", "m:pending"] {
        store
            .checkout(first_delivery(id, now, now + 30_000, now + 60_000), pool())
            .await
            .unwrap();
        app.seed(POOL, 5, &[vm(&format!("refilled-{id}"))]).await;
    }
    store
        .settle(&[to_settle("m:handed", now + 3_600_000)])
        .await
        .unwrap();
    // The fleet: 2 + 2 ready, 2 leased = 6; the cap 9 leaves room for 3.
    let names: Vec<String> = (0..6).map(|i| format!("boot-{i}")).collect();
    let later = now + 60_000;

    let first = store.reserve_boots(&lying, &names, later, 8).await.unwrap();
    assert_eq!(first.names, ["boot-0", "boot-1", "boot-2"]);
    assert_eq!(first.capped, Capped::Newly);
    let other = store
        .reserve_boots(pool(), &["boot-b".to_string()], later, 8)
        .await
        .unwrap();
    assert!(
        other.names.is_empty(),
        "the fleet is full, whichever pool asks"
    );
    assert_eq!(other.capped, Capped::Still);
    assert_eq!(
        app.counters(Some(&lying.to_string()))
            .await
            .get("fleet_capped"),
        Some(&3),
        "three boots of six not started"
    );
    assert_eq!(app.counters(Some(POOL)).await.get("fleet_capped"), Some(&1));

    // Room again (the reconciler forgot the lease of a VM its worker deleted): boots resume.
    let forgotten = store
        .forget_leases(&[("m:handed".to_string(), "b-1".to_string())])
        .await
        .unwrap();
    assert_eq!(forgotten, 1);
    let wrong = store
        .forget_leases(&[("m:pending".to_string(), "a-1".to_string())])
        .await
        .unwrap();
    assert_eq!(wrong, 0, "a pending lease, or one of another VM, is kept");
    let resumed = store
        .reserve_boots(pool(), &["boot-b".to_string()], later, 8)
        .await
        .unwrap();
    assert_eq!(resumed.names, ["boot-b"]);
    assert_eq!(resumed.capped, Capped::No);
    // A pool without a target gets nothing, whatever hint or fill names it.
    let nowhere: PoolName = "no-such-image:n1-standard-1".parse().unwrap();
    let none = store
        .reserve_boots(&nowhere, &["boot-x".to_string()], later, 8)
        .await
        .unwrap();
    assert_eq!((none.target, none.names.len()), (None, 0));
}

#[tokio::test]
async fn a_finished_boot_joins_its_pool_once_or_is_recorded_never_both() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 1, &[]).await;
    let store = &app.ctx.store;
    let later = now_ms() + 60_000;
    store
        .reserve_boots(pool(), &["vm-1".to_string()], later, NO_CAP)
        .await
        .unwrap();

    let took = Duration::from_secs(40);
    let ready = store
        .finish_boot(pool(), &entry("vm-1"), took)
        .await
        .unwrap();
    // Run again (a retry after a dropped connection): still ready, not an orphan as well.
    let repeated = store
        .finish_boot(pool(), &entry("vm-1"), took)
        .await
        .unwrap();

    assert_eq!((ready, repeated), (Finished::Ready, Finished::Ready));
    assert_eq!(app.pool_vms(POOL).await, ["vm-1"]);
    assert!(app.orphaned().await.is_empty());
    // Without a reservation: recorded, not pooled.
    let unreserved = store
        .finish_boot(pool(), &entry("vm-2"), took)
        .await
        .unwrap();
    assert_eq!(unreserved, Finished::Expired);
    // Target reached meanwhile: the late boot is surplus.
    store.set_target(pool(), 2).await.unwrap();
    store
        .reserve_boots(pool(), &["vm-3".to_string()], later, NO_CAP)
        .await
        .unwrap();
    store.set_target(pool(), 1).await.unwrap();
    let surplus = store
        .finish_boot(pool(), &entry("vm-3"), took)
        .await
        .unwrap();
    assert_eq!(surplus, Finished::Surplus);
    assert_eq!(app.pool_vms(POOL).await, ["vm-1"]);
    assert_eq!(
        orphan_reasons(&app).await,
        [
            ("vm-2".to_string(), "expired".to_string()),
            ("vm-3".to_string(), "surplus".to_string())
        ]
    );
    // Each boot counted once by result; each duration observed once (40 s: third bucket).
    assert_eq!(
        app.counters(Some(POOL)).await,
        counters(&[
            ("boots|us-central1-c|ready", 1),
            ("boots|us-central1-c|expired", 1),
            ("boots|us-central1-c|surplus", 1),
        ])
    );
    assert_eq!(
        app.counters(None).await,
        counters(&[
            ("boot_duration|us-central1-c|2", 3),
            ("boot_duration|us-central1-c|sum_ms", 120_000),
        ])
    );
}

#[tokio::test]
async fn an_abandoned_boot_frees_its_slot_and_is_recorded_once() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[]).await;
    let store = &app.ctx.store;
    let names = ["halfway".to_string(), "never-created".to_string()];
    store
        .reserve_boots(pool(), &names, now_ms() + 60_000, NO_CAP)
        .await
        .unwrap();

    let zone = Some("us-central1-b");
    let failed = "failed_halfway";
    let first = store.abandon_boot(pool(), "halfway", zone, Some("boot_failed"), failed);
    assert!(first.await.unwrap());
    let repeated = store.abandon_boot(pool(), "halfway", zone, Some("boot_failed"), failed);
    assert!(!repeated.await.unwrap());
    let nothing = store.abandon_boot(pool(), "never-created", None, None, "failed_quota");
    assert!(nothing.await.unwrap());
    assert_eq!(
        app.counters(Some(POOL)).await,
        counters(&[
            ("boots|us-central1-b|failed_halfway", 1),
            ("boots||failed_quota", 1)
        ]),
        "each failure counted once"
    );

    assert_eq!(app.booting(POOL).await, 0);
    assert_eq!(
        app.orphan_records().await,
        [json!({"name": "halfway", "zone": "us-central1-b", "reason": "boot_failed"})]
    );
}

#[tokio::test]
async fn trimming_gives_up_the_oldest_surplus_and_no_more() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 4, &[vm("a"), vm("b"), vm("c"), vm("d")])
        .await;
    let store = &app.ctx.store;
    store.set_target(pool(), 2).await.unwrap();
    store
        .reserve_boots(pool(), &[], now_ms() + 60_000, NO_CAP)
        .await
        .unwrap();

    assert_eq!(store.trim_pool(pool()).await.unwrap(), 2);
    assert_eq!(store.trim_pool(pool()).await.unwrap(), 0);
    assert_eq!(app.pool_vms(POOL).await, ["c", "d"]);
    assert_eq!(
        orphan_reasons(&app).await,
        [
            ("a".to_string(), "surplus".to_string()),
            ("b".to_string(), "surplus".to_string())
        ]
    );
}

#[tokio::test]
async fn an_eviction_moves_the_named_vms_to_orphaned_once_and_keeps_the_others_in_order() {
    let app = TestApp::builder().start().await;
    let unreadable = json!("not an entry");
    app.seed(
        POOL,
        5,
        &[vm("a"), vm("dead"), unreadable.clone(), vm("b"), vm("old")],
    )
    .await;
    let store = &app.ctx.store;
    let evictions = [
        ("dead", "us-central1-c", "gone"),
        ("old", "us-central1-c", "max_age"),
        ("", "", "unreadable"),
        ("taken-meanwhile", "us-central1-c", "gone"),
    ];

    let mut evicted = store.evict(POOL, &evictions).await.unwrap();
    evicted.sort();
    let again = store.evict(POOL, &evictions[..2]).await.unwrap();

    assert_eq!(
        evicted,
        ["", "dead", "old"],
        "a VM no longer there is not evicted"
    );
    assert!(again.is_empty(), "no longer in the pool");
    assert_eq!(app.pool_vms(POOL).await, ["a", "b"]);
    let records = app.orphan_records().await;
    assert_eq!(
        records[0],
        json!({"name": "dead", "zone": "us-central1-c", "reason": "gone"})
    );
    assert_eq!(records[1]["reason"], "unreadable");
    assert_eq!(records[1]["entry"], unreadable.to_string());
    assert_eq!(records[2]["name"], "old");
    assert_eq!(records.len(), 3);
}

#[tokio::test]
async fn the_reconcile_view_reads_names_zones_and_ages_without_the_keys() {
    let app = TestApp::builder().start().await;
    let legacy = json!({"name": "legacy", "zone": "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-b", "ip": "10.0.0.2", "public_ip": null, "ssh_private_key": "KEY"});
    // Spaces after the colons: written by some other JSON writer.
    let spaced: Value = serde_json::from_str(
        r#"{ "name" : "spaced", "zone" : "us-central1-a", "ip": "10.0.0.3", "ssh_private_key": "KEY", "booted_at" : 1700000001 }"#,
    )
    .unwrap();
    app.seed(POOL, 5, &[vm("ours"), legacy, spaced, json!(7)])
        .await;
    let store = &app.ctx.store;
    let now = now_ms();
    store
        .checkout(
            first_delivery("m:1", now, now + 30_000, now + 60_000),
            pool(),
        )
        .await
        .unwrap();

    let view = store.reconcile_view(now).await.unwrap();

    let vms: Vec<(String, String, Option<u64>)> = view.pools[POOL]
        .iter()
        .map(|vm| (vm.name.clone(), vm.zone.clone(), vm.booted_at))
        .collect();
    assert_eq!(
        vms,
        [
            (
                "legacy".to_string(),
                "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-b".to_string(),
                None
            ),
            ("spaced".into(), "us-central1-a".into(), Some(1_700_000_001)),
            (String::new(), String::new(), None),
        ],
        "the oldest went to a lease"
    );
    assert_eq!(view.leases.len(), 1);
    let lease = &view.leases[0];
    assert_eq!(
        (
            lease.vm.as_str(),
            lease.pool.as_str(),
            lease.handed,
            lease.at
        ),
        ("ours", POOL, false, now)
    );
    assert_eq!(view.targets[POOL], 5);
}

#[tokio::test]
async fn one_owner_holds_the_lock_until_it_releases_or_lets_it_expire() {
    let app = TestApp::builder().start().await;
    let store = &app.ctx.store;
    let ttl = Duration::from_millis(300);

    assert!(store.lock("first", ttl).await.unwrap());
    assert!(!store.lock("second", ttl).await.unwrap());
    assert!(
        store.lock("first", ttl).await.unwrap(),
        "renewed by its owner"
    );
    store.unlock("second").await.unwrap();
    assert!(
        !store.lock("second", ttl).await.unwrap(),
        "only its owner releases it"
    );
    store.unlock("first").await.unwrap();
    assert!(store.lock("second", ttl).await.unwrap());
    eventually("the lock to expire", || async {
        store.lock("first", ttl).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn sizing_writes_only_pools_that_exist_and_a_rollover_finishes_once() {
    use warmer::policy::Policy;
    use warmer::{Decision, RolloverState, StartRollover};

    let app = TestApp::builder().start().await;
    let store = &app.ctx.store;
    let new: PoolName = "travis-ci-new-image:n1-standard-2".parse().unwrap();
    let policy = Policy {
        min: 1,
        max: 4,
        adaptive: true,
        hit: 0.99,
        schedules: Vec::new(),
    };
    // set_policy.lua: no policy for a pool that does not exist.
    assert!(!store.set_policy(pool(), Some(&policy)).await.unwrap());
    app.seed(POOL, 2, &[]).await;
    assert!(store.set_policy(pool(), Some(&policy)).await.unwrap());

    // size_pools.lua: a pool deleted while the sizer decided stays deleted; repeating is safe.
    let decision = Decision::new(3, "demand", 1);
    let (pool_name, ghost) = (POOL.to_string(), "ghost-image:n1-standard-2".to_string());
    for _ in 0..2 {
        store
            .apply_decisions(&[(&pool_name, &decision), (&ghost, &decision)])
            .await
            .unwrap();
    }
    let targets = store.targets().await.unwrap();
    assert_eq!(targets.get(pool()), Some(&3));
    assert!(!targets.keys().any(|p| p.to_string() == ghost));

    // start_rollover.lua and finish_rollover.lua: once started, a second start is refused; a
    // finish applies once, and a repeated one (a retry after a lost answer) changes nothing.
    assert_eq!(
        store.start_rollover(pool(), &new, 10, 70).await.unwrap(),
        StartRollover::Started(3)
    );
    assert_eq!(
        store.start_rollover(pool(), &new, 10, 70).await.unwrap(),
        StartRollover::Rolling(POOL.into())
    );
    assert!(
        store
            .finish_rollover(POOL, RolloverState::Completed, 20, "")
            .await
            .unwrap()
    );
    store.set_target(pool(), 5).await.unwrap();
    assert!(
        !store
            .finish_rollover(POOL, RolloverState::Aborted, 30, "late")
            .await
            .unwrap()
    );
    let targets = store.targets().await.unwrap();
    assert_eq!(targets.get(pool()), Some(&5));
    assert_eq!(targets.get(&new), Some(&3));
    let view = store.sizing_view().await.unwrap();
    assert_eq!(view.policies.get(&new.to_string()), Some(&Ok(policy)));
    assert_eq!(view.rollovers[POOL].state, RolloverState::Completed);
}

/// The pool's `<name>|ms`, `|level` and `|since` fields as the scripts left them.
async fn integral(app: &TestApp, name: &str) -> (u64, u64, u64) {
    let hash: std::collections::HashMap<String, u64> =
        redis::AsyncCommands::hgetall(&mut app.redis.clone(), app.names.pool_metrics(pool()))
            .await
            .unwrap();
    let field = |f: &str| hash.get(&format!("{name}|{f}")).copied().unwrap_or(0);
    (field("ms"), field("level"), field("since"))
}

#[tokio::test]
async fn idle_and_booting_vm_seconds_are_the_exact_integral_of_each_level_by_redis_clock() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 3, &[]).await;
    let store = &app.ctx.store;
    let names: Vec<String> = (1..=3).map(|i| format!("vm-{i}")).collect();
    store
        .reserve_boots(pool(), &names, now_ms() + 60_000, NO_CAP)
        .await
        .unwrap();
    let (_, booting, reserved_at) = integral(&app, "booting_vm").await;
    assert_eq!(booting, 3);

    // Three boots finish, one by one; then three checkouts take them, one by one. At each
    // change, the scripts stamp Redis's time: the integral must be exactly the sum of the
    // levels held between the stamps.
    let mut idle_stamps = Vec::new();
    let mut boot_stamps = vec![reserved_at];
    for name in &names {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let finished = store
            .finish_boot(pool(), &entry(name), Duration::from_secs(40))
            .await
            .unwrap();
        assert_eq!(finished, Finished::Ready);
        idle_stamps.push(integral(&app, "idle_vm").await.2);
        boot_stamps.push(integral(&app, "booting_vm").await.2);
    }
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = now_ms();
        let identity = format!("m:{i}");
        let delivery = first_delivery(&identity, now, now + 30_000, now + 60_000);
        let popped = store.checkout(delivery, pool()).await.unwrap();
        assert!(matches!(popped, CheckoutStep::Popped { .. }), "{popped:?}");
        idle_stamps.push(integral(&app, "idle_vm").await.2);
    }

    let held = |stamps: &[u64], levels: &[u64]| -> u64 {
        stamps
            .windows(2)
            .zip(levels)
            .map(|(w, level)| level * (w[1] - w[0]))
            .sum()
    };
    let (idle_ms, idle_level, _) = integral(&app, "idle_vm").await;
    assert_eq!(idle_ms, held(&idle_stamps, &[1, 2, 3, 2, 1]));
    assert_eq!(idle_level, 0);
    // About 3 VMs × 0.3 s + 2 × 0.6 s + 1 × 0.9 s (after boots 0.15 s apart), sleeps being
    // at least what they ask.
    assert!(
        idle_ms >= 150 + 2 * 150 + 3 * 300 + 2 * 300 + 300,
        "{idle_ms}"
    );
    let (boot_ms, boot_level, _) = integral(&app, "booting_vm").await;
    assert_eq!(boot_ms, held(&boot_stamps, &[3, 2, 1]));
    assert_eq!(boot_level, 0);

    // What /metrics exports: the integral so far, in seconds (the levels are 0: nothing open).
    let mut app = app;
    let base = app.start_web().await;
    let body = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |family: &str| -> f64 {
        let prefix = format!("{family}{{pool=\"{POOL}\"}} ");
        let line = body.lines().find(|l| l.starts_with(&prefix)).unwrap();
        line[prefix.len()..].parse().unwrap()
    };
    assert_eq!(
        sample("warmer_pool_idle_vm_seconds_total"),
        idle_ms as f64 / 1000.0
    );
    assert_eq!(
        sample("warmer_pool_booting_vm_seconds_total"),
        boot_ms as f64 / 1000.0
    );
}

#[tokio::test]
async fn handed_out_vm_seconds_count_from_the_settled_reply_until_the_lease_is_forgotten() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("a-1")]).await;
    let store = &app.ctx.store;
    let now = now_ms();
    let delivery = first_delivery("m:handed", now, now + 30_000, now + 60_000);
    store.checkout(delivery, pool()).await.unwrap();
    store
        .settle(&[to_settle("m:handed", now + 3_600_000)])
        .await
        .unwrap();
    let (_, level, handed_at) = integral(&app, "handed_vm").await;
    assert_eq!(level, 1);
    // Settling again (a retry) counts it no more.
    store
        .settle(&[to_settle("m:handed", now + 3_600_000)])
        .await
        .unwrap();
    assert_eq!(integral(&app, "handed_vm").await.1, 1);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let forgotten = store
        .forget_leases(&[("m:handed".to_string(), "a-1".to_string())])
        .await
        .unwrap();

    assert_eq!(forgotten, 1);
    let (ms, level, gone_at) = integral(&app, "handed_vm").await;
    assert_eq!((ms, level), (gone_at - handed_at, 0));
    assert!(ms >= 200, "{ms}");
}
