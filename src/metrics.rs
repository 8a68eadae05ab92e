//! Metrics: every family `/metrics` exports, how its counters are kept in Redis, and the
//! exposition (Prometheus text 0.0.4, or OpenMetrics when the scraper asks for it).
//!
//! Counters and histograms are written where things happen — by the Lua script that makes the
//! change, in the same step (so a checkout pays no extra round trip and a count is never lost
//! or doubled by a crash or a retry), or by the process for what involves no Redis step — into
//! hashes in Redis: `<ns>:_metrics:<pool>` for a pool's figures and `<ns>:_metrics` for the
//! others. Every process adds to the same hashes, so `warmer web` exports the sum over every
//! dyno, and a restart loses nothing. A field is `<key>|<label value>|...`, the label values in
//! the order [`Family::labels`] gives; a histogram has a field per bucket (the bucket's index in
//! [`Buckets`]) and one `…|sum_ms`.
//!
//! | family | type | labels | written by |
//! |---|---|---|---|
//! | `warmer_checkouts_total` | counter | pool, outcome | checkout.lua, settle.lua, give_back.lua, sweep_leases.lua; `bad_request`, `no_reply_to`, `internal` by the checkout process |
//! | `warmer_checkout_wait_seconds` | histogram | | settle.lua: from a request's delivery to its reply's confirmation |
//! | `warmer_boots_total` | counter | pool, zone, result | finish_boot.lua, abandon_boot.lua |
//! | `warmer_fleet_capped_boots_total` | counter | pool | reserve_boots.lua: boots not started because the fleet was at `WARMER_MAX_VMS` |
//! | `warmer_boot_duration_seconds` | histogram | zone | finish_boot.lua: from the insert call to the VM's joining its pool |
//! | `warmer_evictions_total` | counter | pool, reason | evict.lua, trim_pool.lua, delete_pool.lua |
//! | `warmer_deletions_total` | counter | reason | forget_orphan.lua, once the cloud confirmed |
//! | `warmer_deletions_refused_total` | counter | why | refuse_orphan.lua: records naming what warmer must not delete |
//! | `warmer_reconcile_passes_total` | counter | result | the reconciler |
//! | `warmer_reconcile_duration_seconds` | histogram | | the reconciler |
//! | `warmer_reconcile_last_success_timestamp_seconds` | gauge | | the reconciler |
//!
//! A figure of a pool that does not exist (a checkout of an unknown pool, a boot whose pool was
//! deleted meanwhile) is exported with `pool=""`, so names from outside cannot grow the set of
//! series. The levels (`warmer_pool_*`, orphans, the brake, queue depths) are read when scraped.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::pool::PoolStatus;
use crate::topology::QueueDepth;

/// Histogram bucket bounds, in seconds, chosen for what each measures.
#[derive(Debug, PartialEq)]
pub struct Buckets(&'static [f64]);

/// A checkout takes milliseconds; a slow broker or Redis makes it seconds.
pub const CHECKOUT_WAIT: Buckets = Buckets(&[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
]);
/// A Compute Engine VM boots in 30–90 s; an image that is slow to start, in minutes.
pub const BOOT_DURATION: Buckets =
    Buckets(&[15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0]);
/// A pass over a few pools takes a fraction of a second; one over 30,000 VMs, tens of seconds.
pub const RECONCILE_DURATION: Buckets =
    Buckets(&[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]);

impl Buckets {
    /// The index of the bucket `elapsed` falls in; the bounds' length for `+Inf`.
    pub fn index(&self, elapsed: Duration) -> usize {
        let seconds = elapsed.as_secs_f64();
        self.0
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.0.len())
    }
}

/// How a family's values are kept and exported.
#[derive(Debug)]
enum Kind {
    Counter,
    Histogram(&'static Buckets),
    /// A time stored in milliseconds, exported in seconds.
    Timestamp,
    /// A level integrated over time by the scripts (`integrate` in prelude.lua): `|ms` so far,
    /// `|level` since `|since`; exported as a counter of VM-seconds up to the scrape.
    Integral,
}

/// A family kept in Redis.
#[derive(Debug)]
pub struct Family {
    /// The field prefix in Redis.
    key: &'static str,
    /// The exported name, without the suffix the type adds (`_total`) or the unit's.
    name: &'static str,
    help: &'static str,
    /// The labels stored in the field, in order (`pool` comes from the hash).
    labels: &'static [&'static str],
    /// Kept per pool, in the pool's hash.
    per_pool: bool,
    kind: Kind,
}

/// What became of a checkout request: the `outcome` label of `warmer_checkouts_total`, the
/// checkout process's summary line (`count#warmer.checkouts.<outcome>`), and the field each
/// script that decides an outcome counts ([`CheckoutOutcome::field`], passed to the script:
/// no script spells one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutOutcome {
    /// The reply with a VM was confirmed (settle.lua).
    HandedOut,
    /// The pool had no warmed VM (checkout.lua).
    PoolEmpty,
    /// No such pool (checkout.lua).
    NoPool,
    /// Past its deadline: nothing popped (checkout.lua).
    Expired,
    /// The reply could reach no one: the VM went back (give_back.lua).
    RequesterGone,
    /// Redelivered past its deadline with a pending lease: the VM's fate is unknown, it is
    /// deleted (checkout.lua).
    Unsettled,
    /// A lease never settled within its grace: deleted (sweep_leases.lua).
    LeaseExpired,
    /// Refused as malformed or replayed (the checkout process).
    BadRequest,
    /// No `reply_to`: dead-lettered (the checkout process).
    NoReplyTo,
    /// Redis failed: refused (the checkout process).
    Internal,
    /// The reply's confirmation failed: requeued, so not final and not counted in Redis (the
    /// summary line only).
    ReplyFailed,
}

impl CheckoutOutcome {
    pub const ALL: [CheckoutOutcome; 11] = [
        CheckoutOutcome::HandedOut,
        CheckoutOutcome::PoolEmpty,
        CheckoutOutcome::NoPool,
        CheckoutOutcome::Expired,
        CheckoutOutcome::RequesterGone,
        CheckoutOutcome::Unsettled,
        CheckoutOutcome::LeaseExpired,
        CheckoutOutcome::BadRequest,
        CheckoutOutcome::NoReplyTo,
        CheckoutOutcome::Internal,
        CheckoutOutcome::ReplyFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CheckoutOutcome::HandedOut => "handed_out",
            CheckoutOutcome::PoolEmpty => "pool_empty",
            CheckoutOutcome::NoPool => "no_pool",
            CheckoutOutcome::Expired => "expired",
            CheckoutOutcome::RequesterGone => "requester_gone",
            CheckoutOutcome::Unsettled => "unsettled",
            CheckoutOutcome::LeaseExpired => "lease_expired",
            CheckoutOutcome::BadRequest => "bad_request",
            CheckoutOutcome::NoReplyTo => "no_reply_to",
            CheckoutOutcome::Internal => "internal",
            CheckoutOutcome::ReplyFailed => "reply_failed",
        }
    }

    /// Its field in a metrics hash (`checkouts|<outcome>`).
    pub fn field(self) -> String {
        CHECKOUTS.field(&[self.label()])
    }
}

pub const CHECKOUTS: Family = Family {
    key: "checkouts",
    name: "warmer_checkouts",
    help: "Checkout requests by pool and outcome: handed_out, pool_empty, no_pool, expired (past its deadline, nothing popped), requester_gone, unsettled and lease_expired (the VM's fate unknown: deleted), bad_request, no_reply_to, internal",
    labels: &["outcome"],
    per_pool: true,
    kind: Kind::Counter,
};
pub const CHECKOUT_WAIT_SECONDS: Family = Family {
    key: "checkout_wait",
    name: "warmer_checkout_wait",
    help: "Time from a checkout request's delivery to the broker's confirmation of its VM's reply",
    labels: &[],
    per_pool: false,
    kind: Kind::Histogram(&CHECKOUT_WAIT),
};
pub const BOOTS: Family = Family {
    key: "boots",
    name: "warmer_boots",
    help: "Boots by pool, zone and result: ready, surplus, expired, no_pool (the VM is deleted), failed_not_created, failed_quota, failed_halfway",
    labels: &["zone", "result"],
    per_pool: true,
    kind: Kind::Counter,
};
pub const FLEET_CAPPED: Family = Family {
    key: "fleet_capped",
    name: "warmer_fleet_capped_boots",
    help: "Boots a pool wanted that were not started because the fleet was at WARMER_MAX_VMS",
    labels: &[],
    per_pool: true,
    kind: Kind::Counter,
};
pub const BOOT_SECONDS: Family = Family {
    key: "boot_duration",
    name: "warmer_boot_duration",
    help: "Time from a VM's insert call to its being ready, by zone",
    labels: &["zone"],
    per_pool: false,
    kind: Kind::Histogram(&BOOT_DURATION),
};
pub const EVICTIONS: Family = Family {
    key: "evictions",
    name: "warmer_evictions",
    help: "Warmed VMs taken out of their pool to be deleted, by pool and reason",
    labels: &["reason"],
    per_pool: true,
    kind: Kind::Counter,
};
pub const DELETIONS: Family = Family {
    key: "deletions",
    name: "warmer_deletions",
    help: "VMs whose deletion the cloud confirmed, by the reason they were deleted",
    labels: &["reason"],
    per_pool: false,
    kind: Kind::Counter,
};
pub const DELETIONS_REFUSED: Family = Family {
    key: "deletions_refused",
    name: "warmer_deletions_refused",
    help: "Orphan records warmer refused to delete, by why: invalid_name (not a Compute Engine name), foreign (the cloud shows the VM is not this deployment's); kept in <ns>:_refused",
    labels: &["why"],
    per_pool: false,
    kind: Kind::Counter,
};
pub const RECONCILE_PASSES: Family = Family {
    key: "reconcile_passes",
    name: "warmer_reconcile_passes",
    help: "Reconcile passes by result: ok or failed",
    labels: &["result"],
    per_pool: false,
    kind: Kind::Counter,
};
pub const RECONCILE_SECONDS: Family = Family {
    key: "reconcile_duration",
    name: "warmer_reconcile_duration",
    help: "Duration of successful reconcile passes",
    labels: &[],
    per_pool: false,
    kind: Kind::Histogram(&RECONCILE_DURATION),
};
pub const RECONCILE_LAST_SUCCESS: Family = Family {
    key: "reconcile_last_success_ms",
    name: "warmer_reconcile_last_success_timestamp",
    help: "When the last reconcile pass succeeded (Unix time)",
    labels: &[],
    per_pool: false,
    kind: Kind::Timestamp,
};

pub const IDLE_VM_SECONDS: Family = Family {
    key: "idle_vm",
    name: "warmer_pool_idle_vm",
    help: "What warmth costs: warmed VMs waiting in the pool, integrated over time (VM-seconds), exactly at each change the scripts make, by Redis's clock",
    labels: &[],
    per_pool: true,
    kind: Kind::Integral,
};
pub const BOOTING_VM_SECONDS: Family = Family {
    key: "booting_vm",
    name: "warmer_pool_booting_vm",
    help: "VMs being booted for the pool, integrated over time (VM-seconds)",
    labels: &[],
    per_pool: true,
    kind: Kind::Integral,
};
pub const HANDED_VM_SECONDS: Family = Family {
    key: "handed_vm",
    name: "warmer_pool_handed_out_vm",
    help: "VMs handed out to jobs and not yet gone (deleted by their worker, or past WARMER_MAX_HANDOUT_AGE), integrated over time (VM-seconds)",
    labels: &[],
    per_pool: true,
    kind: Kind::Integral,
};

/// Every family kept in Redis, in the order they are exported.
const STORED: [&Family; 14] = [
    &CHECKOUTS,
    &CHECKOUT_WAIT_SECONDS,
    &BOOTS,
    &FLEET_CAPPED,
    &BOOT_SECONDS,
    &EVICTIONS,
    &DELETIONS,
    &DELETIONS_REFUSED,
    &RECONCILE_PASSES,
    &RECONCILE_SECONDS,
    &RECONCILE_LAST_SUCCESS,
    &IDLE_VM_SECONDS,
    &BOOTING_VM_SECONDS,
    &HANDED_VM_SECONDS,
];

impl Family {
    /// The prefix of its fields in Redis (a histogram's, as `observe` in the scripts takes it).
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The Redis field of this family's counter (or timestamp) with these label values.
    pub fn field(&self, labels: &[&str]) -> String {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.key);
        std::iter::once(self.key)
            .chain(labels.iter().copied())
            .collect::<Vec<_>>()
            .join("|")
    }

    /// The Redis fields that record one observation of `elapsed` in this histogram (bucket,
    /// sum) and the milliseconds to add to the sum.
    pub fn observation(&self, labels: &[&str], elapsed: Duration) -> [(String, u64); 2] {
        let Kind::Histogram(buckets) = self.kind else {
            unreachable!("{} is not a histogram", self.key)
        };
        let bucket = buckets.index(elapsed).to_string();
        let family = self.field(labels);
        [
            (format!("{family}|{bucket}"), 1),
            (format!("{family}|sum_ms"), elapsed.as_millis() as u64),
        ]
    }
}

/// One series' value, summed from Redis.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Counter(u64),
    /// Per bucket (not cumulative; the last is `+Inf`) and the sum in milliseconds.
    Histogram(Vec<u64>, u64),
    Seconds(f64),
    /// VM-milliseconds so far, and the level since when (ms).
    Integral {
        ms: u64,
        level: u64,
        since: u64,
    },
}

/// The counters of one scrape: per family (index in [`STORED`]), per label values (`pool`
/// first for a family kept per pool), and Redis's clock when they were read (ms), up to which
/// the integrals are exported.
#[derive(Debug, Default)]
pub struct Counters(BTreeMap<usize, BTreeMap<Vec<String>, Value>>, pub u64);

impl Counters {
    /// Reads the hashes as stored: `pool` is `None` for `<ns>:_metrics`. A field this version
    /// does not know (written by a newer one) or cannot read is left out.
    pub fn from_hashes<'a>(
        hashes: impl IntoIterator<Item = (Option<&'a str>, HashMap<String, String>)>,
    ) -> Self {
        let mut counters = Counters::default();
        for (pool, hash) in hashes {
            for (field, value) in hash {
                counters.add(pool, &field, &value);
            }
        }
        counters
    }

    fn add(&mut self, pool: Option<&str>, field: &str, value: &str) {
        let Ok(value) = value.parse::<i64>() else {
            return;
        };
        let value = value.max(0) as u64;
        let mut parts = field.split('|');
        let Some(key) = parts.next() else { return };
        let Some(index) = STORED.iter().position(|f| f.key == key) else {
            return;
        };
        let family = STORED[index];
        let mut labels: Vec<String> = Vec::with_capacity(family.labels.len() + 1);
        if family.per_pool {
            labels.push(pool.unwrap_or("").to_string());
        } else if pool.is_some() {
            return;
        }
        for _ in family.labels {
            labels.push(parts.next().unwrap_or_default().to_string());
        }
        let series = self.0.entry(index).or_default();
        match family.kind {
            Kind::Counter => {
                if parts.next().is_some() {
                    return;
                }
                let Value::Counter(total) = series.entry(labels).or_insert(Value::Counter(0))
                else {
                    return;
                };
                *total += value;
            }
            Kind::Timestamp => {
                series.insert(labels, Value::Seconds(crate::clock::secs_f64(value)));
            }
            Kind::Integral => {
                let Value::Integral { ms, level, since } =
                    series.entry(labels).or_insert(Value::Integral {
                        ms: 0,
                        level: 0,
                        since: 0,
                    })
                else {
                    return;
                };
                match parts.next() {
                    Some("ms") => *ms = value,
                    Some("level") => *level = value,
                    Some("since") => *since = value,
                    _ => {}
                }
            }
            Kind::Histogram(buckets) => {
                let slot = parts.next().unwrap_or_default();
                let Value::Histogram(counts, sum) = series
                    .entry(labels)
                    .or_insert_with(|| Value::Histogram(vec![0; buckets.0.len() + 1], 0))
                else {
                    return;
                };
                match (slot, slot.parse::<usize>()) {
                    ("sum_ms", _) => *sum += value,
                    (_, Ok(i)) if i < counts.len() => counts[i] += value,
                    _ => {}
                }
            }
        }
    }
}

impl Counters {
    fn series(&self, family: &Family, labels: &[&str]) -> Option<&Value> {
        let index = STORED.iter().position(|f| f.key == family.key)?;
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        self.0.get(&index)?.get(&labels)
    }

    /// The counter `family` with these label values (`pool` first for a family kept per
    /// pool); 0 when it was never counted.
    pub fn counter(&self, family: &Family, labels: &[&str]) -> u64 {
        match self.series(family, labels) {
            Some(Value::Counter(n)) => *n,
            _ => 0,
        }
    }

    /// Each series of the histogram `family` by its first label (a zone): its observations, their
    /// mean in seconds, and the bound of the bucket its 90th percentile falls in (`inf` past the
    /// last).
    pub fn histogram_summary(&self, family: &Family) -> Vec<(String, u64, f64, f64)> {
        let (Some(index), Kind::Histogram(buckets)) = (
            STORED.iter().position(|f| f.key == family.key),
            &family.kind,
        ) else {
            return Vec::new();
        };
        let Some(series) = self.0.get(&index) else {
            return Vec::new();
        };
        series
            .iter()
            .filter_map(|(labels, value)| {
                let Value::Histogram(counts, sum_ms) = value else {
                    return None;
                };
                let count: u64 = counts.iter().sum();
                if count == 0 {
                    return None;
                }
                let mut seen = 0;
                let p90 = counts
                    .iter()
                    .position(|n| {
                        seen += n;
                        seen * 10 >= count * 9
                    })
                    .and_then(|i| buckets.0.get(i).copied())
                    .unwrap_or(f64::INFINITY);
                let mean = crate::clock::secs_f64(*sum_ms) / count as f64;
                Some((
                    labels.first().cloned().unwrap_or_default(),
                    count,
                    mean,
                    p90,
                ))
            })
            .collect()
    }

    /// `pool`'s VM-seconds of the integral `family`, up to when the counters were read.
    pub fn vm_seconds(&self, family: &Family, pool: &str) -> f64 {
        match self.series(family, &[pool]) {
            Some(Value::Integral { ms, level, since }) => {
                let open = level.saturating_mul(self.1.saturating_sub(*since));
                crate::clock::secs_f64(ms.saturating_add(open))
            }
            _ => 0.0,
        }
    }

    /// Adds, as 0, the series an alert divides by or compares, so that they exist before
    /// the first event: every pool's hits and misses, both reconcile results.
    fn zero_fill<'a>(&mut self, pools: impl IntoIterator<Item = &'a str>) {
        let mut zero = |family: &Family, labels: Vec<String>| {
            let index = STORED.iter().position(|f| f.key == family.key);
            if let Some(index) = index {
                let series = self.0.entry(index).or_default();
                series.entry(labels).or_insert(Value::Counter(0));
            }
        };
        for pool in pools {
            for outcome in [CheckoutOutcome::HandedOut, CheckoutOutcome::PoolEmpty] {
                zero(
                    &CHECKOUTS,
                    vec![pool.to_string(), outcome.label().to_string()],
                );
            }
        }
        for result in ["ok", "failed"] {
            zero(&RECONCILE_PASSES, vec![result.to_string()]);
        }
    }
}

/// Why a pool's target is what it is, as `warmer status` shows it and `/metrics` exports it
/// (`warmer_pool_target_reason`): `static` without a policy, `pending` until a pass decides
/// under a new one, `invalid` for a policy that cannot be read, else the sizer's reason.
pub const TARGET_REASONS: [&str; 9] = [
    "static", "pending", "invalid", "min", "schedule", "demand", "history", "max", "rollover",
];

/// How a pool with a policy is sized, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolSizing {
    pub min: Option<u32>,
    pub max: Option<u32>,
    /// One of [`TARGET_REASONS`].
    pub reason: &'static str,
    /// Arrivals per minute the sizer measured (adaptive pools).
    pub per_minute: Option<f64>,
    /// The boot time it planned for, in seconds (adaptive pools).
    pub boot_secs: Option<u64>,
}

/// A rollover, for `/metrics`: the pools it moves from and to, and its state.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloverSample {
    pub from: String,
    pub to: String,
    /// `rolling`, `completed` or `aborted`.
    pub state: &'static str,
}

/// Everything one scrape exports.
#[derive(Debug)]
pub struct Scrape {
    pub pools: Vec<PoolStatus>,
    pub brake: bool,
    pub orphaned: u64,
    /// Consumer queues; empty when RabbitMQ did not answer.
    pub queues: Vec<QueueDepth>,
    /// Messages in the dead-letter queue, if RabbitMQ answered.
    pub dead_letters: Option<u32>,
    pub counters: Counters,
    /// Now, in milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// `WARMER_MAX_VMS`.
    pub max_vms: u32,
    /// Pool → how it is sized.
    pub sizing: BTreeMap<String, PoolSizing>,
    pub rollovers: Vec<RolloverSample>,
}

/// The exposition of `scrape`: OpenMetrics if `openmetrics`, else Prometheus text 0.0.4.
pub fn render(mut scrape: Scrape, openmetrics: bool) -> String {
    let pools = scrape.pools.iter().map(|p| p.level.pool.as_str());
    scrape.counters.zero_fill(pools);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    let encoded = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
    };
    // Writing to a String fails only if a value's formatting does, which ours never do.
    if encoded.is_err() {
        tracing::error!("encoding the metrics failed; the answer is cut short");
    }
    out
}

/// `application/openmetrics-text` when the `Accept` header asks for it (as Prometheus does),
/// else the Prometheus text format that every scraper reads.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| accept.contains("application/openmetrics-text"))
}

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Encoded = Result<(), std::fmt::Error>;

/// The label set of a sample without labels.
const NO_LABELS: [(&str, &str); 0] = [];

/// Writes one gauge family, a sample per label set.
fn gauges<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> Encoded {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in samples {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Encoded {
        let seconds = Unit::Seconds;
        gauges(
            &mut encoder,
            "warmer_build_info",
            "The running warmer's version and the commit it was built from",
            None,
            [(
                [
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("commit", env!("WARMER_COMMIT")),
                ],
                1.0,
            )],
        )?;
        self.encode_pools(&mut encoder)?;
        self.encode_sizing(&mut encoder)?;
        let fleet: u64 = self.pools.iter().map(PoolStatus::vms).sum();
        gauges(
            &mut encoder,
            "warmer_fleet_vms",
            "This deployment's VMs, warmed, booting and handed out, over every pool: what WARMER_MAX_VMS caps",
            None,
            [(NO_LABELS, fleet as f64)],
        )?;
        let by_state = [
            (
                "ready",
                self.pools.iter().map(|p| p.level.ready).sum::<u64>(),
            ),
            ("booting", self.pools.iter().map(|p| p.level.booting).sum()),
            ("handed_out", self.pools.iter().map(|p| p.handed_out).sum()),
        ];
        gauges(
            &mut encoder,
            "warmer_fleet_state_vms",
            "This deployment's VMs by state over every pool: ready (warmed, waiting), booting, handed_out; they add up to warmer_fleet_vms",
            None,
            by_state.map(|(state, n)| ([("state", state)], n as f64)),
        )?;
        gauges(
            &mut encoder,
            "warmer_fleet_max_vms",
            "WARMER_MAX_VMS: the most VMs the fleet may have; no boot starts beyond it",
            None,
            [(NO_LABELS, f64::from(self.max_vms))],
        )?;
        gauges(
            &mut encoder,
            "warmer_orphaned_vms",
            "VMs recorded for deletion and not deleted yet",
            None,
            [(NO_LABELS, self.orphaned as f64)],
        )?;
        gauges(
            &mut encoder,
            "warmer_safety_brake",
            "1 while the safety brake holds every boot (too many unaccounted VMs)",
            None,
            [(NO_LABELS, if self.brake { 1.0 } else { 0.0 })],
        )?;
        let queues = |value: fn(&QueueDepth) -> Option<u32>| {
            self.queues
                .iter()
                .filter_map(move |q| Some(([("queue", q.queue.as_str())], f64::from(value(q)?))))
        };
        gauges(
            &mut encoder,
            "warmer_queue_ready_messages",
            "Messages waiting in a consumer queue",
            None,
            queues(|q| q.ready),
        )?;
        gauges(
            &mut encoder,
            "warmer_queue_consumers",
            "Consumers attached to a consumer queue",
            None,
            queues(|q| q.consumers),
        )?;
        gauges(
            &mut encoder,
            "warmer_dead_letter_messages",
            "Messages in the dead-letter queue: requests and commands that could not be processed, kept for an operator",
            None,
            self.dead_letters.map(|n| (NO_LABELS, f64::from(n))),
        )?;
        for (index, family) in STORED.iter().enumerate() {
            let series = self.counters.0.get(&index);
            let (metric_type, unit) = match family.kind {
                Kind::Counter => (MetricType::Counter, None),
                Kind::Histogram(_) => (MetricType::Histogram, Some(&seconds)),
                Kind::Timestamp => (MetricType::Gauge, Some(&seconds)),
                Kind::Integral => (MetricType::Counter, Some(&seconds)),
            };
            let mut encoder =
                encoder.encode_descriptor(family.name, family.help, unit, metric_type)?;
            let names = family
                .per_pool
                .then_some("pool")
                .into_iter()
                .chain(family.labels.iter().copied());
            for (values, value) in series.into_iter().flatten() {
                let labels: Vec<(&str, &str)> = names
                    .clone()
                    .zip(values.iter().map(String::as_str))
                    .collect();
                let mut sample = encoder.encode_family(&labels)?;
                match (value, &family.kind) {
                    (Value::Counter(n), _) => {
                        sample.encode_counter::<NoLabelSet, _, u64>(n, None)?
                    }
                    (Value::Seconds(s), _) => sample.encode_gauge(s)?,
                    (Value::Integral { .. }, _) => {
                        let pool = values.first().map_or("", String::as_str);
                        let vm_seconds = self.counters.vm_seconds(family, pool);
                        sample.encode_counter::<NoLabelSet, _, u64>(&vm_seconds, None)?
                    }
                    (Value::Histogram(counts, sum_ms), Kind::Histogram(buckets)) => {
                        let bounds = buckets.0.iter().copied().chain([f64::INFINITY]);
                        let buckets: Vec<(f64, u64)> = bounds.zip(counts.iter().copied()).collect();
                        sample.encode_histogram::<NoLabelSet>(
                            crate::clock::secs_f64(*sum_ms),
                            counts.iter().sum(),
                            &buckets,
                            None,
                        )?
                    }
                    (Value::Histogram(..), _) => {}
                }
            }
        }
        Ok(())
    }
}

impl Scrape {
    /// How each pool is sized: its policy's bounds, why its target is what it is, the demand
    /// and boot time the sizer planned with, and the rollovers.
    fn encode_sizing(&self, encoder: &mut DescriptorEncoder) -> Encoded {
        let per_pool = |value: fn(&PoolSizing) -> Option<f64>| {
            self.sizing
                .iter()
                .filter_map(move |(pool, s)| Some(([("pool", pool.as_str())], value(s)?)))
        };
        gauges(
            encoder,
            "warmer_pool_min_vms",
            "The fewest warmed VMs the pool's policy keeps (pools with a policy)",
            None,
            per_pool(|s| s.min.map(f64::from)),
        )?;
        gauges(
            encoder,
            "warmer_pool_max_vms",
            "The most warmed VMs the pool's policy keeps, whatever demand says (pools with a policy)",
            None,
            per_pool(|s| s.max.map(f64::from)),
        )?;
        // One series a pool, its reason in the label: nine a pool, most of them 0, would more
        // than double a scrape of 10,000 pools.
        let reasons = self
            .sizing
            .iter()
            .map(|(pool, s)| ([("pool", pool.as_str()), ("reason", s.reason)], 1.0));
        gauges(
            encoder,
            "warmer_pool_target_reason",
            "1, for each pool with a policy, labelled with why its target is what it is: pending (a new policy not decided yet), invalid, min, schedule, demand, history, max, rollover (pools without a policy are static and have none)",
            None,
            reasons,
        )?;
        gauges(
            encoder,
            "warmer_pool_demand_per_minute",
            "Checkout requests per minute over the last 15 minutes, as the sizer measured them at its last pass (adaptive pools)",
            None,
            per_pool(|s| s.per_minute),
        )?;
        gauges(
            encoder,
            "warmer_pool_planned_boot",
            "The boot time the sizer plans with: the 90th percentile of the pool's last 20 boots (adaptive pools)",
            Some(&Unit::Seconds),
            per_pool(|s| s.boot_secs.map(|b| b as f64)),
        )?;
        let rollovers = self.rollovers.iter().flat_map(|r| {
            [("from", r.from.as_str()), ("to", r.to.as_str())]
                .map(|(role, pool)| ([("pool", pool), ("role", role), ("state", r.state)], 1.0))
        });
        gauges(
            encoder,
            "warmer_pool_rollover",
            "1 for each pool taking part in a rollover, by its role (from, to) and the rollover's state (rolling, completed, aborted; finished ones are kept 9 days)",
            None,
            rollovers,
        )
    }

    fn encode_pools(&self, encoder: &mut DescriptorEncoder) -> Encoded {
        let per_pool = |value: fn(&PoolStatus, u64) -> Option<f64>| {
            let now = self.now_ms;
            self.pools
                .iter()
                .filter_map(move |p| Some(([("pool", p.level.pool.as_str())], value(p, now)?)))
        };
        gauges(
            encoder,
            "warmer_pool_target",
            "Warmed VMs the pool should hold",
            None,
            per_pool(|p, _| p.level.target().map(|t| t as f64)),
        )?;
        gauges(
            encoder,
            "warmer_pool_ready",
            "Warmed VMs ready to be checked out",
            None,
            per_pool(|p, _| Some(p.level.ready as f64)),
        )?;
        gauges(
            encoder,
            "warmer_pool_booting",
            "VMs being booted for the pool",
            None,
            per_pool(|p, _| Some(p.level.booting as f64)),
        )?;
        gauges(
            encoder,
            "warmer_pool_handed_out",
            "VMs checked out and not yet past WARMER_MAX_HANDOUT_AGE",
            None,
            per_pool(|p, _| Some(p.handed_out as f64)),
        )?;
        gauges(
            encoder,
            "warmer_pool_oldest_age",
            "Age of the pool's oldest warmed VM; 0 when the pool is empty, absent when its age is unknown",
            Some(&Unit::Seconds),
            per_pool(|p, now| match p.oldest_booted_at {
                None => Some(0.0),
                // Whole milliseconds, saturating: a `booted_at` from outside cannot overflow.
                Some(booted_at) => {
                    let booted_ms = booted_at?.saturating_mul(1000);
                    Some(crate::clock::secs_f64(now.saturating_sub(booted_ms)))
                }
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolLevel;

    fn hash(fields: &[(&str, &str)]) -> HashMap<String, String> {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn scrape(counters: Counters) -> Scrape {
        Scrape {
            pools: vec![
                PoolStatus {
                    level: PoolLevel {
                        pool: "img:n1-standard-1".into(),
                        target: "3".into(),
                        ready: 2,
                        booting: 1,
                    },
                    handed_out: 4,
                    oldest_booted_at: Some(Some(100)),
                },
                PoolStatus {
                    level: PoolLevel {
                        pool: "empty:n1-standard-1".into(),
                        target: "1".into(),
                        ready: 0,
                        booting: 0,
                    },
                    handed_out: 0,
                    oldest_booted_at: None,
                },
            ],
            brake: true,
            orphaned: 5,
            queues: vec![],
            dead_letters: Some(2),
            counters,
            now_ms: 160_500,
            max_vms: 200,
            sizing: BTreeMap::from([(
                "img:n1-standard-1".to_string(),
                PoolSizing {
                    min: Some(1),
                    max: Some(8),
                    reason: "demand",
                    per_minute: Some(2.5),
                    boot_secs: Some(45),
                },
            )]),
            rollovers: vec![RolloverSample {
                from: "old:n1-standard-1".into(),
                to: "img:n1-standard-1".into(),
                state: "rolling",
            }],
        }
    }

    #[test]
    fn buckets_take_the_first_bound_at_or_above() {
        assert_eq!(BOOT_DURATION.index(Duration::from_secs(15)), 0);
        assert_eq!(BOOT_DURATION.index(Duration::from_millis(15_001)), 1);
        assert_eq!(BOOT_DURATION.index(Duration::from_secs(601)), 9);
        assert_eq!(CHECKOUT_WAIT.index(Duration::ZERO), 0);
    }

    #[test]
    fn counters_are_summed_per_series_and_exported_with_their_labels() {
        let counters = Counters::from_hashes([
            (
                Some("img:n1-standard-1"),
                hash(&[
                    ("checkouts|handed_out", "7"),
                    ("checkouts|pool_empty", "2"),
                    ("boots|us-central1-c|ready", "3"),
                    ("evictions|image_changed", "1"),
                    ("nonsense", "1"),
                    ("checkouts|handed_out|extra", "100"),
                    // 2 VMs idle since 100 s (Redis's clock) after 30,000 VM-ms before.
                    ("idle_vm|ms", "30000"),
                    ("idle_vm|level", "2"),
                    ("idle_vm|since", "100000"),
                ]),
            ),
            (
                None,
                hash(&[
                    ("checkouts|no_pool", "1"),
                    ("deletions|surplus", "4"),
                    ("boot_duration|us-central1-c|2", "2"),
                    ("boot_duration|us-central1-c|9", "1"),
                    ("boot_duration|us-central1-c|sum_ms", "700000"),
                    ("reconcile_last_success_ms", "1500"),
                    ("reconcile_passes|ok", "not a number"),
                ]),
            ),
        ]);
        let mut counters = counters;
        counters.1 = 160_500; // Redis's clock at the scrape: 60.5 s later
        let text = render(scrape(counters), false);
        for line in [
            "warmer_pool_idle_vm_seconds_total{pool=\"img:n1-standard-1\"} 151.0",
            "warmer_fleet_state_vms{state=\"ready\"} 2.0",
            "warmer_fleet_state_vms{state=\"handed_out\"} 4.0",
            "warmer_pool_min_vms{pool=\"img:n1-standard-1\"} 1.0",
            "warmer_pool_max_vms{pool=\"img:n1-standard-1\"} 8.0",
            "warmer_pool_target_reason{pool=\"img:n1-standard-1\",reason=\"demand\"} 1.0",
            "warmer_pool_demand_per_minute{pool=\"img:n1-standard-1\"} 2.5",
            "warmer_pool_planned_boot_seconds{pool=\"img:n1-standard-1\"} 45.0",
            "warmer_pool_rollover{pool=\"old:n1-standard-1\",role=\"from\",state=\"rolling\"} 1.0",
            "warmer_pool_rollover{pool=\"img:n1-standard-1\",role=\"to\",state=\"rolling\"} 1.0",
            "# TYPE warmer_checkouts_total counter",
            "warmer_checkouts_total{pool=\"img:n1-standard-1\",outcome=\"handed_out\"} 7",
            "warmer_checkouts_total{pool=\"img:n1-standard-1\",outcome=\"pool_empty\"} 2",
            "warmer_checkouts_total{pool=\"\",outcome=\"no_pool\"} 1",
            "warmer_boots_total{pool=\"img:n1-standard-1\",zone=\"us-central1-c\",result=\"ready\"} 3",
            "warmer_evictions_total{pool=\"img:n1-standard-1\",reason=\"image_changed\"} 1",
            "warmer_deletions_total{reason=\"surplus\"} 4",
            "warmer_boot_duration_seconds_bucket{zone=\"us-central1-c\",le=\"30\"} 0",
            "warmer_boot_duration_seconds_bucket{zone=\"us-central1-c\",le=\"45\"} 2",
            "warmer_boot_duration_seconds_bucket{zone=\"us-central1-c\",le=\"600\"} 2",
            "warmer_boot_duration_seconds_bucket{zone=\"us-central1-c\",le=\"+Inf\"} 3",
            "warmer_boot_duration_seconds_count{zone=\"us-central1-c\"} 3",
            "warmer_boot_duration_seconds_sum{zone=\"us-central1-c\"} 700.0",
            "warmer_reconcile_last_success_timestamp_seconds 1.5",
            "warmer_fleet_vms 7.0",
            "warmer_fleet_max_vms 200.0",
            "warmer_pool_oldest_age_seconds{pool=\"img:n1-standard-1\"} 60.5",
            "warmer_pool_oldest_age_seconds{pool=\"empty:n1-standard-1\"} 0.0",
            "warmer_pool_ready{pool=\"empty:n1-standard-1\"} 0.0",
            "warmer_orphaned_vms 5.0",
            "warmer_safety_brake 1.0",
            "warmer_dead_letter_messages 2.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(
            !text.contains("nonsense") && !text.contains("extra"),
            "{text}"
        );
        // Unreadable values are left out; the series an alert needs exist from the start.
        assert!(
            text.lines()
                .any(|l| l == "warmer_reconcile_passes_total{result=\"ok\"} 0")
        );
        assert!(
            text.lines()
                .any(|l| l == "warmer_reconcile_passes_total{result=\"failed\"} 0")
        );
        assert!(text.lines().any(|l| l
            == "warmer_checkouts_total{pool=\"empty:n1-standard-1\",outcome=\"pool_empty\"} 0"));
        let open = render(scrape(Counters::default()), true);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE warmer_checkouts counter"), "{open}");
    }

    #[test]
    fn a_pool_name_from_outside_is_escaped_and_a_future_boot_time_cannot_overflow() {
        let mut scrape = scrape(Counters::default());
        scrape.pools[0].level.pool = "a\"b\\c\nd".into();
        scrape.pools[0].oldest_booted_at = Some(Some(u64::MAX));
        let text = render(scrape, false);
        assert!(
            text.lines()
                .any(|l| l == "warmer_pool_oldest_age_seconds{pool=\"a\\\"b\\\\c\\nd\"} 0.0"),
            "{text}"
        );
    }

    #[test]
    fn the_checkouts_help_names_every_outcome_counted_in_redis() {
        for outcome in CheckoutOutcome::ALL {
            let counted = outcome != CheckoutOutcome::ReplyFailed;
            assert_eq!(
                CHECKOUTS.help.contains(outcome.label()),
                counted,
                "{outcome:?}"
            );
        }
        assert_eq!(CheckoutOutcome::Unsettled.field(), "checkouts|unsettled");
    }

    #[test]
    fn fields_and_observations_follow_the_stored_grammar() {
        assert_eq!(
            BOOTS.field(&["us-central1-c", "ready"]),
            "boots|us-central1-c|ready"
        );
        assert_eq!(
            RECONCILE_SECONDS.observation(&[], Duration::from_millis(300)),
            [
                ("reconcile_duration|2".to_string(), 1),
                ("reconcile_duration|sum_ms".to_string(), 300)
            ]
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")) && !wants_openmetrics(None));
    }
}
