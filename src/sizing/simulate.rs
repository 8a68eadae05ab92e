//! `warmer simulate`: capacity planning without a cloud. Replays a trace of job arrivals
//! (`unix_seconds,pool` lines) in simulated time through the sizer's own decision
//! ([`super::plan::decide`]), with a boot-time model, for static and adaptive policies side by
//! side; and generates realistic traces (`--generate diurnal`).
//!
//! The model of a pool: a checkout takes a warm VM if there is one (a hit) and starts its
//! replacement, ready a boot time later; a miss gets a cold VM outside the pool. The sizer runs
//! every [`SIZER_INTERVAL_SECS`]: a higher target starts boots at once, a lower one deletes
//! warm VMs at once (booting ones are deleted on arrival). A pool starts warm at its first
//! target. Idle VM-minutes are warm VMs waiting unused, summed over time.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::plan::{BUCKET_SECS, Demand, Policy, decide};
use crate::policy::DEFAULT_HIT;

/// How often the simulated sizer runs (the reconciler's default interval).
pub const SIZER_INTERVAL_SECS: u64 = 30;

/// One arrival: when, and which pool.
pub type Trace = Vec<(u64, String)>;

/// Reads a trace: `unix_seconds,pool` lines in time order, an optional `timestamp,pool` header,
/// blank lines and `#` comments skipped. A bad line is an error naming its number.
pub fn parse_trace(text: &str) -> anyhow::Result<Trace> {
    let mut trace = Trace::new();
    let mut last = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (n == 1 && line == "timestamp,pool") {
            continue;
        }
        let Some((at, pool)) = line.split_once(',') else {
            bail!("trace line {n}: expected `unix_seconds,pool`, got `{line}`");
        };
        let at: u64 = at
            .trim()
            .parse()
            .with_context(|| format!("trace line {n}: `{at}` is not a Unix time in seconds"))?;
        let pool = pool.trim();
        if pool.is_empty() || pool.contains(',') {
            bail!("trace line {n}: expected one pool name after the time, got `{pool}`");
        }
        if at < last {
            bail!(
                "trace line {n}: {at} comes before the line above ({last}); the trace must be in time order"
            );
        }
        last = at;
        trace.push((at, pool.to_string()));
    }
    Ok(trace)
}

/// How long a boot takes: fixed, or uniform in a range (drawn per boot, reproducibly).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BootTime {
    Fixed(u64),
    Uniform(u64, u64),
}

impl BootTime {
    /// `45s`, `2m`, or a range `30s-90s`.
    pub fn parse(value: &str) -> anyhow::Result<BootTime> {
        let secs = |v: &str| {
            crate::config::parse_duration(v)
                .map(|d| d.as_secs().max(1))
                .with_context(|| format!("--boot-time: `{v}` is not a duration such as `45s`"))
        };
        match value.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (secs(low)?, secs(high)?);
                if low > high {
                    bail!("--boot-time: the range {value} runs backwards");
                }
                Ok(BootTime::Uniform(low, high))
            }
            None => Ok(BootTime::Fixed(secs(value)?)),
        }
    }

    /// The boot time the sizer plans with (the slow end of a range).
    fn planned(&self) -> u64 {
        match *self {
            BootTime::Fixed(s) | BootTime::Uniform(_, s) => s,
        }
    }

    fn draw(&self, rng: &mut Rng) -> u64 {
        match *self {
            BootTime::Fixed(s) => s,
            BootTime::Uniform(low, high) => low + rng.below(high - low + 1),
        }
    }
}

/// A policy to compare: `static:N` or `adaptive[:hit=0.99][:max=N]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub policy: Policy,
}

impl Candidate {
    pub fn parse(value: &str) -> anyhow::Result<Candidate> {
        let mut parts = value.split(':');
        let policy = |min, max, adaptive| Policy {
            min,
            max,
            adaptive,
            hit: DEFAULT_HIT,
            schedules: Vec::new(),
        };
        let (mut policy, options): (Policy, &[&str]) = match parts.next().unwrap_or_default() {
            "static" => {
                let n = parts.next().unwrap_or_default();
                let n: u32 = n.parse().with_context(|| {
                    format!("--policy {value}: `static:N` needs a number of VMs")
                })?;
                (policy(n, n, false), &["schedule"])
            }
            "adaptive" => (policy(0, 1000, true), &["hit", "min", "max", "schedule"]),
            _ => bail!("--policy must be `static:N` or `adaptive[:hit=0.99]`, got `{value}`"),
        };
        for option in parts {
            let Some((name, given)) = option
                .split_once('=')
                .filter(|(name, _)| options.contains(name))
            else {
                bail!(
                    "--policy {value}: unknown option `{option}` ({}=)",
                    options.join("=, ")
                );
            };
            let number = |what: &str| {
                given
                    .parse::<u32>()
                    .with_context(|| format!("--policy {value}: {what} `{given}` is not a number"))
            };
            match name {
                "hit" => {
                    policy.hit = given
                        .parse()
                        .with_context(|| format!("--policy {value}: hit `{given}`"))?
                }
                "min" => policy.min = number("min")?,
                "max" => policy.max = number("max")?,
                _ => policy.schedules.push(
                    given
                        .parse()
                        .map_err(|error| anyhow::anyhow!("--policy {value}: {error}"))?,
                ),
            }
        }
        if !policy.adaptive {
            // A static policy's schedules may go above its N.
            policy.max = policy
                .schedules
                .iter()
                .map(|s| s.min)
                .fold(policy.max, u32::max);
        }
        policy
            .validate()
            .map_err(|error| anyhow::anyhow!("--policy {value}: {error}"))?;
        Ok(Candidate {
            name: value.to_string(),
            policy,
        })
    }
}

/// What a policy achieved over a trace, for one pool or in total.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcome {
    pub checkouts: u64,
    pub hits: u64,
    pub hit_rate: f64,
    pub idle_vm_minutes: f64,
    pub peak_vms: u32,
    pub boots: u64,
}

impl Outcome {
    fn add(&mut self, other: &Outcome) {
        self.checkouts += other.checkouts;
        self.hits += other.hits;
        self.idle_vm_minutes += other.idle_vm_minutes;
        self.peak_vms += other.peak_vms;
        self.boots += other.boots;
        self.finish();
    }

    fn finish(&mut self) {
        self.hit_rate = if self.checkouts == 0 {
            1.0
        } else {
            self.hits as f64 / self.checkouts as f64
        };
    }
}

/// Replays `trace` under `policy` for every pool; per pool and the total.
pub fn replay(
    trace: &Trace,
    policy: &Policy,
    boot: BootTime,
) -> (BTreeMap<String, Outcome>, Outcome) {
    let (pools, total, _) = replay_traced(trace, policy, boot, false);
    (pools, total)
}

/// Each pool's target over time: (Unix seconds, the target from then on), at each change.
pub type Targets = BTreeMap<String, Vec<(u64, u32)>>;

/// [`replay`], and with `targets` each pool's target over time.
pub fn replay_traced(
    trace: &Trace,
    policy: &Policy,
    boot: BootTime,
    targets: bool,
) -> (BTreeMap<String, Outcome>, Outcome, Targets) {
    let mut by_pool: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (at, pool) in trace {
        by_pool.entry(pool).or_default().push(*at);
    }
    let mut total = Outcome::default();
    let mut pools = BTreeMap::new();
    let mut traced = Targets::new();
    for (i, (pool, arrivals)) in by_pool.into_iter().enumerate() {
        let mut steps = Vec::new();
        let record = targets.then_some(&mut steps);
        let outcome = replay_pool(&arrivals, policy, boot, i as u64 + 1, record);
        total.add(&outcome);
        pools.insert(pool.to_string(), outcome);
        if targets {
            traced.insert(pool.to_string(), steps);
        }
    }
    total.finish();
    (pools, total, traced)
}

fn replay_pool(
    arrivals: &[u64],
    policy: &Policy,
    boot: BootTime,
    seed: u64,
    mut targets: Option<&mut Vec<(u64, u32)>>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let (Some(&first), Some(&last)) = (arrivals.first(), arrivals.last()) else {
        return outcome;
    };
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut demand = Demand::new();
    let mut clock = first.saturating_sub(SIZER_INTERVAL_SECS);
    // The pool has been running: it starts warm, at its target.
    let mut target: u32 = decide(policy, &demand, boot.planned(), clock).0;
    if let Some(targets) = targets.as_deref_mut() {
        targets.push((clock, target));
    }
    let mut warm: u32 = target;
    let mut booting: VecDeque<u64> = VecDeque::new(); // ready times, kept sorted
    let mut next_tick = clock;
    let mut next = 0;
    let end = last + SIZER_INTERVAL_SECS;
    while clock <= end {
        // The next thing to happen: a boot finishing, an arrival, or the sizer.
        let boot_at = booting.front().copied().unwrap_or(u64::MAX);
        let arrival_at = arrivals.get(next).copied().unwrap_or(u64::MAX);
        let now = boot_at.min(arrival_at).min(next_tick);
        if now > end {
            break;
        }
        outcome.idle_vm_minutes += f64::from(warm) * (now - clock) as f64 / 60.0;
        clock = now;
        if boot_at == now {
            booting.pop_front();
            if warm + (booting.len() as u32) < target {
                warm += 1;
            }
        } else {
            if arrival_at == now {
                next += 1;
                outcome.checkouts += 1;
                *demand.entry(now / BUCKET_SECS * BUCKET_SECS).or_default() += 1;
                if warm > 0 {
                    warm -= 1;
                    outcome.hits += 1;
                }
            } else {
                next_tick += SIZER_INTERVAL_SECS;
                let decided = decide(policy, &demand, boot.planned(), now).0;
                if decided != target
                    && let Some(targets) = targets.as_deref_mut()
                {
                    targets.push((now, decided));
                }
                target = decided;
                warm = warm.min(target);
                // Demand older than the sizer ever reads is dropped: bounded memory.
                let keep_from = now.saturating_sub(8 * 86_400);
                demand = demand.split_off(&keep_from);
            }
            // Boots to bring the pool back to its target: replacements, or a raised target.
            while warm + (booting.len() as u32) < target {
                let ready = now + boot.draw(&mut rng);
                let at = booting.partition_point(|t| *t <= ready);
                booting.insert(at, ready);
                outcome.boots += 1;
            }
        }
        outcome.peak_vms = outcome.peak_vms.max(warm + booting.len() as u32);
    }
    outcome.finish();
    outcome
}

/// `warmer simulate`: the generated trace (`generate` = days, pools, seed) or the comparison of
/// `policies` over the trace at `trace`, as the text to print.
pub fn command(
    trace: Option<&std::path::Path>,
    (boot_time, policies, json): (&str, &[String], bool),
    generate: Option<(u64, usize, u64)>,
    report: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    if let Some((days, pools, seed)) = generate {
        if days == 0 || pools == 0 {
            bail!("--days and --pools must be at least 1");
        }
        return Ok(generate_diurnal(days, pools, GENERATED_START, seed));
    }
    let Some(path) = trace else {
        bail!("--trace FILE is required (or --generate diurnal to write one)");
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the trace {}", path.display()))?;
    let trace = parse_trace(&text).with_context(|| path.display().to_string())?;
    let boot = BootTime::parse(boot_time)?;
    let candidates = policies
        .iter()
        .map(|p| Candidate::parse(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reports = compare(&trace, &candidates, boot);
    let printed = table(&reports);
    let mut out = if json {
        format!("{}\n", serde_json::to_string_pretty(&reports)?)
    } else {
        printed.clone()
    };
    if let Some(path) = report {
        let html = super::report::html(&trace, &candidates, &reports, boot, &printed);
        std::fs::write(path, html)
            .with_context(|| format!("writing the report {}", path.display()))?;
        if !json {
            let _ = writeln!(out, "\nreport written to {}", path.display());
        }
    }
    Ok(out)
}

/// A report of every candidate over the trace: per pool and in total.
#[derive(Debug, Serialize)]
pub struct Report {
    pub candidate: String,
    pub total: Outcome,
    pub pools: BTreeMap<String, Outcome>,
}

pub fn compare(trace: &Trace, candidates: &[Candidate], boot: BootTime) -> Vec<Report> {
    candidates
        .iter()
        .map(|c| {
            let (pools, total) = replay(trace, &c.policy, boot);
            Report {
                candidate: c.name.clone(),
                total,
                pools,
            }
        })
        .collect()
}

/// The reports as a text table: the totals, then each pool.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::new();
    let width = reports
        .iter()
        .map(|r| r.candidate.len() + 2)
        .max()
        .unwrap_or(0)
        .max(28);
    let _ = writeln!(
        out,
        "{:<width$} {:>10} {:>9} {:>16} {:>9} {:>9}",
        "policy", "checkouts", "warm hit", "idle VM-minutes", "peak VMs", "boots"
    );
    let row = |out: &mut String, name: &str, o: &Outcome| {
        let _ = writeln!(
            out,
            "{:<width$} {:>10} {:>8.2}% {:>16.0} {:>9} {:>9}",
            name,
            o.checkouts,
            o.hit_rate * 100.0,
            o.idle_vm_minutes,
            o.peak_vms,
            o.boots
        );
    };
    for report in reports {
        row(&mut out, &report.candidate, &report.total);
    }
    let pools: Vec<&String> = reports
        .first()
        .map(|r| r.pools.keys().collect())
        .unwrap_or_default();
    for pool in pools {
        let _ = writeln!(out, "\n{pool}");
        for report in reports {
            if let Some(o) = report.pools.get(pool) {
                row(&mut out, &format!("  {}", report.candidate), o);
            }
        }
    }
    out
}

/// A diurnal trace of `days` days from `start` (Unix s, a Monday 00:00 UTC is best) over
/// `pools` pools: weekday load peaks at 10:00–17:00 at 8× the night, weekends at a quarter of
/// weekdays, single jobs plus pipeline bursts of 10–40 jobs within a minute (a third of the jobs
/// at the peak, rarer when fewer developers push), pools weighted unevenly. Reproducible from
/// `seed`.
/// Where `warmer simulate --generate` starts its traces: 2026-11-30 00:00 UTC, a Monday.
pub const GENERATED_START: u64 = 1_795_996_800;

pub fn generate_diurnal(days: u64, pools: usize, start: u64, seed: u64) -> String {
    let mut rng = Rng(seed | 1);
    let names: Vec<String> = (0..pools)
        .map(|i| format!("travis-ci-image-{i}:n1-standard-{}", [1, 2, 4][i % 3]))
        .collect();
    let weights: Vec<f64> = (0..pools).map(|i| 1.0 / (1.0 + i as f64 * 0.35)).collect();
    let weight_sum: f64 = weights.iter().sum();
    let mut arrivals: Vec<(u64, usize)> = Vec::new();
    // Jobs per minute over all pools at the weekday peak.
    let peak_per_minute = 6.0 * pools as f64 / 5.0;
    for minute in 0..days * 1440 {
        let at = start + minute * 60;
        let day = (minute / 1440) % 7; // 0 = Monday
        let hour = (minute % 1440) as f64 / 60.0;
        let shape = if (10.0..17.0).contains(&hour) {
            1.0
        } else if (7.0..10.0).contains(&hour) {
            0.125 + 0.875 * (hour - 7.0) / 3.0
        } else if (17.0..21.0).contains(&hour) {
            1.0 - 0.875 * (hour - 17.0) / 4.0
        } else {
            0.125
        };
        let rate = peak_per_minute * shape * if day >= 5 { 0.25 } else { 1.0 };
        // At the peak, two thirds single jobs and a third in pipelines of 25 jobs on average;
        // pipelines follow the developers who push them (the square of the day's shape), so the
        // night is mostly single scheduled jobs.
        for _ in 0..rng.poisson(rate * 2.0 / 3.0) {
            let pool = rng.weighted(&weights, weight_sum);
            arrivals.push((at + rng.below(60), pool));
        }
        for _ in 0..rng.poisson(rate * shape / 3.0 / 25.0) {
            let pool = rng.weighted(&weights, weight_sum);
            let size = 10 + rng.below(31);
            let burst_at = at + rng.below(60);
            for _ in 0..size {
                arrivals.push((burst_at + rng.below(45), pool));
            }
        }
    }
    arrivals.sort_unstable();
    let mut out = String::with_capacity(arrivals.len() * 48);
    out.push_str("timestamp,pool\n");
    for (at, pool) in arrivals {
        let _ = writeln!(out, "{at},{}", names[pool]);
    }
    out
}

/// A small reproducible generator (xorshift64*): traces and boot times, not secrets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn poisson(&mut self, mean: f64) -> u64 {
        let limit = (-mean).exp();
        let (mut k, mut p) = (0, self.unit());
        while p > limit {
            k += 1;
            p *= self.unit();
        }
        k
    }

    fn weighted(&mut self, weights: &[f64], sum: f64) -> usize {
        let mut x = self.unit() * sum;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_trace_lines_are_reported_with_their_number() {
        assert_eq!(
            parse_trace("timestamp,pool\n10,a:b\n\n# c\n20,a:b\n")
                .unwrap()
                .len(),
            2
        );
        for (text, named) in [
            ("10,a:b\nnonsense\n", "line 2"),
            ("10,a:b\nten,a:b\n", "line 2: `ten`"),
            ("10,a:b\n5,a:b\n", "line 2: 5 comes before"),
            ("10,\n", "line 1"),
        ] {
            let error = format!("{:#}", parse_trace(text).unwrap_err());
            assert!(error.contains(named), "{text:?}: {error}");
        }
    }

    #[test]
    fn policies_and_boot_times_parse_or_say_why_not() {
        assert_eq!(Candidate::parse("static:5").unwrap().policy.min, 5);
        let adaptive = Candidate::parse("adaptive:hit=0.95:max=20").unwrap().policy;
        assert_eq!(
            (adaptive.hit, adaptive.max, adaptive.adaptive),
            (0.95, 20, true)
        );
        let scheduled = Candidate::parse("static:2:schedule=* 9-17 * * MON-FRI@UTC=30")
            .unwrap()
            .policy;
        assert_eq!(
            (scheduled.min, scheduled.max, scheduled.schedules.len()),
            (2, 30, 1)
        );
        for (bad, named) in [
            ("static", "needs a number"),
            ("static:x", "needs a number"),
            ("static:3:hit=0.5", "unknown option `hit=0.5` (schedule=)"),
            ("adaptive:hit=1", "outside (0, 1)"),
            ("adaptive:x=1", "unknown option `x=1`"),
            ("magic", "must be `static:N`"),
            ("adaptive:min=5:max=2", "min 5 is above max 2"),
            ("adaptive:max=lots", "max `lots` is not a number"),
            ("adaptive:schedule=* * * * *@Nowhere=2", "unknown time zone"),
        ] {
            let error = Candidate::parse(bad).unwrap_err().to_string();
            assert!(error.contains(named), "{bad}: {error}");
        }
        assert_eq!(BootTime::parse("45s").unwrap(), BootTime::Fixed(45));
        assert_eq!(
            BootTime::parse("30s-90s").unwrap(),
            BootTime::Uniform(30, 90)
        );
        assert!(BootTime::parse("90s-30s").is_err());
    }

    #[test]
    fn a_static_pool_hits_while_it_has_warm_vms_and_counts_its_idle_minutes() {
        // Target 2, boots of 60 s: of three jobs at once two find a warm VM; the one an hour
        // later finds the replacements.
        let trace: Trace = [(1000, "p"), (1000, "p"), (1000, "p"), (4000, "p")]
            .iter()
            .map(|(t, p)| (*t, p.to_string()))
            .collect();
        let policy = Candidate::parse("static:2").unwrap().policy;
        let (_, total) = replay(&trace, &policy, BootTime::Fixed(60));
        assert_eq!((total.checkouts, total.hits), (4, 3), "{total:?}"); // the third at 1000 misses
        assert_eq!(total.peak_vms, 2);
        assert!(total.idle_vm_minutes > 90.0, "{total:?}");
    }

    #[test]
    fn the_generated_trace_has_quiet_nights_and_weekends_and_bursts() {
        let monday = GENERATED_START;
        let trace = parse_trace(&generate_diurnal(7, 4, monday, 7)).unwrap();
        let count = |from_h: u64, to_h: u64, day: u64| {
            let (from, to) = (
                monday + day * 86_400 + from_h * 3600,
                monday + day * 86_400 + to_h * 3600,
            );
            trace.iter().filter(|(t, _)| (from..to).contains(t)).count()
        };
        let (peak, night) = (count(10, 17, 1), count(0, 7, 1));
        assert!(peak >= 5 * night, "peak {peak}, night {night}");
        assert!(count(0, 24, 5) * 2 < count(0, 24, 1), "Saturday is quieter");
        let mut per_minute: BTreeMap<(u64, &str), u32> = BTreeMap::new();
        for (t, p) in &trace {
            *per_minute.entry((t / 60, p.as_str())).or_default() += 1;
        }
        assert!(per_minute.values().any(|n| *n >= 10), "a burst");
    }
}
