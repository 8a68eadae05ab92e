//! Operator commands: pool targets, deletion without leaks, fill commands, status.

use serde_json::json;
use warmer::operator;
use warmer::pool::PoolName;

use crate::helpers::*;

#[tokio::test]
async fn pools_are_set_listed_and_deleted_without_leaking_their_vms() {
    let app = spawn_app_without_consumer().await;
    let pool: PoolName = POOL.parse().unwrap();

    operator::pool_set(&app.ctx, &pool, 3).await.unwrap();
    app.seed(POOL, 3, &[vm("a"), vm("b")]).await;
    assert_eq!(
        operator::pool_list(&app.ctx).await.unwrap(),
        format!("{POOL}\t3\n")
    );

    let deleted = operator::pool_delete(&app.ctx, &pool).await.unwrap();

    assert!(deleted.contains("2 warmed VM(s)"), "{deleted}");
    assert_eq!(app.orphaned().await, ["a", "b"]);
    assert!(app.pool_vms(POOL).await.is_empty());
    assert_eq!(operator::pool_list(&app.ctx).await.unwrap(), "");
    let again = operator::pool_delete(&app.ctx, &pool).await.unwrap_err();
    assert!(again.to_string().contains("no pool"));
}

#[tokio::test]
async fn status_shows_target_ready_and_the_oldest_age() {
    let app = spawn_app_without_consumer().await;
    let mut old = vm("old");
    old["booted_at"] = json!(warmer::store::now_ms() / 1000 - 3 * 3600);
    app.seed(POOL, 5, &[old, vm("new")]).await;

    let status = operator::status(&app.ctx).await.unwrap();

    let row: Vec<&str> = status.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, [POOL, "5", "2", "0", "0", "3h"]);
}

#[tokio::test]
async fn a_fill_command_reaches_the_refill_queue() {
    let app = spawn_app_without_consumer().await;
    let pool: PoolName = POOL.parse().unwrap();

    operator::fill(&app.ctx, Some(&pool), Some("tok"))
        .await
        .unwrap();
    operator::fill(&app.ctx, None, None).await.unwrap();

    let channel = app.amqp.create_channel().await.unwrap();
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let message = channel
            .basic_get(
                app.names.refill_queue().as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .expect("a fill command");
        bodies.push(serde_json::from_slice::<serde_json::Value>(&message.delivery.data).unwrap());
    }
    assert_eq!(
        bodies[0],
        json!({"command": "fill", "pool": POOL, "token": "tok"})
    );
    assert_eq!(bodies[1], json!({"command": "fill"}));
}
