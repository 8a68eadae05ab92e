//! Attacks by someone with ordinary access: a worker's broker credentials, or one Redis record
//! written. Each test is the attack; it passes when the attack gets nothing.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use warmer::now_ms;

use warmer_testkit::compute::ComputeStandIn;
use warmer_testkit::*;

const ZONE: &str = "us-central1-a";

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
        app.push_orphan_record(&record).await;
    }

    // Both deleters: the refill consumer's (no listing: each VM looked up) and a reconcile pass.
    app.start_refill().await;
    warmer::operator::fill(&app.ctx, None, None).await.unwrap(); // wakes the refill consumer's deleter
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
    let policy: warmer::policy::Policy =
        serde_json::from_value(json!({"min": 1, "max": 7, "adaptive": true, "hit": 0.99})).unwrap();
    let refused = warmer::operator::pool_policy(&app.ctx, &pool, Some(&policy))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("--max 7"), "{refused}");
}

/// A user per role, with exactly the permissions `warmer permissions` prints for `names`.
async fn role_users(names: &warmer::Names) -> [BrokerUser; 3] {
    let mut users = Vec::new();
    for role in warmer::Role::ALL {
        users.push(BrokerUser::create(&warmer::permissions(role, names)).await);
    }
    users.try_into().unwrap_or_else(|_| unreachable!())
}

/// Whether the broker refused `what` on a fresh channel of `connection` with ACCESS_REFUSED.
async fn access_refused<T>(
    connection: &lapin::Connection,
    what: impl AsyncFnOnce(&lapin::Channel) -> lapin::Result<T>,
) -> bool {
    let channel = connection.create_channel().await.unwrap();
    match what(&channel).await {
        Ok(_) => false,
        Err(error) => error.to_string().contains("ACCESS_REFUSED"),
    }
}

#[tokio::test]
async fn under_least_privilege_users_a_worker_can_check_out_and_nothing_else() {
    let prefix = fresh_prefix();
    let names = warmer::Names::new(&prefix, &prefix);
    let [worker, operator, service] = role_users(&names).await;
    let token = "ops-token-4f1c";
    let mut app = TestApp::builder()
        .prefix(&prefix)
        .amqp_url(&service.url())
        .envs(&[
            ("WARMER_AUTH_TOKENS", token),
            ("WARMER_LOCAL_BOOT_DELAY", "50ms"),
        ])
        .start()
        .await;
    app.seed(POOL, 1, &[]).await;
    let mut dead = app.dead_letters().await;
    // Warmer's processes, as the service user: they declare, consume and publish all they need.
    app.start_consumer().await;
    app.start_refill().await;
    let as_worker = lapin::Connection::connect(&worker.url(), Default::default())
        .await
        .unwrap();

    // A worker reads none of warmer's queues: no request of another job, no fill, no dead letter.
    for queue in [
        names.checkout_queue(),
        names.refill_queue(),
        names.dead_letter_queue(),
    ] {
        let consume = async |channel: &lapin::Channel| {
            channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    Default::default(),
                    Default::default(),
                )
                .await
        };
        assert!(
            access_refused(&as_worker, consume).await,
            "consuming {queue}"
        );
    }
    // It cannot declare a queue to listen to events either.
    let declare = async |channel: &lapin::Channel| {
        channel
            .queue_declare("".into(), Default::default(), Default::default())
            .await
    };
    assert!(access_refused(&as_worker, declare).await);

    // Fills and hints it publishes boot nothing and are dead-lettered, without a token in them;
    // it cannot pass for warmer's own user.
    let publisher = warmer::Publisher::open(&as_worker).await.unwrap();
    for body in [
        json!({"command": "fill", "pool": POOL}),
        json!({"command": "fill", "pool": POOL, "token": "guessed-token"}),
        json!({"pool": POOL}),
    ] {
        publisher
            .publish(
                "",
                &names.refill_queue(),
                body.to_string().as_bytes(),
                warmer::json_properties(),
            )
            .await
            .unwrap();
    }
    let forged = publisher
        .publish(
            "",
            &names.refill_queue(),
            json!({"command": "fill"}).to_string().as_bytes(),
            warmer::json_properties().with_user_id(service.name.as_str().into()),
        )
        .await;
    assert!(
        forged.is_err_and(|e| format!("{e:#}").contains("PRECONDITION_FAILED")),
        "the broker vouches for user_id"
    );
    for _ in 0..3 {
        let letter = within("a dead letter", futures_lite::StreamExt::next(&mut dead))
            .await
            .unwrap()
            .unwrap();
        let body = String::from_utf8_lossy(&letter.data).into_owned();
        assert!(!body.contains("guessed-token"), "{body}");
    }
    let cloud = app.cloud().await;
    assert!(
        cloud.list(&prefix).await.unwrap().is_empty(),
        "nothing booted"
    );

    // An operator's fill, signed with a token it never sends, boots the pool.
    let as_operator = app.context_as(&operator.url()).await;
    warmer::operator::fill(&as_operator, Some(&POOL.parse().unwrap()), Some(token))
        .await
        .unwrap();
    app.wait_until_settled(POOL, 1).await;
    let status = warmer::operator::status(&as_operator, &Default::default())
        .await
        .unwrap();
    assert!(status.contains(POOL), "{status}");

    // And what a worker is for works: a checkout.
    let mut requester = Requester::new(&as_worker, &names).await;
    let reply = requester.send(TRAVIS_REQUEST.as_bytes()).await;
    assert!(reply["name"].is_string(), "{reply}");

    // The reconciler, as the service user, publishes its events and fills.
    let as_service = lapin::Connection::connect(&service.url(), Default::default())
        .await
        .unwrap();
    let broker = warmer::reconcile::Broker::open(&as_service, &names)
        .await
        .unwrap();
    app.reconciler().await.pass(Some(&broker)).await.unwrap();
}

#[tokio::test]
async fn warmer_check_says_when_its_broker_user_may_do_more_than_warmer_needs() {
    let prefix = fresh_prefix();
    let names = warmer::Names::new(&prefix, &prefix);
    let service = BrokerUser::create(&warmer::permissions(warmer::Role::Service, &names)).await;
    let app = TestApp::builder().prefix(&prefix).start().await;
    let check = async |amqp_url: &str| {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_warmer"))
            .arg("check")
            .env_clear()
            .envs(&app.env)
            .env("WARMER_AMQP_URL", amqp_url)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output();
        let output = within("warmer check", output).await.unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };

    let narrow = check(&service.url()).await;
    let broad = check(amqp_url()).await;

    assert!(
        narrow.contains(&format!(
            "ok  permissions: broker user `{}` may do what warmer's processes need and no more",
            service.name
        )),
        "{narrow}"
    );
    assert!(
        broad.contains("warn permissions: broker user `guest` may also configure queues and exchanges that are not warmer's, publish to exchanges that are not warmer's, read queues that are not warmer's"),
        "{broad}"
    );
}

#[tokio::test]
async fn warmer_permissions_prints_the_permissions_the_tests_run_under() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_warmer"))
        .arg("permissions")
        .env_clear()
        .env("WARMER_AMQP_PREFIX", "ci.prod-1")
        .env("WARMER_AMQP_URL", "amqps://u:p@broker.example/ci-vhost")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let script = String::from_utf8(output.stdout).unwrap();
    let names = warmer::Names::new("ci.prod-1", "x");
    for role in warmer::Role::ALL {
        let p = warmer::permissions(role, &names);
        let line = format!(
            "rabbitmqctl set_permissions -p 'ci-vhost' 'ci.prod-1-{}' '{}' '{}' '{}'",
            role.name(),
            p.configure,
            p.write,
            p.read
        );
        assert!(script.contains(&line), "{line}\n{script}");
    }
    assert!(
        script.contains(r"'^ci\.prod\-1\.(checkout|refill|dead|events)$'"),
        "{script}"
    );
    assert!(
        script.contains("\"$API/permissions/ci-vhost/ci.prod-1-worker\""),
        "{script}"
    );
    assert!(!script.contains("u:p"), "no credential of the URL");
}

#[tokio::test]
async fn a_redis_certificate_is_verified_unless_it_is_heroku_redis_on_a_dyno() {
    let dir = std::env::temp_dir().join(format!("warmer-tls-{}", fresh_prefix()));
    let ours =
        warmer_testkit::tls::Certificates::generate(&dir.join("ours"), &["localhost", "127.0.0.1"]);
    let theirs =
        warmer_testkit::tls::Certificates::generate(&dir.join("theirs"), &["attacker.example"]);
    let redis = PrivateRedis::start_tls(&ours).await;
    let impostor = PrivateRedis::start_tls(&theirs).await;
    let url = |redis: &PrivateRedis| format!("rediss://127.0.0.1:{}/0", redis.port);
    let reaches = async |vars: &[(&str, String)]| {
        let vars = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain([
                ("WARMER_GOOGLE_CLOUD_PROJECT".into(), "p".into()),
                ("WARMER_GOOGLE_CLOUD_REGION".into(), "r".into()),
            ])
            .collect();
        let config = warmer::Config::from_vars(vars).expect("a configuration");
        match warmer::Context::new(config).await {
            Ok(ctx) => ctx.store.ping().await.is_ok(),
            Err(_) => false,
        }
    };
    let ca = ours.ca.to_string_lossy().into_owned();
    let their_ca = theirs.ca.to_string_lossy().into_owned();

    // Heroku's variable, off a dyno or for a host that is not Heroku's: verified, so refused.
    assert!(!reaches(&[("REDIS_URL", url(&redis))]).await);
    assert!(!reaches(&[("REDIS_URL", url(&redis)), ("DYNO", "web.1".into())]).await);
    assert!(!reaches(&[("WARMER_REDIS_URL", url(&redis))]).await);
    // With the authority that signed it: verified, and reached.
    assert!(
        reaches(&[
            ("REDIS_URL", url(&redis)),
            ("WARMER_REDIS_CA_FILE", ca.clone())
        ])
        .await
    );
    assert!(
        reaches(&[
            ("WARMER_REDIS_URL", url(&redis)),
            ("WARMER_REDIS_CA_FILE", ca)
        ])
        .await
    );
    // A certificate for another name is refused, whoever signed it.
    assert!(
        !reaches(&[
            ("WARMER_REDIS_URL", url(&impostor)),
            ("WARMER_REDIS_CA_FILE", their_ca)
        ])
        .await
    );
    let _ = std::fs::remove_dir_all(dir);
}
