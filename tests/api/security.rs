//! Attacks by someone with ordinary access: a worker's broker credentials, or one Redis record
//! written. Each test is the attack; it passes when the attack gets nothing.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use warmer::now_ms;

use warmer_testkit::compute::ComputeStandIn;
use warmer_testkit::*;

const ZONE: &str = "us-central1-a";

/// Appends `record` to the deployment's `orphaned` list, as anyone who can write to Redis can.
async fn poison_orphaned(app: &TestApp, record: Value) {
    let _: () = app
        .redis
        .clone()
        .rpush(app.names.orphaned(), record.to_string())
        .await
        .unwrap();
}

/// The records of `<ns>:_refused`: (name, why).
async fn refused(app: &TestApp) -> Vec<(String, String)> {
    let raw: Vec<String> = app
        .redis
        .clone()
        .lrange(format!("{}:_refused", app.names.namespace()), 0, -1)
        .await
        .unwrap();
    raw.iter()
        .map(|r| {
            let r: Value = serde_json::from_str(r).unwrap();
            let text = |f: &str| r[f].as_str().unwrap_or_default().to_string();
            (text("name"), text("refused"))
        })
        .collect()
}

#[tokio::test]
async fn orphan_records_written_into_redis_delete_nothing_that_is_not_this_deployments() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let mut app = TestApp::builder()
        .gce(&compute)
        .env("WARMER_GOOGLE_CLOUD_ZONES", "us-central1-a,us-central1-b")
        .start()
        .await;
    let ours = json!({"warmth": "warmed", "warmer": app.names.namespace()});
    compute.add_instance("ours-leaked", ZONE, ours);
    compute.add_instance("prod-db", ZONE, json!({"team": "data"}));
    compute.add_instance(
        "other-deployments",
        ZONE,
        json!({"warmth": "warmed", "warmer": "someone-else"}),
    );
    for record in [
        json!({"name": "prod-db", "zone": ZONE, "reason": "surplus"}),
        json!({"name": "prod-db"}),
        json!({"name": "other-deployments", "zone": ZONE}),
        json!({"name": "../../../global/firewalls/default-allow-ssh", "zone": ZONE}),
        json!({"name": "prod-db", "zone": "../../global"}),
        json!({"name": "ours-leaked", "zone": ZONE, "reason": "surplus"}),
    ] {
        poison_orphaned(&app, record).await;
    }

    // Both deleters: the refill consumer's (no listing: each VM looked up) and a reconcile pass.
    app.start_refill().await;
    app.fill(POOL).await; // wakes the refill consumer's deleter
    eventually(
        "the refill consumer's deleter to look at every record",
        || async { app.orphan_records().await.is_empty() && refused(&app).await.len() >= 5 },
    )
    .await;
    app.reconciler().await.pass(None).await.unwrap();

    assert_eq!(
        compute.delete_paths(),
        [format!(
            "/compute/v1/projects/{}/zones/{ZONE}/instances/ours-leaked",
            warmer_testkit::compute::PROJECT
        )],
        "only this deployment's VM was deleted"
    );
    let instances = compute.instances();
    assert!(instances.contains("prod-db") && instances.contains("other-deployments"));
    let mut refusals = refused(&app).await;
    refusals.sort();
    assert_eq!(
        refusals,
        [
            (
                "../../../global/firewalls/default-allow-ssh",
                "invalid_name"
            ),
            ("other-deployments", "foreign"),
            ("prod-db", "foreign"),
            ("prod-db", "foreign"),
            ("prod-db", "invalid_name"),
        ]
        .map(|(n, w)| (n.to_string(), w.to_string()))
    );
    let counted = app.counters(None).await;
    assert_eq!(counted.get("deletions_refused|foreign"), Some(&3));
    assert_eq!(counted.get("deletions_refused|invalid_name"), Some(&2));
    assert!(app.orphan_records().await.is_empty());
}

#[tokio::test]
async fn a_pool_entry_naming_a_vm_that_is_not_ours_relabels_nothing_and_is_never_handed_out() {
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let mut app = TestApp::builder().gce(&compute).start().await;
    compute.add_instance("billing-api", ZONE, json!({"team": "billing"}));
    compute.add_instance(
        "other-deployments",
        ZONE,
        json!({"warmth": "warmed", "warmer": "someone-else"}),
    );
    let entry = |name: &str| {
        let mut entry = vm(name);
        entry["zone"] = json!(ZONE);
        entry["booted_at"] = json!(now_ms() / 1000 - 3_600);
        entry
    };
    app.seed(POOL, 2, &[entry("billing-api"), entry("other-deployments")])
        .await;

    let report = app.reconciler().await.pass(None).await.unwrap();

    assert_eq!(report.evicted, 2);
    assert!(app.pool_vms(POOL).await.is_empty(), "no job gets them");
    assert_eq!(
        compute.with(|s| s.set_labels_calls),
        0,
        "nothing relabelled"
    );
    assert_eq!(compute.labels("billing-api"), json!({"team": "billing"}));
    assert!(compute.delete_paths().is_empty(), "nothing deleted");
    assert_eq!(refused(&app).await.len(), 2);
    // A checkout finds the pool empty: the entries never reach a worker.
    app.start_consumer().await;
    assert_eq!(app.checkout().await["code"], "pool_empty");
}

#[tokio::test]
async fn the_fleet_never_grows_past_warmer_max_vms_whatever_the_targets_say() {
    let mut app = TestApp::builder()
        .envs(&[("WARMER_MAX_VMS", "6"), ("WARMER_LOCAL_BOOT_DELAY", "50ms")])
        .start()
        .await;
    let pools: Vec<String> = (0..5).map(|i| format!("image-{i}:n1-standard-1")).collect();
    for pool in &pools {
        app.seed(pool, 3, &[]).await;
    }
    // A target written into Redis directly: the refill consumers must not believe it.
    app.seed("lying-image:n1-standard-1", 4_000_000_000, &[])
        .await;
    let mut capped = app.listen("fleet.capped").await;
    app.start_refill().await;
    app.start_refill().await;

    warmer::operator::fill(&app.ctx, None, None).await.unwrap();

    let event = capped.next().await;
    assert_eq!(event["max"], 6);
    let cloud = app.cloud().await;
    eventually("the fleet to be full and idle", || async {
        let mut ready = 0;
        let mut booting = 0;
        for pool in pools
            .iter()
            .map(String::as_str)
            .chain(["lying-image:n1-standard-1"])
        {
            ready += app.pool_vms(pool).await.len();
            booting += app.booting(pool).await;
        }
        ready == 6 && booting == 0
    })
    .await;
    // More fills change nothing: the fleet stays at the cap.
    warmer::operator::fill(&app.ctx, None, None).await.unwrap();
    app.wait_for_empty(&app.names.refill_queue()).await;
    let vms = cloud.list(app.names.namespace()).await.unwrap();
    assert_eq!(vms.len(), 6, "VMs that exist in the (simulated) cloud");
    let capped_boots: i64 = {
        let mut total = 0;
        for pool in pools
            .iter()
            .map(String::as_str)
            .chain(["lying-image:n1-standard-1"])
        {
            total += app
                .counters(Some(pool))
                .await
                .get("fleet_capped")
                .copied()
                .unwrap_or(0);
        }
        total
    };
    assert!(capped_boots > 0);

    // Operators cannot ask for more than the fleet either.
    let pool: warmer::PoolName = pools[0].parse().unwrap();
    let refused = warmer::operator::pool_set(&app.ctx, &pool, 7)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("WARMER_MAX_VMS (6)"),
        "{refused}"
    );
    let policy: warmer::sizing::policy::Policy =
        serde_json::from_value(json!({"min": 1, "max": 7, "adaptive": true, "hit": 0.99})).unwrap();
    let refused = warmer::operator::pool_policy(&app.ctx, &pool, Some(&policy))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("--max 7"), "{refused}");
}
