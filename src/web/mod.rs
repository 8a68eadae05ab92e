//! `warmer web`: HTTP on `$PORT` for whoever watches and scales warmer.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | 200 when Redis and RabbitMQ answer, else 503; JSON naming each dependency |
//! | `GET /metrics` | Prometheus text (OpenMetrics if asked for): the counters and histograms every process keeps in Redis, summed, and the levels — pools, orphans, the brake, queue depths, dead letters (see `metrics.rs`). With `WARMER_METRICS_TOKEN`, only for `Authorization: Bearer <token>` (401 otherwise); without it, refused (403) on a Heroku dyno unless `WARMER_METRICS_PUBLIC=true` |
//! | `GET /hirefire/<HIREFIRE_TOKEN>/info`, or `GET /hirefire` with header `HireFire-Token` | HireFire's job-queue format: each process type's backlog (`load.rs`) |
//! | `GET /`, `GET /pools/<pool>` | the operators' page (`page.rs`, `operators.rs`): basic auth with a token of `WARMER_AUTH_TOKENS` as the password (without tokens: open off a dyno, refused on one) |
//!
//! With `WARMER_AUTH_TOKENS` set it also serves travis-ci/warmer's HTTP API (`POST
//! /request-instance`, `/pool-configs`, `/`; see `checkout/http.rs`), which checks VMs out and
//! manages pools as travis-ci/warmer did.
//!
//! Otherwise it reads only: it declares nothing and changes nothing, so it can run anywhere. Without
//! `HIREFIRE_TOKEN` the HireFire routes answer 404. Every dependency is asked for at most
//! [`CHECK_TIMEOUT`], Redis and RabbitMQ at the same time, so an answer comes within Prometheus's
//! and HireFire's timeouts even when one hangs. At most [`MAX_CONNECTIONS`] connections are
//! served at once (the others wait in the kernel's backlog), each answering one request, its
//! headers within 10 s. Runs until SIGTERM, then stops accepting and lets open requests finish
//! (at most [`DRAIN`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    ACCEPT, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

mod operators;
mod page;

use crate::checkout::http::{self, HttpApi, Pending};
use crate::clock::now_ms;
use crate::config::Secret;
use crate::context::Context;
use crate::load::{self, Backlog};
use crate::metrics::{self, Scrape};
use crate::shutdown::Shutdown;
use crate::topology::{QueueMonitor, QueueState};

/// How long open requests (and the decisions about their checkouts' VMs) may take after
/// SIGTERM: within Heroku's 30 s.
pub const DRAIN: Duration = Duration::from_secs(20);
/// Each dependency check and query is bounded by this, so a scrape never hangs.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;

/// The port when `PORT` is unset (Heroku always sets it).
pub const DEFAULT_PORT: u16 = 8080;

/// Binds `0.0.0.0:$PORT` and serves until `shutdown`.
pub async fn run(ctx: Context, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = bind(&ctx.config).await?;
    serve(ctx, listener, shutdown).await
}

/// Binds `$PORT` (8080 by default) on every interface.
pub async fn bind(config: &crate::Config) -> anyhow::Result<TcpListener> {
    let port = config.port.unwrap_or(DEFAULT_PORT);
    TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("binding PORT {port}"))
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
    if ctx.config.metrics_token.is_none() && ctx.config.on_heroku && !ctx.config.metrics_public {
        tracing::warn!(
            "/metrics is refused: set WARMER_METRICS_TOKEN (Prometheus sends it as a bearer token), or WARMER_METRICS_PUBLIC=true to serve it to anyone"
        );
    }
    let api = HttpApi::new(ctx.clone(), shutdown.clone());
    if api.is_some() {
        tracing::info!(
            "serving travis-ci/warmer's HTTP API (POST /request-instance, /pool-configs) to basic auth with a WARMER_AUTH_TOKENS token"
        );
    }
    let web = Arc::new(Web { ctx, queues, api });
    let mut connections = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A free slot before the next accept: a flood waits in the backlog, not in memory.
        let slot = tokio::select! {
            _ = shutdown.wait() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
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
            let pending = Pending::default();
            let (responder, checkout) = (web.clone(), pending.clone());
            let service = hyper::service::service_fn(move |request| {
                let (web, checkout) = (responder.clone(), checkout.clone());
                async move { Ok::<_, Infallible>(web.respond(request, &checkout).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            // The connection's place is free once it has ended, whatever is decided after.
            drop(slot);
            if let Err(error) = &served {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
            // A checkout's VM is handed out, returned or deleted by how its answer went.
            if let Some(api) = &web.api {
                api.conclude(pending, served.is_ok()).await;
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
    if let Some(api) = &web.api {
        api.close().await;
    }
    tracing::info!("web stopped");
    Ok(())
}

struct Web {
    ctx: Context,
    queues: QueueMonitor,
    /// travis-ci/warmer's HTTP API, when `WARMER_AUTH_TOKENS` is set.
    api: Option<Arc<HttpApi>>,
}

/// Whether `/metrics` may be served to a request that sent `authorization`.
fn metrics_allowed(config: &crate::Config, authorization: Option<&[u8]>) -> Result<(), Refusal> {
    match &config.metrics_token {
        Some(token) => {
            let given = authorization.and_then(|value| value.strip_prefix(b"Bearer "));
            if given.is_some_and(|given| token.matches(given)) {
                Ok(())
            } else {
                Err(Refusal::Unauthorized)
            }
        }
        None if config.on_heroku && !config.metrics_public => Err(Refusal::NotPublic),
        None => Ok(()),
    }
}

/// Why `/metrics` was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// No bearer token, or not WARMER_METRICS_TOKEN.
    Unauthorized,
    /// On a dyno without WARMER_METRICS_TOKEN, not made public.
    NotPublic,
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
    async fn respond(
        &self,
        request: Request<Incoming>,
        pending: &Pending,
    ) -> Response<Full<Bytes>> {
        let page = operators::PageRoute::of(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        );
        if let Some(page) = page {
            let mut response = self.page(page, &request).await;
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return response;
        }
        let api_route = self.api.as_ref().and_then(|api| {
            Some((
                api,
                http::Route::of(request.method(), request.uri().path())?,
            ))
        });
        let mut response = match api_route {
            Some((api, route)) => api.respond(route, request, pending).await,
            None => self.own(&request).await,
        };
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// The operators' page, to whoever may see it.
    async fn page(&self, page: operators::PageRoute, request: &Request<Incoming>) -> Answer {
        if let Some(refusal) = operators::refusal(&self.ctx, request) {
            return refusal;
        }
        let html = match page {
            operators::PageRoute::Overview { filter, page } => {
                operators::overview(&self.ctx, filter, page).await.map(Some)
            }
            operators::PageRoute::Pool(pool) => operators::pool(&self.ctx, &pool).await,
        };
        match html {
            Ok(Some(html)) => operators::html(html),
            Ok(None) => text(StatusCode::NOT_FOUND, "no such pool\n"),
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::report(&error), "the operators' page failed");
                text(StatusCode::SERVICE_UNAVAILABLE, "Redis unavailable\n")
            }
        }
    }

    /// The answer to a route of `warmer web`'s own (health, metrics, HireFire).
    async fn own(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let header_token = request
            .headers()
            .get("hirefire-token")
            .map(HeaderValue::as_bytes);
        let token = self.ctx.config.hirefire_token.as_ref();
        match route(request.method(), request.uri().path(), header_token, token) {
            Route::Health => self.health().await,
            Route::Metrics => {
                let authorization = request
                    .headers()
                    .get(AUTHORIZATION)
                    .map(HeaderValue::as_bytes);
                match metrics_allowed(&self.ctx.config, authorization) {
                    Ok(()) => {
                        let accept = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
                        self.metrics(metrics::wants_openmetrics(accept)).await
                    }
                    Err(Refusal::Unauthorized) => {
                        let mut response =
                            text(StatusCode::UNAUTHORIZED, "a bearer token is needed\n");
                        response.headers_mut().insert(
                            WWW_AUTHENTICATE,
                            HeaderValue::from_static("Bearer realm=\"warmer\""),
                        );
                        response
                    }
                    Err(Refusal::NotPublic) => text(
                        StatusCode::FORBIDDEN,
                        "/metrics needs WARMER_METRICS_TOKEN on Heroku (or WARMER_METRICS_PUBLIC=true)\n",
                    ),
                }
            }
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
        }
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
        // Queues the broker cannot serve now (a node down): named, the broker itself answers.
        let mut unavailable = serde_json::Map::new();
        let rabbitmq = match rabbitmq {
            Ok(depths) => {
                for depth in depths {
                    if let QueueState::Unavailable(why) = depth.state {
                        unavailable.insert(depth.queue, why.into());
                    }
                }
                if unavailable.is_empty() {
                    "ok"
                } else {
                    "degraded"
                }
            }
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
        let mut body = json!({"redis": redis, "rabbitmq": rabbitmq});
        if !unavailable.is_empty() {
            body["queues"] = unavailable.into();
        }
        json_response(status, &body)
    }

    /// What a scrape exports from Redis, at most [`CHECK_TIMEOUT`].
    async fn redis_state(&self) -> anyhow::Result<Scrape> {
        tokio::time::timeout(CHECK_TIMEOUT, async {
            let store = &self.ctx.store;
            let (pools, brake) = store.status().await?;
            let orphaned = store.orphan_count().await?;
            let names: Vec<&str> = pools.iter().map(|p| p.level.pool.as_str()).collect();
            let counters = store.counters(&names).await?;
            let (sizing, rollovers) = store.sizing_samples().await?;
            anyhow::Ok(Scrape {
                sizing,
                rollovers,
                pools,
                brake,
                orphaned,
                queues: Vec::new(),
                dead_letters: None,
                counters,
                now_ms: now_ms(),
                max_vms: self.ctx.config.max_vms,
            })
        })
        .await
        .map_err(|_| anyhow::anyhow!("Redis timed out"))?
    }

    async fn metrics(&self, openmetrics: bool) -> Response<Full<Bytes>> {
        let (redis, depths) = tokio::join!(self.redis_state(), self.queues.depths());
        let mut scrape = match redis {
            Ok(scrape) => scrape,
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::report(&error), "metrics: Redis failed");
                return text(StatusCode::SERVICE_UNAVAILABLE, "Redis unavailable\n");
            }
        };
        // Queue depths are optional: pool metrics are still worth a scrape without RabbitMQ.
        match depths {
            Ok(depths) => {
                let (dead, consumers): (Vec<_>, Vec<_>) =
                    depths.into_iter().partition(|d| d.process == "dead");
                scrape.dead_letters = dead.first().and_then(|d| d.ready);
                scrape.queues = consumers;
            }
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::report(&error), "metrics: RabbitMQ failed")
            }
        }
        let content_type = if openmetrics {
            metrics::OPENMETRICS_CONTENT_TYPE
        } else {
            metrics::TEXT_CONTENT_TYPE
        };
        let body = metrics::render(scrape, openmetrics);
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
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
        .map(|b| json!({"name": b.process.name(), "value": b.waiting, "quantity": b.waiting}))
        .collect()
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An answer of `warmer web`.
type Answer = Response<Full<Bytes>>;

fn text(status: StatusCode, body: &'static str) -> Answer {
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
    use crate::process::ProcessType;

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
    fn metrics_need_the_bearer_token_and_are_not_public_on_a_dyno_unless_said() {
        let config = |vars: &[(&str, &str)]| {
            let vars = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            crate::Config::from_vars(vars).unwrap()
        };
        let with_token = config(&[("WARMER_METRICS_TOKEN", "m3trics")]);
        assert_eq!(
            metrics_allowed(&with_token, Some(b"Bearer m3trics")),
            Ok(())
        );
        for wrong in [
            None,
            Some(&b"Bearer nope"[..]),
            Some(b"m3trics"),
            Some(b"Basic m3trics"),
        ] {
            assert_eq!(
                metrics_allowed(&with_token, wrong),
                Err(Refusal::Unauthorized)
            );
        }
        assert_eq!(
            metrics_allowed(&config(&[]), None),
            Ok(()),
            "off Heroku: public"
        );
        let dyno = config(&[("DYNO", "web.1")]);
        assert_eq!(metrics_allowed(&dyno, None), Err(Refusal::NotPublic));
        let public = config(&[("DYNO", "web.1"), ("WARMER_METRICS_PUBLIC", "true")]);
        assert_eq!(metrics_allowed(&public, None), Ok(()));
    }

    #[test]
    fn hirefire_gets_the_backlog_of_each_process_type() {
        let backlogs = [
            Backlog {
                process: ProcessType::Checkout,
                waiting: 7,
                per_dyno: 64,
            },
            Backlog {
                process: ProcessType::Refill,
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
}
