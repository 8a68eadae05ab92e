//! `warmer status [--pool GLOB] [--json]`: the fleet as it is — a row per pool with how it is
//! sized, totals, the fleet against its cap, rollovers, the safety brake, the active reconciler
//! (or none), orphans awaiting deletion, dead letters and each queue's consumers. Gathered once
//! into a [`Report`], printed as a table or as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::clock::now_secs;
use crate::context::Context;
use crate::pool::{PoolStatus, glob_matches};
use crate::store::sizing::RolloverState;
use crate::topology::QueueState;

/// What `warmer status` is asked for.
#[derive(Debug, Clone, Default)]
pub struct StatusOptions {
    /// JSON instead of a table.
    pub json: bool,
    /// Only the pools whose name matches this glob (`*` any run, `?` one character).
    pub pool: Option<String>,
    /// Colour what needs attention (a terminal that wants it).
    pub color: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    pools: Vec<PoolRow>,
    /// Over the pools shown.
    totals: Totals,
    /// Over every pool: what counts against `WARMER_MAX_VMS`.
    fleet: Fleet,
    rollovers: Vec<RolloverRow>,
    brake: Option<Brake>,
    reconciler: Reconciler,
    /// VMs recorded for deletion, not yet deleted.
    orphans: u64,
    queues: Vec<QueueRow>,
    /// Why the queues could not be read, if they could not.
    queues_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct PoolRow {
    pool: String,
    /// `None` when what is stored is not a number (shown as stored in the table).
    target: Option<u64>,
    #[serde(skip)]
    stored_target: String,
    min: Option<u32>,
    max: Option<u32>,
    why: &'static str,
    ready: u64,
    booting: u64,
    handed_out: u64,
    /// Seconds since the oldest warmed VM was booted; `None` for an empty pool or an unknown
    /// age (`oldest_unknown`).
    oldest_age_seconds: Option<u64>,
    oldest_unknown: bool,
}

#[derive(Debug, Default, Serialize)]
struct Totals {
    pools: usize,
    target: u64,
    ready: u64,
    booting: u64,
    handed_out: u64,
}

#[derive(Debug, Serialize)]
struct Fleet {
    vms: u64,
    max_vms: u32,
}

#[derive(Debug, Serialize)]
struct RolloverRow {
    from: String,
    to: String,
    state: RolloverState,
    started_at: u64,
    deadline: u64,
    finished_at: Option<u64>,
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct Brake {
    unaccounted: u64,
    threshold: u64,
    since: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Reconciler {
    /// The lock's owner (host, pid and id of the process), `None` when none is active.
    owner: Option<String>,
    last_pass_seconds_ago: Option<u64>,
    interval_seconds: u64,
    /// Active but without a successful pass for more than three intervals.
    stale: bool,
}

#[derive(Debug, Serialize)]
struct QueueRow {
    queue: String,
    /// `checkout`, `refill` or `dead`.
    process: &'static str,
    ready: Option<u32>,
    consumers: Option<u32>,
    /// `ok`, `missing` (not declared yet) or `unavailable`.
    state: &'static str,
    why: Option<String>,
}

/// `warmer status`.
pub async fn status(ctx: &Context, options: &StatusOptions) -> anyhow::Result<String> {
    let report = gather(ctx, options.pool.as_deref()).await?;
    if options.json {
        return Ok(serde_json::to_string_pretty(&report)? + "\n");
    }
    Ok(render(ctx, &report, options))
}

async fn gather(ctx: &Context, glob: Option<&str>) -> anyhow::Result<Report> {
    let (pools, _) = ctx.store.status().await?;
    let sizing = ctx.store.sizing_view().await?;
    let now = now_secs();
    let fleet = Fleet {
        vms: pools.iter().map(PoolStatus::vms).sum(),
        max_vms: ctx.config.max_vms,
    };
    let rows: Vec<PoolRow> = pools
        .iter()
        .filter(|p| glob.is_none_or(|glob| glob_matches(glob, &p.level.pool)))
        .map(|p| {
            let name = &p.level.pool;
            let policy = sizing.policies.get(name);
            let (min, max) = match policy {
                Some(Ok(policy)) => (Some(policy.min), Some(policy.max)),
                _ => (None, None),
            };
            let why = sizing.why(name);
            let oldest = p
                .oldest_booted_at
                .map(|at| at.map(|t| now.saturating_sub(t)));
            PoolRow {
                pool: name.clone(),
                target: p.level.target(),
                stored_target: p.level.target.clone(),
                min,
                max,
                why,
                ready: p.level.ready,
                booting: p.level.booting,
                handed_out: p.handed_out,
                oldest_age_seconds: oldest.flatten(),
                oldest_unknown: oldest == Some(None),
            }
        })
        .collect();
    let totals = Totals {
        pools: rows.len(),
        target: rows.iter().filter_map(|r| r.target).sum(),
        ready: rows.iter().map(|r| r.ready).sum(),
        booting: rows.iter().map(|r| r.booting).sum(),
        handed_out: rows.iter().map(|r| r.handed_out).sum(),
    };
    let rollovers = sizing
        .rollovers
        .iter()
        .filter(|(from, r)| glob.is_none_or(|g| glob_matches(g, from) || glob_matches(g, &r.to)))
        .map(|(from, r)| RolloverRow {
            from: from.clone(),
            to: r.to.clone(),
            state: r.state,
            started_at: r.started_at,
            deadline: r.deadline,
            finished_at: r.finished_at,
            reason: r.reason.clone(),
        })
        .collect();
    let brake = ctx.store.brake_state().await?.map(|state| Brake {
        unaccounted: state.unaccounted,
        threshold: state.threshold.unwrap_or(ctx.config.orphan_threshold),
        since: state.since,
    });
    let interval = ctx.config.reconcile_interval.as_secs();
    let owner = ctx.store.reconciler().await?;
    let ago = ctx
        .store
        .last_reconcile()
        .await?
        .map(|at| now.saturating_sub(crate::clock::secs(at)));
    let reconciler = Reconciler {
        stale: owner.is_some() && ago.is_none_or(|ago| ago > 3 * interval),
        owner,
        last_pass_seconds_ago: ago,
        interval_seconds: interval,
    };
    let (queues, queues_error) = queues(ctx).await;
    Ok(Report {
        pools: rows,
        totals,
        fleet,
        rollovers,
        brake,
        reconciler,
        orphans: ctx.store.orphan_count().await?,
        queues,
        queues_error,
    })
}

/// Each queue's ready messages and consumers, or why they cannot be read.
async fn queues(ctx: &Context) -> (Vec<QueueRow>, Option<String>) {
    let monitor = crate::topology::QueueMonitor::new(
        ctx.config.amqp_url.clone(),
        format!("{}.status", ctx.names.prefix()),
        ctx.names.clone(),
        Duration::from_secs(5),
    );
    let depths = monitor.depths().await;
    monitor.close().await;
    match depths {
        Err(error) => (Vec::new(), Some(crate::telemetry::report(&error))),
        Ok(depths) => {
            let rows = depths
                .into_iter()
                .map(|depth| {
                    let (state, why) = match depth.state {
                        QueueState::Ok => ("ok", None),
                        QueueState::Missing => ("missing", None),
                        QueueState::Unavailable(why) => ("unavailable", Some(why)),
                    };
                    QueueRow {
                        queue: depth.queue,
                        process: depth.process,
                        ready: depth.ready,
                        consumers: depth.consumers,
                        state,
                        why,
                    }
                })
                .collect();
            (rows, None)
        }
    }
}

fn render(ctx: &Context, report: &Report, options: &StatusOptions) -> String {
    let now = now_secs();
    let red = |text: &str| {
        if options.color {
            format!("\x1b[1;31m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let dash = |n: Option<u32>| n.map_or("-".into(), |n| n.to_string());
    let mut out = format!(
        "{:<60} {:>6} {:>5} {:>5} {:<8} {:>6} {:>7} {:>10} {:>10}\n",
        "POOL", "TARGET", "MIN", "MAX", "WHY", "READY", "BOOTING", "HANDED OUT", "OLDEST"
    );
    for row in &report.pools {
        let oldest = match (row.oldest_age_seconds, row.oldest_unknown) {
            (Some(secs), _) => age(secs),
            (None, true) => "unknown".into(),
            (None, false) => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<60} {:>6} {:>5} {:>5} {:<8} {:>6} {:>7} {:>10} {:>10}",
            row.pool,
            row.stored_target.escape_debug().to_string(),
            dash(row.min),
            dash(row.max),
            row.why,
            row.ready,
            row.booting,
            row.handed_out,
            oldest
        );
    }
    let totals = &report.totals;
    if totals.pools > 1 {
        let _ = writeln!(
            out,
            "{:<60} {:>6} {:>5} {:>5} {:<8} {:>6} {:>7} {:>10}",
            format!("TOTAL ({} pools)", totals.pools),
            totals.target,
            "",
            "",
            "",
            totals.ready,
            totals.booting,
            totals.handed_out
        );
    }
    let fleet = &report.fleet;
    let full = if fleet.vms >= u64::from(fleet.max_vms) {
        red(": AT THE CAP, boots wait")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "FLEET: {} of WARMER_MAX_VMS {} VMs (ready, booting and handed out, every pool){full}",
        fleet.vms, fleet.max_vms
    );
    for r in &report.rollovers {
        let (from, to) = (&r.from, &r.to);
        let _ = match r.state {
            RolloverState::Rolling => writeln!(
                out,
                "ROLLOVER {from} -> {to}: in progress for {}, aborted in {} unless {to} is at target",
                age(now.saturating_sub(r.started_at)),
                age(r.deadline.saturating_sub(now))
            ),
            RolloverState::Completed => writeln!(
                out,
                "ROLLOVER {from} -> {to}: completed {} ago",
                age(now.saturating_sub(r.finished_at.unwrap_or(now)))
            ),
            RolloverState::Aborted => writeln!(
                out,
                "ROLLOVER {from} -> {to}: aborted {} ago: {}",
                age(now.saturating_sub(r.finished_at.unwrap_or(now))),
                r.reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
                    .escape_debug()
            ),
        };
    }
    if let Some(brake) = &report.brake {
        let since = brake.since.map_or(String::new(), |s| {
            format!(" for {}", age(now.saturating_sub(s)))
        });
        let _ = writeln!(
            out,
            "{}: {} VMs labelled for this deployment are unaccounted for (more than WARMER_ORPHAN_THRESHOLD, {}){since}: boots and their deletion are paused and sizing is frozen; `warmer brake` lists them",
            red("SAFETY BRAKE ON"),
            brake.unaccounted,
            brake.threshold
        );
    }
    out.push_str(&reconciler_line(&report.reconciler, &red));
    if report.orphans > 0 {
        let _ = writeln!(
            out,
            "ORPHANS: {} VMs recorded for deletion ({}), deleted by refill and the reconciler",
            report.orphans,
            ctx.names.orphaned()
        );
    }
    if let Some(error) = &report.queues_error {
        let _ = writeln!(out, "QUEUES: RabbitMQ cannot be read: {error}");
    }
    for q in &report.queues {
        let _ = match (q.state, q.process) {
            ("ok", "dead") => writeln!(
                out,
                "DEAD LETTERS: {} in {}{}",
                q.ready.unwrap_or(0),
                q.queue,
                if q.ready.unwrap_or(0) > 0 {
                    " (`warmer dead list` shows them)"
                } else {
                    ""
                }
            ),
            ("ok", _) => {
                let consumers = q.consumers.unwrap_or(0);
                let none = if consumers == 0 {
                    format!(": {}", red("NO CONSUMER"))
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "QUEUE {}: {} ready, {consumers} consumers{none}",
                    q.queue,
                    q.ready.unwrap_or(0),
                )
            }
            ("missing", _) => writeln!(
                out,
                "QUEUE {}: not declared yet (start a consuming process)",
                q.queue
            ),
            _ => writeln!(
                out,
                "QUEUE {}: UNAVAILABLE: {}",
                q.queue,
                q.why.as_deref().unwrap_or("")
            ),
        };
    }
    match &options.pool {
        Some(glob) if report.pools.is_empty() => {
            let _ = writeln!(out, "(no pool matches `{glob}`)");
        }
        None if report.pools.is_empty() => out.push_str(
            "(no pools: add one with `warmer pool set <image>:<machine_type> <target>`)\n",
        ),
        _ => {}
    }
    out
}

/// Whether a reconciler is active (it holds the lock), which, and when a pass last succeeded:
/// without one, policies, rollovers, fills and orphan deletion by the reconciler all wait.
fn reconciler_line(r: &Reconciler, red: &dyn Fn(&str) -> String) -> String {
    let last = match r.last_pass_seconds_ago {
        Some(ago) => format!("last successful pass {} ago", age(ago)),
        None => "no successful pass recorded".into(),
    };
    let interval = r.interval_seconds;
    // The owner is whatever the lock's key holds: shown escaped, so a value written into Redis
    // cannot put control characters on an operator's terminal.
    match r.owner.as_ref().map(|o| o.escape_debug().to_string()) {
        None => format!(
            "RECONCILER: {} ({last}): until one runs, no policy, schedule or rollover is applied and the reconciler's checks wait\n",
            red("NONE ACTIVE")
        ),
        Some(owner) if r.stale => format!(
            "RECONCILER {owner}: active, {last}: {}; are its passes failing? (see its log)\n",
            red(&format!("more than 3 intervals of {interval}s"))
        ),
        Some(owner) => format!("RECONCILER {owner}: active, {last}\n"),
    }
}

/// An age in the largest unit that keeps it readable: `42s`, `5m`, `3h`, `2d`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}
