//! Refill latency and parallelism on the Compute Engine stand-in, with the real Redis and
//! RabbitMQ.
//!
//!     cargo bench --bench refill      # BENCH_CHECKOUTS=100 BENCH_ROUNDS=3 by default
//!
//! Scenarios, each on a fresh AMQP prefix and Redis namespace (removed afterwards), with
//! `warmer::checkout::run` and `warmer::refill::run` in this process and the stand-in
//! (`tests/api/compute.rs`) serving Compute Engine on loopback:
//! - `replacement`: a pool at target 4 (filled by a fill command first), then
//!   `BENCH_CHECKOUTS` sequential checkouts over direct reply-to; for each, the time from the
//!   reply's arrival to the stand-in receiving the replacement's `instances.insert`. The pool is
//!   back at target before the next checkout. Stand-in boot delay 50 ms.
//! - `fill`: stand-in boot delay 1 s, `WARMER_BOOT_CONCURRENCY=8`; for N in 1, 4, 8 a pool with
//!   target N starts empty, a fill command is published, and the wall time until the pool holds
//!   N VMs is measured. N = 1 is the one-boot reference. `BENCH_ROUNDS` rounds, interleaved;
//!   medians are reported.
//!
//! The stand-in records insert calls without times, so a thread samples the number of insert
//! calls every 200 µs and stamps each new one; the resolution is printed with the table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};
use redis::AsyncCommands;
use tokio::task::JoinHandle;
use warmer::Context;
use warmer::Names;
use warmer::PoolName;
use warmer::Secret;
use warmer::shutdown::{self, Shutdown, Trigger};

use warmer_testkit::ComputeStandIn;
use warmer_testkit::bench::{POOL, check_out, context, env_or, median, vars, wait_for_consumer};
use warmer_testkit::{amqp_url, redis_url, remove_deployment};

/// Pool target of the replacement scenario.
const TARGET: u32 = 4;
/// Stand-in boot delay of the replacement scenario.
const SHORT_BOOT: Duration = Duration::from_millis(50);
/// Stand-in boot delay of the fill scenario.
const ONE_BOOT: Duration = Duration::from_secs(1);
/// How often the insert sampler looks at the stand-in.
const SAMPLE_EVERY: Duration = Duration::from_micros(200);
/// Every wait in the benchmark is bounded by this.
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(warmer::telemetry::filter("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let checkouts: usize = env_or("BENCH_CHECKOUTS", 100);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let amqp = Connection::connect(amqp_url(), ConnectionProperties::default()).await?;

    let keygen = keygen_ms(10).await?;
    let replacement = replacement(&amqp, checkouts).await?;

    let sizes = [1usize, 4, 8];
    let mut fills: Vec<Vec<FillSample>> = vec![Vec::new(); sizes.len()];
    for _ in 0..rounds {
        for (i, n) in sizes.iter().enumerate() {
            fills[i].push(fill(&amqp, *n).await?);
        }
    }

    let r = &replacement;
    println!(
        "\n{checkouts} sequential checkouts from a pool at target {TARGET}, stand-in boot delay {} ms; \
         insert arrivals sampled every {} µs (measured mean period {:.0} µs, so times are late by at most about that).\n",
        SHORT_BOOT.as_millis(),
        SAMPLE_EVERY.as_micros(),
        r.sample_period.as_secs_f64() * 1e6,
    );
    println!("| measure | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for (label, values) in [
        (
            "checkout reply → replacement `instances.insert` at the stand-in",
            &r.to_insert,
        ),
        ("request published → checkout reply", &r.to_reply),
        (
            "checkout reply → pool back at target (1 ms polling)",
            &r.to_refilled,
        ),
    ] {
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} |",
            percentile(values, 0.50),
            percentile(values, 0.99),
            percentile(values, 1.0),
        );
    }
    println!(
        "\nFor comparison: RSA-2048 key generation alone (`sshkey::generate_blocking`, which every boot runs before its insert) took p50 {:.1} ms, max {:.1} ms over 10 keys on this machine.",
        percentile(&keygen, 0.50),
        percentile(&keygen, 1.0),
    );
    if r.early > 0 {
        println!(
            "\n{} insert(s) were seen before their checkout reply arrived (counted as 0 ms).",
            r.early
        );
    }

    let medians: Vec<f64> = fills
        .iter()
        .map(|s| median(s.iter().map(|f| f.elapsed.as_secs_f64()).collect()))
        .collect();
    let one_boot = medians[0];
    println!(
        "\nFill from empty, stand-in boot delay {} s, WARMER_BOOT_CONCURRENCY=8; {rounds} round(s), medians; \
         N = 1 is the one-boot reference of the same run.\n",
        ONE_BOOT.as_secs()
    );
    println!(
        "| VMs filled (N) | wall time s | time / one boot | fastest – slowest round s | stand-in peak in flight | insert calls |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for ((n, samples), wall) in sizes.iter().zip(&fills).zip(&medians) {
        let times: Vec<f64> = samples.iter().map(|f| f.elapsed.as_secs_f64()).collect();
        let fastest = times.iter().copied().fold(f64::INFINITY, f64::min);
        let slowest = times.iter().copied().fold(0.0, f64::max);
        let peaks: Vec<String> = samples.iter().map(|f| f.peak.to_string()).collect();
        let calls: Vec<String> = samples.iter().map(|f| f.insert_calls.to_string()).collect();
        println!(
            "| {n} | {wall:.2} | {:.2}× | {fastest:.2} – {slowest:.2} | {} | {} |",
            wall / one_boot,
            peaks.join(", "),
            calls.join(", "),
        );
    }
    let _ = amqp.close(200, "bye".into()).await;
    Ok(())
}

/// Nearest-rank percentile of `values`, in ms.
fn percentile(values: &[Duration], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// Times `n` RSA-2048 key generations, one after another on the blocking pool.
async fn keygen_ms(n: usize) -> anyhow::Result<Vec<Duration>> {
    let passphrase = Secret::new("bench passphrase");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let passphrase = passphrase.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || warmer::generate_ssh_key(&passphrase)).await??;
        times.push(started.elapsed());
    }
    Ok(times)
}

/// One deployment on its own prefix and namespace, booting on `compute`.
struct Deployment {
    ctx: Context,
    names: Names,
    pool: PoolName,
    redis: redis::aio::ConnectionManager,
    trigger: Trigger,
    stop: Shutdown,
    consumers: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Deployment {
    async fn new(
        amqp: &Connection,
        compute: &ComputeStandIn,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let servers = [
            ("WARMER_AMQP_URL", amqp_url()),
            ("WARMER_REDIS_URL", redis_url()),
        ];
        let settings = vars(&servers).into_iter().chain(vars(extra));
        let ctx = context(compute.env().into_iter().chain(settings)).await?;
        let names = ctx.names.clone();
        let channel = amqp.create_channel().await?;
        warmer::declare_topology(amqp, &names).await?;
        let _ = channel.close(200, "ok".into()).await;
        let (trigger, stop) = shutdown::channel();
        Ok(Deployment {
            redis: warmer_testkit::bench::redis().await?,
            pool: POOL.parse().map_err(anyhow::Error::msg)?,
            ctx,
            names,
            trigger,
            stop,
            consumers: Vec::new(),
        })
    }

    async fn start_refill(&mut self, amqp: &Connection) -> anyhow::Result<()> {
        let cloud = warmer::Cloud::from_config(&self.ctx.config, &self.ctx.store).await?;
        let run = warmer::refill::run_on(self.ctx.clone(), cloud, self.stop.clone());
        self.consumers.push(tokio::spawn(run));
        wait_for_consumer(amqp, &self.names.refill_queue()).await
    }

    async fn start_checkout(&mut self, amqp: &Connection) -> anyhow::Result<()> {
        let run = warmer::checkout::run(self.ctx.clone(), self.stop.clone());
        self.consumers.push(tokio::spawn(run));
        wait_for_consumer(amqp, &self.names.checkout_queue()).await
    }

    async fn ready(&self) -> anyhow::Result<usize> {
        Ok(self.redis.clone().llen(self.names.pool(&self.pool)).await?)
    }

    /// Waits until the pool list holds `n` entries, polling every millisecond.
    async fn wait_for_ready(&self, n: usize) -> anyhow::Result<()> {
        tokio::time::timeout(PATIENCE, async {
            while self.ready().await? < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("the pool did not reach {n} VMs within {PATIENCE:?}"))?
    }

    async fn fill(&self) -> anyhow::Result<()> {
        warmer::operator::fill(&self.ctx, Some(&self.pool), None).await?;
        Ok(())
    }

    /// Stops the consumers (as SIGTERM would), waits for them, and removes the queues, the
    /// events exchange and the namespace's keys.
    async fn tear_down(mut self) -> anyhow::Result<()> {
        self.trigger.fire();
        let mut result = Ok(());
        for consumer in self.consumers.drain(..) {
            match consumer.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => result = Err(error.context("a consumer failed")),
                Err(error) => {
                    result = Err(anyhow::Error::new(error).context("a consumer panicked"))
                }
            }
        }
        remove_deployment(&self.names).await;
        result
    }
}

/// Stamps each insert call the stand-in receives, from a thread of its own that looks every
/// [`SAMPLE_EVERY`] (tokio's timer is 1 ms coarse, and spinning would take a core from key
/// generation on this 2-core machine).
struct InsertSampler {
    arrivals: Arc<Mutex<Vec<Instant>>>,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Duration)>,
}

impl InsertSampler {
    fn start(compute: &ComputeStandIn) -> Self {
        let state = compute.state.clone();
        let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (arrivals, done) = (arrivals.clone(), done.clone());
            move || {
                let started = Instant::now();
                let mut samples = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let calls = state.lock().unwrap().insert_calls.len();
                    let now = Instant::now();
                    let mut seen = arrivals.lock().unwrap();
                    while seen.len() < calls {
                        seen.push(now);
                    }
                    drop(seen);
                    samples += 1;
                    std::thread::sleep(SAMPLE_EVERY);
                }
                (samples, started.elapsed())
            }
        });
        InsertSampler {
            arrivals,
            done,
            thread,
        }
    }

    /// When insert call number `index` (0-based) was seen, once it has been.
    fn arrival(&self, index: usize) -> Option<Instant> {
        self.arrivals.lock().unwrap().get(index).copied()
    }

    /// Stops the thread; returns its mean sampling period.
    fn stop(self) -> Duration {
        self.done.store(true, Ordering::Relaxed);
        let (samples, elapsed) = self.thread.join().expect("sampler thread");
        elapsed / samples.max(1) as u32
    }
}

struct Replacement {
    to_insert: Vec<Duration>,
    to_reply: Vec<Duration>,
    to_refilled: Vec<Duration>,
    early: usize,
    sample_period: Duration,
}

async fn replacement(amqp: &Connection, checkouts: usize) -> anyhow::Result<Replacement> {
    let compute = ComputeStandIn::start(SHORT_BOOT).await;
    let mut deployment = Deployment::new(amqp, &compute, &[]).await?;
    let result = measure_replacement(amqp, &compute, &mut deployment, checkouts).await;
    let torn_down = deployment.tear_down().await;
    let result = result?;
    torn_down?;
    Ok(result)
}

async fn measure_replacement(
    amqp: &Connection,
    compute: &ComputeStandIn,
    deployment: &mut Deployment,
    checkouts: usize,
) -> anyhow::Result<Replacement> {
    let target = TARGET as usize;
    deployment
        .ctx
        .store
        .set_target(&deployment.pool, TARGET)
        .await?;
    deployment.start_refill(amqp).await?;
    deployment.start_checkout(amqp).await?;
    deployment.fill().await?;
    deployment.wait_for_ready(target).await?;

    let channel = amqp.create_channel().await?;
    let mut replies = warmer::consume_direct_replies(&channel).await?;
    let sampler = InsertSampler::start(compute);
    let queue = deployment.names.checkout_queue();
    let mut out = Replacement {
        to_insert: Vec::with_capacity(checkouts),
        to_reply: Vec::with_capacity(checkouts),
        to_refilled: Vec::with_capacity(checkouts),
        early: 0,
        sample_period: Duration::ZERO,
    };
    for i in 0..checkouts {
        let before = compute.with(|s| s.insert_calls.len());
        let (sent, replied) = check_out(&channel, &mut replies, &queue, true, PATIENCE).await?;
        out.to_reply.push(replied - sent);
        let inserted = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(at) = sampler.arrival(before) {
                    return at;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("no replacement insert after checkout {i}"))?;
        if inserted < replied {
            out.early += 1;
        }
        out.to_insert
            .push(inserted.saturating_duration_since(replied));
        deployment.wait_for_ready(target).await?;
        out.to_refilled.push(replied.elapsed());
    }
    out.sample_period = sampler.stop();
    let _ = channel.close(200, "ok".into()).await;
    let extra = compute.with(|s| s.insert_calls.len()) as isize - (target + checkouts) as isize;
    if extra != 0 {
        println!(
            "note: the stand-in saw {extra:+} insert calls beyond one per VM ({target} + {checkouts})"
        );
    }
    Ok(out)
}

#[derive(Clone)]
struct FillSample {
    elapsed: Duration,
    peak: usize,
    insert_calls: usize,
}

async fn fill(amqp: &Connection, n: usize) -> anyhow::Result<FillSample> {
    let compute = ComputeStandIn::start(ONE_BOOT).await;
    let mut deployment =
        Deployment::new(amqp, &compute, &[("WARMER_BOOT_CONCURRENCY", "8")]).await?;
    let result = measure_fill(amqp, &compute, &mut deployment, n).await;
    let torn_down = deployment.tear_down().await;
    let result = result?;
    torn_down?;
    Ok(result)
}

async fn measure_fill(
    amqp: &Connection,
    compute: &ComputeStandIn,
    deployment: &mut Deployment,
    n: usize,
) -> anyhow::Result<FillSample> {
    deployment
        .ctx
        .store
        .set_target(&deployment.pool, n as u32)
        .await?;
    deployment.start_refill(amqp).await?;
    let started = Instant::now();
    deployment.fill().await?;
    deployment.wait_for_ready(n).await?;
    let elapsed = started.elapsed();
    let (peak, insert_calls) = compute.with(|s| (s.peak_in_flight, s.insert_calls.len()));
    Ok(FillSample {
        elapsed,
        peak,
        insert_calls,
    })
}
