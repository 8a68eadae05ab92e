//! What warmer declares: bounded queues, and queues an older warmer declared.

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use warmer::{DEAD_LETTER_LIMIT, REFILL_QUEUE_LIMIT};
use warmer_testkit::*;

/// Publishes `count` small messages to `queue` on one confirm channel, all in flight at once;
/// returns how many the broker refused (nacked).
async fn flood(app: &TestApp, queue: &str, count: usize) -> usize {
    let channel = app.amqp.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(count);
    for i in 0..count {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("{{\"n\":{i}}}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    let mut refused = 0;
    for confirm in confirms {
        if confirm.await.unwrap().is_nack() {
            refused += 1;
        }
    }
    refused
}

#[tokio::test]
async fn the_refill_queue_refuses_messages_past_its_limit() {
    let app = TestApp::builder().start().await;
    let limit = REFILL_QUEUE_LIMIT as usize;
    let queue = app.names.refill_queue();

    // All in flight at once: a quorum queue learns its length as its log commits, so those
    // published in the same instant as the last accepted ones may still get in.
    let refused = flood(&app, &queue, limit + 200).await;
    let held = app.queue_counts(&queue).await.0 as usize;

    assert_eq!(held + refused, limit + 200);
    assert!(held >= limit, "{held} held for a limit of {limit}");
    // Once full, it stays full: every later publish is refused, one at a time or many.
    assert_eq!(flood(&app, &queue, 1).await, 1);
    assert_eq!(flood(&app, &queue, 100).await, 100);
    assert_eq!(app.queue_counts(&queue).await.0 as usize, held);
    // A fill command is refused too, and says so.
    let error = warmer::operator::fill(&app.ctx, None, None)
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("refill queue is full"),
        "{error:#}"
    );
}

#[tokio::test]
async fn dead_letters_past_the_limit_drop_the_oldest() {
    let app = TestApp::builder().start().await;
    let limit = DEAD_LETTER_LIMIT as usize;

    let refused = flood(&app, &app.names.dead_letter_queue(), limit + 5).await;

    assert_eq!(refused, 0, "dead letters are never refused");
    assert_eq!(
        app.queue_counts(&app.names.dead_letter_queue()).await.0 as usize,
        limit
    );
    let channel = app.amqp.create_channel().await.unwrap();
    let oldest = channel
        .basic_get(
            app.names.dead_letter_queue().as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("a dead letter");
    assert_eq!(
        oldest.delivery.data, br#"{"n":5}"#,
        "the 5 oldest were dropped"
    );
}

#[tokio::test]
async fn a_queue_an_older_warmer_declared_without_limits_is_used_as_it_is() {
    let mut app = TestApp::builder()
        .env("WARMER_LOCAL_BOOT_DELAY", "100ms")
        .start()
        .await;
    let refill = app.names.refill_queue();
    let channel = app.amqp.create_channel().await.unwrap();
    channel
        .queue_delete(refill.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let mut older = FieldTable::default();
    older.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(refill.as_str().into(), durable, older)
        .await
        .unwrap();

    warmer::declare_topology(&app.amqp, &app.names)
        .await
        .expect("declared, with the older queue kept");

    app.seed(POOL, 1, &[]).await;
    app.start_refill().await;
    app.fill(POOL).await;
    app.wait_until_settled(POOL, 1).await;
}
