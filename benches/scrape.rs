//! The cost of a `/metrics` scrape at 10,000 pools, with every pool's counters, against the
//! same scrape with levels only (what `/metrics` exported before it kept counters).
//!
//!     cargo bench --bench scrape              # BENCH_POOLS=10000 BENCH_ROUNDS=5 by default
//!
//! Two deployments of `BENCH_POOLS` pools each (target 2, one warmed entry carrying a key-sized
//! `ssh_private_key`, as real ones do), served by one in-process `warmer web` each:
//! - `levels only`: no counter has been written yet;
//! - `with counters`: every pool has checkouts (handed out, missed), boots in two zones (ready,
//!   failed), evictions, its VM-seconds, and a sizing policy with the sizer's last decision;
//!   the deployment has boot-duration histograms for three zones, a checkout-wait and a
//!   reconcile histogram, deletions and reconcile passes.
//!
//! Scrapes alternate between the two, `BENCH_ROUNDS` each; medians of the wall time of a `GET
//! /metrics` (Redis reads, rendering, transfer) and the body's size.

use std::time::Instant;

use redis::AsyncCommands;
use serde_json::json;
use tokio::net::TcpListener;
use warmer::{Names, PoolName, now_ms};

use warmer_testkit::bench::{env_or, local_context, median};

const ZONES: [&str; 3] = ["us-central1-a", "us-central1-b", "us-central1-c"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pools = env_or("BENCH_POOLS", 10_000);
    let rounds = env_or("BENCH_ROUNDS", 5);
    let (levels, levels_names) = deployment(pools, false).await?;
    let (counted, counted_names) = deployment(pools, true).await?;
    let client = reqwest::Client::new();

    let (mut plain, mut full) = (Vec::new(), Vec::new());
    let mut sizes = (0, 0);
    for _ in 0..rounds {
        for (url, times, size) in [
            (&levels, &mut plain, &mut sizes.0),
            (&counted, &mut full, &mut sizes.1),
        ] {
            let started = Instant::now();
            let body = client
                .get(format!("{url}/metrics"))
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            *size = body.len();
        }
    }
    for names in [&levels_names, &counted_names] {
        warmer_testkit::remove_deployment(names).await;
    }

    let (plain, full) = (median(plain), median(full));
    println!("{pools} pools, {rounds} scrapes each, medians:");
    println!("| exposition | body | scrape ms | vs levels only |");
    println!("|---|---:|---:|---:|");
    for (what, ms, bytes) in [
        ("levels only", plain, sizes.0),
        ("with counters", full, sizes.1),
    ] {
        println!(
            "| {what} | {:.1} MB | {ms:.0} | {:.2}× |",
            bytes as f64 / 1e6,
            ms / plain
        );
    }
    Ok(())
}

/// A deployment of `pools` pools, with or without counters, and the URL of its `warmer web`.
async fn deployment(pools: usize, counters: bool) -> anyhow::Result<(String, Names)> {
    let ctx = local_context().await?;
    let amqp = lapin::Connection::connect(warmer_testkit::amqp_url(), Default::default()).await?;
    warmer::declare_topology(&amqp, &ctx.names).await?;
    let names = ctx.names.clone();
    let mut redis = warmer_testkit::bench::redis().await?;
    let key = format!("-----BEGIN RSA PRIVATE KEY-----\n{}\n", "A".repeat(1700));
    let booted_at = now_ms() / 1000 - 600;
    for chunk in (0..pools).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let pool = format!("bench-image-{i}:n1-standard-2");
            pipe.hset(names.pool_configs(), &pool, 2).ignore();
            let entry = json!({
                "name": format!("bench-vm-{i}"), "zone": ZONES[i % 3], "ip": "10.0.0.1",
                "public_ip": null, "ssh_private_key": key, "booted_at": booted_at,
            });
            let name: PoolName = pool.parse().map_err(anyhow::Error::msg)?;
            pipe.rpush(names.pool(&name), entry.to_string()).ignore();
            if counters {
                let hash = format!("{}{pool}", names.pool_metrics_key_prefix());
                let zone = ZONES[i % 3];
                for (field, n) in [
                    ("checkouts|handed_out".to_string(), 1200 + i),
                    ("checkouts|pool_empty".to_string(), i % 17),
                    (format!("boots|{zone}|ready"), 1200 + i),
                    (format!("boots|{}|ready", ZONES[(i + 1) % 3]), 40),
                    (format!("boots|{zone}|failed_halfway"), i % 5),
                    ("evictions|surplus".to_string(), i % 7),
                    // VM-seconds: so far, the level, and since when (ms).
                    ("idle_vm|ms".to_string(), 86_400_000 + i),
                    ("idle_vm|level".to_string(), 2),
                    ("booting_vm|ms".to_string(), 3_600_000 + i),
                    ("booting_vm|level".to_string(), 0),
                    ("handed_vm|ms".to_string(), 7_200_000 + i),
                    ("handed_vm|level".to_string(), 1),
                ] {
                    pipe.hincr(&hash, field, n).ignore();
                }
                for family in ["idle_vm", "booting_vm", "handed_vm"] {
                    pipe.hset(&hash, format!("{family}|since"), now_ms() - 60_000)
                        .ignore();
                }
                // Every pool sized by a policy, with the sizer's last decision.
                let policy = json!({"min": 1, "max": 20, "adaptive": true, "hit": 0.99,
                    "schedules": ["* 7-18 * * MON-FRI@Europe/Berlin=4"]});
                pipe.hset(names.policies(), &pool, policy.to_string())
                    .ignore();
                let decision = json!({"target": 2, "reason": "demand", "at": booted_at,
                    "boot_secs": 45, "per_minute": 1.5});
                pipe.hset(names.sizing(), &pool, decision.to_string())
                    .ignore();
            }
        }
        let _: () = pipe.query_async(&mut redis).await?;
    }
    if counters {
        let global = names.metrics();
        for (family, bounds) in [("checkout_wait", 12), ("reconcile_duration", 11)] {
            for bucket in 0..bounds {
                let _: () = redis
                    .hincr(&global, format!("{family}|{bucket}"), 100)
                    .await?;
            }
            let _: () = redis
                .hincr(&global, format!("{family}|sum_ms"), 123_456)
                .await?;
        }
        for zone in ZONES {
            for bucket in 0..10 {
                let _: () = redis
                    .hincr(&global, format!("boot_duration|{zone}|{bucket}"), 1000)
                    .await?;
            }
            let _: () = redis
                .hincr(&global, format!("boot_duration|{zone}|sum_ms"), 45_000_000)
                .await?;
        }
        for (field, n) in [
            ("deletions|surplus", 5000),
            ("deletions|gone", 12),
            ("reconcile_passes|ok", 20_000),
            ("reconcile_passes|failed", 3),
            ("checkouts|no_pool", 9),
        ] {
            let _: () = redis.hincr(&global, field, n).await?;
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (trigger, shutdown) = warmer::shutdown::channel();
    // The server runs for the bench's lifetime.
    std::mem::forget(trigger);
    tokio::spawn(warmer::web::serve(ctx, listener, shutdown));
    Ok((url, names))
}
