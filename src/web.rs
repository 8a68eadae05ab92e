//! `warmer web`: HTTP on `$PORT` for whoever watches and scales warmer.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | 200 when Redis and RabbitMQ answer, else 503; JSON naming each dependency |
//! | `GET /metrics` | Prometheus text: every pool's target, ready, booting, handed out, oldest age; orphans; the brake; queue depths |
//! | `GET /hirefire/<HIREFIRE_TOKEN>/info`, or `GET /hirefire` with header `HireFire-Token` | HireFire's job-queue format: each process type's backlog (`load.rs`) |
//!
//! Reads only: it declares nothing and changes nothing, so it can run anywhere. Without
//! `HIREFIRE_TOKEN` the HireFire routes answer 404. Every dependency is asked for at most
//! [`CHECK_TIMEOUT`], Redis and RabbitMQ at the same time, so an answer comes within Prometheus's
//! and HireFire's timeouts even when one hangs. Runs until SIGTERM, then stops accepting and lets
//! open requests finish (at most [`DRAIN`]).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::Secret;
use crate::context::Context;
use crate::load::{self, Backlog};
use crate::shutdown::Shutdown;
use crate::store::{PoolStatus, now_ms};
use crate::topology::{QueueDepth, QueueMonitor};

/// How long open requests may take after SIGTERM.
pub const DRAIN: Duration = Duration::from_secs(10);
/// Each dependency check and query is bounded by this, so a scrape never hangs.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The port when `PORT` is unset (Heroku always sets it).
pub const DEFAULT_PORT: u16 = 8080;

/// Binds `0.0.0.0:$PORT` and serves until `shutdown`.
pub async fn run(ctx: Context, shutdown: Shutdown) -> anyhow::Result<()> {
    let port = ctx.config.port.unwrap_or(DEFAULT_PORT);
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("binding PORT {port}"))?;
    serve(ctx, listener, shutdown).await
}

/// Serves HTTP on `listener` until `shutdown`.
pub async fn serve(ctx: Context, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let address = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%address, "serving /health, /metrics and /hirefire");
    let queues = QueueMonitor::new(
        ctx.config.amqp_url.clone(),
        format!("{}.web", ctx.names.prefix()),
        ctx.names.clone(),
        CHECK_TIMEOUT,
    );
    let web = Arc::new(Web { ctx, queues });
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let web = web.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let web = web.clone();
                async move { Ok::<_, Infallible>(web.respond(&request).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener); // new connections are refused now, not left waiting in the backlog
    if tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "requests still open after the drain: dropped"
        );
    }
    web.queues.close().await;
    tracing::info!("web stopped");
    Ok(())
}

struct Web {
    ctx: Context,
    queues: QueueMonitor,
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Health,
    Metrics,
    HireFire,
    /// A HireFire route with a missing or wrong token, or with no token configured.
    Forbidden,
    NotFound,
    MethodNotAllowed,
}

/// Maps method, path and the `HireFire-Token` header to a route; `token` is HIREFIRE_TOKEN.
fn route(
    method: &Method,
    path: &str,
    header_token: Option<&[u8]>,
    token: Option<&Secret>,
) -> Route {
    let given = match path.trim_end_matches('/') {
        "/health" => return only_get(method, Route::Health),
        "/metrics" => return only_get(method, Route::Metrics),
        "/hirefire" => header_token,
        path => match path
            .strip_prefix("/hirefire/")
            .and_then(|rest| rest.strip_suffix("/info"))
        {
            Some(in_path) => Some(in_path.as_bytes()),
            None => return Route::NotFound,
        },
    };
    let valid = matches!((token, given), (Some(token), Some(given)) if token.matches(given));
    if valid {
        only_get(method, Route::HireFire)
    } else {
        Route::Forbidden
    }
}

fn only_get(method: &Method, route: Route) -> Route {
    if method == Method::GET || method == Method::HEAD {
        route
    } else {
        Route::MethodNotAllowed
    }
}

impl Web {
    async fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let header_token = request
            .headers()
            .get("hirefire-token")
            .map(HeaderValue::as_bytes);
        let token = self.ctx.config.hirefire_token.as_ref();
        let mut response = match route(request.method(), request.uri().path(), header_token, token)
        {
            Route::Health => self.health().await,
            Route::Metrics => self.metrics().await,
            Route::HireFire => self.hirefire().await,
            // Like a missing page, so a scan learns nothing; never echoes the token.
            Route::Forbidden | Route::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
            Route::MethodNotAllowed => {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                response
            }
        };
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    async fn health(&self) -> Response<Full<Bytes>> {
        let (redis, rabbitmq) = tokio::join!(
            tokio::time::timeout(CHECK_TIMEOUT, self.ctx.store.ping()),
            self.queues.depths()
        );
        let redis = match redis {
            Ok(Ok(())) => "ok",
            Ok(Err(error)) => {
                tracing::warn!(%error, "health: Redis failed");
                "unavailable"
            }
            Err(_) => "timed out",
        };
        let rabbitmq = match rabbitmq {
            Ok(_) => "ok",
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::report(&error), "health: RabbitMQ failed");
                "unavailable"
            }
        };
        let status = if redis == "ok" && rabbitmq == "ok" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &json!({"redis": redis, "rabbitmq": rabbitmq}))
    }

    /// Pools, orphans and the brake from Redis, at most [`CHECK_TIMEOUT`].
    async fn redis_state(&self) -> anyhow::Result<(Vec<PoolStatus>, bool, u64)> {
        tokio::time::timeout(CHECK_TIMEOUT, async {
            let (pools, brake) = self.ctx.store.status().await?;
            let orphaned = self.ctx.store.orphan_count().await?;
            anyhow::Ok((pools, brake, orphaned))
        })
        .await
        .map_err(|_| anyhow::anyhow!("Redis timed out"))?
    }

    async fn metrics(&self) -> Response<Full<Bytes>> {
        let (redis, depths) = tokio::join!(self.redis_state(), self.queues.depths());
        let (pools, brake, orphaned) = match redis {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::report(&error), "metrics: Redis failed");
                return text(StatusCode::SERVICE_UNAVAILABLE, "Redis unavailable\n");
            }
        };
        // Queue depths are optional: pool metrics are still worth a scrape without RabbitMQ.
        let depths = depths.unwrap_or_else(|error| {
            tracing::warn!(error = %crate::telemetry::report(&error), "metrics: RabbitMQ failed");
            Vec::new()
        });
        let body = exposition(&pools, brake, orphaned, &depths, now_ms());
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    async fn hirefire(&self) -> Response<Full<Bytes>> {
        let levels = async {
            tokio::time::timeout(CHECK_TIMEOUT, self.ctx.store.levels())
                .await
                .map_err(|_| anyhow::anyhow!("Redis timed out"))?
        };
        let (redis, depths) = tokio::join!(levels, self.queues.depths());
        match (redis, depths) {
            (Ok((pools, brake)), Ok(depths)) => {
                let backlogs =
                    load::backlogs(&depths, &pools, brake, self.ctx.config.boot_concurrency);
                json_response(StatusCode::OK, &hirefire_body(&backlogs))
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(error = %crate::telemetry::report(&error), "hirefire: a dependency failed");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Redis or RabbitMQ unavailable\n",
                )
            }
        }
    }
}

/// HireFire's job-queue answer: one entry per process type, `value` (and the legacy `quantity`)
/// the work waiting for it.
fn hirefire_body(backlogs: &[Backlog]) -> serde_json::Value {
    backlogs
        .iter()
        .map(|b| json!({"name": b.process, "value": b.waiting, "quantity": b.waiting}))
        .collect()
}

/// The Prometheus text exposition of everything `warmer status` shows, plus queue depths.
fn exposition(
    pools: &[PoolStatus],
    brake: bool,
    orphaned: u64,
    depths: &[QueueDepth],
    now: u64,
) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let per_pool = |value: &dyn Fn(&PoolStatus) -> Option<f64>| {
        pools
            .iter()
            .filter_map(|p| Some((format!("{{pool=\"{}\"}}", escape(&p.level.pool)), value(p)?)))
            .collect::<Vec<_>>()
    };
    family(
        "warmer_pool_target",
        "Warmed VMs the pool should hold.",
        per_pool(&|p| p.level.target().map(|t| t as f64)),
    );
    family(
        "warmer_pool_ready",
        "Warmed VMs ready to be checked out.",
        per_pool(&|p| Some(p.level.ready as f64)),
    );
    family(
        "warmer_pool_booting",
        "VMs being booted for the pool.",
        per_pool(&|p| Some(p.level.booting as f64)),
    );
    family(
        "warmer_pool_handed_out",
        "VMs checked out and not yet past WARMER_MAX_HANDOUT_AGE.",
        per_pool(&|p| Some(p.handed_out as f64)),
    );
    family(
        "warmer_pool_oldest_age_seconds",
        "Age of the pool's oldest warmed VM (absent when the pool is empty or its age unknown).",
        per_pool(&|p| {
            // Whole milliseconds, saturating: a `booted_at` from outside cannot overflow.
            let booted_ms = p.oldest_booted_at??.saturating_mul(1000);
            Some(now.saturating_sub(booted_ms) as f64 / 1000.0)
        }),
    );
    family(
        "warmer_orphaned_vms",
        "VMs recorded in orphaned, waiting for the reconciler to delete them.",
        vec![(String::new(), orphaned as f64)],
    );
    family(
        "warmer_safety_brake",
        "1 while the safety brake holds every boot (too many unaccounted VMs).",
        vec![(String::new(), if brake { 1.0 } else { 0.0 })],
    );
    let per_queue = |value: &dyn Fn(&QueueDepth) -> Option<u32>| {
        depths
            .iter()
            .filter_map(|d| {
                let labels = format!("{{queue=\"{}\"}}", escape(&d.queue));
                Some((labels, value(d)? as f64))
            })
            .collect::<Vec<_>>()
    };
    family(
        "warmer_queue_ready_messages",
        "Messages waiting in a warmer queue.",
        per_queue(&|d| d.ready),
    );
    family(
        "warmer_queue_consumers",
        "Consumers attached to a warmer queue.",
        per_queue(&|d| d.consumers),
    );
    out
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_hirefire_token_in_the_path_or_the_header() {
        let token = Secret::new("s3cret");
        let (get, post) = (&Method::GET, &Method::POST);
        let cases: [(&Method, &str, Option<&[u8]>, Route); 10] = [
            (get, "/health", None, Route::Health),
            (get, "/metrics/", None, Route::Metrics),
            (get, "/hirefire/s3cret/info", None, Route::HireFire),
            (get, "/hirefire", Some(b"s3cret"), Route::HireFire),
            (get, "/hirefire/wrong/info", None, Route::Forbidden),
            (get, "/hirefire", Some(b"wrong"), Route::Forbidden),
            (get, "/hirefire", None, Route::Forbidden),
            (get, "/", None, Route::NotFound),
            (get, "/hirefire/s3cret", None, Route::NotFound),
            (post, "/health", None, Route::MethodNotAllowed),
        ];
        for (method, path, header, expected) in cases {
            let routed = route(method, path, header, Some(&token));
            assert_eq!(routed, expected, "{method} {path}");
        }
        // Without HIREFIRE_TOKEN, no token opens the HireFire routes.
        assert_eq!(route(get, "/hirefire//info", None, None), Route::Forbidden);
        assert_eq!(route(get, "/hirefire", Some(b""), None), Route::Forbidden);
    }

    #[test]
    fn hirefire_gets_the_backlog_of_each_process_type() {
        let backlogs = [
            Backlog {
                process: "checkout",
                waiting: 7,
                per_dyno: 64,
            },
            Backlog {
                process: "refill",
                waiting: 0,
                per_dyno: 8,
            },
        ];
        assert_eq!(
            hirefire_body(&backlogs),
            json!([
                {"name": "checkout", "value": 7, "quantity": 7},
                {"name": "refill", "value": 0, "quantity": 0},
            ])
        );
    }

    #[test]
    fn the_exposition_has_a_sample_per_pool_and_escapes_labels() {
        let pools = [PoolStatus {
            level: crate::store::PoolLevel {
                pool: "img:n1-standard-1".into(),
                target: "3".into(),
                ready: 2,
                booting: 1,
            },
            handed_out: 4,
            oldest_booted_at: Some(Some(100)),
        }];
        let text = exposition(&pools, true, 5, &[], 160_500);
        for line in [
            "# TYPE warmer_pool_ready gauge",
            "warmer_pool_target{pool=\"img:n1-standard-1\"} 3",
            "warmer_pool_ready{pool=\"img:n1-standard-1\"} 2",
            "warmer_pool_booting{pool=\"img:n1-standard-1\"} 1",
            "warmer_pool_handed_out{pool=\"img:n1-standard-1\"} 4",
            "warmer_pool_oldest_age_seconds{pool=\"img:n1-standard-1\"} 60.5",
            "warmer_orphaned_vms 5",
            "warmer_safety_brake 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        // A `booted_at` from outside (say, nanoseconds) cannot overflow the age.
        let mut future = pools;
        future[0].oldest_booted_at = Some(Some(u64::MAX));
        let text = exposition(&future, false, 0, &[], 160_500);
        assert!(
            text.lines()
                .any(|l| l == "warmer_pool_oldest_age_seconds{pool=\"img:n1-standard-1\"} 0"),
            "{text}"
        );
    }
}
