//! Sizing on a generated week: the adaptive policy against static targets from 1 up to the
//! peak, by warm hits and idle VM-minutes, through `warmer simulate`'s own replay.
//!
//!     cargo bench --bench sizing      # BENCH_DAYS (7), BENCH_POOLS (20), BENCH_SEED (1)
//!
//! Reports each policy's warm hit rate and idle VM-minutes, the smallest static target that
//! reaches 99 % warm hits, the adaptive policy's idle VM-minutes as a share of that static's,
//! and how long a replay of the week takes: first on a cold start (the sizer has no history,
//! as `warmer simulate` on a one-week trace), then on the week after (a trace twice as long,
//! the second week counted: the sizer has a week of history, as in production).

use std::time::Instant;

use warmer::sizing::simulate::{
    BootTime, Candidate, GENERATED_START, Outcome, generate_diurnal, parse_trace, replay,
};
use warmer_testkit::bench::env_or;

fn main() -> anyhow::Result<()> {
    let days = env_or("BENCH_DAYS", 7) as u64;
    let pools = env_or("BENCH_POOLS", 20);
    let seed = env_or("BENCH_SEED", 1) as u64;
    let trace = parse_trace(&generate_diurnal(days, pools, GENERATED_START, seed))?;
    let boot = BootTime::Fixed(45);
    println!(
        "{days} days, {pools} pools, {} checkouts, boots of 45 s",
        trace.len()
    );
    println!("| policy | warm hits | idle VM-minutes | vs smallest static at 99 % | replay s |");
    println!("|---|---:|---:|---:|---:|");

    let started = Instant::now();
    let adaptive = Candidate::parse("adaptive")?;
    let (_, adaptive_total) = replay(&trace, &adaptive.policy, boot);
    let adaptive_secs = started.elapsed().as_secs_f64();

    let mut smallest_99 = None;
    let mut statics = Vec::new();
    for n in 1..=60u32 {
        let candidate = Candidate::parse(&format!("static:{n}"))?;
        let started = Instant::now();
        let (_, total) = replay(&trace, &candidate.policy, boot);
        let secs = started.elapsed().as_secs_f64();
        if total.hit_rate >= 0.99 && smallest_99.is_none() {
            smallest_99 = Some((n, total.idle_vm_minutes));
        }
        let done = total.hit_rate >= 0.999;
        statics.push((n, total, secs));
        if done {
            break;
        }
    }
    let reference = smallest_99.map(|(_, idle)| idle);
    let ratio = |idle: f64| reference.map_or("—".to_string(), |r| format!("{:.2}×", idle / r));
    println!(
        "| adaptive | {:.2} % | {:.0} | {} | {adaptive_secs:.2} |",
        adaptive_total.hit_rate * 100.0,
        adaptive_total.idle_vm_minutes,
        ratio(adaptive_total.idle_vm_minutes)
    );
    for (n, total, secs) in statics
        .iter()
        .filter(|(n, _, _)| n % 5 == 0 || Some(*n) == smallest_99.map(|s| s.0))
    {
        println!(
            "| static:{n} | {:.2} % | {:.0} | {} | {secs:.2} |",
            total.hit_rate * 100.0,
            total.idle_vm_minutes,
            ratio(total.idle_vm_minutes)
        );
    }
    match smallest_99 {
        Some((n, _)) => println!("smallest static target reaching 99 % warm hits: {n}"),
        None => println!("no static target up to 60 reaches 99 % warm hits"),
    }

    // The week after: a trace of twice the days, the first week's outcomes subtracted.
    let both = parse_trace(&generate_diurnal(2 * days, pools, GENERATED_START, seed))?;
    let second_week = |policy: &str| -> anyhow::Result<Outcome> {
        let policy = Candidate::parse(policy)?.policy;
        let (_, first) = replay(&trace, &policy, boot);
        let (_, all) = replay(&both, &policy, boot);
        let checkouts = all.checkouts - first.checkouts;
        let hits = all.hits - first.hits;
        Ok(Outcome {
            checkouts,
            hits,
            hit_rate: hits as f64 / checkouts.max(1) as f64,
            idle_vm_minutes: all.idle_vm_minutes - first.idle_vm_minutes,
            ..Outcome::default()
        })
    };
    let adaptive = second_week("adaptive")?;
    let mut reference = None;
    for n in 1..=60u32 {
        let total = second_week(&format!("static:{n}"))?;
        if total.hit_rate >= 0.99 {
            reference = Some((n, total));
            break;
        }
    }
    println!();
    println!("the week after ({} checkouts):", adaptive.checkouts);
    println!("| policy | warm hits | idle VM-minutes | vs smallest static at 99 % |");
    println!("|---|---:|---:|---:|");
    if let Some((n, total)) = &reference {
        println!(
            "| adaptive | {:.2} % | {:.0} | {:.2}× |",
            adaptive.hit_rate * 100.0,
            adaptive.idle_vm_minutes,
            adaptive.idle_vm_minutes / total.idle_vm_minutes
        );
        println!(
            "| static:{n} | {:.2} % | {:.0} | 1.00× |",
            total.hit_rate * 100.0,
            total.idle_vm_minutes
        );
    }
    Ok(())
}
