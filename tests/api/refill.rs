//! Refill on the Compute Engine stand-in: refill messages, guarantee 4, booting on Compute Engine.

use std::time::Duration;

use serde_json::{Value, json};
use warmer::operator;

use warmer_testkit::compute::ComputeStandIn;
use warmer_testkit::*;

const BOOT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_fill_command_boots_the_pool_to_its_target_as_spec_section_7_describes() {
    let compute = ComputeStandIn::start(BOOT).await;
    let mut app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_GOOGLE_CLOUD_ZONES", "us-central1-b")])
        .start()
        .await;
    let public = format!("{POOL}:public");
    app.seed(POOL, 2, &[]).await;
    app.seed(&public, 1, &[]).await;
    let mut booted = app.listen("instance.booted").await;
    app.start_refill().await;

    operator::fill(&app.ctx, None, None).await.unwrap();
    let events = booted.take(3).await;

    app.wait_until_settled(POOL, 2).await;
    app.wait_until_settled(&public, 1).await;
    assert!(
        events
            .iter()
            .all(|e| e["zone"] == "us-central1-b" && e["boot_ms"].is_u64())
    );
    let inserts = compute.with(|s| s.inserts.clone());
    assert_eq!(inserts.len(), 3);
    for insert in &inserts {
        let body = &insert.body;
        let public_ip = body["labels"]["pool-public"] == "true";
        assert!(body["name"].as_str().unwrap().starts_with("travis-job-"));
        assert_eq!(
            body["machineType"],
            "zones/us-central1-b/machineTypes/n1-standard-2"
        );
        assert_eq!(
            body["disks"][0]["initializeParams"]["sourceImage"],
            "projects/travis-ci-images/global/images/travis-ci-garnet-trusty-1503417006"
        );
        assert_eq!(
            body["networkInterfaces"][0]["network"],
            "projects/warmer-test/global/networks/default"
        );
        assert_eq!(body["labels"]["warmth"], "warmed");
        assert_eq!(
            body["labels"]["pool-image"],
            "travis-ci-garnet-trusty-1503417006"
        );
        assert_eq!(
            body["networkInterfaces"][0]["accessConfigs"].is_array(),
            public_ip,
            "NAT only for :public pools"
        );
        assert!(
            uuid::Uuid::parse_str(&insert.request_id).is_ok(),
            "insert carries a requestId"
        );
    }
    let entry = &app.entries(&public).await[0];
    assert!(entry["ip"].as_str().unwrap().starts_with("10.128."));
    assert!(entry["public_ip"].as_str().unwrap().starts_with("34.1."));
    assert!(entry["booted_at"].is_u64());
    assert_eq!(compute.with(|s| s.token_grants), 1, "the token is cached");
}

#[tokio::test]
async fn a_checkout_leads_to_a_replacement() {
    let compute = ComputeStandIn::start(BOOT).await;
    let mut app = TestApp::builder().gce(&compute).start().await;
    app.seed(POOL, 2, &[]).await;
    app.start_refill().await;
    app.start_consumer().await;
    app.fill(POOL).await;
    app.wait_until_settled(POOL, 2).await;
    let mut booted = app.listen("instance.booted").await;

    let vm = app.checkout().await;

    let replacement = booted.next().await;
    assert_ne!(replacement["instance"], vm["name"]);
    app.wait_until_settled(POOL, 2).await;
    assert_eq!(compute.with(|s| s.inserts.len()), 3);
}

#[tokio::test]
async fn three_refill_consumers_and_a_hundred_messages_never_overshoot() {
    let compute = ComputeStandIn::start(BOOT).await;
    let mut app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_BOOT_CONCURRENCY", "4")])
        .start()
        .await;
    app.seed(POOL, 10, &[]).await;
    for _ in 0..3 {
        app.start_refill().await;
    }
    let publisher = app.publisher().await;

    // A hundred refill messages at once (hints and fills, as checkouts and the reconciler send).
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (publisher, names) = (publisher.clone(), app.names.clone());
        sends.spawn(async move {
            let pool: warmer::PoolName = POOL.parse().unwrap();
            let message = if i % 2 == 0 {
                warmer::RefillMessage::Hint(pool)
            } else {
                warmer::RefillMessage::Fill(warmer::FillCommand {
                    pool: Some(pool),
                    signer: None,
                })
            };
            message.send(&publisher, &names, "guest").await
        });
    }
    while let Some(sent) = sends.join_next().await {
        sent.unwrap().unwrap();
    }

    app.wait_until_settled(POOL, 10).await;
    // Every event handled (stopping drains in-flight work), none requeued: still exactly 10.
    app.stop_consumers().await;
    assert_eq!(app.queue_counts(&app.names.refill_queue()).await.0, 0);
    assert_eq!(
        compute.with(|s| s.inserts.len()),
        10,
        "exactly the target was booted"
    );
    assert_eq!(compute.instances().len(), 10);
}

#[tokio::test]
async fn boots_run_in_parallel_up_to_the_boot_concurrency() {
    // Boots long enough to overlap however slowly keys are generated on a loaded machine.
    let compute = ComputeStandIn::start(Duration::from_secs(3)).await;
    let mut app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_BOOT_CONCURRENCY", "6")])
        .start()
        .await;
    app.seed(POOL, 9, &[]).await;
    app.start_refill().await;

    app.fill(POOL).await;

    app.wait_until_settled(POOL, 9).await;
    assert_eq!(
        compute.with(|s| s.peak_in_flight),
        6,
        "6 boots at once, never more"
    );
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_with_the_same_request_id() {
    let compute = ComputeStandIn::start(BOOT).await;
    compute.with(|s| s.insert_faults.extend([429, 503]));
    let mut app = TestApp::builder().gce(&compute).start().await;
    app.seed(POOL, 1, &[]).await;
    app.start_refill().await;

    app.fill(POOL).await;

    app.wait_until_settled(POOL, 1).await;
    let calls = compute.with(|s| s.insert_calls.clone());
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|id| *id == calls[0]), "{calls:?}");
    assert_eq!(compute.instances().len(), 1);
}

#[tokio::test]
async fn a_stockout_in_one_zone_falls_back_to_another() {
    let compute = ComputeStandIn::start(BOOT).await;
    compute.with(|s| s.stockout_zones.insert("us-central1-a".into()));
    let mut app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_GOOGLE_CLOUD_ZONES", "us-central1-a,us-central1-b")])
        .start()
        .await;
    app.seed(POOL, 3, &[]).await;
    app.start_refill().await;

    app.fill(POOL).await;

    app.wait_until_settled(POOL, 3).await;
    let zones: Vec<Value> = app
        .entries(POOL)
        .await
        .iter()
        .map(|e| e["zone"].clone())
        .collect();
    assert_eq!(zones, vec![json!("us-central1-b"); 3]);
    assert!(
        compute.with(|s| s.inserts.iter().any(|i| i.zone == "us-central1-a")),
        "zone a was tried"
    );
}

#[tokio::test]
async fn an_operation_that_never_finishes_ends_as_a_deleted_orphan() {
    let compute = ComputeStandIn::start(BOOT).await;
    compute.with(|s| s.never_finish = true);
    let mut app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_VM_CREATION_TIMEOUT", "2")])
        .start()
        .await;
    app.seed(POOL, 1, &[]).await;
    let mut orphaned = app.listen("instance.orphaned").await;
    let mut deleted = app.listen("instance.deleted").await;
    app.start_refill().await;

    app.fill(POOL).await;

    let orphan = orphaned.next().await;
    assert_eq!(orphan["reason"], "boot_failed");
    assert_eq!(deleted.next().await["instance"], orphan["instance"]);
    assert_eq!(
        compute.with(|s| s.deleted.clone()),
        [orphan["instance"].as_str().unwrap()]
    );
    assert!(compute.instances().is_empty());
    assert_eq!(app.booting(POOL).await, 0);
    assert!(
        app.orphaned().await.is_empty(),
        "deleted orphans are forgotten"
    );
}

#[tokio::test]
async fn a_quota_error_stops_the_boots_and_is_reported() {
    let compute = ComputeStandIn::start(BOOT).await;
    compute.with(|s| s.quota_exhausted = true);
    let mut app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_BOOT_CONCURRENCY", "2")])
        .start()
        .await;
    app.seed(POOL, 5, &[]).await;
    let mut failed = app.listen("boot.failed").await;
    app.start_refill().await;

    app.fill(POOL).await;

    for event in failed.take(2).await {
        assert_eq!(event["kind"], "quota");
        assert!(event["error"].as_str().unwrap().contains("QUOTA_EXCEEDED"));
    }
    app.wait_until_settled(POOL, 0).await;
    assert_eq!(
        compute.with(|s| s.insert_calls.len()),
        2,
        "no retry after a quota error"
    );
}

#[tokio::test]
async fn lowering_a_target_deletes_the_surplus() {
    let compute = ComputeStandIn::start(BOOT).await;
    let mut app = TestApp::builder().gce(&compute).start().await;
    app.seed(POOL, 3, &[]).await;
    app.start_refill().await;
    app.fill(POOL).await;
    app.wait_until_settled(POOL, 3).await;
    let youngest = app.pool_vms(POOL).await[2].clone();
    let mut deleted = app.listen("instance.deleted").await;

    operator::pool_set(&app.ctx, &POOL.parse().unwrap(), 1)
        .await
        .unwrap();
    app.fill(POOL).await;

    let events = deleted.take(2).await;
    assert!(events.iter().all(|e| e["reason"] == "surplus"));
    assert_eq!(app.pool_vms(POOL).await, std::slice::from_ref(&youngest));
    assert_eq!(
        compute.instances().into_iter().collect::<Vec<_>>(),
        [youngest]
    );
}

#[tokio::test]
async fn deleting_a_pool_deletes_its_vms() {
    let compute = ComputeStandIn::start(BOOT).await;
    let mut app = TestApp::builder().gce(&compute).start().await;
    app.seed(POOL, 2, &[]).await;
    app.start_refill().await;
    app.fill(POOL).await;
    app.wait_until_settled(POOL, 2).await;
    let mut deleted = app.listen("instance.deleted").await;

    operator::pool_delete(&app.ctx, &POOL.parse().unwrap())
        .await
        .unwrap();
    operator::fill(&app.ctx, None, None).await.unwrap();

    deleted.take(2).await;
    assert!(compute.instances().is_empty());
    assert!(app.orphaned().await.is_empty());
}

#[tokio::test]
async fn the_worker_can_decrypt_the_key_and_it_matches_the_vms_metadata() {
    let compute = ComputeStandIn::start(BOOT).await;
    let mut app = TestApp::builder().gce(&compute).start().await;
    app.seed(POOL, 1, &[]).await;
    app.start_refill().await;
    app.start_consumer().await;
    app.fill(POOL).await;
    app.wait_until_settled(POOL, 1).await;

    let reply = app.checkout().await;

    let pem = reply["ssh_private_key"].as_str().unwrap();
    assert!(pem.starts_with(
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,"
    ));
    let dir = std::env::temp_dir().join(format!("warmer-key-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("id_rsa");
    std::fs::write(&key, pem).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let derived = std::process::Command::new("ssh-keygen")
        .args(["-y", "-P", PASSPHRASE, "-f"])
        .arg(&key)
        .output()
        .unwrap();
    let wrong = std::process::Command::new("ssh-keygen")
        .args(["-y", "-P", "not the passphrase", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        derived.status.success(),
        "{}",
        String::from_utf8_lossy(&derived.stderr)
    );
    assert!(!wrong.status.success());
    let public = String::from_utf8(derived.stdout).unwrap();
    let metadata = compute.with(|s| {
        s.instances[reply["name"].as_str().unwrap()]["metadata"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["key"] == "ssh-keys")
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string()
    });
    let metadata_key = metadata.strip_prefix("travis:").unwrap();
    assert_eq!(
        metadata_key.split_whitespace().take(2).collect::<Vec<_>>(),
        public.split_whitespace().take(2).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_fill_command_without_a_valid_token_is_dead_lettered_and_boots_nothing() {
    let compute = ComputeStandIn::start(BOOT).await;
    let prefix = fresh_prefix();
    let operator_user = BrokerUser::create(&warmer::permissions(
        warmer::Role::Operator,
        &warmer::Names::new(&prefix, &prefix),
    ))
    .await;
    let mut app = TestApp::builder()
        .prefix(&prefix)
        .gce(&compute)
        .envs(&[("WARMER_AUTH_TOKENS", "ops-token-1,ops-token-2")])
        .start()
        .await;
    app.seed(POOL, 1, &[]).await;
    let mut dead = app.dead_letters().await;
    app.start_refill().await;
    // An operator with a broker user of its own: its fills must prove a token.
    let as_operator = app.context_as(&operator_user.url()).await;

    operator::fill(&as_operator, Some(&POOL.parse().unwrap()), Some("guessed"))
        .await
        .unwrap();

    let letter = within("a dead letter", futures_lite::StreamExt::next(&mut dead))
        .await
        .unwrap()
        .unwrap();
    let command: Value = serde_json::from_slice(&letter.data).unwrap();
    assert_eq!(command["command"], "fill");
    assert!(compute.with(|s| s.insert_calls.is_empty()));

    operator::fill(
        &as_operator,
        Some(&POOL.parse().unwrap()),
        Some("ops-token-2"),
    )
    .await
    .unwrap();
    app.wait_until_settled(POOL, 1).await;
}

#[tokio::test]
async fn vms_that_finish_booting_after_the_target_was_lowered_are_deleted_not_pooled() {
    // Boots long enough that both are still in flight when the target drops.
    let compute = ComputeStandIn::start(Duration::from_secs(3)).await;
    let mut app = TestApp::builder().gce(&compute).start().await;
    app.seed(POOL, 2, &[]).await;
    let mut deleted = app.listen("instance.deleted").await;
    app.start_refill().await;
    app.fill(POOL).await;
    eventually("both boots to start", || async {
        compute.with(|s| s.inserts.len()) >= 2
    })
    .await;

    operator::pool_set(&app.ctx, &POOL.parse().unwrap(), 0)
        .await
        .unwrap();
    assert!(
        app.pool_vms(POOL).await.is_empty(),
        "both VMs are still booting"
    );

    let events = deleted.take(2).await;
    assert!(
        events.iter().all(|e| e["reason"] == "surplus"),
        "{events:?}"
    );
    app.wait_until_settled(POOL, 0).await;
    assert!(compute.instances().is_empty());
}

#[tokio::test]
async fn pools_short_at_the_same_moment_all_start_booting_at_once() {
    // Boots that outlast the test's wait: only a fair share of the slots can explain a boot in
    // every pool, not a slot freed by a finished boot.
    let compute = ComputeStandIn::start(Duration::from_secs(60)).await;
    let mut app = TestApp::builder()
        .gce(&compute)
        .envs(&[("WARMER_BOOT_CONCURRENCY", "8")])
        .start()
        .await;
    let pools: Vec<String> = (0..4).map(|i| format!("image-{i}:n1-standard-2")).collect();
    for pool in &pools {
        app.seed(pool, 1, &[]).await;
    }
    // Four fill commands wait in the queue, so a fresh consumer takes them all at once.
    for pool in &pools {
        app.fill(pool).await;
    }

    app.start_refill().await;

    eventually("a boot in every pool", || async {
        let mut booting = 0;
        for pool in &pools {
            booting += app.booting(pool).await.min(1);
        }
        booting == pools.len() as u64
    })
    .await;
    for pool in &pools {
        assert_eq!(app.booting(pool).await, 1, "{pool}: exactly its deficit");
    }
}

#[tokio::test]
async fn checkouts_send_one_refill_hint_per_pool_until_the_refill_consumer_looks() {
    let mut app = TestApp::builder()
        .env("WARMER_LOCAL_BOOT_DELAY", "100ms")
        .start()
        .await;
    let vms: Vec<Value> = (0..10).map(|i| vm(&format!("vm-{i}"))).collect();
    app.seed(POOL, 10, &vms).await;
    app.start_consumer().await;
    let mut dropped = app.listen("pool.dropped").await;

    for _ in 0..5 {
        assert!(app.checkout().await["name"].is_string());
    }

    // Every checkout is announced to listeners, but the refill queue holds one hint.
    assert_eq!(dropped.take(5).await.len(), 5);
    eventually("the hint to arrive", || async {
        app.queue_counts(&app.names.refill_queue()).await.0 == 1
    })
    .await;
    assert_eq!(app.take_refill_message().await, json!({"pool": POOL}));
    // The refill consumer clears the hint when it looks at the pool: the next checkout hints.
    app.fill(POOL).await;
    app.start_refill().await;
    app.wait_until_settled(POOL, 10).await;
    app.stop_consumers().await;
    app.start_consumer().await;
    assert!(app.checkout().await["name"].is_string());
    eventually("a new hint", || async {
        app.queue_counts(&app.names.refill_queue()).await.0 == 1
    })
    .await;
}
