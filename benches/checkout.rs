//! Checkout latency and throughput against minimal consumers, on the real Redis and RabbitMQ.
//!
//!     cargo bench --bench checkout            # BENCH_ROUNDS=3 BENCH_REQUESTS=2000 by default
//!
//! Scenarios, measured in the same run and interleaved round by round (this machine is noisy,
//! so the ratios are what count):
//! - `quorum baseline`: a minimal consumer on warmer's checkout queue (quorum, declared by
//!   warmer) that does one Redis round trip (LPOP) and one reply per request, then acks: the
//!   reference the ratios are taken against;
//! - `classic baseline`: the same on a classic durable queue;
//! - `warmer`: `warmer::checkout::run` on its own queue.
//!
//! Each requester uses direct reply-to and sends its requests one after another; latency is
//! from publish to reply. Besides latency and throughput it reports the messages the broker
//! writes to a queue per checkout (the request, and refill hints, counted in the refill queue,
//! which no consumer empties during the run) and the CPU time per checkout of RabbitMQ, Redis
//! and the bench process. The table is printed as Markdown for docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use redis::AsyncCommands;
use warmer::PoolName;
use warmer::shutdown;

use warmer_testkit::bench::{POOL, check_out, env_or, median, wait_for_consumer};
use warmer_testkit::{amqp_url, redis_url, remove_deployment};

const VM: &str = r#"{"name":"travis-job-00000000-0000-0000-0000-000000000000","zone":"us-central1-c","ip":"10.10.42.86","public_ip":null,"ssh_private_key":"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,0123456789ABCDEF0123456789ABCDEF\n\nMIIEpAIBAAKCAQEA...about 1.7 kB of base64 in a real key...\n-----END RSA PRIVATE KEY-----\n","booted_at":1700000000}"#;

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    QuorumBaseline,
    ClassicBaseline,
    Warmer,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::QuorumBaseline => "quorum baseline (LPOP + reply)",
            Scenario::ClassicBaseline => "classic baseline (LPOP + reply)",
            Scenario::Warmer => "warmer checkout",
        }
    }
}

struct Sample {
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// Messages written to a queue during the measured run (requests, refill hints).
    queue_writes: usize,
    /// CPU ticks spent during the measured run by RabbitMQ, Redis and this process.
    cpu: Cpu,
}

/// CPU time (clock ticks, `/proc/<pid>/stat` utime + stime) of the processes under load.
#[derive(Clone, Copy, Default)]
struct Cpu {
    broker: u64,
    redis: u64,
    bench: u64,
}

impl Cpu {
    fn now() -> Self {
        let of = |comm: &str| -> u64 {
            let Ok(dir) = std::fs::read_dir("/proc") else {
                return 0;
            };
            dir.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm)
                })
                .map(|e| ticks(&e.path().join("stat")))
                .sum()
        };
        Cpu {
            broker: of("beam.smp"),
            redis: of("redis-server"),
            bench: ticks(std::path::Path::new("/proc/self/stat")),
        }
    }

    fn since(self, start: Cpu) -> Cpu {
        Cpu {
            broker: self.broker.saturating_sub(start.broker),
            redis: self.redis.saturating_sub(start.redis),
            bench: self.bench.saturating_sub(start.bench),
        }
    }
}

/// utime + stime of one `/proc/<pid>/stat` (fields 14 and 15; the command name may hold spaces,
/// so count from the closing parenthesis).
fn ticks(stat: &std::path::Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return 0;
    };
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let total: usize = env_or("BENCH_REQUESTS", 2000);
    let amqp = Connection::connect(amqp_url(), ConnectionProperties::default()).await?;

    let mut table = Vec::new();
    let concurrencies: Vec<usize> = match std::env::var("BENCH_CONCURRENCY") {
        Ok(only) => vec![only.parse()?],
        Err(_) => vec![1, 32],
    };
    for concurrency in concurrencies {
        let requests = if concurrency == 1 { total / 4 } else { total };
        let mut results: Vec<(Scenario, Vec<Sample>)> = [
            Scenario::QuorumBaseline,
            Scenario::ClassicBaseline,
            Scenario::Warmer,
        ]
        .into_iter()
        .map(|s| (s, Vec::new()))
        .collect();
        for _ in 0..rounds {
            for (scenario, samples) in &mut results {
                samples.push(run(&amqp, *scenario, concurrency, requests).await?);
            }
        }
        let baseline = summarize(&results[0].1);
        for (scenario, samples) in &results {
            let s = summarize(samples);
            table.push(format!(
                "| {} | {concurrency} | {:.2} | {:.2} | {:.0} | {:.2}× | {:.2}× | {:.2}× | {:.2} | {:.0} / {:.0} / {:.0} |",
                scenario.label(),
                s.p50_ms,
                s.p99_ms,
                s.throughput,
                s.p50_ms / baseline.p50_ms,
                s.p99_ms / baseline.p99_ms,
                s.throughput / baseline.throughput,
                s.queue_writes,
                s.cpu_us[0],
                s.cpu_us[1],
                s.cpu_us[2],
            ));
        }
    }
    println!(
        "\n{rounds} rounds of {total} requests at concurrency 32 ({} at 1); medians of the rounds.\n",
        total / 4
    );
    println!(
        "| scenario | concurrent requesters | p50 ms | p99 ms | checkouts/s | p50 vs quorum | p99 vs quorum | throughput vs quorum | queue writes per checkout | CPU µs per checkout: RabbitMQ / Redis / bench process |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in table {
        println!("{row}");
    }
    Ok(())
}

struct Summary {
    p50_ms: f64,
    p99_ms: f64,
    queue_writes: f64,
    throughput: f64,
    /// CPU µs per checkout: RabbitMQ, Redis, this process (requesters and consumer).
    cpu_us: [f64; 3],
}

/// Linux's USER_HZ: `/proc` counts CPU time in hundredths of a second.
const TICK_US: f64 = 10_000.0;

fn summarize(samples: &[Sample]) -> Summary {
    let percentile = |s: &Sample, p: f64| {
        let mut l = s.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 * p) as usize).min(l.len() - 1);
        l[i].as_secs_f64() * 1000.0
    };
    Summary {
        p50_ms: median(samples.iter().map(|s| percentile(s, 0.50)).collect()),
        p99_ms: median(samples.iter().map(|s| percentile(s, 0.99)).collect()),
        throughput: median(
            samples
                .iter()
                .map(|s| s.latencies.len() as f64 / s.elapsed.as_secs_f64())
                .collect(),
        ),
        queue_writes: median(
            samples
                .iter()
                .map(|s| s.queue_writes as f64 / s.latencies.len() as f64)
                .collect(),
        ),
        cpu_us: [|c: Cpu| c.broker, |c: Cpu| c.redis, |c: Cpu| c.bench].map(|of| {
            median(
                samples
                    .iter()
                    .map(|s| of(s.cpu) as f64 * TICK_US / s.latencies.len() as f64)
                    .collect(),
            )
        }),
    }
}

/// One measurement: a fresh deployment, a full pool, `requests` checkouts by `concurrency`
/// requesters.
async fn run(
    amqp: &Connection,
    scenario: Scenario,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<Sample> {
    let ctx = warmer_testkit::bench::local_context().await?;
    let names = ctx.names.clone();
    let channel = amqp.create_channel().await?;
    warmer::declare_topology(amqp, &names).await?;
    let pool: PoolName = POOL.parse().map_err(anyhow::Error::msg)?;
    ctx.store.set_target(&pool, requests as u32).await?;
    let mut redis = warmer_testkit::bench::redis().await?;
    let warmup = 20 * concurrency;
    let entries = vec![VM.to_string(); requests + warmup];
    let _: () = redis.rpush(names.pool(&pool), entries).await?;

    let queue = match scenario {
        Scenario::ClassicBaseline => {
            let classic = format!("{}.classic", ctx.names.prefix());
            let durable = lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            channel
                .queue_declare(classic.as_str().into(), durable, FieldTable::default())
                .await?;
            classic
        }
        _ => names.checkout_queue(),
    };
    let (trigger, stop) = shutdown::channel();
    let consumer = match scenario {
        Scenario::Warmer => tokio::spawn(warmer::checkout::run(ctx.clone(), stop)),
        _ => tokio::spawn(baseline(queue.clone(), names.pool(&pool), stop)),
    };
    wait_for_consumer(amqp, &queue).await?;

    let requesters =
        Arc::new(Connection::connect(amqp_url(), ConnectionProperties::default()).await?);
    // Warm-up, then the measured run.
    load(&requesters, &queue, concurrency, warmup).await?;
    let hints_before = queue_length(amqp, &names.refill_queue()).await?;
    let started = Instant::now();
    let cpu = Cpu::now();
    let latencies = load(&requesters, &queue, concurrency, requests).await?;
    let cpu = Cpu::now().since(cpu);
    let elapsed = started.elapsed();

    trigger.fire();
    consumer.await??;
    // Hints are published off the request's path: count them once the consumer has stopped.
    let hints = queue_length(amqp, &names.refill_queue()).await? - hints_before;
    let _ = requesters.close(200, "bye".into()).await;
    if scenario == Scenario::ClassicBaseline {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    let _ = channel.close(200, "ok".into()).await;
    remove_deployment(&names).await;
    Ok(Sample {
        queue_writes: latencies.len() + hints,
        latencies,
        elapsed,
        cpu,
    })
}

/// Ready messages in `queue`.
async fn queue_length(amqp: &Connection, queue: &str) -> anyhow::Result<usize> {
    let channel = amqp.create_channel().await?;
    let length = warmer::passive_declare(&channel, queue)
        .await?
        .message_count();
    let _ = channel.close(200, "ok".into()).await;
    Ok(length as usize)
}

/// `concurrency` requesters sending `total` requests between them; returns every latency.
async fn load(
    amqp: &Arc<Connection>,
    queue: &str,
    concurrency: usize,
    total: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let channel = amqp.create_channel().await?;
        let queue = queue.to_string();
        let count = total / concurrency;
        tasks.push(tokio::spawn(async move {
            let mut replies = warmer::consume_direct_replies(&channel).await?;
            let mut latencies = Vec::with_capacity(count);
            for _ in 0..count {
                let patience = Duration::from_secs(30);
                let (sent, replied) =
                    check_out(&channel, &mut replies, &queue, true, patience).await?;
                latencies.push(replied - sent);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// The baseline: one Redis round trip and one reply per request, nothing else.
async fn baseline(queue: String, key: String, stop: shutdown::Shutdown) -> anyhow::Result<()> {
    let amqp = Connection::connect(amqp_url(), ConnectionProperties::default()).await?;
    let channel = amqp.create_channel().await?;
    let publisher = amqp.create_channel().await?;
    channel
        .basic_qos(warmer::checkout::PREFETCH, BasicQosOptions::default())
        .await?;
    let redis = redis::aio::ConnectionManager::new(redis::Client::open(redis_url())?).await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            _ = stop.wait() => break,
            next = consumer.next() => match next {
                Some(delivery) => delivery?,
                None => break,
            },
        };
        let (mut redis, publisher, key) = (redis.clone(), publisher.clone(), key.clone());
        tokio::spawn(async move {
            let entry: Option<String> = redis.lpop(&key, None).await?;
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_correlation_id(
                    delivery
                        .properties
                        .correlation_id()
                        .clone()
                        .unwrap_or_default(),
                );
            let reply_to = delivery.properties.reply_to().clone().unwrap_or_default();
            publisher
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    entry.unwrap_or_default().as_bytes(),
                    properties,
                )
                .await?;
            delivery.ack(Default::default()).await?;
            anyhow::Ok(())
        });
    }
    let _ = amqp.close(200, "bye".into()).await;
    Ok(())
}
