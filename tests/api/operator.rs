//! Operator commands: pool targets, deletion without leaks, fill commands, status.

use serde_json::json;
use warmer::PoolName;
use warmer::operator;

use warmer_testkit::*;

#[tokio::test]
async fn pools_are_set_listed_and_deleted_without_leaking_their_vms() {
    let app = TestApp::builder().start().await;
    let pool: PoolName = POOL.parse().unwrap();

    operator::pool_set(&app.ctx, &pool, 3).await.unwrap();
    app.seed(POOL, 3, &[vm("a"), vm("b")]).await;
    assert_eq!(
        operator::pool_list(&app.ctx, false).await.unwrap(),
        format!("POOL\tTARGET\tPOLICY\n{POOL}\t3\tstatic\n")
    );
    let listed: serde_json::Value =
        serde_json::from_str(&operator::pool_list(&app.ctx, true).await.unwrap()).unwrap();
    assert_eq!(listed, json!([{"pool": POOL, "target": 3, "policy": null}]));

    let deleted = operator::pool_delete(&app.ctx, &pool).await.unwrap();

    assert!(deleted.contains("2 warmed VM(s)"), "{deleted}");
    assert_eq!(app.orphaned().await, ["a", "b"]);
    assert!(app.pool_vms(POOL).await.is_empty());
    assert!(
        operator::pool_list(&app.ctx, false)
            .await
            .unwrap()
            .starts_with("(no pools: add one with")
    );
    let again = operator::pool_delete(&app.ctx, &pool).await.unwrap_err();
    assert!(again.to_string().contains("no pool"));
}

#[tokio::test]
async fn status_shows_target_ready_and_the_oldest_age() {
    let app = TestApp::builder().start().await;
    let mut old = vm("old");
    old["booted_at"] = json!(warmer::now_ms() / 1000 - 3 * 3600);
    app.seed(POOL, 5, &[old, vm("new")]).await;

    let status = operator::status(&app.ctx, &Default::default())
        .await
        .unwrap();

    let row: Vec<&str> = status.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, [POOL, "5", "-", "-", "static", "2", "0", "0", "3h"]);
}

#[tokio::test]
async fn status_without_pools_says_how_to_add_one() {
    let app = TestApp::builder().start().await;

    let status = operator::status(&app.ctx, &Default::default())
        .await
        .unwrap();

    assert!(status.contains("(no pools: add one with"), "{status}");
}

#[tokio::test]
async fn a_fill_command_reaches_the_refill_queue() {
    let app = TestApp::builder().start().await;
    let pool: PoolName = POOL.parse().unwrap();
    app.seed(POOL, 1, &[]).await;

    operator::fill(&app.ctx, Some(&pool), Some("tok"))
        .await
        .unwrap();
    operator::fill(&app.ctx, None, None).await.unwrap();

    let bodies = [
        app.take_refill_message().await,
        app.take_refill_message().await,
    ];
    // Signed with the token, which is not in it.
    let signed = &bodies[0];
    assert_eq!(
        (&signed["command"], &signed["pool"]),
        (&json!("fill"), &json!(POOL))
    );
    assert!(
        signed["issued_at"]
            .as_u64()
            .is_some_and(|at| at <= warmer::now_ms())
    );
    assert_eq!(signed["signature"].as_str().map(str::len), Some(64));
    assert!(!signed.to_string().contains("tok\""), "{signed}");
    assert_eq!(signed.as_object().map(|o| o.len()), Some(4));
    assert_eq!(bodies[1], json!({"command": "fill"}));
}

#[tokio::test]
async fn warmer_dev_hands_out_a_vm_and_refills_the_pool() {
    let app = TestApp::builder()
        .envs(&[
            ("WARMER_LOCAL_BOOT_DELAY", "100ms"),
            ("WARMER_RECONCILE_INTERVAL", "1"),
            ("PORT", "0"), // its web server on any free port
        ])
        .start()
        .await;
    let mut booted = app.listen("instance.booted").await;
    let (trigger, shutdown) = warmer::shutdown::channel();
    let dev = tokio::spawn(warmer::dev::run(app.ctx.clone(), shutdown));
    for _ in 0..3 {
        booted.next().await; // the example pool fills to its target of 3
    }

    let request = operator::Request {
        image: "warmer-example-image".into(),
        machine_type: "n1-standard-1".into(),
        public_ip: false,
        site: None,
        timeout: std::time::Duration::from_secs(10),
    };
    let (reply, is_error) = operator::request(&app.ctx, &request).await.unwrap();

    assert!(!is_error, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert!(
        reply["ssh_private_key"]
            .as_str()
            .unwrap()
            .contains("Proc-Type: 4,ENCRYPTED")
    );
    assert_ne!(
        booted.next().await["instance"],
        reply["name"],
        "a replacement boots"
    );
    trigger.fire();
    within("warmer dev to stop", dev).await.unwrap().unwrap();
}

#[tokio::test]
async fn commands_naming_a_pool_that_does_not_exist_refuse_it_and_name_the_closest() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[]).await;
    let typo: PoolName = POOL
        .replace("n1-standard-2", "n1-standard-3")
        .parse()
        .unwrap();
    let unknown: PoolName = "nope:n1-standard-1".parse().unwrap();
    let suggests = |error: anyhow::Error| {
        let error = error.to_string();
        assert!(error.contains(&format!("no pool {typo}")), "{error}");
        assert!(error.contains(&format!("did you mean {POOL}?")), "{error}");
    };
    let deadline = std::time::Duration::from_secs(1800);

    suggests(
        operator::fill(&app.ctx, Some(&typo), None)
            .await
            .unwrap_err(),
    );
    suggests(operator::pool_delete(&app.ctx, &typo).await.unwrap_err());
    suggests(
        operator::pool_rollover(&app.ctx, &typo, &unknown, deadline)
            .await
            .unwrap_err(),
    );
    let policy = warmer::policy::Policy {
        min: 1,
        max: 4,
        adaptive: false,
        hit: 0.99,
        schedules: Vec::new(),
    };
    suggests(
        operator::pool_policy(&app.ctx, &typo, Some(&policy))
            .await
            .unwrap_err(),
    );
    let far = operator::fill(&app.ctx, Some(&unknown), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        far.contains("no pool nope:n1-standard-1") && !far.contains("did you mean"),
        "{far}"
    );
    assert_eq!(
        app.queue_counts(&app.names.refill_queue()).await.0,
        0,
        "no fill published for a pool that does not exist"
    );
    assert_eq!(
        operator::pool_list(&app.ctx, false).await.unwrap(),
        format!("POOL\tTARGET\tPOLICY\n{POOL}\t2\tstatic\n")
    );
}

#[tokio::test]
async fn a_pool_in_a_rollover_in_progress_cannot_be_deleted_resized_or_given_a_policy() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("a")]).await;
    let pool: PoolName = POOL.parse().unwrap();
    let new: PoolName = POOL.replace("trusty", "xenial").parse().unwrap();
    operator::pool_rollover(&app.ctx, &pool, &new, std::time::Duration::from_secs(1800))
        .await
        .unwrap();

    let policy = warmer::policy::Policy {
        min: 0,
        max: 4,
        adaptive: true,
        hit: 0.99,
        schedules: Vec::new(),
    };
    for either in [&pool, &new] {
        let errors = [
            operator::pool_delete(&app.ctx, either).await.unwrap_err(),
            operator::pool_set(&app.ctx, either, 7).await.unwrap_err(),
            operator::pool_policy(&app.ctx, either, Some(&policy))
                .await
                .unwrap_err(),
        ];
        for error in errors.map(|e| e.to_string()) {
            assert!(
                error.contains(&format!("the rollover {pool} -> {new} in progress")),
                "{error}"
            );
        }
    }
    assert_eq!(
        operator::pool_list(&app.ctx, false).await.unwrap(),
        format!("POOL\tTARGET\tPOLICY\n{POOL}\t2\tstatic\n{new}\t2\tstatic\n"),
        "nothing changed"
    );
    assert_eq!(app.pool_vms(POOL).await, ["a"], "nothing deleted");
    assert!(app.orphaned().await.is_empty());
}

#[tokio::test]
async fn status_says_whether_a_reconciler_is_active_when_it_last_passed_and_what_waits() {
    let app = TestApp::builder().start().await;
    app.seed(POOL, 1, &[vm("a")]).await;
    let row = |status: &str| -> Vec<String> {
        let line = status.lines().find(|l| l.starts_with(POOL)).unwrap();
        line.split_whitespace().map(String::from).collect()
    };

    let status = operator::status(&app.ctx, &Default::default())
        .await
        .unwrap();
    assert!(
        status.contains("RECONCILER: NONE ACTIVE (no successful pass recorded)"),
        "{status}"
    );

    // An active one that has passed: named, with its last pass.
    let reconciler = app.reconciler().await;
    let ttl = std::time::Duration::from_secs(60);
    assert!(app.ctx.store.lock(reconciler.owner(), ttl).await.unwrap());
    let policy = |min| warmer::policy::Policy {
        min,
        max: 4,
        adaptive: false,
        hit: 0.99,
        schedules: Vec::new(),
    };
    let pool: PoolName = POOL.parse().unwrap();
    operator::pool_policy(&app.ctx, &pool, Some(&policy(2)))
        .await
        .unwrap();
    reconciler.pass(Some(&app.broker().await)).await.unwrap();
    let status = operator::status(&app.ctx, &Default::default())
        .await
        .unwrap();
    let active = format!(
        "RECONCILER {}: active, last successful pass ",
        reconciler.owner()
    );
    assert!(status.contains(&active), "{status}");
    assert!(
        reconciler
            .owner()
            .contains(&format!("pid {}", std::process::id()))
    );
    assert_eq!(row(&status)[4], "min");

    // A new policy is "pending" until a pass decides under it.
    operator::pool_policy(&app.ctx, &pool, Some(&policy(3)))
        .await
        .unwrap();
    assert_eq!(
        row(&operator::status(&app.ctx, &Default::default())
            .await
            .unwrap())[4],
        "pending"
    );

    // None active again: said so, with the last pass there was.
    app.ctx.store.unlock(reconciler.owner()).await.unwrap();
    let status = operator::status(&app.ctx, &Default::default())
        .await
        .unwrap();
    assert!(
        status.contains("RECONCILER: NONE ACTIVE (last successful pass "),
        "{status}"
    );

    // The brake with its count, and orphans awaiting deletion.
    app.ctx
        .store
        .engage_brake(25, 10, warmer::now_ms() / 1000)
        .await
        .unwrap();
    app.push_orphan_record(&json!({"name": "gone-1", "zone": "us-central1-c"}))
        .await;
    let status = operator::status(&app.ctx, &Default::default())
        .await
        .unwrap();
    assert!(
        status.contains("SAFETY BRAKE ON: 25 VMs labelled for this deployment are unaccounted for"),
        "{status}"
    );
    assert!(
        status.contains("ORPHANS: 1 VMs recorded for deletion"),
        "{status}"
    );

    // Whoever can write the lock's key cannot put control characters on the terminal.
    let _: () = redis::AsyncCommands::set(
        &mut app.redis.clone(),
        app.names.reconciler_lock(),
        "evil\u{1b}[2J",
    )
    .await
    .unwrap();
    let status = operator::status(&app.ctx, &Default::default())
        .await
        .unwrap();
    assert!(!status.contains('\u{1b}'), "{status:?}");
    assert!(
        status.contains(r"RECONCILER evil\u{1b}[2J: active"),
        "{status}"
    );
}

#[tokio::test]
async fn status_filters_pools_by_a_glob_totals_them_and_says_the_same_in_json() {
    let app = TestApp::builder().checkout_consumers(1).start().await;
    app.seed("ubuntu-a:n1-standard-2", 3, &[vm("a1"), vm("a2")])
        .await;
    app.seed("ubuntu-b:n1-standard-2", 2, &[vm("b1")]).await;
    app.seed("debian-c:n1-standard-2", 4, &[vm("c1")]).await;
    app.wait_for_consumers(1).await;
    let ubuntu = operator::StatusOptions {
        pool: Some("ubuntu-*".into()),
        ..Default::default()
    };

    let text = operator::status(&app.ctx, &ubuntu).await.unwrap();

    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("ubuntu-")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(!text.contains("debian-c"), "{text}");
    let total = text.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    assert_eq!(
        total.split_whitespace().collect::<Vec<_>>(),
        ["TOTAL", "(2", "pools)", "5", "3", "0", "0"]
    );
    assert!(
        text.contains("FLEET: 4 of WARMER_MAX_VMS 200 VMs"),
        "every pool: {text}"
    );
    let checkout = format!(
        "QUEUE {}: 0 ready, 1 consumers\n",
        app.names.checkout_queue()
    );
    assert!(text.contains(&checkout), "{text}");
    assert!(
        text.contains(&format!(
            "DEAD LETTERS: 0 in {}",
            app.names.dead_letter_queue()
        )),
        "{text}"
    );

    let json = operator::StatusOptions {
        json: true,
        ..ubuntu.clone()
    };
    let report: serde_json::Value =
        serde_json::from_str(&operator::status(&app.ctx, &json).await.unwrap()).unwrap();
    assert_eq!(report["pools"].as_array().unwrap().len(), 2);
    assert_eq!(report["pools"][0]["pool"], "ubuntu-a:n1-standard-2");
    assert_eq!(report["pools"][0]["why"], "static");
    assert_eq!(
        report["totals"],
        json!({"pools": 2, "target": 5, "ready": 3, "booting": 0, "handed_out": 0})
    );
    assert_eq!(report["fleet"], json!({"vms": 4, "max_vms": 200}));
    assert_eq!(report["reconciler"]["owner"], serde_json::Value::Null);
    let queues = report["queues"].as_array().unwrap();
    let checkout = queues.iter().find(|q| q["process"] == "checkout").unwrap();
    assert_eq!(
        (checkout["consumers"].as_u64(), checkout["state"].as_str()),
        (Some(1), Some("ok"))
    );

    let none = operator::StatusOptions {
        pool: Some("nope-*".into()),
        color: true,
        ..Default::default()
    };
    let text = operator::status(&app.ctx, &none).await.unwrap();
    assert!(text.contains("(no pool matches `nope-*`)"), "{text}");
    assert!(
        text.contains("RECONCILER: \u{1b}[1;31mNONE ACTIVE\u{1b}[0m"),
        "{text}"
    );
}
