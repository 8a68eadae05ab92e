//! Checkout: the request and reply, and guarantees 1, 2, 3 and 5.

use std::collections::HashSet;

use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use warmer::PoolName;
use warmer::{CheckoutStep, Swept, now_ms};

use warmer_testkit::*;

#[tokio::test]
async fn a_checkout_returns_the_oldest_warmed_vm_first() {
    let app = spawn_app().await;
    app.seed(POOL, 3, &[vm("vm-old"), vm("vm-mid"), vm("vm-new")])
        .await;

    let mut requester = app.requester().await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(requester.send(TRAVIS_REQUEST.as_bytes()).await["name"].clone());
    }

    assert_eq!(got, [json!("vm-old"), json!("vm-mid"), json!("vm-new")]);
    assert!(app.pool_vms(POOL).await.is_empty());
}

#[tokio::test]
async fn every_request_shape_of_the_travis_worker_reaches_its_pool() {
    let app = spawn_app().await;
    app.seed(POOL, 4, &[vm("a"), vm("b"), vm("c")]).await;
    app.seed(&format!("{POOL}:public"), 1, &[vm("public-1")])
        .await;

    let shapes = [
        TRAVIS_REQUEST.to_string(),
        json!({"image_name": "travis-ci-garnet-trusty-1503417006", "machine_type": "n1-standard-2", "public_ip": "false"}).to_string(),
        json!({"image_name": "projects/p/global/images/travis-ci-garnet-trusty-1503417006",
               "machine_type": "zones/us-central1-c/machineTypes/n1-standard-2".replace("zones", "projects/p/zones")}).to_string(),
        json!({"image_name": "travis-ci-garnet-trusty-1503417006", "machine_type": "n1-standard-2", "public_ip": "true", "site": "com"}).to_string(),
    ];
    let mut requester = app.requester().await;
    let mut got = Vec::new();
    for shape in &shapes {
        got.push(requester.send(shape.as_bytes()).await["name"].clone());
    }

    assert_eq!(got, [json!("a"), json!("b"), json!("c"), json!("public-1")]);
}

#[tokio::test]
async fn a_redis_written_by_travis_ci_warmer_is_served_with_short_zones() {
    let app = spawn_app().await;
    // Exactly what the Ruby service writes: a decimal target, entries with full-URL zones.
    let _: () = redis::cmd("HSET")
        .arg(app.names.pool_configs())
        .arg(POOL)
        .arg("2")
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    let legacy = r#"{"name":"travis-job-legacy","zone":"https://www.googleapis.com/compute/v1/projects/travis-ci-prod/zones/us-central1-c","ip":"10.10.42.86","public_ip":"34.1.2.3","ssh_private_key":"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nabc\n-----END RSA PRIVATE KEY-----\n"}"#;
    let _: () = redis::cmd("RPUSH")
        .arg(format!("{}:{POOL}", app.names.namespace()))
        .arg(legacy)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();

    let reply = app.checkout().await;

    let legacy: Value = serde_json::from_str(legacy).unwrap();
    assert_eq!(reply["name"], "travis-job-legacy");
    assert_eq!(reply["zone"], "us-central1-c");
    assert_eq!(reply["ip"], "10.10.42.86");
    assert_eq!(reply["public_ip"], "34.1.2.3");
    assert_eq!(reply["ssh_private_key"], legacy["ssh_private_key"]);
    let fields: HashSet<&str> = reply
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        HashSet::from(["name", "zone", "ip", "public_ip", "ssh_private_key"])
    );
}

#[tokio::test]
async fn an_unknown_pool_is_answered_no_pool() {
    let app = spawn_app().await;
    let reply = app.checkout().await;
    assert_eq!(reply["code"], "no_pool");
    assert_eq!(reply["error"], format!("no config found for pool {POOL}"));
}

#[tokio::test]
async fn an_empty_pool_is_answered_pool_empty_and_announced() {
    let app = spawn_app().await;
    app.seed(POOL, 2, &[]).await;
    let mut empty = app.listen("pool.empty").await;

    let reply = app.checkout().await;

    assert_eq!(reply["code"], "pool_empty");
    assert_eq!(
        reply["error"],
        format!("no instance available in pool {POOL}")
    );
    assert_eq!(empty.next().await, json!({"pool": POOL}));
}

#[tokio::test]
async fn each_checkout_publishes_a_pool_dropped_event() {
    let app = spawn_app().await;
    app.seed(POOL, 1, &[vm("vm-1")]).await;
    let mut dropped = app.listen("pool.dropped").await;

    app.checkout().await;

    assert_eq!(
        dropped.next().await,
        json!({"pool": POOL, "instance": "vm-1", "zone": "us-central1-c"})
    );
}

#[tokio::test]
async fn bad_input_gets_bad_request_and_pops_nothing() {
    let app = spawn_app().await;
    app.seed(POOL, 1, &[vm("untouchable")]).await;
    let long = "a".repeat(100 * 1024);
    let corpus: Vec<(String, &str)> = vec![
        ("{".into(), "not valid JSON"),
        ("".into(), "not valid JSON"),
        ("\u{0}\u{1}binary".into(), "not valid JSON"),
        ("[1,2]".into(), "JSON object"),
        ("null".into(), "JSON object"),
        (
            json!({"machine_type": "n1-standard-2"}).to_string(),
            "image_name is required",
        ),
        (
            json!({"image_name": "i"}).to_string(),
            "machine_type is required",
        ),
        (
            json!({"image_name": 5, "machine_type": "m"}).to_string(),
            "image_name must be a string",
        ),
        (
            json!({"image_name": "i", "machine_type": ["m"]}).to_string(),
            "machine_type must be a string",
        ),
        (
            json!({"image_name": "i", "machine_type": "m", "public_ip": 1}).to_string(),
            "public_ip",
        ),
        (
            json!({"image_name": "i", "machine_type": "m", "public_ip": "maybe"}).to_string(),
            "public_ip",
        ),
        (
            json!({"image_name": long, "machine_type": "m"}).to_string(),
            "bytes",
        ),
        (
            json!({"image_name": "img/evil", "machine_type": "m"}).to_string(),
            "image_name",
        ),
        (
            json!({"image_name": "../../etc/passwd", "machine_type": "m"}).to_string(),
            "image_name",
        ),
        (
            json!({"image_name": "projects/p/global/images/..", "machine_type": "m"}).to_string(),
            "image_name",
        ),
        (
            json!({"image_name": "im\u{0}g", "machine_type": "m"}).to_string(),
            "image_name",
        ),
        (
            json!({"image_name": "i", "machine_type": "n1:standard"}).to_string(),
            "machine_type",
        ),
        (
            json!({"image_name": "Travis", "machine_type": "m"}).to_string(),
            "image_name",
        ),
        (
            json!({"image_name": "i", "machine_type": "m", "zone": "../x"}).to_string(),
            "zone",
        ),
        (
            json!({"image_name": "i", "machine_type": "m", "site": 1}).to_string(),
            "site",
        ),
        (
            json!({"image_name": "i", "machine_type": "m", "priority": "high"}).to_string(),
            "unknown field `priority`",
        ),
    ];

    let mut requester = app.requester().await;
    for (body, expected) in &corpus {
        let reply = requester.send(body.as_bytes()).await;
        assert_eq!(reply["code"], "bad_request", "{body:.80}");
        let error = reply["error"].as_str().unwrap();
        assert!(
            error.contains(expected),
            "{error:?} should mention {expected:?}"
        );
    }

    assert_eq!(app.pool_vms(POOL).await, ["untouchable"]);
    assert!(app.leases().await.is_empty());
    // The consumer is still serving.
    assert_eq!(
        requester.send(TRAVIS_REQUEST.as_bytes()).await["name"],
        "untouchable"
    );
}

#[tokio::test]
async fn a_request_without_reply_to_is_dead_lettered_and_pops_nothing() {
    let app = spawn_app().await;
    app.seed(POOL, 1, &[vm("kept")]).await;
    let mut dead = app.dead_letters().await;
    let requester = app.requester().await;

    requester
        .publish(
            TRAVIS_REQUEST.as_bytes(),
            BasicProperties::default().with_correlation_id("no-reply".into()),
        )
        .await;

    let letter = within("a dead letter", futures_lite::StreamExt::next(&mut dead))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.data, TRAVIS_REQUEST.as_bytes());
    assert_eq!(
        letter
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "no-reply"
    );
    assert_eq!(app.pool_vms(POOL).await, ["kept"]);
}

#[tokio::test]
async fn many_requesters_on_several_consumers_never_share_a_vm() {
    const VMS: usize = 300;
    const REQUESTERS: usize = 32;
    const EACH: usize = 12; // 384 requests for 300 VMs: the pool runs dry on purpose
    let mut app = spawn_app().await;
    app.start_consumer().await;
    app.start_consumer().await;
    let vms: Vec<Value> = (0..VMS).map(|i| vm(&format!("vm-{i:04}"))).collect();
    app.seed(POOL, VMS as u32, &vms).await;

    let mut tasks = Vec::new();
    for _ in 0..REQUESTERS {
        let mut requester = app.requester().await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..EACH {
                got.push(requester.send(TRAVIS_REQUEST.as_bytes()).await);
            }
            got
        }));
    }
    let mut names = Vec::new();
    let mut empty = 0;
    for task in tasks {
        for reply in task.await.unwrap() {
            match reply["name"].as_str() {
                Some(name) => names.push(name.to_string()),
                None => {
                    assert_eq!(reply["code"], "pool_empty");
                    empty += 1;
                }
            }
        }
    }

    let distinct: HashSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "a VM was handed out twice");
    assert_eq!(names.len(), VMS, "every VM handed out once");
    assert_eq!(empty, REQUESTERS * EACH - VMS);
    assert!(app.pool_vms(POOL).await.is_empty());
}

/// The attack of a second connection that learnt another job's ids (by reading the checkout
/// queue, or from a log): it sends them again, with a reply address of its own.
#[tokio::test]
async fn a_request_replayed_with_another_jobs_ids_gets_neither_its_vm_nor_its_key() {
    let app = spawn_app().await;
    let mut victim = app.requester().await;
    let attacker_connection = lapin::Connection::connect(amqp_url(), Default::default())
        .await
        .unwrap();
    let mut attacker = Requester::new(&attacker_connection, &app.names).await;
    let by_message_id = Requester::properties().with_message_id("job-1234".into());
    let by_correlation_id = Requester::properties();

    for ids in [by_message_id, by_correlation_id] {
        app.seed(POOL, 1, &[vm("victims-vm")]).await;
        let served = victim
            .send_with(TRAVIS_REQUEST.as_bytes(), ids.clone())
            .await;
        assert_eq!(served["name"], "victims-vm");

        let replayed = attacker
            .send_with(TRAVIS_REQUEST.as_bytes(), ids.clone())
            .await;
        assert_eq!(replayed["code"], "pool_empty", "{replayed}");
        assert!(replayed.get("ssh_private_key").is_none());
        assert!(!replayed.to_string().contains("victims-vm"));
    }
}

/// The same attack with the victim's own reply address too (as a consumer of the checkout queue
/// sees it): the victim's lease is still not sent again, and nothing reaches the attacker.
#[tokio::test]
async fn a_replay_to_the_victims_reply_address_sends_the_victim_a_refusal_and_nothing_else() {
    let mut app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("victims-vm"), vm("other")]).await;
    let mut victim = app.requester().await;
    let ids = Requester::properties().with_message_id("job-1234".into());
    let correlation = ids.correlation_id().clone().unwrap();
    victim.publish(TRAVIS_REQUEST.as_bytes(), ids.clone()).await;
    // A consumer sees the victim's request (with its expanded reply address) and dies.
    let seen = app.crashed_consumer(POOL).await;
    app.start_consumer().await;
    assert_eq!(
        victim.reply_to(correlation.as_str()).await["name"],
        "victims-vm"
    );

    let attacker = app.requester().await;
    attacker
        .publish(
            TRAVIS_REQUEST.as_bytes(),
            ids.with_reply_to(seen.reply_to.clone()),
        )
        .await;

    let refusal = victim.reply_to(correlation.as_str()).await;
    assert_eq!(refusal["code"], "bad_request", "{refusal}");
    assert!(refusal["error"].as_str().unwrap().contains("already used"));
    assert_eq!(app.pool_vms(POOL).await, ["other"], "nothing popped");
    let leases = app.leases().await;
    assert_eq!(
        leases[&seen.identity],
        ("victims-vm".to_string(), "handed".to_string())
    );
    assert_eq!(leases.len(), 1);
}

#[tokio::test]
async fn a_request_sent_again_with_the_same_id_is_refused_not_given_the_vm_again() {
    let app = spawn_app().await;
    app.seed(POOL, 2, &[vm("first"), vm("second")]).await;
    let mut requester = app.requester().await;
    let properties = Requester::properties().with_message_id("request-1".into());

    let once = requester
        .send_with(TRAVIS_REQUEST.as_bytes(), properties.clone())
        .await;
    let again = requester
        .send_with(
            TRAVIS_REQUEST.as_bytes(),
            properties.with_correlation_id("retry".into()),
        )
        .await;

    assert_eq!(once["name"], "first");
    assert_eq!(again["code"], "bad_request");
    assert_eq!(app.pool_vms(POOL).await, ["second"]);
}

#[tokio::test]
async fn a_consumer_that_died_between_pop_and_reply_leaves_the_vm_to_the_redelivery() {
    let mut app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("popped"), vm("other")]).await;
    let mut requester = app.requester().await;
    let correlation = requester
        .publish_travis_request(Requester::properties().with_message_id("crashed-request".into()))
        .await;
    // The dead consumer's step: the pop happened, the reply never went out.
    let crashed = app.crashed_consumer(POOL).await;
    assert!(matches!(crashed.popped, CheckoutStep::Popped { .. }));
    assert_eq!(app.pool_vms(POOL).await, ["other"]);

    // The broker redelivers the request to a live consumer.
    app.start_consumer().await;

    assert_eq!(requester.reply_to(&correlation).await["name"], "popped");
    assert_eq!(
        app.pool_vms(POOL).await,
        ["other"],
        "no second VM was taken"
    );
    assert_eq!(
        app.leases().await[&crashed.identity],
        ("popped".into(), "handed".into())
    );
}

#[tokio::test]
async fn a_consumer_that_died_after_its_reply_leaves_the_same_vm_to_the_redelivery() {
    let mut app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("handed"), vm("other")]).await;
    let mut requester = app.requester().await;
    let correlation = requester
        .publish_travis_request(Requester::properties())
        .await;
    // It popped, replied (the reply is lost with the requester's patience: not read here),
    // settled the lease, and died before acking.
    let crashed = app.crashed_consumer(POOL).await;
    let settled = app
        .ctx
        .store
        .settle(&[warmer::ToSettle {
            identity: crashed.identity.clone(),
            pool: POOL.parse().unwrap(),
            keep_until: now_ms() + 3_600_000,
            deadline: crashed.deadline,
            wait: std::time::Duration::from_millis(5),
        }])
        .await
        .unwrap();
    assert_eq!(settled, [warmer::Settled::Now]);

    app.start_consumer().await;

    assert_eq!(requester.reply_to(&correlation).await["name"], "handed");
    assert_eq!(app.pool_vms(POOL).await, ["other"]);
}

#[tokio::test]
async fn a_lease_never_answered_becomes_an_orphan_not_a_pool_entry() {
    let app = spawn_app().await;
    app.seed(POOL, 2, &[vm("unknown-fate"), vm("other")]).await;
    let pool: PoolName = POOL.parse().unwrap();
    let now = now_ms();
    app.ctx
        .store
        .checkout(
            first_delivery("m:dead-lettered", now, now + 1, now + 2),
            &pool,
        )
        .await
        .unwrap();

    let swept = app.ctx.store.sweep_leases(now + 3).await.unwrap();

    assert_eq!(
        swept,
        Swept {
            pending: 1,
            handed: 0,
            stripped: 0
        }
    );
    assert_eq!(app.orphaned().await, ["unknown-fate"]);
    assert_eq!(app.pool_vms(POOL).await, ["other"]);
    assert!(app.leases().await.is_empty());
}

#[tokio::test]
async fn a_redelivery_after_the_deadline_orphans_the_vm_of_its_lease() {
    let mut app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("unknown-fate"), vm("other")]).await;
    let requester = app.requester().await;
    let deadline = now_ms() + 1_500;
    requester
        .publish(
            TRAVIS_REQUEST.as_bytes(),
            Requester::properties().with_headers(deadline_header(deadline)),
        )
        .await;
    let crashed = app.crashed_consumer(POOL).await;
    assert_eq!(crashed.deadline, deadline);
    let mut orphaned = app.listen("instance.orphaned").await;
    // Redelivered after its deadline: nothing is replied, the VM's fate is unknown.
    tokio::time::sleep(std::time::Duration::from_millis(
        deadline.saturating_sub(now_ms()) + 50,
    ))
    .await;
    app.start_consumer().await;

    assert_eq!(orphaned.next().await["instance"], "unknown-fate");
    assert_eq!(app.orphaned().await, ["unknown-fate"]);
    assert_eq!(app.pool_vms(POOL).await, ["other"]);
}

fn deadline_header(deadline_ms: u64) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-warmer-deadline".into(),
        lapin::types::AMQPValue::LongLongInt(deadline_ms as i64),
    );
    headers
}

#[tokio::test]
async fn a_request_past_its_deadline_pops_nothing() {
    let mut app = TestApp::builder().start().await;
    app.seed(POOL, 1, &[vm("kept")]).await;
    let mut requester = app.requester().await;
    let properties = Requester::properties()
        .with_timestamp(now_ms() / 1000 - 60)
        .with_expiration("60000".into())
        .with_message_id("expired".into());
    requester
        .publish(TRAVIS_REQUEST.as_bytes(), properties)
        .await;
    // A second, valid request behind it proves the first was handled.
    let marker = Requester::properties();
    let correlation = marker.correlation_id().clone().unwrap();
    requester
        .publish(
            json!({"image_name": "i", "machine_type": "m"})
                .to_string()
                .as_bytes(),
            marker,
        )
        .await;

    app.start_consumer().await;

    assert_eq!(
        requester.reply_to(correlation.as_str()).await["code"],
        "no_pool"
    );
    assert_eq!(app.pool_vms(POOL).await, ["kept"]);
    assert!(app.leases().await.is_empty());
}

#[tokio::test]
async fn a_reply_queue_that_is_gone_sends_the_vm_back_to_the_head() {
    let app = spawn_app().await;
    app.seed(POOL, 2, &[vm("oldest"), vm("younger")]).await;
    // An ordinary reply queue that existed when the request was sent, and is gone now.
    let queue = app.vanished_queue().await;
    let mut requester = app.requester().await;
    let mut returned = app.listen("instance.returned").await;

    requester
        .publish(
            TRAVIS_REQUEST.as_bytes(),
            Requester::properties().with_reply_to(queue.clone()),
        )
        .await;
    let event = returned.next().await;

    assert_eq!(event["instance"], "oldest");
    assert_eq!(event["reason"], "requester_gone");
    assert_eq!(app.pool_vms(POOL).await, ["oldest", "younger"]);
    let next = requester.send(TRAVIS_REQUEST.as_bytes()).await;

    assert_eq!(next["name"], "oldest", "the VM went back to the head");
    assert_eq!(app.pool_vms(POOL).await, ["younger"]);
}

#[tokio::test]
async fn a_direct_reply_to_requester_that_left_gets_nothing_and_its_vm_stays_first() {
    let mut app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("oldest"), vm("younger")]).await;
    {
        // A worker asks, then gives up and disconnects before anyone answers.
        let quitter = app.requester().await;
        quitter
            .publish(
                TRAVIS_REQUEST.as_bytes(),
                Requester::properties().with_timestamp(now_ms() / 1000 - 30),
            )
            .await;
        quitter.channel.close(200, "gave up".into()).await.unwrap();
    }
    let mut returned = app.listen("instance.returned").await;

    app.start_consumer().await;

    assert_eq!(returned.next().await["instance"], "oldest");
    assert_eq!(app.pool_vms(POOL).await, ["oldest", "younger"]);
    assert!(app.leases().await.is_empty(), "nothing was handed out");
    assert_eq!(app.checkout().await["name"], "oldest");
    assert!(app.orphaned().await.is_empty());
}

#[tokio::test]
async fn a_redis_fault_is_answered_internal_and_dead_lettered() {
    let app = spawn_app().await;
    app.seed(POOL, 1, &[]).await;
    // Something else wrote the pool's key with the wrong type: the pop fails in Redis.
    let _: () = redis::cmd("SET")
        .arg(app.names.pool(&POOL.parse().unwrap()))
        .arg("not a list")
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    let mut dead = app.dead_letters().await;

    let reply = app.checkout().await;

    assert_eq!(reply["code"], "internal");
    assert!(reply["error"].as_str().unwrap().contains("Redis"));
    let letter = within("a dead letter", futures_lite::StreamExt::next(&mut dead))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.data, TRAVIS_REQUEST.as_bytes());
}

#[tokio::test]
async fn a_request_that_keeps_failing_is_dead_lettered_after_the_delivery_limit() {
    let app = TestApp::builder().start().await;
    let requester = app.requester().await;
    requester
        .publish(
            TRAVIS_REQUEST.as_bytes(),
            Requester::properties().with_message_id("poison".into()),
        )
        .await;
    let mut dead = app.dead_letters().await;
    // A consumer that fails on it every time, as a crashing one would.
    let channel = app.amqp.create_channel().await.unwrap();
    let mut failing = channel
        .basic_consume(
            app.names.checkout_queue().as_str().into(),
            "failing".into(),
            lapin::options::BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut deliveries = 0;
    let letter = within("the poison message to be dead-lettered", async {
        loop {
            tokio::select! {
                letter = futures_lite::StreamExt::next(&mut dead) => return letter.unwrap().unwrap(),
                delivery = futures_lite::StreamExt::next(&mut failing) => {
                    deliveries += 1;
                    let delivery = delivery.unwrap().unwrap();
                    delivery
                        .nack(lapin::options::BasicNackOptions { requeue: true, multiple: false })
                        .await
                        .unwrap();
                }
            }
        }
    })
    .await;

    assert_eq!(
        letter.properties.message_id().as_ref().unwrap().as_str(),
        "poison"
    );
    assert_eq!(deliveries, warmer::DELIVERY_LIMIT as usize + 1);
}

#[tokio::test]
async fn a_redelivered_request_whose_requester_left_has_its_vm_deleted_not_reused() {
    let mut app = TestApp::builder().start().await;
    app.seed(POOL, 2, &[vm("maybe-delivered"), vm("other")])
        .await;
    // A consumer popped a VM for this request, may have replied, and died before acking.
    let quitter = app.requester().await;
    quitter
        .publish(TRAVIS_REQUEST.as_bytes(), Requester::properties())
        .await;
    app.crashed_consumer(POOL).await;
    // The redelivered request's requester has gone (perhaps with that reply).
    quitter.channel.close(200, "gone".into()).await.unwrap();
    let mut orphaned = app.listen("instance.orphaned").await;

    app.start_consumer().await;

    let event = orphaned.next().await;
    assert_eq!(event["instance"], "maybe-delivered");
    assert_eq!(event["reason"], "reply_unknown");
    assert_eq!(
        app.pool_vms(POOL).await,
        ["other"],
        "never back in the pool"
    );
    assert_eq!(app.orphaned().await, ["maybe-delivered"]);
}

#[tokio::test]
async fn a_request_without_any_id_is_refused_as_it_could_share_a_vm() {
    let app = spawn_app().await;
    app.seed(POOL, 1, &[vm("kept")]).await;
    let mut requester = app.requester().await;
    // Without message_id and correlation_id, every request of this channel would look alike.
    let properties = BasicProperties::default().with_reply_to(warmer::DIRECT_REPLY_TO.into());
    requester
        .publish(TRAVIS_REQUEST.as_bytes(), properties)
        .await;

    let reply = within("the refusal", async {
        let delivery = futures_lite::StreamExt::next(requester.replies_mut())
            .await
            .unwrap()
            .unwrap();
        serde_json::from_slice::<Value>(&delivery.data).unwrap()
    })
    .await;

    assert_eq!(reply["code"], "bad_request");
    assert!(reply["error"].as_str().unwrap().contains("correlation_id"));
    assert_eq!(app.pool_vms(POOL).await, ["kept"]);
}

#[tokio::test]
async fn a_given_back_vm_does_not_push_its_pool_over_target() {
    let app = spawn_app().await;
    app.seed(POOL, 1, &[vm("popped")]).await;
    let pool: PoolName = POOL.parse().unwrap();
    // While the request is served, its replacement has started booting.
    let _: () = redis::cmd("ZADD")
        .arg(app.names.booting(&pool))
        .arg(now_ms() + 60_000)
        .arg("replacement")
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    // An ordinary reply queue that existed when the request was sent, and is gone now.
    let queue = app.vanished_queue().await;
    let requester = app.requester().await;
    let mut orphaned = app.listen("instance.orphaned").await;

    requester
        .publish(
            TRAVIS_REQUEST.as_bytes(),
            Requester::properties().with_reply_to(queue.clone()),
        )
        .await;

    let event = orphaned.next().await;
    assert_eq!(event["instance"], "popped");
    assert_eq!(event["reason"], "surplus");
    assert!(
        app.pool_vms(POOL).await.is_empty(),
        "ready + booting stays at the target"
    );
}

#[tokio::test]
async fn a_timestamp_from_the_future_does_not_skip_the_presence_probe() {
    let mut app = TestApp::builder().start().await;
    app.seed(POOL, 1, &[vm("oldest")]).await;
    {
        let quitter = app.requester().await;
        quitter
            .publish(
                TRAVIS_REQUEST.as_bytes(),
                Requester::properties().with_timestamp(now_ms() / 1000 + 600),
            )
            .await;
        quitter.channel.close(200, "gave up".into()).await.unwrap();
    }
    let mut returned = app.listen("instance.returned").await;

    app.start_consumer().await;

    assert_eq!(returned.next().await["instance"], "oldest");
    assert_eq!(app.pool_vms(POOL).await, ["oldest"]);
}

/// The adversarial mix: direct reply-to requesters, requesters with a live reply queue of their
/// own and requesters whose reply queue is gone, all at once on three consumers, with events
/// flowing on the same broker. A reply that came back unroutable must be pinned on its own
/// request only: no VM reaches two requesters, and no VM of a gone requester stays leased.
#[tokio::test]
async fn mixed_reply_modes_under_load_never_share_a_vm_and_give_back_only_undelivered_ones() {
    const VMS: usize = 2_500;
    const PER_MODE: usize = 6;
    const EACH: usize = 100;
    let mut app = spawn_app().await;
    app.start_consumer().await;
    app.start_consumer().await;
    let vms: Vec<Value> = (0..VMS).map(|i| vm(&format!("vm-{i:04}"))).collect();
    app.seed(POOL, VMS as u32, &vms).await;

    let mut live = Vec::new();
    for i in 0..2 * PER_MODE {
        let mut requester = if i % 2 == 0 {
            app.requester().await
        } else {
            Requester::with_reply_queue(&app.amqp, &app.names).await
        };
        live.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..EACH {
                got.push(requester.send(TRAVIS_REQUEST.as_bytes()).await);
            }
            got
        }));
    }
    let mut gone = Vec::new();
    for _ in 0..PER_MODE {
        let requester = app.requester().await;
        let queue = app.vanished_queue().await;
        gone.push(tokio::spawn(async move {
            for _ in 0..EACH {
                let properties = Requester::properties().with_reply_to(queue.clone());
                requester
                    .publish(TRAVIS_REQUEST.as_bytes(), properties)
                    .await;
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut received = Vec::new();
    for task in live {
        for reply in task.await.unwrap() {
            let name = reply["name"].as_str();
            received.push(
                name.unwrap_or_else(|| panic!("not a VM: {reply}"))
                    .to_string(),
            );
        }
    }
    for task in gone {
        task.await.unwrap();
    }
    // Every request handled: nothing waits, and stopping drains whatever is in flight.
    app.wait_for_empty(&app.names.checkout_queue()).await;
    app.stop_consumers().await;

    let distinct: HashSet<&String> = received.iter().collect();
    assert_eq!(
        distinct.len(),
        received.len(),
        "{} VM(s) handed to two requests",
        received.len() - distinct.len()
    );
    let leases = app.leases().await;
    let pending: Vec<_> = leases.values().filter(|(_, s)| s != "handed").collect();
    assert!(pending.is_empty(), "leases left pending: {pending:?}");
    let handed: HashSet<&String> = leases.values().map(|(vm, _)| vm).collect();
    let stranded: Vec<_> = handed.difference(&distinct).collect();
    assert!(
        stranded.is_empty(),
        "VMs whose reply reached nobody are still leased as handed out: {stranded:?}"
    );
    assert_eq!(
        handed, distinct,
        "every delivered VM is leased as handed out"
    );
    // Conservation: every VM is in exactly one place.
    let pooled = app.pool_vms(POOL).await;
    let orphaned = app.orphaned().await;
    let mut everywhere: Vec<&String> = pooled.iter().chain(&orphaned).chain(handed).collect();
    everywhere.sort();
    let before = everywhere.len();
    everywhere.dedup();
    assert_eq!(before, everywhere.len(), "a VM is in two places");
    assert_eq!(everywhere.len(), VMS, "a VM went missing");
}

#[tokio::test]
async fn a_forged_direct_reply_to_name_pops_nothing_for_good() {
    let app = spawn_app().await;
    app.seed(POOL, 2, &[vm("oldest"), vm("younger")]).await;
    let requester = app.requester().await;
    let mut returned = app.listen("instance.returned").await;
    let forged = [
        "amq.rabbitmq.reply-to.forged",
        "amq.rabbitmq.reply-to.",
        "amq.rabbitmq.reply-to.g2dkABZyYWJiaXRAbG9jYWxob3N0AAAD6QAAAAAAAAAAAA==.bm90LWEta2V5",
    ];

    for name in forged {
        // Fresh, not redelivered: nothing about it but its name says the requester is not there.
        let properties = Requester::properties().with_reply_to(name.into());
        requester
            .publish(TRAVIS_REQUEST.as_bytes(), properties)
            .await;
        let event = returned.next().await;

        assert_eq!(event["instance"], "oldest", "{name}");
        assert_eq!(event["reason"], "requester_gone");
    }
    assert_eq!(app.pool_vms(POOL).await, ["oldest", "younger"]);
    assert!(app.leases().await.is_empty(), "nothing stays handed out");
    // A name the broker cannot resolve closes the connection that uses it: the probe's own,
    // never the consumer's, so nothing was requeued or dead-lettered on the way.
    assert_eq!(app.queue_counts(&app.names.dead_letter_queue()).await.0, 0);
    let mut worker = app.requester().await;
    assert_eq!(
        worker.send(TRAVIS_REQUEST.as_bytes()).await["name"],
        "oldest"
    );
}

#[tokio::test]
async fn a_deadline_sent_as_an_amqp_timestamp_is_read_as_seconds() {
    let app = spawn_app().await;
    app.seed(POOL, 1, &[vm("only")]).await;
    let mut requester = app.requester().await;
    let mut headers = FieldTable::default();
    headers.insert(
        "x-warmer-deadline".into(),
        lapin::types::AMQPValue::Timestamp(now_ms() / 1000 + 60),
    );

    let reply = requester
        .send_with(
            TRAVIS_REQUEST.as_bytes(),
            requester.fresh_properties().with_headers(headers),
        )
        .await;

    assert_eq!(
        reply["name"], "only",
        "a minute ahead, not in 1970: {reply}"
    );
}

#[tokio::test]
async fn a_deadline_of_an_unusable_type_or_unit_is_answered_bad_request() {
    let app = spawn_app().await;
    app.seed(POOL, 1, &[vm("kept")]).await;
    let mut requester = app.requester().await;
    let seconds = (now_ms() / 1000 + 60) as i64;
    for value in [
        lapin::types::AMQPValue::Double(now_ms() as f64 + 60_000.0),
        lapin::types::AMQPValue::LongLongInt(seconds),
        lapin::types::AMQPValue::LongString("in a minute".into()),
    ] {
        let mut headers = FieldTable::default();
        headers.insert("x-warmer-deadline".into(), value.clone());

        let reply = requester
            .send_with(
                TRAVIS_REQUEST.as_bytes(),
                requester.fresh_properties().with_headers(headers),
            )
            .await;

        assert_eq!(reply["code"], "bad_request", "{value:?}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains("x-warmer-deadline"), "{error}");
    }
    assert_eq!(app.pool_vms(POOL).await, ["kept"]);
}
