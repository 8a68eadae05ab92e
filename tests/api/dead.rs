//! `warmer dead list | requeue | purge`: dead letters made by the broker itself and written as
//! it writes them, shown without secrets, read any number of times without loss, put back where
//! they died, and purged.

use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use warmer::dead_letters::{self, Selection};

use warmer_testkit::*;

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// The headers RabbitMQ writes on a message it dead-letters from `queue` for `reason`, now.
fn died_in(queue: &str, reason: &str) -> FieldTable {
    let mut death = FieldTable::default();
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    death.insert("exchange".into(), long(""));
    death.insert("queue".into(), long(queue));
    death.insert("reason".into(), long(reason));
    death.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(vec![long(queue)].into()),
    );
    death.insert("time".into(), AMQPValue::Timestamp(warmer::now_ms() / 1000));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    headers.insert("x-first-death-exchange".into(), long(""));
    headers.insert("x-first-death-queue".into(), long(queue));
    headers.insert("x-first-death-reason".into(), long(reason));
    headers
}

/// A checkout request's properties as they reach a consumer: its direct reply-to address
/// expanded to the requester's channel (RabbitMQ refuses the bare one from a publisher that does
/// not consume it).
fn request_properties(id: &str) -> BasicProperties {
    Requester::properties()
        .with_reply_to("amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAAAAAAAAAAAAAAA==".into())
        .with_message_id(id.into())
}

/// A checkout request whose requester waits 10 more minutes.
fn waiting_request(id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-warmer-deadline".into(),
        AMQPValue::LongLongInt((warmer::now_ms() + 600_000) as i64),
    );
    request_properties(id).with_headers(headers)
}

/// `properties` with `more` headers added.
fn with_headers(properties: BasicProperties, more: FieldTable) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in more.inner() {
        headers.insert(name.clone(), value.clone());
    }
    properties.with_headers(headers)
}

/// Publishes a dead letter straight into the dead queue, as RabbitMQ's dead-lettering or the
/// refill consumer would, and waits for the broker's confirm.
async fn bury(app: &TestApp, body: &[u8], properties: BasicProperties) {
    app.publisher()
        .await
        .publish("", &app.names.dead_letter_queue(), body, properties)
        .await
        .expect("a dead letter published");
}

/// The ids `list` shows, in its order, and the total it counts.
async fn listed(app: &TestApp) -> (Vec<String>, u64) {
    let out = dead_letters::list(&app.ctx, 100, true).await.unwrap();
    let listed: Value = serde_json::from_str(&out).unwrap();
    let ids = listed["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_string())
        .collect();
    (ids, listed["total"].as_u64().unwrap())
}

/// Takes every message off `queue`, in order.
async fn drain(app: &TestApp, queue: &str) -> Vec<lapin::message::Delivery> {
    let channel = app.amqp.create_channel().await.unwrap();
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        taken.push(message.delivery);
    }
    let _ = channel.close(200, "drained".into()).await;
    taken
}

async fn dead_count(app: &TestApp) -> u32 {
    app.queue_counts(&app.names.dead_letter_queue()).await.0
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
}

#[tokio::test]
async fn dead_letters_are_listed_with_where_they_died_why_when_and_no_secret_or_control_character()
{
    let mut app = TestApp::builder().start().await;
    // RabbitMQ's own: a checkout request that nobody consumed before it expired.
    let requester = app.requester().await;
    let properties = Requester::properties()
        .with_message_id("expired-request".into())
        .with_expiration("1".into());
    requester
        .publish(TRAVIS_REQUEST.as_bytes(), properties)
        .await;
    eventually("the request to expire into the dead queue", || async {
        dead_count(&app).await == 1
    })
    .await;
    // The refill consumer's own: a fill it rejected, its token redacted by the consumer.
    app.start_refill().await;
    app.publisher()
        .await
        .publish(
            "",
            &app.names.refill_queue(),
            json!({"command": "fill", "pool": "bad/pool", "token": "s3cret-fill-token"})
                .to_string()
                .as_bytes(),
            warmer::json_properties(),
        )
        .await
        .unwrap();
    eventually("the rejected fill in the dead queue", || async {
        dead_count(&app).await == 2
    })
    .await;
    app.stop_consumers().await;
    // As RabbitMQ dead-letters an older warmer's fill that carried its token, past its
    // delivery limit: the token is in the body as it was sent.
    let legacy = json!({"command": "fill", "pool": POOL, "token": "legacy-token-1",
        "auth": {"password": "pw-9", "ssh_private_key": "-----BEGIN RSA PRIVATE KEY-----"}});
    bury(
        &app,
        legacy.to_string().as_bytes(),
        warmer::json_properties().with_headers(died_in(&app.names.refill_queue(), "rejected")),
    )
    .await;
    // And anyone's: a body that is no JSON, with what would clear a terminal, from elsewhere.
    bury(
        &app,
        b"\x1b[2J\x1b]0;owned\x07 not json",
        BasicProperties::default()
            .with_message_id("odd id\u{1b}[31m".into())
            .with_headers(died_in("someone.elses.queue\u{1b}[1m", "maxlen")),
    )
    .await;

    let table = dead_letters::list(&app.ctx, 100, false).await.unwrap();
    let json = dead_letters::list(&app.ctx, 100, true).await.unwrap();

    for out in [&table, &json] {
        for secret in ["s3cret-fill-token", "legacy-token-1", "pw-9", "BEGIN RSA"] {
            assert!(!out.contains(secret), "{secret} shown:\n{out}");
        }
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
    }
    let lines: Vec<&str> = table.lines().collect();
    let columns: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        columns,
        ["ID", "FROM", "WHY", "DIED", "(UTC)", "AGE", "POOL", "BODY"]
    );
    let row = |start: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no row {start}:\n{table}"))
    };
    let expired = row("expired-request");
    assert!(
        expired.contains(" checkout ") && expired.contains(" expired ") && expired.contains(POOL),
        "{expired}"
    );
    let rejected = lines[2];
    assert!(
        rejected.contains(" refill ")
            && rejected.contains("rejected: ")
            && rejected.contains(r#""token":"[redacted]""#),
        "{rejected}"
    );
    let older = lines[3];
    assert!(
        older.contains(" refill ") && older.contains(" rejected ") && older.contains(POOL),
        "{older}"
    );
    assert!(older.contains("[redacted]"), "{older}");
    let odd = lines[4];
    assert!(
        odd.starts_with("h-"),
        "an id that is not plain is a hash: {odd}"
    );
    assert!(
        odd.contains(r"someone.elses.queue\u{1b}[1m") && odd.contains(r"\u{1b}[2J"),
        "{odd}"
    );
    // Died moments ago, in UTC.
    let cells: Vec<&str> = expired.split_whitespace().collect();
    let (died, age) = (cells[3], cells[4]);
    assert!(
        died.len() == 20 && died.starts_with("20") && died.ends_with('Z'),
        "{died}"
    );
    assert!(age.ends_with('s'), "{age}");
    assert_eq!(lines[5], "4 dead letters, 4 shown");
    assert_eq!(lines.len(), 6, "{table}");
    let listed: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (listed["total"].as_u64(), listed["shown"].as_u64()),
        (Some(4), Some(4))
    );
    let legacy = &listed["dead_letters"][2]["body"];
    assert_eq!(
        legacy.to_string().matches("[redacted]").count(),
        3,
        "{legacy}"
    );
    assert_eq!(legacy["auth"]["password"], "[redacted]");
    assert_eq!(
        listed["dead_letters"][0]["queue"],
        app.names.checkout_queue()
    );
    assert_eq!(listed["dead_letters"][3]["queue"], Value::Null);
    assert_eq!(dead_count(&app).await, 4, "listing removes nothing");

    // The expired request is not worth requeueing: nobody waits for its reply.
    let (out, failed) = dead_letters::requeue(
        &app.ctx,
        &Selection::Ids(vec!["expired-request".into()]),
        100,
    )
    .await
    .unwrap();
    assert!(failed, "{out}");
    assert!(
        out.contains("kept expired-request: a checkout request whose requester has stopped waiting (it expired unanswered)"),
        "{out}"
    );
    assert_eq!(app.queue_counts(&app.names.checkout_queue()).await.0, 0);
    assert_eq!(listed_ids_now(&app).await[0], "expired-request");
}

async fn listed_ids_now(app: &TestApp) -> Vec<String> {
    listed(app).await.0
}

#[tokio::test]
async fn listing_twenty_five_times_loses_no_dead_letter_and_leaves_their_order_as_it_was() {
    let app = TestApp::builder().start().await;
    // More than 32: RabbitMQ keeps small maps in key order, larger ones in hash order.
    let ids: Vec<String> = (0..40).map(|i| format!("dead-{i:02}")).collect();
    for id in &ids {
        bury(
            &app,
            json!({"n": id}).to_string().as_bytes(),
            with_headers(
                waiting_request(id),
                died_in(&app.names.checkout_queue(), "delivery_limit"),
            ),
        )
        .await;
    }

    for round in 0..25 {
        let (shown, total) = listed(&app).await;
        assert_eq!(shown, ids, "list {round}");
        assert_eq!(total, 40, "list {round}");
    }

    let left = drain(&app, &app.names.dead_letter_queue()).await;
    let bodies: Vec<Value> = left
        .iter()
        .map(|d| serde_json::from_slice(&d.data).unwrap())
        .collect();
    let expected: Vec<Value> = ids.iter().map(|id| json!({"n": id})).collect();
    assert_eq!(bodies, expected, "every dead letter, in its order");
}

#[tokio::test]
async fn list_reads_no_more_than_its_limit_and_says_how_many_there_are() {
    let app = TestApp::builder().start().await;
    for i in 0..5 {
        let id = format!("d{i}");
        let headers = died_in(&app.names.checkout_queue(), "delivery_limit");
        bury(&app, b"{}", waiting_request(&id).with_headers(headers)).await;
    }

    let out = dead_letters::list(&app.ctx, 2, false).await.unwrap();

    assert_eq!(out.lines().count(), 4, "{out}");
    assert_eq!(
        out.lines().last(),
        Some("5 dead letters, 2 shown (the oldest; --limit shows more)")
    );
    assert_eq!(dead_count(&app).await, 5);
    assert_eq!(listed(&app).await.0.len(), 5);
}

#[tokio::test]
async fn an_empty_dead_queue_lists_as_no_dead_letters() {
    let app = TestApp::builder().start().await;

    assert_eq!(
        dead_letters::list(&app.ctx, 100, false).await.unwrap(),
        "no dead letters\n"
    );
    let json: Value =
        serde_json::from_str(&dead_letters::list(&app.ctx, 100, true).await.unwrap()).unwrap();
    assert_eq!(
        (json["total"].as_u64(), json["shown"].as_u64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn requeue_by_id_puts_exactly_that_dead_letter_back_into_its_queue_once() {
    let app = TestApp::builder().start().await;
    let checkout = app.names.checkout_queue();
    for id in ["c-1", "c-2", "c-3"] {
        let body = json!({"image_name": id, "machine_type": "n1-standard-1"});
        let properties = with_headers(waiting_request(id), died_in(&checkout, "delivery_limit"));
        bury(&app, body.to_string().as_bytes(), properties).await;
    }

    let (out, failed) = dead_letters::requeue(&app.ctx, &Selection::Ids(vec!["c-2".into()]), 100)
        .await
        .unwrap();

    assert!(!failed, "{out}");
    assert_eq!(
        out,
        format!(
            "requeued c-2 (checkout, delivery_limit) to {checkout}\n1 requeued; 2 dead letters left in {}\n",
            app.names.dead_letter_queue()
        )
    );
    let requeued = drain(&app, &checkout).await;
    assert_eq!(requeued.len(), 1);
    let request = &requeued[0];
    let body: Value = serde_json::from_slice(&request.data).unwrap();
    assert_eq!(
        body,
        json!({"image_name": "c-2", "machine_type": "n1-standard-1"})
    );
    let properties = &request.properties;
    assert_eq!(properties.message_id().as_ref().unwrap().as_str(), "c-2");
    assert!(properties.reply_to().is_some() && properties.correlation_id().is_some());
    assert!(header(properties, "x-warmer-deadline").is_some());
    for death in ["x-death", "x-first-death-queue", "x-first-death-reason"] {
        assert!(header(properties, death).is_none(), "{death} kept");
    }
    assert_eq!(listed(&app).await.0, ["c-1", "c-3"]);

    // Again: it is no longer there, and that is an error naming it.
    let (again, failed) = dead_letters::requeue(&app.ctx, &Selection::Ids(vec!["c-2".into()]), 100)
        .await
        .unwrap();
    assert!(failed);
    assert!(
        again.contains("not found: no dead letter c-2 among the 2 oldest of 2; it may have been requeued or purged already"),
        "{again}"
    );
    assert_eq!(app.queue_counts(&checkout).await.0, 0);
    assert_eq!(listed(&app).await.0, ["c-1", "c-3"]);
}

#[tokio::test]
async fn warmer_dead_requeue_names_an_unknown_id_and_exits_non_zero() {
    let app = TestApp::builder().start().await;
    let headers = died_in(&app.names.checkout_queue(), "delivery_limit");
    bury(&app, b"{}", with_headers(waiting_request("known"), headers)).await;
    let warmer = async |args: &[&str]| {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_warmer"))
            .arg("dead")
            .args(args)
            .env_clear()
            .envs(&app.env)
            .kill_on_drop(true)
            .output();
        within("warmer dead", output).await.unwrap()
    };

    let listed = warmer(&["list"]).await;
    let requeued = warmer(&["requeue", "--id", "nope-1", "known"]).await;
    let purge = warmer(&["purge"]).await;

    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("1 dead letters, 1 shown"));
    assert_eq!(requeued.status.code(), Some(1), "{requeued:?}");
    let out = String::from_utf8_lossy(&requeued.stdout);
    assert!(
        out.contains("requeued known (checkout, delivery_limit)"),
        "{out}"
    );
    assert!(
        out.contains("not found: no dead letter nope-1 among the 1 oldest of 1"),
        "{out}"
    );
    assert_eq!(app.queue_counts(&app.names.checkout_queue()).await.0, 1);
    assert_eq!(
        purge.status.code(),
        Some(0),
        "nothing left to purge: {purge:?}"
    );
}

#[tokio::test]
async fn requeue_all_puts_back_what_may_go_back_and_says_why_it_keeps_the_rest() {
    let app = TestApp::builder().start().await;
    let (checkout, refill) = (app.names.checkout_queue(), app.names.refill_queue());
    let request = json!({"image_name": "img", "machine_type": "n1-standard-1"}).to_string();
    bury(
        &app,
        request.as_bytes(),
        with_headers(
            waiting_request("waiting"),
            died_in(&checkout, "delivery_limit"),
        ),
    )
    .await;
    let hint = json!({"pool": POOL}).to_string();
    bury(
        &app,
        hint.as_bytes(),
        warmer::json_properties()
            .with_user_id("guest".into())
            .with_headers(died_in(&refill, "delivery_limit")),
    )
    .await;
    let mut rejected = FieldTable::default();
    rejected.insert(
        "x-warmer-rejected".into(),
        long("unknown command \"drain\""),
    );
    bury(
        &app,
        br#"{"command":"drain"}"#,
        warmer::json_properties().with_headers(rejected),
    )
    .await;
    bury(
        &app,
        request.as_bytes(),
        with_headers(
            waiting_request("foreign"),
            died_in("someone.elses.queue", "rejected"),
        ),
    )
    .await;
    let mut late = died_in(&checkout, "delivery_limit");
    late.insert(
        "x-warmer-deadline".into(),
        AMQPValue::LongLongInt((warmer::now_ms() - 1000) as i64),
    );
    let properties = request_properties("late").with_headers(late);
    bury(&app, request.as_bytes(), properties).await;
    bury(&app, b"no headers at all", BasicProperties::default()).await;

    let (out, failed) = dead_letters::requeue(&app.ctx, &Selection::All, 100)
        .await
        .unwrap();

    assert!(
        !failed,
        "keeping what cannot go back is no failure of --all: {out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("requeued waiting (checkout, delivery_limit) to {checkout}")
    );
    assert!(
        lines[1].starts_with("requeued h-")
            && lines[1].ends_with(&format!("(refill, delivery_limit) to {refill}")),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains(&format!("(refill, rejected) to {refill}; the refill consumer rejected it (unknown command \"drain\"): unless what made it invalid has changed, it is rejected again")),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("kept foreign: it died in `someone.elses.queue`, not in this deployment's checkout or refill queue"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].starts_with(
            "kept late: a checkout request whose requester has stopped waiting (its deadline was 20"
        ),
        "{}",
        lines[4]
    );
    assert!(
        lines[5].contains("no header says which queue it died in"),
        "{}",
        lines[5]
    );
    assert_eq!(
        lines[6],
        format!(
            "3 requeued; 3 dead letters left in {}",
            app.names.dead_letter_queue()
        )
    );
    let requests = drain(&app, &checkout).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].data, request.as_bytes());
    let refills = drain(&app, &refill).await;
    let bodies: Vec<&[u8]> = refills.iter().map(|d| d.data.as_slice()).collect();
    assert_eq!(bodies, [hint.as_bytes(), br#"{"command":"drain"}"#]);
    assert_eq!(
        refills[0].properties.user_id().as_ref().map(|u| u.as_str()),
        Some("guest"),
        "sent by this broker user: still vouched for"
    );
    assert!(header(&refills[1].properties, "x-warmer-rejected").is_none());
    let (kept, total) = listed(&app).await;
    assert_eq!(total, 3);
    assert_eq!(&kept[..2], ["foreign", "late"]);
}

#[tokio::test]
async fn purge_refuses_without_yes_and_empties_the_dead_queue_with_it() {
    let app = TestApp::builder().start().await;
    for id in ["p-1", "p-2", "p-3"] {
        bury(&app, b"{}", waiting_request(id)).await;
    }

    let refused = dead_letters::purge(&app.ctx, false).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!(
            "not purged: this would remove 3 dead letters from {}; `warmer dead list` shows them, `warmer dead purge --yes` removes them",
            app.names.dead_letter_queue()
        )
    );
    assert_eq!(dead_count(&app).await, 3, "nothing removed");

    let purged = dead_letters::purge(&app.ctx, true).await.unwrap();
    assert_eq!(
        purged,
        format!(
            "purged 3 dead letters from {}\n",
            app.names.dead_letter_queue()
        )
    );
    assert_eq!(dead_count(&app).await, 0);
    let history = warmer::operator::history(&app.ctx, 5, None, false)
        .await
        .unwrap();
    assert!(
        history.contains("dead purge") && history.contains("purged 3 dead letters"),
        "{history}"
    );

    let again = dead_letters::purge(&app.ctx, true).await.unwrap();
    assert_eq!(
        again,
        format!(
            "no dead letters in {}: nothing to purge\n",
            app.names.dead_letter_queue()
        )
    );
}

#[tokio::test]
async fn without_a_dead_queue_every_command_says_how_to_have_it_declared() {
    let app = TestApp::builder().start().await;
    let channel = app.amqp.create_channel().await.unwrap();
    channel
        .queue_delete(
            app.names.dead_letter_queue().as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();

    let errors = [
        dead_letters::list(&app.ctx, 100, false).await.unwrap_err(),
        dead_letters::requeue(&app.ctx, &Selection::All, 100)
            .await
            .unwrap_err(),
        dead_letters::purge(&app.ctx, true).await.unwrap_err(),
    ];

    for error in errors {
        assert_eq!(
            error.to_string(),
            format!(
                "queue {} does not exist yet: start a consuming process (`warmer checkout` or `warmer refill`) once to declare it",
                app.names.dead_letter_queue()
            )
        );
    }
}

#[tokio::test]
async fn the_operator_user_may_list_requeue_and_purge_dead_letters_and_a_worker_may_not() {
    let prefix = fresh_prefix();
    let names = warmer::Names::new(&prefix, &prefix);
    let operator = BrokerUser::create(&warmer::permissions(warmer::Role::Operator, &names)).await;
    let worker = BrokerUser::create(&warmer::permissions(warmer::Role::Worker, &names)).await;
    let app = TestApp::builder().prefix(&prefix).start().await;
    for id in ["o-1", "o-2"] {
        let headers = died_in(&names.checkout_queue(), "delivery_limit");
        bury(&app, b"{}", with_headers(waiting_request(id), headers)).await;
    }
    let as_operator = app.context_as(&operator.url()).await;
    let as_worker = app.context_as(&worker.url()).await;

    let shown = dead_letters::list(&as_operator, 100, false).await.unwrap();
    let (requeued, failed) =
        dead_letters::requeue(&as_operator, &Selection::Ids(vec!["o-1".into()]), 100)
            .await
            .unwrap();
    let refused = dead_letters::list(&as_worker, 100, false)
        .await
        .unwrap_err();
    let purged = dead_letters::purge(&as_operator, true).await.unwrap();

    assert!(shown.contains("2 dead letters, 2 shown"), "{shown}");
    assert!(
        !failed && requeued.starts_with("requeued o-1"),
        "{requeued}"
    );
    assert_eq!(app.queue_counts(&names.checkout_queue()).await.0, 1);
    assert!(purged.starts_with("purged 1 dead letters"), "{purged}");
    assert!(
        refused.to_string().starts_with(&format!(
            "this broker user may not read {}",
            names.dead_letter_queue()
        )),
        "{refused}"
    );
}

#[tokio::test]
async fn where_the_broker_counts_every_reading_against_a_delivery_limit_list_warns_before_it_drops_any()
 {
    // RabbitMQ 4.0 to 4.2 counts every return against a quorum queue's delivery limit (20 by
    // default); RabbitMQ 3.x does too, once a queue has a limit: this dead queue has one of 30.
    let app = TestApp::builder().start().await;
    let dead = app.names.dead_letter_queue();
    let channel = app.amqp.create_channel().await.unwrap();
    channel
        .queue_delete(dead.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long("quorum"));
    arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(30));
    channel
        .queue_declare(
            dead.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    for id in ["w-1", "w-2", "w-3"] {
        let headers = died_in(&app.names.checkout_queue(), "delivery_limit");
        bury(&app, b"{}", with_headers(waiting_request(id), headers)).await;
    }

    let mut warnings = Vec::new();
    for _ in 0..12 {
        let out = dead_letters::list(&app.ctx, 100, false).await.unwrap();
        assert!(out.contains("3 dead letters, 3 shown"), "{out}");
        warnings.push(
            out.lines()
                .find(|l| l.starts_with("warning: "))
                .map(String::from),
        );
    }

    // The 11th reading sees dead letters given back 10 times: warned, 20 readings before the
    // broker would drop them.
    assert!(warnings[..10].iter().all(Option::is_none), "{warnings:?}");
    let warning = warnings[10].as_deref().expect("a warning at the 11th list");
    let policy = format!(
        r#"rabbitmqctl set_policy warmer-dead '^{}$' '{{"delivery-limit":-1}}' --apply-to queues"#,
        dead.replace('-', "\\-").replace('.', "\\.")
    );
    assert!(
        warning.contains("given back up to 10 times") && warning.contains(&policy),
        "{warning}"
    );
    assert!(warnings[11].is_some());
    assert_eq!(listed(&app).await.0, ["w-1", "w-2", "w-3"]);
}
