//! The operators' page of `warmer web`: `GET /`, every pool with its target, ready VMs, warm hit
//! ratio, idle VM-hours today and over 7 days and a small chart, 50 a page, filtered by a glob
//! (`?pool=ubuntu-*`); `GET /pools/<pool>`, one pool's target against ready VMs and demand over
//! 48 hours and 15 days, the sizer's reasons, hits and misses, boot times by zone, rollovers.
//! The safety brake, the fleet against its cap and the last reconcile pass head both.
//!
//! Rendered here from what `web` read (pure): one HTML document with its style inline and its
//! charts as SVG ([`crate::svg`]) — no script, no other request — served under a
//! Content-Security-Policy that allows nothing but that style ([`content_security_policy`]).
//! Readable on a phone: the tables scroll sideways, the charts shrink to the width.

use std::fmt::Write as _;
use std::sync::OnceLock;

use crate::config::percent_encode;
use crate::store::points::Point;
use crate::svg::{self, Series, escape};

/// Pools per page of the overview.
pub const PER_PAGE: usize = 50;

/// The page's style, inline: the CSP allows exactly this text (by its hash).
const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}\
header{background:#1d2430;color:#fff;padding:10px 16px;display:flex;flex-wrap:wrap;gap:8px 24px;align-items:baseline}\
header h1{font-size:18px;margin:0}header a{color:#fff}\
.bad{color:#fff;background:#c62828;padding:2px 8px;border-radius:4px;font-weight:600}\
.ok{color:#a5d6a7}main{padding:12px 16px;max-width:1200px}\
.scroll{overflow-x:auto}table{border-collapse:collapse;background:#fff;min-width:100%}\
th,td{padding:6px 10px;border-bottom:1px solid #e3e6eb;text-align:right;white-space:nowrap}\
th:first-child,td:first-child{text-align:left}th{font-weight:600;background:#eef0f4}\
.chart{width:100%;max-width:720px;height:auto;background:#fff;display:block;margin:4px 0 16px}\
.spark{width:160px;height:32px}.bands{width:100%;max-width:720px;height:auto;display:block}\
.line{fill:none;stroke-width:1.6}.target{stroke:#1565c0}.ready{stroke:#2e7d32}\
.booting{stroke:#f9a825}.handed{stroke:#6a1b9a}.demand{stroke:#c62828}\
.hits{stroke:#2e7d32}.misses{stroke:#c62828}\
.grid{stroke:#e3e6eb}.axis{font-size:10px;fill:#5f6b7a}\
.key span{display:inline-block;margin-right:12px}.key i{display:inline-block;width:12px;height:3px;margin-right:4px;vertical-align:middle}\
.k-target{background:#1565c0}.k-ready{background:#2e7d32}.k-booting{background:#f9a825}\
.k-handed{background:#6a1b9a}.k-demand,.k-misses{background:#c62828}.k-hits{background:#2e7d32}\
.reason-static{fill:#90a4ae}.reason-pending{fill:#cfd8dc}.reason-invalid{fill:#000}\
.reason-min{fill:#81c784}.reason-schedule{fill:#4fc3f7}.reason-demand{fill:#ef5350}\
.reason-history{fill:#ffb74d}.reason-max{fill:#8e24aa}.reason-rollover{fill:#5c6bc0}\
form{margin:0 0 12px}input{font:inherit;padding:4px 6px}nav{margin:12px 0}nav a{margin-right:12px}\
h2{font-size:16px;margin:20px 0 4px}";

/// The `Content-Security-Policy` of the page: nothing may load, run or be framed; only its own
/// inline style applies.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = openssl::base64::encode_block(&openssl::sha::sha256(STYLE.as_bytes()));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; img-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        )
    })
}

/// What heads every page.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// Unaccounted VMs and since when (Unix seconds), while the safety brake holds.
    pub brake: Option<(u64, Option<u64>)>,
    /// The fleet's VMs and `WARMER_MAX_VMS`.
    pub fleet: (u64, u32),
    /// Seconds since the last successful reconcile pass, if one ever succeeded.
    pub last_pass_ago: Option<u64>,
    /// The active reconciler's owner, if one holds the lock.
    pub reconciler: Option<String>,
}

/// One pool's row of the overview.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub pool: String,
    pub target: String,
    pub ready: u64,
    pub booting: u64,
    pub handed_out: u64,
    pub why: &'static str,
    /// Over the last 24 hours; `None` without a checkout.
    pub hit_ratio: Option<f64>,
    pub idle_hours_today: f64,
    pub idle_hours_week: f64,
    /// Its 10-minute points of the last 48 hours.
    pub recent: Vec<Point>,
}

/// The overview: one page of the pools that match the filter.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    pub header: Header,
    pub rows: Vec<Row>,
    /// The filter as given.
    pub filter: Option<String>,
    pub page: usize,
    pub pages: usize,
    /// Pools that match the filter, over every page.
    pub matching: usize,
    /// Unix minutes now.
    pub now: u64,
    /// The newest events an operator must know, in words.
    pub events: Vec<String>,
}

/// One pool in full.
#[derive(Debug, Clone, Default)]
pub struct PoolPage {
    pub header: Header,
    pub row: Row,
    /// Its policy, as `warmer pool list` shows it.
    pub policy: Option<String>,
    /// Its points of the last 48 hours (one a minute) and 15 days (one per 10 minutes).
    pub minutes: Vec<Point>,
    pub tens: Vec<Point>,
    /// Boot times of the deployment by zone: (zone, boots, mean seconds, 90th percentile's
    /// bucket bound in seconds).
    pub boots: Vec<(String, u64, f64, f64)>,
    /// Rollovers it takes part in, in words.
    pub rollovers: Vec<String>,
    pub now: u64,
    /// The newest events that name it, in words.
    pub events: Vec<String>,
}

/// An event as kept (`store::event_log`) in words: when, what, and its fields.
pub fn event_line(event: &serde_json::Value) -> String {
    let at = event["at"]
        .as_u64()
        .map_or(String::new(), |at| svg_time(at as f64 / 60.0));
    let what = event["event"].as_str().unwrap_or("?");
    let fields: Vec<String> = event
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "at" && *k != "event")
        .map(|(k, v)| match v.as_str() {
            Some(text) => format!("{k}={text}"),
            None => format!("{k}={v}"),
        })
        .collect();
    format!("{at} {what} {}", fields.join(" "))
}

fn events_list(events: &[String]) -> String {
    if events.is_empty() {
        return "<p id=\"events\">none kept</p>".into();
    }
    let mut out = String::from("<ul id=\"events\">");
    for event in events {
        let _ = write!(out, "<li>{}</li>", escape(event));
    }
    out.push_str("</ul>");
    out
}

fn document(title: &str, header: &Header, body: &str) -> String {
    let mut out = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>warmer: {}</title><style>{STYLE}</style></head><body><header><h1><a href=\"/\">warmer</a></h1>",
        escape(title)
    );
    match header.brake {
        Some((unaccounted, since)) => {
            let since = since.map_or(String::new(), |s| {
                format!(" since {}", svg_time(s as f64 / 60.0))
            });
            let _ = write!(
                out,
                "<span id=\"brake\" class=\"bad\">SAFETY BRAKE ON: {unaccounted} VMs unaccounted{since}</span>"
            );
        }
        None => out.push_str("<span id=\"brake\" class=\"ok\">safety brake off</span>"),
    }
    let (vms, cap) = header.fleet;
    let class = if vms >= u64::from(cap) { "bad" } else { "ok" };
    let _ = write!(
        out,
        "<span id=\"fleet\" class=\"{class}\">fleet {vms} of {cap} VMs</span>"
    );
    let pass = match (&header.reconciler, header.last_pass_ago) {
        (None, _) => {
            "<span id=\"reconciler\" class=\"bad\">no reconciler active</span>".to_string()
        }
        (Some(_), Some(ago)) => {
            format!("<span id=\"reconciler\" class=\"ok\">last reconcile pass {ago}s ago</span>")
        }
        (Some(_), None) => {
            "<span id=\"reconciler\" class=\"bad\">no reconcile pass yet</span>".to_string()
        }
    };
    out.push_str(&pass);
    let _ = write!(out, "</header><main>{body}</main></body></html>");
    out
}

fn svg_time(minute: f64) -> String {
    jiff::Timestamp::from_second((minute * 60.0) as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or("-".into(), |r| format!("{:.1} %", r * 100.0))
}

/// The link to a pool's page (its name percent-encoded).
pub fn pool_link(pool: &str) -> String {
    format!("/pools/{}", percent_encode(pool, &[]))
}

fn series(points: &[Point], class: &'static str, value: fn(&Point) -> f64) -> Series {
    Series {
        label: class.into(),
        class,
        points: points
            .iter()
            .map(|p| (f64::from(p.minute), value(p)))
            .collect(),
    }
}

/// Arrivals (hits and misses) per minute between consecutive points.
fn demand(points: &[Point]) -> Series {
    let rate = points
        .windows(2)
        .map(|w| {
            let minutes = f64::from(w[1].minute.saturating_sub(w[0].minute)).max(1.0);
            let arrivals =
                w[1].hits.wrapping_sub(w[0].hits) + w[1].misses.wrapping_sub(w[0].misses);
            (f64::from(w[1].minute), f64::from(arrivals) / minutes)
        })
        .collect();
    Series {
        label: "demand per minute".into(),
        class: "demand",
        points: rate,
    }
}

/// The overview's HTML.
pub fn overview(o: &Overview) -> String {
    let mut body = String::new();
    let filter = o.filter.as_deref().unwrap_or("");
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/\"><label>pools <input name=\"pool\" value=\"{}\" placeholder=\"glob, e.g. ubuntu-*\"></label> <input type=\"submit\" value=\"filter\"></form>",
        escape(filter)
    );
    let _ = write!(
        body,
        "<p id=\"count\">{} pool(s){}</p>",
        o.matching,
        if o.pages > 1 {
            format!(", page {} of {}", o.page, o.pages)
        } else {
            String::new()
        }
    );
    body.push_str("<div class=\"scroll\"><table id=\"pools\"><thead><tr><th>pool</th><th>target</th><th>ready</th><th>booting</th><th>handed out</th><th>why</th><th>hits (24 h)</th><th>idle VM-h today</th><th>idle VM-h 7 days</th><th>48 h: target, ready</th></tr></thead><tbody>");
    let range = ((o.now.saturating_sub(48 * 60)) as f64, o.now as f64);
    for row in &o.rows {
        let spark = svg::sparkline(
            &format!("{}: target and ready, 48 hours", row.pool),
            &[
                series(&row.recent, "target", |p| f64::from(p.target)),
                series(&row.recent, "ready", |p| f64::from(p.ready)),
            ],
            range,
        );
        let _ = write!(
            body,
            "<tr data-pool=\"{pool}\"><td><a href=\"{link}\">{pool}</a></td><td class=\"target\">{}</td><td class=\"ready\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"hits\">{}</td><td class=\"idle-today\">{:.2}</td><td class=\"idle-week\">{:.2}</td><td>{spark}</td></tr>",
            escape(&row.target),
            row.ready,
            row.booting,
            row.handed_out,
            row.why,
            percent(row.hit_ratio),
            row.idle_hours_today,
            row.idle_hours_week,
            pool = escape(&row.pool),
            link = pool_link(&row.pool),
        );
    }
    body.push_str("</tbody></table></div>");
    if o.rows.is_empty() {
        body.push_str("<p>no pool matches (add one with <code>warmer pool set</code>).</p>");
    }
    if o.pages > 1 {
        body.push_str("<nav>");
        let query =
            |page: usize| format!("/?pool={}&amp;page={page}", percent_encode(filter, b"*"));
        if o.page > 1 {
            let _ = write!(body, "<a href=\"{}\">previous</a>", query(o.page - 1));
        }
        if o.page < o.pages {
            let _ = write!(body, "<a href=\"{}\">next</a>", query(o.page + 1));
        }
        body.push_str("</nav>");
    }
    body.push_str("<h2>events (rollovers, the brake, the fleet cap, failed boots)</h2>");
    body.push_str(&events_list(&o.events));
    document("pools", &o.header, &body)
}

fn key(classes: &[(&str, &str)]) -> String {
    let mut out = String::from("<p class=\"key\">");
    for (class, label) in classes {
        let _ = write!(out, "<span><i class=\"k-{class}\"></i>{label}</span>");
    }
    out.push_str("</p>");
    out
}

/// One pool's HTML.
pub fn pool(p: &PoolPage) -> String {
    let row = &p.row;
    let mut body = format!(
        "<h2 id=\"pool\">{}</h2><div class=\"scroll\"><table id=\"summary\"><tr><th>target</th><th>ready</th><th>booting</th><th>handed out</th><th>why</th><th>policy</th><th>hits (24 h)</th><th>idle VM-h today</th><th>idle VM-h 7 days</th></tr><tr><td class=\"target\">{}</td><td class=\"ready\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"hits\">{}</td><td class=\"idle-today\">{:.2}</td><td class=\"idle-week\">{:.2}</td></tr></table></div>",
        escape(&row.pool),
        escape(&row.target),
        row.ready,
        row.booting,
        row.handed_out,
        row.why,
        escape(p.policy.as_deref().unwrap_or("static")),
        percent(row.hit_ratio),
        row.idle_hours_today,
        row.idle_hours_week,
    );
    let day2 = (p.now.saturating_sub(48 * 60) as f64, p.now as f64);
    let days15 = (p.now.saturating_sub(15 * 24 * 60) as f64, p.now as f64);
    let levels = |points: &[Point]| {
        vec![
            series(points, "target", |p| f64::from(p.target)),
            series(points, "ready", |p| f64::from(p.ready)),
            series(points, "booting", |p| f64::from(p.booting)),
            series(points, "handed", |p| f64::from(p.handed_out)),
        ]
    };
    let level_key = key(&[
        ("target", "target"),
        ("ready", "ready"),
        ("booting", "booting"),
        ("handed", "handed out"),
    ]);
    body.push_str("<h2>48 hours</h2>");
    body.push_str(&svg::line_chart(
        "target, ready, booting and handed out, 48 hours",
        &levels(&p.minutes),
        day2,
    ));
    body.push_str(&level_key);
    body.push_str(&svg::line_chart(
        "demand: checkouts per minute, 48 hours",
        &[demand(&p.minutes)],
        day2,
    ));
    body.push_str(&key(&[("demand", "checkouts per minute")]));
    let states: Vec<(f64, &'static str)> = p
        .minutes
        .iter()
        .map(|pt| (f64::from(pt.minute), pt.reason()))
        .collect();
    body.push_str("<h2>why the target is what it is</h2>");
    body.push_str(&svg::band_chart(
        "the sizer's reasons, 48 hours",
        &svg::bands(&states, p.now as f64),
        day2,
    ));
    let mut reasons: Vec<&str> = states.iter().map(|(_, r)| *r).collect();
    reasons.dedup();
    reasons.sort_unstable();
    reasons.dedup();
    let _ = write!(body, "<p id=\"reasons\">{}</p>", reasons.join(", "));
    body.push_str("<h2>15 days</h2>");
    body.push_str(&svg::line_chart(
        "target, ready, booting and handed out, 15 days",
        &levels(&p.tens),
        days15,
    ));
    body.push_str(&level_key);
    let per_hour = |points: &[Point], value: fn(&Point) -> u32, class: &'static str| {
        let rate = points
            .windows(2)
            .map(|w| {
                let minutes = f64::from(w[1].minute.saturating_sub(w[0].minute)).max(1.0);
                let n = value(&w[1]).wrapping_sub(value(&w[0]));
                (f64::from(w[1].minute), f64::from(n) * 60.0 / minutes)
            })
            .collect();
        Series {
            label: format!("{class} per hour"),
            class,
            points: rate,
        }
    };
    body.push_str(&svg::line_chart(
        "warm hits and misses per hour, 15 days",
        &[
            per_hour(&p.tens, |pt| pt.hits, "hits"),
            per_hour(&p.tens, |pt| pt.misses, "misses"),
        ],
        days15,
    ));
    body.push_str(&key(&[
        ("hits", "warm hits per hour"),
        ("misses", "misses (cold boots) per hour"),
    ]));
    body.push_str("<h2>boot times by zone (every pool)</h2><div class=\"scroll\"><table id=\"boots\"><tr><th>zone</th><th>boots</th><th>mean</th><th>90th percentile under</th></tr>");
    for (zone, count, mean, p90) in &p.boots {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{count}</td><td>{mean:.0} s</td><td>{p90:.0} s</td></tr>",
            escape(zone)
        );
    }
    body.push_str("</table></div><h2>rollovers</h2>");
    if p.rollovers.is_empty() {
        body.push_str("<p id=\"rollovers\">none</p>");
    } else {
        body.push_str("<ul id=\"rollovers\">");
        for rollover in &p.rollovers {
            let _ = write!(body, "<li>{}</li>", escape(rollover));
        }
        body.push_str("</ul>");
    }
    body.push_str("<h2>events</h2>");
    body.push_str(&events_list(&p.events));
    document(&row.pool, &p.header, &body)
}

/// The idle VM-hours between the first point at or after `from` (Unix minutes) and the last.
pub fn idle_hours(points: &[Point], from: u64) -> f64 {
    let mut within = points.iter().filter(|p| u64::from(p.minute) >= from);
    let (Some(first), Some(last)) = (within.next(), points.last()) else {
        return 0.0;
    };
    f64::from(last.idle_seconds.wrapping_sub(first.idle_seconds)) / 3600.0
}

/// Hits over hits and misses between the first point at or after `from` and the last.
pub fn hit_ratio(points: &[Point], from: u64) -> Option<f64> {
    let first = points.iter().find(|p| u64::from(p.minute) >= from)?;
    let last = points.last()?;
    let hits = last.hits.wrapping_sub(first.hits);
    let misses = last.misses.wrapping_sub(first.misses);
    let all = u64::from(hits) + u64::from(misses);
    (all > 0).then(|| f64::from(hits) / all as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(minute: u32, hits: u32, misses: u32, idle: u32) -> Point {
        Point {
            minute,
            hits,
            misses,
            idle_seconds: idle,
            ..Point::default()
        }
    }

    #[test]
    fn figures_are_differences_of_the_cumulative_points_even_across_a_wrap() {
        let points = [
            point(100, 10, 0, 0),
            point(110, 19, 1, 3_600),
            point(120, 28, 2, 10_800),
        ];
        assert_eq!(idle_hours(&points, 0), 3.0);
        assert_eq!(idle_hours(&points, 105), 2.0);
        assert_eq!(hit_ratio(&points, 0), Some(0.9));
        assert_eq!(hit_ratio(&points[..1], 0), None);
        let wrapped = [
            point(1, u32::MAX - 1, 0, u32::MAX - 1799),
            point(2, 2, 0, 1_800),
        ];
        assert_eq!(idle_hours(&wrapped, 0), 1.0);
        assert_eq!(hit_ratio(&wrapped, 0), Some(1.0));
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_style_and_nothing_else() {
        let csp = content_security_policy();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'sha256-"),
            "{csp}"
        );
        assert!(
            !csp.contains("unsafe") && !csp.contains("script-src"),
            "{csp}"
        );
        let page = overview(&Overview::default());
        assert!(page.contains(&format!("<style>{STYLE}</style>")));
        assert!(
            !page.contains("<script") && !page.contains("http://") && !page.contains("https://")
        );
    }

    #[test]
    fn a_pool_name_from_redis_is_escaped_in_the_row_and_the_link() {
        let o = Overview {
            rows: vec![Row {
                pool: "a<b>\"c:n1".into(),
                target: "3".into(),
                ..Row::default()
            }],
            matching: 1,
            page: 1,
            pages: 1,
            ..Overview::default()
        };
        let page = overview(&o);
        assert!(!page.contains("a<b>"), "{page}");
        assert!(page.contains("href=\"/pools/a%3Cb%3E%22c%3An1\""), "{page}");
    }
}
