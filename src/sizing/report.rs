//! `warmer simulate --report FILE.html`: the replay for people, one self-contained HTML file (its
//! style inline, its charts SVG, no script, nothing fetched): in total and per pool the trade-off
//! curve — warm hits against idle VM-hours for every static target of a sweep, with each policy
//! compared as a point on it — each pool's demand and the adaptive candidates' targets over the
//! trace's time, and the table `simulate` prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::simulate::{BootTime, Candidate, Outcome, Report, Trace, replay, replay_traced};
use crate::policy::Policy;
use crate::svg::{self, Series, escape};

/// A replay's outcomes: per pool, and the total.
type Replayed = (BTreeMap<String, Outcome>, Outcome);

/// Static targets swept for the curve, at most.
const SWEEP_POINTS: u32 = 16;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#1d2430;max-width:1100px}\
h1{font-size:20px}h2{font-size:16px;margin:24px 0 4px}pre{background:#f6f7f9;padding:8px;overflow-x:auto}\
.chart{width:100%;max-width:720px;height:auto;display:block;margin:4px 0 12px;background:#fff}\
.line{fill:none;stroke-width:1.6}.curve{stroke:#90a4ae}.target{stroke:#1565c0}.demand{stroke:#c62828}\
.mark{stroke:#fff;stroke-width:1}.static{fill:#546e7a}.adaptive{fill:#2e7d32}.scheduled{fill:#f9a825}\
.grid{stroke:#e3e6eb}.axis{font-size:10px;fill:#5f6b7a}p.note{color:#5f6b7a}";

/// One point of a curve or a candidate: idle VM-hours and warm hit %.
fn xy(o: &Outcome) -> (f64, f64) {
    (o.idle_vm_minutes / 60.0, o.hit_rate * 100.0)
}

fn kind(candidate: &Candidate) -> &'static str {
    if candidate.policy.adaptive {
        "adaptive"
    } else if candidate.policy.schedules.is_empty() {
        "static"
    } else {
        "scheduled"
    }
}

/// The report's HTML: `reports` are the candidates' replays (in `candidates`' order) as the
/// table shows them, `table` the table's text.
pub fn html(
    trace: &Trace,
    candidates: &[Candidate],
    reports: &[Report],
    boot: BootTime,
    table: &str,
) -> String {
    // The sweep: static targets from 0 to the most a pool ever had in flight at once.
    let peak = reports
        .iter()
        .flat_map(|r| r.pools.values().map(|o| o.peak_vms))
        .max()
        .unwrap_or(1)
        .max(1);
    let step = peak.div_ceil(SWEEP_POINTS).max(1);
    let sweep: Vec<(u32, Replayed)> = (0..=peak + step)
        .step_by(step as usize)
        .map(|n| {
            let policy = Policy {
                min: n,
                max: n,
                adaptive: false,
                hit: crate::policy::DEFAULT_HIT,
                schedules: Vec::new(),
            };
            (n, replay(trace, &policy, boot))
        })
        .collect();
    let mut out = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>warmer simulate: report</title><style>{STYLE}</style></head><body><h1>warmer simulate</h1><p id=\"summary\">{} checkouts in {} pools, {} policies compared; the grey curve: every static target from 0 to {} (a static target per pool); points: the policies.</p>",
        trace.len(),
        reports.first().map_or(0, |r| r.pools.len()),
        reports.len(),
        peak + step
    );
    let marks = |outcome_of: &dyn Fn(&Report) -> Option<&Outcome>| -> Vec<(String, &'static str, (f64, f64))> {
        reports
            .iter()
            .zip(candidates)
            .filter_map(|(r, c)| Some((c.name.clone(), kind(c), xy(outcome_of(r)?))))
            .collect()
    };
    let curve = |outcome_of: &dyn Fn(&Replayed) -> Option<&Outcome>| Series {
        label: "static targets".into(),
        class: "curve",
        points: sweep
            .iter()
            .filter_map(|(_, replayed)| Some(xy(outcome_of(replayed)?)))
            .collect(),
    };
    let floor = |points: &[(String, &'static str, (f64, f64))], curve: &Series| {
        let lowest = points
            .iter()
            .map(|m| m.2.1)
            .chain(curve.points.iter().map(|p| p.1))
            .filter(|y| *y >= 50.0)
            .fold(100.0, f64::min);
        (lowest - (100.0 - lowest) * 0.1).floor().clamp(0.0, 99.0)
    };
    let total_marks = marks(&|r| Some(&r.total));
    let total_curve = curve(&|(_, total)| Some(total));
    let _ = write!(
        out,
        "<h2>in total: warm hits against idle VM-hours</h2>{}",
        svg::xy_chart(
            "in total: warm hit % against idle VM-hours",
            std::slice::from_ref(&total_curve),
            &total_marks,
            ("idle VM-hours", "warm hit %"),
            (floor(&total_marks, &total_curve), 100.0)
        )
    );
    let _ = write!(
        out,
        "<h2>the table</h2><pre id=\"table\">{}</pre>",
        escape(table)
    );
    let (start, end) = (
        trace.first().map_or(0, |t| t.0) as f64 / 60.0,
        trace.last().map_or(0, |t| t.0) as f64 / 60.0,
    );
    let adaptive: Vec<(&Candidate, super::simulate::Targets)> = candidates
        .iter()
        .filter(|c| c.policy.adaptive || !c.policy.schedules.is_empty())
        .map(|c| (c, replay_traced(trace, &c.policy, boot, true).2))
        .collect();
    let pools: Vec<&String> = reports
        .first()
        .map(|r| r.pools.keys().collect())
        .unwrap_or_default();
    for pool in pools {
        let pool_marks = marks(&|r| r.pools.get(pool));
        let pool_curve = curve(&|(pools, _)| pools.get(pool));
        let _ = write!(
            out,
            "<section class=\"pool\" data-pool=\"{p}\"><h2>{p}</h2>{}",
            svg::xy_chart(
                &format!("{pool}: warm hit % against idle VM-hours"),
                std::slice::from_ref(&pool_curve),
                &pool_marks,
                ("idle VM-hours", "warm hit %"),
                (floor(&pool_marks, &pool_curve), 100.0)
            ),
            p = escape(pool)
        );
        // Demand per hour, and each adaptive candidate's target (the highest of each hour).
        let mut hours: BTreeMap<u64, f64> = BTreeMap::new();
        for (at, p) in trace.iter().filter(|(_, p)| p == pool) {
            let _ = p;
            *hours.entry(at / 3600).or_default() += 1.0;
        }
        let mut series = vec![Series {
            label: "checkouts per hour".into(),
            class: "demand",
            points: hours.iter().map(|(h, n)| ((h * 60) as f64, *n)).collect(),
        }];
        for (candidate, targets) in &adaptive {
            let steps = targets.get(pool).cloned().unwrap_or_default();
            let mut points = Vec::new();
            let mut last: Option<u32> = None;
            for (at, target) in steps {
                if let Some(before) = last {
                    points.push((at as f64 / 60.0, f64::from(before)));
                }
                points.push((at as f64 / 60.0, f64::from(target)));
                last = Some(target);
            }
            if let Some(before) = last {
                points.push((end, f64::from(before)));
            }
            series.push(Series {
                label: format!("target of {}", candidate.name),
                class: "target",
                points,
            });
        }
        let _ = write!(
            out,
            "{}</section>",
            svg::line_chart(
                &format!("{pool}: checkouts per hour and the target over the trace"),
                &series,
                (start, end)
            )
        );
    }
    out.push_str("<p class=\"note\">Written by warmer simulate: one file, nothing fetched.</p></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_shows_the_curve_every_policy_and_the_table_and_fetches_nothing() {
        let trace: Trace = (0..400u64)
            .map(|i| (1_795_996_800 + i * 97, format!("p{}:n1-standard-1", i % 2)))
            .collect();
        let candidates: Vec<Candidate> = ["static:2", "adaptive"]
            .iter()
            .map(|c| Candidate::parse(c).expect("a candidate"))
            .collect();
        let boot = BootTime::parse("45s").expect("a boot time");
        let reports = super::super::simulate::compare(&trace, &candidates, boot);
        let table = super::super::simulate::table(&reports);
        let page = html(&trace, &candidates, &reports, boot, &table);
        assert!(page.contains("<pre id=\"table\">"), "{page}");
        assert_eq!(page.matches("<section class=\"pool\"").count(), 2);
        assert!(page.contains("class=\"mark adaptive\"") && page.contains("class=\"mark static\""));
        assert!(
            !page.contains("<script") && !page.contains("http"),
            "self-contained"
        );
    }
}
