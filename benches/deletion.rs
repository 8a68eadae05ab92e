//! Deleting many orphans against a Compute Engine stand-in that rate-limits like Compute Engine.
//!
//!     cargo bench --bench deletion     # BENCH_ORPHANS=30000 BENCH_LIMIT=minute by default
//!
//! `BENCH_ORPHANS` VMs exist at the stand-in and are recorded in `orphaned`; one deleter (as the
//! reconciler or the refill consumer runs it) deletes them all. The stand-in answers a delete
//! after `BENCH_DELETE_MS` (100) ms and limits them:
//! - `BENCH_LIMIT=minute`: `BENCH_PER_MINUTE` (12,000) deletes per wall-clock minute, then 403
//!   `rateLimitExceeded` until the minute turns, as Compute Engine's write quota does;
//! - `BENCH_LIMIT=second`: `BENCH_PER_SECOND` (200) deletes a second with a burst of 50, then 429.
//!
//! The deleter is given the VMs as the reconciler's listing shows them (`BENCH_LOOKUP=1`: as the
//! refill consumer runs it, with no listing, so each VM is looked up before it is deleted).
//!
//! It reports the time to delete them all, the rate reached against the limit's, the calls
//! refused for the rate, and the most calls in flight; and, for comparison, what the previous
//! deletion (500 orphans per reconcile pass every 30 s, 16 at a time) takes for as many.

use std::time::{Duration, Instant};

use warmer::{Cloud, Deleter, Events, Listed, OrphanRecord};
use warmer_testkit::bench::{context, env_or, vars};
use warmer_testkit::{ComputeStandIn, remove_deployment};

const ZONE: &str = "us-central1-a";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let orphans = env_or("BENCH_ORPHANS", 30_000);
    let delete_ms = env_or("BENCH_DELETE_MS", 100) as u64;
    let per_minute = env_or("BENCH_PER_MINUTE", 12_000);
    let per_second = env_or("BENCH_PER_SECOND", 200);
    let by_minute = std::env::var("BENCH_LIMIT").map_or(true, |l| l != "second");
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    compute.with(|s| {
        s.delete_delay = Duration::from_millis(delete_ms);
        if by_minute {
            s.delete_quota_per_minute = Some(per_minute);
        } else {
            s.delete_rate = Some((per_second as f64, 50.0));
        }
    });
    let zones = vars(&[("WARMER_GOOGLE_CLOUD_ZONES", ZONE)]);
    let ctx = context(compute.env().into_iter().chain(zones)).await?;
    let prefix = ctx.names.namespace().to_string();
    let cloud = Cloud::from_config(&ctx.config, &ctx.store).await?;
    let labels = serde_json::json!({"warmth": "warmed", "warmer": prefix});
    let records: Vec<OrphanRecord> = (0..orphans)
        .map(|i| {
            let name = format!("orphan-{i:05}");
            compute.add_instance(&name, ZONE, labels.clone());
            OrphanRecord::new(&name, Some(ZONE), "surplus")
        })
        .collect();
    for chunk in records.chunks(5_000) {
        ctx.store.record_orphans(chunk).await?;
    }

    let listed: Listed = if std::env::var("BENCH_LOOKUP").is_ok_and(|v| v == "1") {
        Listed::new()
    } else {
        records
            .iter()
            .filter_map(|r| Some((r.name.clone()?, ZONE.to_string())))
            .collect()
    };
    let mut deleter = Deleter::new(ctx.store.clone(), cloud);
    let events = Events::new(ctx.names.clone());
    let started = Instant::now();
    let mut deleted = 0;
    while deleted < orphans {
        let drained = deleter
            .drain(&events, Instant::now() + Duration::from_secs(30), &listed)
            .await;
        anyhow::ensure!(
            drained > 0 || started.elapsed() < Duration::from_secs(900),
            "stalled"
        );
        deleted += drained;
    }
    let elapsed = started.elapsed();
    let (calls, refused, peak, left) = compute.with(|s| {
        (
            s.delete_calls,
            s.rate_limited,
            s.peak_deletes_in_flight,
            s.instances.len(),
        )
    });
    anyhow::ensure!(left == 0, "{left} VMs left at the stand-in");
    anyhow::ensure!(ctx.store.orphan_count().await? == 0, "orphan records left");
    remove_deployment(&ctx.names).await;

    let limit_rate = if by_minute {
        per_minute as f64 / 60.0
    } else {
        per_second as f64
    };
    let rate = orphans as f64 / elapsed.as_secs_f64();
    // The previous deletion: 500 per pass, 16 at a time, a pass every 30 s.
    let passes = orphans.div_ceil(500);
    let previous_min = (passes - 1) as f64 * 30.0 / 60.0;
    println!(
        "\n{orphans} orphans, deletes answered after {delete_ms} ms, limit {}:\n",
        if by_minute {
            format!("{per_minute} per minute (403 rateLimitExceeded beyond)")
        } else {
            format!("{per_second} per second, burst 50 (429 beyond)")
        }
    );
    println!(
        "| deleted | time | rate | vs the limit's rate | calls refused for the rate | most in flight | previous deletion (500 a pass every 30 s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {orphans} | {:.0} s | {rate:.0}/s | {:.2}× | {refused} of {calls} | {peak} | ≥ {previous_min:.1} min ({passes} passes) |",
        elapsed.as_secs_f64(),
        rate / limit_rate,
    );
    Ok(())
}
