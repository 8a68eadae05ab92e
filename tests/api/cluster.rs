//! A RabbitMQ cluster of three nodes losing one node at a time, under load: checkouts must go
//! on within seconds, with nothing handed twice and nothing leaked.
//!
//! It starts a cluster of its own (about 15 s) and runs for about a minute and a half, so the
//! everyday suite skips it; `.ci/run` runs it: `cargo test --test api cluster -- --ignored`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use serde_json::Value;

use warmer_testkit::cluster::Cluster;
use warmer_testkit::*;

/// Requesters sending checkouts all along, as CI workers do, through the cluster's front.
const REQUESTERS: usize = 20;
/// The longest a node's loss may stop checkouts.
const MAX_GAP: Duration = Duration::from_secs(10);

/// What the requesters saw: when each request was answered and with which VM (or none), and
/// how many they gave up waiting for.
#[derive(Default)]
struct Seen {
    /// When, by which requester, with which VM.
    answers: Vec<(Instant, usize, Option<String>)>,
    timeouts: usize,
}

/// A CI worker that sends a request, waits at most 5 s for its reply, pauses 50 ms, and sends
/// the next, reconnecting through `url` whenever its connection is lost, until `stop`; it
/// sends nothing while `paused` (a node restarting: the load is for the kills).
async fn requester(
    id: usize,
    url: String,
    queue: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<tokio::sync::Notify>,
    paused: Arc<AtomicBool>,
) {
    loop {
        let Ok(connection) = lapin::Connection::connect(&url, Default::default()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(channel) = connection.create_channel().await else {
            continue;
        };
        let Ok(mut replies) = warmer::consume_direct_replies(&channel).await else {
            continue;
        };
        loop {
            let properties = Requester::properties().with_headers({
                let mut headers = FieldTable::default();
                headers.insert(
                    "x-warmer-deadline".into(),
                    lapin::types::AMQPValue::LongLongInt(warmer::now_ms() as i64 + 5_000),
                );
                headers
            });
            let correlation = properties.correlation_id().clone().unwrap();
            let published = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    TRAVIS_REQUEST.as_bytes(),
                    properties,
                )
                .await;
            if published.is_err() {
                break;
            }
            let reply = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(delivery)) = replies.next().await {
                    if delivery.properties.correlation_id().as_ref() == Some(&correlation) {
                        return serde_json::from_slice::<Value>(&delivery.data).ok();
                    }
                }
                None
            });
            tokio::select! {
                _ = stop.notified() => return,
                reply = reply => match reply {
                    Ok(Some(reply)) => {
                        let vm = reply["name"].as_str().map(String::from);
                        seen.lock().unwrap().answers.push((Instant::now(), id, vm));
                    }
                    Ok(None) => break, // the reply stream ended: the connection is gone
                    Err(_) => {
                        seen.lock().unwrap().timeouts += 1;
                        if !connection.status().connected() {
                            break;
                        }
                    }
                },
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            while paused.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let _ = connection.close(200, "reconnecting".into()).await;
    }
}

/// The time without service around a kill at `killed_at`: for each requester that was
/// answered before it, from its last answer before to its first answer after (its own
/// reconnection included); the longest of them.
fn gap(seen: &Seen, killed_at: Instant) -> Duration {
    (0..REQUESTERS)
        .filter_map(|id| {
            let mine = seen
                .answers
                .iter()
                .filter(|(_, r, _)| *r == id)
                .map(|(at, ..)| *at);
            let before = mine.clone().rfind(|at| *at <= killed_at)?;
            let after = mine.clone().find(|at| *at > killed_at);
            Some(after.map_or(Duration::MAX, |after| after.duration_since(before)))
        })
        .max()
        .unwrap_or(Duration::MAX)
}

#[tokio::test]
#[ignore = "starts a RabbitMQ cluster of three nodes and kills each in turn (about 90 s): cargo test --test api cluster -- --ignored"]
async fn checkouts_go_on_when_any_one_node_of_the_cluster_is_killed() {
    let cluster = Cluster::start().await;
    let front = Proxy::start_any(cluster.addresses()).await;
    let through_front = format!("amqp://guest:guest@127.0.0.1:{}/%2f", front.port);
    let prefix = fresh_prefix();
    let names = warmer::Names::new(&prefix, &prefix);
    // An older warmer declared its dead letters as a classic queue: it lives on the first node,
    // where the front sends connections first, so a consumer that loses that node has to
    // declare again while the queue is unavailable.
    {
        let third = lapin::Connection::connect(&cluster.url(0), Default::default())
            .await
            .unwrap();
        let channel = third.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert(
            "x-max-length".into(),
            lapin::types::AMQPValue::LongLongInt(10_000),
        );
        args.insert(
            "x-overflow".into(),
            lapin::types::AMQPValue::LongString("drop-head".into()),
        );
        channel
            .queue_declare(
                names.dead_letter_queue().as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .unwrap();
        let _ = third.close(200, "bye".into()).await;
    }
    let mut app = TestApp::builder()
        .prefix(&prefix)
        .on_broker(&through_front)
        .envs(&[
            ("WARMER_LOCAL_BOOT_DELAY", "100ms"),
            ("WARMER_MAX_VMS", "100000"),
        ])
        .start()
        .await;
    const VMS: usize = 3_000;
    let vms: Vec<Value> = (0..VMS).map(|i| vm(&format!("vm-{i:05}"))).collect();
    app.seed(POOL, VMS as u32, &vms).await;
    // Three checkout consumers: two through the front (as behind a cloud broker's single
    // address), one given every node's address; a refill consumer given every node's address.
    app.start_consumer().await;
    app.start_consumer().await;
    let every_node = app.context_as(&cluster.urls()).await;
    let (_trigger, shutdown) = warmer::shutdown::channel();
    let processes = vec![
        tokio::spawn(warmer::checkout::run(every_node.clone(), shutdown.clone())),
        tokio::spawn(warmer::refill::run_on(
            every_node.clone(),
            app.cloud().await,
            shutdown.clone(),
        )),
    ];
    app.wait_for_consumers(3).await;
    let web = app.start_web().await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let paused = Arc::new(AtomicBool::new(false));
    let requesters: Vec<_> = (0..REQUESTERS)
        .map(|id| {
            tokio::spawn(requester(
                id,
                through_front.clone(),
                names.checkout_queue(),
                seen.clone(),
                stop.clone(),
                paused.clone(),
            ))
        })
        .collect();
    eventually("checkouts under load", || async {
        seen.lock().unwrap().answers.len() > 100
    })
    .await;

    // Each in turn: the checkout queue's leader, the node the consumers are on, the node that
    // holds the older warmer's classic queue.
    let checkout = names.checkout_queue();
    let mut gaps = Vec::new();
    for (turn, role) in ["quorum leader", "consumers' node", "classic queue's node"]
        .into_iter()
        .enumerate()
    {
        let node = match role {
            "quorum leader" => cluster.leader(&checkout).await.expect("a leader"),
            "consumers' node" => cluster.consumers_node(&checkout).await.expect("consumers"),
            _ => 0,
        };
        let killed_at = Instant::now();
        cluster.kill(node);
        // Every requester served again (each may have had to reconnect), or the patience spent.
        eventually(
            &format!("every requester served after killing the {role}"),
            || async { gap(&seen.lock().unwrap(), killed_at) < Duration::MAX },
        )
        .await;
        let gap = gap(&seen.lock().unwrap(), killed_at);
        eprintln!("killed the {role} (node {node}): {gap:?} without service at most");
        gaps.push((role, node, gap));
        if turn == 2 {
            // The older warmer's classic queue is down with its node: /health and `warmer
            // status` say so, queue by queue, while checkouts go on.
            let dead = names.dead_letter_queue();
            eventually_found("/health naming the unavailable queue", || async {
                let answer = reqwest::get(format!("{web}/health")).await.ok()?;
                let status = answer.status().as_u16();
                let body: Value = answer.json().await.ok()?;
                (status == 503 && body["rabbitmq"] == "degraded").then_some(
                    body["queues"][&dead]
                        .as_str()?
                        .contains("home node")
                        .then_some(()),
                )?
            })
            .await;
            let status = warmer::operator::status(&app.ctx, &Default::default())
                .await
                .unwrap();
            assert!(
                status.contains(&format!("QUEUE {dead}: UNAVAILABLE")),
                "{status}"
            );
            assert!(status.contains(&format!("QUEUE {checkout}: ")), "{status}");
            break; // no further kill needs it back
        }
        let restarting = Instant::now();
        paused.store(true, Ordering::Relaxed);
        cluster.restart(node).await;
        cluster.wait_for_members(&checkout).await;
        paused.store(false, Ordering::Relaxed);
        eprintln!("node {node} back in {:?}", restarting.elapsed());
        // Load again before the next kill.
        let resumed = seen.lock().unwrap().answers.len();
        eventually("load again", || async {
            seen.lock().unwrap().answers.len() > resumed + 100
        })
        .await;
    }
    stop.notify_waiters();
    for requester in requesters {
        requester.abort();
    }
    eprintln!("seconds without an answer, by node killed: {gaps:?}");
    for (role, node, gap) in &gaps {
        assert!(
            *gap <= MAX_GAP,
            "killing the {role} (node {node}) stopped checkouts for {gap:?}"
        );
    }

    // Nothing handed twice, nothing leaked, no process of warmer's restarted.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let handed: Vec<&String> = seen
        .answers
        .iter()
        .filter_map(|(.., vm)| vm.as_ref())
        .collect();
    let distinct: HashSet<&&String> = handed.iter().collect();
    assert_eq!(distinct.len(), handed.len(), "a VM went to two requests");
    assert!(handed.len() > 500, "{} VMs handed out", handed.len());
    eventually("every request answered or settled", || async {
        app.queue_counts(&checkout).await.0 == 0
            && app
                .leases()
                .await
                .values()
                .all(|(_, state)| state != "pending")
    })
    .await;
    let pool: HashSet<String> = app.pool_vms(POOL).await.into_iter().collect();
    let leased: HashMap<String, String> = app.leases().await.into_values().collect();
    let orphaned: HashSet<String> = app.orphaned().await.into_iter().collect();
    for vm in &handed {
        assert!(!pool.contains(*vm), "{vm} handed out and still in the pool");
    }
    let booted = app.cloud().await.list(&prefix).await.unwrap();
    let all: Vec<String> = (0..VMS)
        .map(|i| format!("vm-{i:05}"))
        .chain(booted.into_iter().map(|vm| vm.name))
        .collect();
    for name in &all {
        let places = [
            pool.contains(name),
            leased.contains_key(name),
            orphaned.contains(name),
        ];
        let booting = app.booting(POOL).await > 0;
        assert!(
            places.iter().filter(|p| **p).count() == 1 || booting,
            "{name} is in {places:?}"
        );
    }
    for process in &processes {
        assert!(!process.is_finished(), "a warmer process stopped");
    }
    eprintln!(
        "{} answers ({} VMs), {} requests given up by their requesters",
        seen.answers.len(),
        handed.len(),
        seen.timeouts
    );
    drop(app);
    drop(cluster);
}
