//! Reconcile pass time at 1,000 VMs on the Compute Engine stand-in, against the I/O floor.
//!
//!     cargo bench --bench reconcile           # BENCH_VMS=1000 BENCH_ROUNDS=5 by default
//!
//! A deployment with `BENCH_VMS` warmed VMs spread over 10 pools, all at the stand-in and all
//! accounted for, measured three ways in the same run, interleaved, medians reported:
//! - `floor`: the I/O any pass must do: one Redis read of every pool list and one paginated
//!   `aggregatedList` (500 per page) of the same VMs;
//! - `idle pass`: `Reconciler::pass` over that world (nothing to do);
//! - `busy pass`: the same world where 10 % of the pool entries' VMs are gone and 10 % more VMs
//!   are unaccounted for (evict 100, mark 100), rebuilt before each round.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::json;
use warmer::Cloud;
use warmer::Config;
use warmer::Context;
use warmer::PoolName;
use warmer::now_ms;
use warmer::reconcile::Reconciler;

use warmer_testkit::ComputeStandIn;
use warmer_testkit::bench::env_or;
use warmer_testkit::compute;

const POOLS: usize = 10;
const ZONE: &str = "us-central1-a";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let vms = env_or("BENCH_VMS", 1000);
    let rounds = env_or("BENCH_ROUNDS", 5);
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let keyfile = compute.keyfile_json();
    let url = compute.compute_url();
    let vars = [
        ("WARMER_AMQP_PREFIX", prefix.as_str()),
        ("WARMER_REDIS_NAMESPACE", prefix.as_str()),
        ("WARMER_PROVIDER", "gce"),
        ("WARMER_GOOGLE_CLOUD_PROJECT", compute::PROJECT),
        ("WARMER_GOOGLE_CLOUD_REGION", compute::REGION),
        ("WARMER_GOOGLE_CLOUD_ZONES", ZONE),
        ("WARMER_GOOGLE_COMPUTE_URL", url.as_str()),
        ("WARMER_GOOGLE_CLOUD_KEYFILE_JSON", keyfile.as_str()),
        ("WARMER_SSH_KEY_PASSPHRASE", "bench"),
        ("WARMER_ORPHAN_THRESHOLD", "100000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let ctx = Context::new(Config::from_vars(vars)?).await?;
    let cloud = Cloud::from_config(&ctx.config).await?;
    let reconciler = Reconciler::new(ctx.clone(), cloud.clone());
    let pools: Vec<PoolName> = (0..POOLS)
        .map(|i| format!("bench-image-{i}:n1-standard-2").parse())
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;

    let (mut floor, mut idle, mut busy) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        build_world(&ctx, &compute, &pools, vms, 0).await?;
        let started = Instant::now();
        let mut redis = warmer_testkit::bench::redis().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for pool in &pools {
            pipe.lrange(ctx.names.pool(pool), 0, -1);
        }
        let _: Vec<Vec<String>> = pipe.query_async(&mut redis).await?;
        let listed = cloud.list(ctx.names.namespace()).await?;
        anyhow::ensure!(listed.len() == vms, "listed {} of {vms}", listed.len());
        floor.push(started.elapsed());

        let report = reconciler.pass(None).await?;
        anyhow::ensure!(report.plan.is_idle(), "an accounted world needs nothing");
        idle.push(report.elapsed);

        build_world(&ctx, &compute, &pools, vms, vms / 10).await?;
        let report = reconciler.pass(None).await?;
        anyhow::ensure!(report.evicted == vms / 10, "evicted {}", report.evicted);
        anyhow::ensure!(
            report.plan.mark.len() == vms / 10,
            "marked {}",
            report.plan.mark.len()
        );
        busy.push(report.elapsed);
    }
    let keys: Vec<String> = warmer_testkit::bench::redis()
        .await?
        .keys(format!("{prefix}:*"))
        .await?;
    if !keys.is_empty() {
        let _: () = warmer_testkit::bench::redis().await?.del(keys).await?;
    }

    let median = |mut d: Vec<Duration>| {
        d.sort();
        d[d.len() / 2].as_secs_f64() * 1000.0
    };
    let base = median(floor.clone());
    println!("\n{vms} VMs over {POOLS} pools, {rounds} rounds, medians.\n");
    println!("| measurement | ms | vs floor |");
    println!("|---|---:|---:|");
    for (label, samples) in [
        ("floor: Redis read + paginated aggregatedList", floor),
        ("idle pass (everything accounted for)", idle),
        ("busy pass (evict 10 %, mark 10 %)", busy),
    ] {
        let ms = median(samples);
        println!("| {label} | {ms:.1} | {:.2}× |", ms / base);
    }
    Ok(())
}

/// `vms` warmed VMs, all in pools and at the stand-in; then `faults` pool entries lose their VM
/// and `faults` VMs appear that nothing accounts for.
async fn build_world(
    ctx: &Context,
    compute: &ComputeStandIn,
    pools: &[PoolName],
    vms: usize,
    faults: usize,
) -> anyhow::Result<()> {
    let mut redis = warmer_testkit::bench::redis().await?;
    let keys: Vec<String> = redis.keys(format!("{}:*", ctx.names.namespace())).await?;
    if !keys.is_empty() {
        let _: () = redis.del(keys).await?;
    }
    compute.with(|s| s.instances.clear());
    let labels = json!({"warmth": "warmed", "warmer": ctx.names.namespace()});
    let booted_at = now_ms() / 1000 - 3600;
    for (i, pool) in pools.iter().enumerate() {
        ctx.store
            .set_target(pool, (vms / pools.len()) as u32)
            .await?;
        let entries: Vec<String> = (0..vms / pools.len())
            .map(|j| {
                let name = format!("travis-job-{i:02}-{j:04}");
                if j >= faults / pools.len() {
                    compute.add_instance(&name, ZONE, labels.clone());
                }
                json!({"name": name, "zone": ZONE, "ip": "10.0.0.1", "public_ip": null,
                       "ssh_private_key": "KEY", "booted_at": booted_at})
                .to_string()
            })
            .collect();
        let _: () = redis.rpush(ctx.names.pool(pool), entries).await?;
    }
    for k in 0..faults {
        compute.add_instance(&format!("travis-job-stray-{k:04}"), ZONE, labels.clone());
    }
    Ok(())
}
