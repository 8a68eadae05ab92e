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
//!
//! Then the memory of a real `warmer reconcile` process: a busy world of `BENCH_RSS_VMS`
//! (30,000) VMs whose entries carry a key-sized `ssh_private_key` (as real ones do, ~2 kB), one
//! pass, and the process's peak RSS (`VmHWM`). `WARMER_BINARY` measures another build of warmer
//! the same way (for a before/after).

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::json;
use warmer::Cloud;
use warmer::Context;
use warmer::PoolName;
use warmer::now_ms;
use warmer::reconcile::Reconciler;

use warmer_testkit::ComputeStandIn;
use warmer_testkit::bench::{context, env_or, vars};
use warmer_testkit::compute;

const POOLS: usize = 10;
const ZONE: &str = "us-central1-a";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let vms = env_or("BENCH_VMS", 1000);
    let rounds = env_or("BENCH_ROUNDS", 5);
    let compute = ComputeStandIn::start(Duration::ZERO).await;
    let settings = vars(&[
        ("WARMER_GOOGLE_CLOUD_ZONES", ZONE),
        ("WARMER_ORPHAN_THRESHOLD", "100000"),
    ]);
    let ctx = context(compute.env().into_iter().chain(settings)).await?;
    let prefix = ctx.names.namespace().to_string();
    let cloud = Cloud::from_config(&ctx.config, &ctx.store).await?;
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

    let rss_vms = env_or("BENCH_RSS_VMS", 30_000);
    let binary = std::env::var("WARMER_BINARY").unwrap_or(env!("CARGO_BIN_EXE_warmer").into());
    build_world_sized(&ctx, &compute, &pools, rss_vms, rss_vms / 10, KEY_SIZED).await?;
    let peak_kib =
        reconcile_process_peak(&binary, &vars_of(&ctx, &compute), &ctx, rss_vms / 10).await?;
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
    println!(
        "\n`warmer reconcile` ({binary}), one busy pass over {rss_vms} VMs with ~2 kB entries: peak RSS {:.1} MB\n",
        peak_kib as f64 / 1024.0
    );
    Ok(())
}

/// An SSH key's size of base64, as in a real pool entry.
const KEY_SIZED: usize = 1_700;

/// The environment of the benchmark's deployment, for a process of its own.
fn vars_of(ctx: &Context, compute: &ComputeStandIn) -> Vec<(String, String)> {
    [
        ("WARMER_AMQP_PREFIX", ctx.names.prefix().to_string()),
        ("WARMER_REDIS_NAMESPACE", ctx.names.namespace().to_string()),
        ("WARMER_PROVIDER", "gce".into()),
        ("WARMER_GOOGLE_CLOUD_PROJECT", compute::PROJECT.into()),
        ("WARMER_GOOGLE_CLOUD_REGION", compute::REGION.into()),
        ("WARMER_GOOGLE_CLOUD_ZONES", ZONE.into()),
        ("WARMER_GOOGLE_COMPUTE_URL", compute.compute_url()),
        ("WARMER_GOOGLE_CLOUD_KEYFILE_JSON", compute.keyfile_json()),
        (
            "WARMER_SSH_KEY_PASSPHRASE",
            warmer_testkit::PASSPHRASE.into(),
        ),
        ("WARMER_ORPHAN_THRESHOLD", "100000".into()),
        ("WARMER_RECONCILE_INTERVAL", "10m".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Runs `warmer reconcile` until its first pass has marked `marks` suspects; returns its peak
/// RSS in KiB.
async fn reconcile_process_peak(
    binary: &str,
    vars: &[(String, String)],
    ctx: &Context,
    marks: usize,
) -> anyhow::Result<u64> {
    let mut child = tokio::process::Command::new(binary)
        .arg("reconcile")
        .env_clear()
        .envs(vars.iter().cloned())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let mut redis = warmer_testkit::bench::redis().await?;
    let started = Instant::now();
    loop {
        let marked: usize = redis.scard(ctx.names.suspects()).await?;
        if marked >= marks {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "no pass in 5 minutes"
        );
        if let Some(exit) = child.try_wait()? {
            anyhow::bail!("`warmer reconcile` exited ({exit}) before its pass");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    Ok(peak)
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
    build_world_sized(ctx, compute, pools, vms, faults, 3).await
}

/// [`build_world`] with entries whose key is `key_size` bytes.
async fn build_world_sized(
    ctx: &Context,
    compute: &ComputeStandIn,
    pools: &[PoolName],
    vms: usize,
    faults: usize,
    key_size: usize,
) -> anyhow::Result<()> {
    let key = "K".repeat(key_size);
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
                       "ssh_private_key": key, "booted_at": booted_at})
                .to_string()
            })
            .collect();
        for chunk in entries.chunks(1_000) {
            let _: () = redis.rpush(ctx.names.pool(pool), chunk).await?;
        }
    }
    for k in 0..faults {
        compute.add_instance(&format!("travis-job-stray-{k:04}"), ZONE, labels.clone());
    }
    Ok(())
}
