//! What the operators' page shows, read from Redis (see `page.rs` for what it looks like): who
//! may see it, and the figures of the overview and of one pool.

use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};

use super::page::{self, Header, Overview, PER_PAGE, PoolPage, Row};
use super::{Answer, text};
use crate::auth::Basic;
use crate::clock::now_secs;
use crate::config::percent_decode;
use crate::context::Context;
use crate::metrics::BOOT_SECONDS;
use crate::pool::{PoolName, PoolStatus, glob_matches};
use crate::store::points::{MINUTES, Point, TEN_MINUTES};

/// A page of the operators'.
#[derive(Debug, PartialEq, Eq)]
pub enum PageRoute {
    /// `/?pool=<glob>&page=<n>`.
    Overview { filter: Option<String>, page: usize },
    /// `/pools/<pool>` (percent-decoded).
    Pool(String),
}

impl PageRoute {
    /// The page a GET asks for, if it asks for one.
    pub fn of(method: &Method, path: &str, query: Option<&str>) -> Option<PageRoute> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        if path == "/" {
            let (mut filter, mut page) = (None, 1);
            for pair in query.unwrap_or_default().split('&') {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let value = percent_decode(&value.replace('+', " "));
                match key {
                    "pool" if !value.trim().is_empty() => filter = Some(value.trim().to_string()),
                    "page" => page = value.parse().unwrap_or(1).max(1),
                    _ => {}
                }
            }
            return Some(PageRoute::Overview { filter, page });
        }
        let pool = path.strip_prefix("/pools/")?;
        Some(PageRoute::Pool(percent_decode(pool.trim_end_matches('/'))))
    }
}

/// Why `request` may not see the page, if it may not: on a dyno, only over HTTPS; basic auth
/// with one of `WARMER_AUTH_TOKENS` as the password; without tokens, anyone off a dyno and no one
/// on one.
pub fn refusal(ctx: &Context, request: &Request<hyper::body::Incoming>) -> Option<Answer> {
    // Behind Heroku's router, a request that came over plain HTTP sent its token in the clear.
    let forwarded = request.headers().get("x-forwarded-proto");
    if ctx.config.on_heroku && forwarded.is_some_and(|proto| proto.as_bytes() == b"http") {
        return Some(text(StatusCode::FORBIDDEN, "HTTPS only\n"));
    }
    let tokens = &ctx.config.auth_tokens;
    if tokens.is_empty() {
        return ctx.config.on_heroku.then(|| {
            text(
                StatusCode::FORBIDDEN,
                "the page needs WARMER_AUTH_TOKENS on Heroku: set it, then sign in with a token as the password\n",
            )
        });
    }
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match crate::auth::basic(header, tokens) {
        Basic::Token(_) => None,
        Basic::Missing | Basic::OtherScheme => {
            let mut answer = text(
                StatusCode::UNAUTHORIZED,
                "sign in: any user name, an operator token (WARMER_AUTH_TOKENS) as the password\n",
            );
            answer.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"warmer\", charset=\"UTF-8\""),
            );
            Some(answer)
        }
    }
}

/// The page's answer, with its security headers.
pub fn html(body: String) -> Answer {
    let mut answer = Response::new(http_body_util::Full::new(hyper::body::Bytes::from(body)));
    let headers = answer.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(csp) = HeaderValue::from_str(page::content_security_policy()) {
        headers.insert("content-security-policy", csp);
    }
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    answer
}

async fn header(ctx: &Context, pools: &[PoolStatus]) -> anyhow::Result<Header> {
    let store = &ctx.store;
    let brake = store
        .brake_state()
        .await?
        .map(|state| (state.unaccounted, state.since));
    let vms = pools.iter().map(PoolStatus::vms).sum();
    let last_pass_ago = store
        .last_reconcile()
        .await?
        .map(|at| now_secs().saturating_sub(crate::clock::secs(at)));
    Ok(Header {
        brake,
        fleet: (vms, ctx.config.max_vms),
        last_pass_ago,
        reconciler: store.reconciler().await?,
    })
}

/// A pool's row from its status and its 10-minute points of the last 7 days.
fn row(status: &PoolStatus, why: &'static str, tens: &[Point], now: u64) -> Row {
    let today = now - now % (24 * 60);
    Row {
        pool: status.level.pool.clone(),
        target: status.level.target.clone(),
        ready: status.level.ready,
        booting: status.level.booting,
        handed_out: status.handed_out,
        why,
        hit_ratio: page::hit_ratio(tens, now.saturating_sub(24 * 60)),
        idle_hours_today: page::idle_hours(tens, today),
        idle_hours_week: page::idle_hours(tens, now.saturating_sub(7 * 24 * 60)),
        recent: tens
            .iter()
            .filter(|p| u64::from(p.minute) >= now.saturating_sub(48 * 60))
            .copied()
            .collect(),
    }
}

/// The overview: the pools matching `filter`, page `page`.
pub async fn overview(
    ctx: &Context,
    filter: Option<String>,
    page: usize,
) -> anyhow::Result<String> {
    let (pools, _) = ctx.store.status().await?;
    // Reasons from the policies' bounds alone: no schedule of 10,000 pools parsed per view.
    let (sizing, _) = ctx.store.sizing_samples().await?;
    let why = |pool: &str| sizing.get(pool).map_or("static", |s| s.reason);
    let header = header(ctx, &pools).await?;
    let now = now_secs() / 60;
    let matching: Vec<&PoolStatus> = pools
        .iter()
        .filter(|p| {
            filter
                .as_deref()
                .is_none_or(|glob| glob_matches(glob, &p.level.pool))
        })
        .collect();
    let pages = matching.len().div_ceil(PER_PAGE).max(1);
    let page = page.min(pages);
    let shown: Vec<&PoolStatus> = matching
        .iter()
        .skip((page - 1) * PER_PAGE)
        .take(PER_PAGE)
        .copied()
        .collect();
    let names: Vec<PoolName> = shown
        .iter()
        .filter_map(|p| p.level.pool.parse().ok())
        .collect();
    let week = now.saturating_sub(7 * 24 * 60);
    let mut points = ctx.store.points_of(&names, TEN_MINUTES, week).await?;
    let rows = shown
        .iter()
        .map(|status| {
            let tens = status
                .level
                .pool
                .parse::<PoolName>()
                .ok()
                .and_then(|pool| points.remove(&pool))
                .unwrap_or_default();
            row(status, why(&status.level.pool), &tens, now)
        })
        .collect();
    let events = ctx.store.events_kept(10).await?;
    Ok(page::overview(&Overview {
        header,
        rows,
        filter,
        page,
        pages,
        matching: matching.len(),
        now,
        events: events.iter().map(page::event_line).collect(),
    }))
}

/// One pool's page, `None` for a pool that does not exist.
pub async fn pool(ctx: &Context, name: &str) -> anyhow::Result<Option<String>> {
    let Ok(pool) = name.parse::<PoolName>() else {
        return Ok(None);
    };
    let (pools, _) = ctx.store.status().await?;
    let Some(status) = pools.iter().find(|p| p.level.pool == name) else {
        return Ok(None);
    };
    let sizing = ctx.store.sizing_view().await?;
    let header = header(ctx, &pools).await?;
    let now = now_secs() / 60;
    let minutes = ctx
        .store
        .points(&pool, MINUTES, now.saturating_sub(48 * 60))
        .await?;
    let tens = ctx
        .store
        .points(&pool, TEN_MINUTES, now.saturating_sub(15 * 24 * 60))
        .await?;
    let counters = ctx.store.counters(&[]).await?;
    let policy = match sizing.policies.get(name) {
        Some(Ok(policy)) => Some(policy.to_string()),
        Some(Err(error)) => Some(format!("unreadable: {error}")),
        None => None,
    };
    let rollovers = sizing
        .rollovers
        .iter()
        .filter(|(from, r)| *from == name || r.to == name)
        .map(|(from, r)| format!("{from} -> {}: {:?}", r.to, r.state).to_lowercase())
        .collect();
    let names_it = |e: &&serde_json::Value| {
        ["pool", "from", "to"]
            .iter()
            .any(|field| e[*field].as_str() == Some(name))
    };
    let events = ctx
        .store
        .events_kept(crate::store::event_log::EVENTS_KEPT)
        .await?;
    let events = events
        .iter()
        .filter(names_it)
        .take(20)
        .map(page::event_line)
        .collect();
    Ok(Some(page::pool(&PoolPage {
        events,
        header,
        row: row(status, sizing.why(name), &tens, now),
        policy,
        minutes,
        tens,
        boots: counters.histogram_summary(&BOOT_SECONDS),
        rollovers,
        now,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overview_and_a_pools_page_are_found_with_their_filter_and_page() {
        let get = Method::GET;
        assert_eq!(
            PageRoute::of(&get, "/", Some("pool=ubuntu-%2A&page=3")),
            Some(PageRoute::Overview {
                filter: Some("ubuntu-*".into()),
                page: 3
            })
        );
        assert_eq!(
            PageRoute::of(&get, "/", Some("page=0&pool=")),
            Some(PageRoute::Overview {
                filter: None,
                page: 1
            })
        );
        assert_eq!(
            PageRoute::of(&get, "/pools/a%3An1", None),
            Some(PageRoute::Pool("a:n1".into()))
        );
        assert_eq!(PageRoute::of(&Method::POST, "/", None), None);
        assert_eq!(PageRoute::of(&get, "/metrics", None), None);
    }
}
