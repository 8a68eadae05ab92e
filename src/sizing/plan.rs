//! The sizer's decision: a pure function from a pool's policy, its recent demand, its boot time
//! and now to its target and the reason. No I/O; `warmer simulate` replays traces through this
//! same function.
//!
//! A pool at target T whose every checkout starts a replacement that is ready a boot time B
//! later hands a warm VM to an arrival exactly when fewer than T others arrived in the B before
//! it. So the demand target is the smallest T that covers the wanted share of arrivals (by
//! default 99 %), each arrival counted with the arrivals of the boot time before it — a burst of
//! 30 jobs within a minute counts as 30, not as an average. It is computed over two windows:
//!
//! - the last [`IDLE_SECS`] (3 h): the target follows demand up at once, and comes down only
//!   once the busy period has left the window, i.e. after the VMs it called for sat unused that
//!   long;
//! - the time-of-day profile: the past [`PROFILE_DAYS`] days (only weekdays for a weekday once
//!   three have demand), from [`PROFILE_BEFORE_SECS`] (1 h) before to
//!   [`LOOKAHEAD_SECS`] (2 h) after the time of day, taken together. The morning peak is ready
//!   before it starts (CI load repeats daily), and a pool whose pipelines are rare on any one
//!   day but come most days at that hour keeps room for one.

/// How long VMs called for by demand are kept after that demand is gone.
pub const IDLE_SECS: u64 = 3 * 3600;
/// How far ahead of the time of day the profile reads past days.
pub const LOOKAHEAD_SECS: u64 = 2 * 3600;
/// How far before the time of day the profile reads past days.
pub const PROFILE_BEFORE_SECS: u64 = 3600;
/// How many past days the profile reads.
pub const PROFILE_DAYS: u64 = 7;
/// Days of the same kind (weekday, weekend day) with demand the profile needs before it reads
/// only those; until then it reads every day. A week holds two weekend days: too few to learn a
/// pool's pipelines from, so weekend days always read the whole week.
pub const PROFILE_ALIKE_DAYS: usize = 3;
const DAY: u64 = 86_400;

pub use crate::policy::Policy;

pub use crate::demand::{BUCKET_SECS, Demand};

/// Why the target is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The policy's minimum (not adaptive, or demand asks for less).
    Min,
    /// An active schedule's minimum.
    Schedule,
    /// The last [`IDLE_SECS`] of demand.
    Recent,
    /// The same time of day on past days (the profile).
    History,
    /// Demand asks for more than the maximum.
    Max,
}

impl Reason {
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Min => "min",
            Reason::Schedule => "schedule",
            Reason::Recent => "demand",
            Reason::History => "history",
            Reason::Max => "max",
        }
    }
}

/// The target for `now` (Unix seconds) and why:
/// `clamp(max(demand, scheduled min), min, max)`.
pub fn decide(policy: &Policy, demand: &Demand, boot_secs: u64, now: u64) -> (u32, Reason) {
    let (min, scheduled) = policy.min_at(now);
    let floor = if scheduled {
        (min, Reason::Schedule)
    } else {
        (min, Reason::Min)
    };
    if !policy.adaptive {
        return floor;
    }
    // Up to and including `now`'s second: arrivals of the bucket that starts at `now` count.
    let recent = covering(
        demand,
        boot_secs,
        now.saturating_sub(IDLE_SECS),
        now + 1,
        policy.hit,
    );
    let history = profile(demand, boot_secs, now, policy.hit);
    let (wanted, reason) = if history > recent {
        (history, Reason::History)
    } else {
        (recent, Reason::Recent)
    };
    if wanted > policy.max {
        (policy.max, Reason::Max)
    } else if wanted <= floor.0 {
        floor
    } else {
        (wanted, reason)
    }
}

/// Boot time assumed for a pool that has not booted yet, in seconds.
pub const DEFAULT_BOOT_SECS: u64 = 60;
/// Longest boot time the demand windows make room for (a boot counts the arrivals of the boot
/// time before it).
const MAX_BOOT_SECS: u64 = 3_600;

/// The boot time to size for, in seconds: the 90th percentile of the recent boots' durations
/// (ms) — a slow boot is when the pool runs dry — or [`DEFAULT_BOOT_SECS`] when there are none.
pub fn boot_secs(boot_ms: &[u64]) -> u64 {
    if boot_ms.is_empty() {
        return DEFAULT_BOOT_SECS;
    }
    let mut sorted = boot_ms.to_vec();
    sorted.sort_unstable();
    let index = (sorted.len() * 9).div_ceil(10).saturating_sub(1);
    sorted[index].div_ceil(1000).clamp(1, MAX_BOOT_SECS)
}

/// The time range (`[from, to)`, Unix seconds) of demand [`decide`] reads at `now`.
pub fn window(now: u64) -> (u64, u64) {
    let from = now.saturating_sub(PROFILE_DAYS * DAY + PROFILE_BEFORE_SECS + MAX_BOOT_SECS);
    (from, now + 1)
}

/// Failed boots of a rollover's new pool after which it is aborted, when they outnumber its
/// successful ones.
pub const ROLLOVER_FAILED_BOOTS: u64 = 3;

/// What becomes of a rollover in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// The new pool is at its target.
    Complete,
    /// Why it is given up.
    Abort(String),
}

/// Judges a rollover whose new pool holds `ready` warmed VMs against its `target`, after
/// `failed` failed and `booted` successful boots since it started, at `now` against its
/// `deadline` (Unix seconds).
pub fn judge(
    ready: u64,
    target: u32,
    failed: u64,
    booted: u64,
    now: u64,
    deadline: u64,
) -> Verdict {
    if ready >= u64::from(target) {
        Verdict::Complete
    } else if failed >= ROLLOVER_FAILED_BOOTS && failed > booted {
        Verdict::Abort(format!(
            "boots failing: {failed} failed, {booted} succeeded"
        ))
    } else if now >= deadline {
        Verdict::Abort(format!(
            "no progress: {ready} of {target} ready at the deadline"
        ))
    } else {
        Verdict::Continue
    }
}

/// Saturday or Sunday, in UTC (1970-01-01 was a Thursday).
fn is_weekend(at: u64) -> bool {
    matches!((at / DAY + 3) % 7, 5 | 6)
}

/// The smallest target under which a share `hit` of the arrivals in `[from, to)` find a warm
/// VM, each arrival seeing the arrivals of the `boot_secs` before it (its bucket included).
pub fn covering(demand: &Demand, boot_secs: u64, from: u64, to: u64, hit: f64) -> u32 {
    let mut loads = Vec::new();
    loads_into(&mut loads, demand, boot_secs, from, to);
    quantile(loads, hit)
}

/// The time-of-day profile: what covers a share `hit` of the arrivals of the past
/// [`PROFILE_DAYS`] days from [`PROFILE_BEFORE_SECS`] before to [`LOOKAHEAD_SECS`] after the
/// time of `now`, taken together — once [`PROFILE_ALIKE_DAYS`] of them have demand, only days
/// of the same kind (weekdays for a weekday). Together, because a pipeline in a given pool
/// at a given hour is rare on any one day, yet likely on some day of the week: one day's
/// window would miss it, the week's does not.
fn profile(demand: &Demand, boot_secs: u64, now: u64, hit: f64) -> u32 {
    let days: Vec<u64> = (1..=PROFILE_DAYS)
        .filter_map(|ago| now.checked_sub(ago * DAY))
        .collect();
    let window = |then: u64| {
        (
            then.saturating_sub(PROFILE_BEFORE_SECS),
            then + LOOKAHEAD_SECS,
        )
    };
    let alike: Vec<u64> = days
        .iter()
        .copied()
        .filter(|then| is_weekend(*then) == is_weekend(now))
        .filter(|then| {
            let (from, to) = window(*then);
            demand.range(from..to).next().is_some()
        })
        .collect();
    let days = if alike.len() < PROFILE_ALIKE_DAYS {
        days
    } else {
        alike
    };
    let mut loads = Vec::new();
    for then in days {
        let (from, to) = window(then);
        loads_into(&mut loads, demand, boot_secs, from, to);
    }
    quantile(loads, hit)
}

/// Adds `(load, arrivals)` for each bucket of `[from, to)` with arrivals: the arrivals of the
/// `boot_secs` up to and including the bucket.
fn loads_into(loads: &mut Vec<(u32, u32)>, demand: &Demand, boot_secs: u64, from: u64, to: u64) {
    let span = boot_secs.div_ceil(BUCKET_SECS).max(1);
    let first = from / BUCKET_SECS * BUCKET_SECS;
    let window_start = first.saturating_sub((span - 1) * BUCKET_SECS);
    let mut window: std::collections::VecDeque<(u64, u32)> = std::collections::VecDeque::new();
    let mut in_window: u32 = 0;
    for (&at, &n) in demand.range(window_start..to) {
        while let Some(&(old, m)) = window.front() {
            if old + span * BUCKET_SECS <= at {
                window.pop_front();
                in_window -= m;
            } else {
                break;
            }
        }
        window.push_back((at, n));
        in_window += n;
        if at >= first && n > 0 {
            loads.push((in_window, n));
        }
    }
}

/// The smallest load under which a share `hit` of the arrivals fall.
fn quantile(mut loads: Vec<(u32, u32)>, hit: f64) -> u32 {
    let total: u64 = loads.iter().map(|(_, n)| u64::from(*n)).sum();
    if total == 0 {
        return 0;
    }
    loads.sort_unstable();
    let wanted = (hit * total as f64).ceil() as u64;
    let mut covered = 0u64;
    for (load, n) in loads {
        covered += u64::from(n);
        if covered >= wanted {
            return load;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min: 1,
            max: 50,
            adaptive: true,
            hit: 0.99,
            schedules: Vec::new(),
        }
    }

    fn demand(arrivals: &[(u64, u32)]) -> Demand {
        let mut demand = Demand::new();
        for (at, n) in arrivals {
            *demand.entry(at / BUCKET_SECS * BUCKET_SECS).or_default() += n;
        }
        demand
    }

    /// A Tuesday (1970-01-01 was a Thursday).
    const NOW: u64 = 33 * DAY;

    #[test]
    fn a_burst_counts_whole_not_as_an_average() {
        // 30 jobs within 20 s, an hour's only arrivals.
        let demand = demand(&[(NOW - 600, 15), (NOW - 590, 15)]);
        assert_eq!(decide(&policy(), &demand, 60, NOW), (30, Reason::Recent));
        // Spread over ten minutes, one at a time: one VM per boot time suffices.
        let spread: Vec<(u64, u32)> = (0..30).map(|i| (NOW - 900 + i * 20, 1)).collect();
        assert_eq!(decide(&policy(), &demand_of(&spread), 60, NOW).0, 3);
    }

    #[test]
    fn arrivals_of_the_bucket_that_starts_now_count() {
        // A pipeline in the very second the pass reads (its bucket starts at `now`).
        let demand = demand(&[(NOW, 10)]);
        assert_eq!(decide(&policy(), &demand, 60, NOW), (10, Reason::Recent));
    }

    fn demand_of(arrivals: &[(u64, u32)]) -> Demand {
        demand(arrivals)
    }

    #[test]
    fn the_target_comes_down_only_after_the_idle_time() {
        let busy = demand(&[(NOW - 100, 20)]);
        assert_eq!(decide(&policy(), &busy, 60, NOW).0, 20);
        assert_eq!(decide(&policy(), &busy, 60, NOW + IDLE_SECS - 200).0, 20);
        assert_eq!(
            decide(&policy(), &busy, 60, NOW + IDLE_SECS),
            (1, Reason::Min)
        );
    }

    #[test]
    fn past_days_coming_hours_raise_the_target_before_the_peak() {
        let yesterday = demand(&[(NOW - DAY + 1800, 25)]);
        assert_eq!(
            decide(&policy(), &yesterday, 60, NOW),
            (25, Reason::History)
        );
        let last_week = demand(&[(NOW - 7 * DAY + 600, 12)]);
        assert_eq!(
            decide(&policy(), &last_week, 60, NOW),
            (12, Reason::History)
        );
        let too_late = demand(&[(NOW - DAY + LOOKAHEAD_SECS + 10, 25)]);
        assert_eq!(decide(&policy(), &too_late, 60, NOW), (1, Reason::Min));
        let long_ago = demand(&[(NOW - 8 * DAY, 25)]);
        assert_eq!(decide(&policy(), &long_ago, 60, NOW), (1, Reason::Min));
    }

    #[test]
    fn a_pipeline_rare_on_any_day_but_seen_this_week_keeps_room_for_one() {
        // At this hour, a lone job each day, and a pipeline of 30 on last Friday.
        let mut arrivals: Vec<(u64, u32)> = (1..=7).map(|d| (NOW - d * DAY + 60, 1)).collect();
        arrivals.push((NOW - 4 * DAY + 900, 30));
        assert_eq!(
            decide(&policy(), &demand(&arrivals), 60, NOW),
            (30, Reason::History)
        );
    }

    #[test]
    fn weekdays_follow_weekdays_once_there_are_three_and_weekends_the_whole_week() {
        let monday = NOW - DAY;
        // Sunday was busy; last Wednesday to Friday were quiet at this hour.
        let mut arrivals = vec![(monday - DAY + 600, 25)];
        let alike = (3..=5).map(|ago| (monday - ago * DAY + 600, 2));
        arrivals.extend(alike);
        assert_eq!(decide(&policy(), &demand(&arrivals), 60, monday).0, 2);
        // With two weekdays of history only, every day counts.
        arrivals.truncate(3);
        assert_eq!(decide(&policy(), &demand(&arrivals), 60, monday).0, 25);
        // A Saturday reads the weekdays too.
        let saturday = monday + 5 * DAY;
        let weekdays: Vec<(u64, u32)> = (1..=5)
            .map(|ago| (saturday - ago * DAY + 600, 20))
            .collect();
        assert_eq!(decide(&policy(), &demand(&weekdays), 60, saturday).0, 20);
    }

    #[test]
    fn bounds_hold_and_a_static_policy_is_its_minimum() {
        let huge = demand(&[(NOW - 10, 500)]);
        assert_eq!(decide(&policy(), &huge, 60, NOW), (50, Reason::Max));
        let fixed = Policy {
            min: 7,
            adaptive: false,
            ..policy()
        };
        assert_eq!(decide(&fixed, &huge, 60, NOW), (7, Reason::Min));
        assert_eq!(decide(&policy(), &Demand::new(), 60, NOW), (1, Reason::Min));
    }

    #[test]
    fn the_boot_time_is_the_slow_end_of_recent_boots() {
        assert_eq!(boot_secs(&[]), DEFAULT_BOOT_SECS);
        assert_eq!(boot_secs(&[40_000]), 40);
        let mut boots: Vec<u64> = (1..=20).map(|s| s * 1000).collect();
        boots.reverse();
        assert_eq!(boot_secs(&boots), 18);
        assert_eq!(boot_secs(&[1, 2]), 1);
    }

    #[test]
    fn the_window_read_covers_every_demand_decide_looks_at() {
        let (from, to) = window(NOW);
        for at in [NOW, NOW - IDLE_SECS, NOW - 7 * DAY - PROFILE_BEFORE_SECS] {
            assert!((from..to).contains(&at));
            // Moving demand just outside the window changes nothing: decide does not read it.
        }
        let outside = demand(&[(from - BUCKET_SECS, 40)]);
        assert_eq!(decide(&policy(), &outside, 60, NOW), (1, Reason::Min));
    }

    #[test]
    fn a_rollover_completes_at_target_and_aborts_on_failures_or_the_deadline() {
        assert_eq!(judge(3, 3, 0, 3, NOW, NOW + 60), Verdict::Complete);
        assert_eq!(judge(2, 3, 2, 2, NOW, NOW + 60), Verdict::Continue);
        // A flaky zone is not a broken image: failures must outnumber successes.
        assert_eq!(judge(2, 3, 3, 4, NOW, NOW + 60), Verdict::Continue);
        assert!(
            matches!(judge(0, 3, 3, 0, NOW, NOW + 60), Verdict::Abort(r) if r.contains("3 failed"))
        );
        assert!(
            matches!(judge(1, 3, 0, 1, NOW + 60, NOW + 60), Verdict::Abort(r) if r.contains("1 of 3 ready"))
        );
    }

    #[test]
    fn a_schedule_raises_the_floor_and_demand_goes_above_it() {
        // Every weekday (NOW is a Tuesday), all day, in UTC.
        let scheduled = Policy {
            schedules: vec!["* * * * MON-FRI@UTC=8".parse().unwrap()],
            ..policy()
        };
        assert_eq!(
            decide(&scheduled, &Demand::new(), 60, NOW),
            (8, Reason::Schedule)
        );
        let busy = demand(&[(NOW - 100, 20)]);
        assert_eq!(decide(&scheduled, &busy, 60, NOW), (20, Reason::Recent));
        // On Saturday the schedule is over and the minimum applies at once.
        assert_eq!(
            decide(&scheduled, &Demand::new(), 60, NOW + 4 * DAY),
            (1, Reason::Min)
        );
        let fixed = Policy {
            adaptive: false,
            ..scheduled
        };
        assert_eq!(decide(&fixed, &busy, 60, NOW), (8, Reason::Schedule));
    }

    #[test]
    fn the_hit_share_trades_rare_peaks_for_idle_vms() {
        // 99 lone arrivals and one burst of 40 within the window.
        let mut arrivals: Vec<(u64, u32)> = (0..99).map(|i| (NOW - 1190 + i * 12, 1)).collect();
        arrivals.push((NOW - 5, 40));
        let demand = demand(&arrivals);
        let strict = Policy {
            hit: 0.999,
            ..policy()
        };
        let loose = Policy {
            hit: 0.5,
            ..policy()
        };
        assert!(decide(&strict, &demand, 60, NOW).0 >= 40);
        assert!(decide(&loose, &demand, 60, NOW).0 <= 6);
    }
}
