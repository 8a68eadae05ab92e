//! travis-ci/warmer's HTTP API, served by `warmer web` when `WARMER_AUTH_TOKENS` is set, so that
//! an unchanged travis worker (`WARMER_URL` pointed at `warmer web`) checks out over HTTP, and
//! travis-ci/warmer's operators' scripts go on managing pools.
//!
//! | route | answers, as travis-ci/warmer does |
//! |---|---|
//! | `POST /request-instance` | 200 `{"name","zone","ip","public_ip","ssh_private_key"}`; 404 `{"error":"no config found for pool"}`; 409 `{"error":"no instance available in pool"}`; 400 `{"error":…}` for a body that is not the worker's (nothing popped); 429 over the token's limits; 500 `{"error":…}` |
//! | `GET /pool-configs[/<pool>]` | 200 `{"<pool>":"<target>",…}`; 404 (empty) for an unknown pool |
//! | `POST /pool-configs/<pool>/<target>` | 200 (empty), then a fill; 400 `{"error":…}` |
//! | `DELETE /pool-configs/<pool>` | 204; 404 |
//!
//! (travis-ci/warmer's `GET /`, a line of text, is the operators' page now: see `web/page.rs`.)
//!
//! Every route asks for basic auth whose password is one of the tokens (any user name; compared
//! in constant time), else 401 as `Rack::Auth::Basic` answers.
//!
//! A checkout takes its VM into a lease exactly as over AMQP (`checkout.lua`: at most once,
//! counted and hinted the same way); its identity is fresh per HTTP request, which is never
//! repeated. What becomes of the VM is decided when the connection ends (`warmer web` answers one
//! request per connection): an answer written and flushed within the client's
//! `WARMER_HTTP_TIMEOUT` of its arrival is handed out; an answer never produced (the client went
//! away first) puts the VM back at the head of its pool; an answer whose delivery failed or came
//! too late (the client may have read part of it, or timed out) is recorded for deletion. The
//! step that pops runs on its own task, so a client that hangs up cannot leave a lease pending.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;

use super::{LEASE_GRACE, give_back, handed_out, reply, request, send_hint};
use crate::amqp::{LazyConnection, Publisher};
use crate::auth::Basic;
use crate::clock::{ms, now_ms, now_secs};
use crate::config::{Secret, percent_decode};
use crate::context::Context;
use crate::events::{Event, Events};
use crate::metrics::CheckoutOutcome;
use crate::pool::PoolName;
use crate::refill_message::{FillCommand, RefillMessage};
use crate::store::changes::HistoryEntry;
use crate::store::{self, Disposal, PoolEntry, Settler, ToSettle};

/// A route of the API.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    RequestInstance,
    /// `None`: every pool.
    PoolConfigs(Option<String>),
    SetTarget(String, String),
    DeletePool(String),
}

impl Route {
    /// The API's route for a method and path, if it is one (the pool names percent-decoded).
    pub fn of(method: &Method, path: &str) -> Option<Route> {
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        Some(match (method, segments.as_slice()) {
            (&Method::POST, ["request-instance"]) => Route::RequestInstance,
            (&Method::GET | &Method::HEAD, ["pool-configs"]) => Route::PoolConfigs(None),
            (&Method::GET | &Method::HEAD, ["pool-configs", pool]) => {
                Route::PoolConfigs(Some(pool.to_string()))
            }
            (&Method::POST, ["pool-configs", pool, target]) => {
                Route::SetTarget(pool.to_string(), target.to_string())
            }
            (&Method::DELETE, ["pool-configs", pool]) => Route::DeletePool(pool.to_string()),
            _ => return None,
        })
    }
}

/// A VM popped for one HTTP checkout whose answer is on its way: what the end of its
/// connection decides about.
#[derive(Debug)]
pub struct Handout {
    identity: String,
    pool: PoolName,
    vm: PoolEntry,
    received: u64,
    /// The client's deadline (ms): an answer finished later reached nobody.
    deadline: u64,
    give_up_at: u64,
    /// Whether the answer with the VM was given to the connection at all.
    responded: bool,
    /// The token's place among its checkouts in flight, until the handout is decided.
    _permit: OwnedSemaphorePermit,
}

/// The checkout of one connection, if it popped a VM: filled by [`HttpApi::respond`], read by
/// [`HttpApi::conclude`] once the connection has ended.
pub type Pending = Arc<Mutex<Option<JoinHandle<Option<Handout>>>>>;

/// What one token may ask for.
struct Limit {
    /// Checkouts it may still start now, and when that was counted.
    bucket: Mutex<(f64, Instant)>,
    in_flight: Arc<Semaphore>,
}

/// travis-ci/warmer's HTTP API for one `warmer web` process.
pub struct HttpApi {
    ctx: Context,
    tokens: Vec<Secret>,
    limits: Vec<Limit>,
    events: Events,
    settler: Settler,
    /// Refill hints and fills go out on a connection opened when first needed.
    broker: LazyConnection,
    publisher: tokio::sync::Mutex<Option<Publisher>>,
    sweeper: JoinHandle<()>,
}

type Answer = Response<Full<Bytes>>;

impl HttpApi {
    /// The API, if `WARMER_AUTH_TOKENS` is set; it sweeps expired leases as the checkout
    /// process does (a deployment may check out over HTTP only).
    pub fn new(ctx: Context, shutdown: crate::shutdown::Shutdown) -> Option<Arc<Self>> {
        let tokens = ctx.config.auth_tokens.clone();
        if tokens.is_empty() {
            return None;
        }
        let config = ctx.config.http_api;
        let limits = tokens
            .iter()
            .map(|_| Limit {
                bucket: Mutex::new((burst(config.per_minute), Instant::now())),
                in_flight: Arc::new(Semaphore::new(config.concurrency as usize)),
            })
            .collect();
        Some(Arc::new(HttpApi {
            events: ctx.events(),
            settler: Settler::start(ctx.store.clone()),
            broker: LazyConnection::new(
                ctx.config.amqp_url.clone(),
                format!("{}.web.api", ctx.names.prefix()),
            ),
            publisher: tokio::sync::Mutex::new(None),
            sweeper: tokio::spawn(super::sweep_leases(ctx.store.clone(), shutdown)),
            tokens,
            limits,
            ctx,
        }))
    }

    /// Answers one request of the API; a checkout that popped a VM leaves its handout in
    /// `pending`, for [`Self::conclude`].
    pub async fn respond(
        self: &Arc<Self>,
        route: Route,
        request: Request<Incoming>,
        pending: &Pending,
    ) -> Answer {
        let received = now_ms();
        // Behind Heroku's router, a request that came over plain HTTP sent its token in the
        // clear: refused, never answered with a key. (travis-ci/warmer redirected to HTTPS.)
        let forwarded = request.headers().get("x-forwarded-proto");
        if self.ctx.config.on_heroku && forwarded.is_some_and(|proto| proto.as_bytes() == b"http") {
            return error(StatusCode::FORBIDDEN, HTML, "HTTPS only");
        }
        let token = match self.authorized(&request) {
            Basic::Token(token) => token,
            Basic::Missing => return unauthorized(),
            // As `Rack::Auth::Basic`: another scheme is a bad request.
            Basic::OtherScheme => return empty(StatusCode::BAD_REQUEST, Some("text/plain")),
        };
        match route {
            Route::RequestInstance => {
                let Some(permit) = self.admit(token) else {
                    tracing::warn!(
                        token_index = token,
                        "checkout over HTTP refused: over the token's rate or concurrency"
                    );
                    let mut answer = json_answer(
                        StatusCode::TOO_MANY_REQUESTS,
                        "application/json",
                        &json!({"error": "too many requests for this token; try again later"}),
                    );
                    answer
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    return answer;
                };
                let timeout = self.ctx.config.http_api.timeout;
                let body = tokio::time::timeout(
                    timeout,
                    Limited::new(request.into_body(), request::MAX_BODY + 1).collect(),
                )
                .await;
                let body = match body {
                    Ok(Ok(body)) => body.to_bytes(),
                    _ => {
                        self.count(CheckoutOutcome::BadRequest);
                        return error(
                            StatusCode::BAD_REQUEST,
                            "application/json",
                            "request body not read: too large, cut off or too slow",
                        );
                    }
                };
                let (answer, told) = oneshot::channel();
                let api = self.clone();
                // The token's place is held until the checkout is decided, in `conclude`.
                let task =
                    tokio::spawn(async move { api.checkout(body, received, answer, permit).await });
                *pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
                told.await.unwrap_or_else(|_| {
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        HTML,
                        "the checkout stopped",
                    )
                })
            }
            Route::PoolConfigs(pool) => self.pool_configs(pool.as_deref()).await,
            Route::SetTarget(pool, target) => self.set_target(&pool, &target, token).await,
            Route::DeletePool(pool) => self.delete_pool(&pool, token).await,
        }
    }

    /// Which token's basic-auth password the request sent.
    fn authorized(&self, request: &Request<Incoming>) -> Basic {
        let header = request.headers().get(hyper::header::AUTHORIZATION);
        crate::auth::basic(header.map(|h| h.as_bytes()), &self.tokens)
    }

    /// A place among the token's checkouts in flight, if it is within its rate and concurrency.
    fn admit(&self, token: usize) -> Option<OwnedSemaphorePermit> {
        let limit = self.limits.get(token)?;
        let permit = limit.in_flight.clone().try_acquire_owned().ok()?;
        let per_minute = f64::from(self.ctx.config.http_api.per_minute);
        let mut bucket = limit.bucket.lock().ok()?;
        let (left, counted) = &mut *bucket;
        let now = Instant::now();
        *left = (*left + now.duration_since(*counted).as_secs_f64() * per_minute / 60.0)
            .min(burst(self.ctx.config.http_api.per_minute));
        *counted = now;
        if *left < 1.0 {
            return None;
        }
        *left -= 1.0;
        Some(permit)
    }

    /// Counts an outcome no script counts.
    fn count(&self, outcome: CheckoutOutcome) {
        let store = self.ctx.store.clone();
        tokio::spawn(async move { store.count(outcome.field()).await });
    }

    /// One checkout: answers on `answer` and returns the handout if a VM was popped, holding
    /// the token's place (`permit`) until it is decided.
    async fn checkout(
        self: Arc<Self>,
        body: Bytes,
        received: u64,
        answer: oneshot::Sender<Answer>,
        permit: OwnedSemaphorePermit,
    ) -> Option<Handout> {
        let request = match request::parse(&body) {
            Ok(request) => request,
            Err(why) => {
                tracing::debug!(%why, "bad checkout request over HTTP");
                self.count(CheckoutOutcome::BadRequest);
                return refuse(
                    answer,
                    StatusCode::BAD_REQUEST,
                    "application/json",
                    &format!("bad request: {why}"),
                );
            }
        };
        let pool = request.pool;
        let deadline = received + ms(self.ctx.config.http_api.timeout);
        let give_up_at = deadline + ms(LEASE_GRACE);
        let identity = format!("h:{}", uuid::Uuid::new_v4().simple());
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let delivery = store::Delivery {
            identity: &identity,
            nonce: &nonce,
            redelivered: false,
            now: received,
            deadline,
            give_up_at,
        };
        // Redis trouble is answered while the client still waits.
        let send_by = deadline.saturating_sub(ms(SEND_MARGIN));
        let budget = Duration::from_millis(send_by.saturating_sub(now_ms() + 100).max(100));
        let found = store::within(budget, || self.ctx.store.checkout(delivery, &pool)).await;
        let entry = match found {
            Ok(store::Checkout::Popped { entry, hint }) => {
                if hint {
                    self.hint(&pool);
                }
                entry
            }
            Ok(store::Checkout::NoPool) => {
                return refuse(
                    answer,
                    StatusCode::NOT_FOUND,
                    "application/json",
                    "no config found for pool",
                );
            }
            Ok(store::Checkout::Empty { hint }) => {
                let _ = answer.send(error(
                    StatusCode::CONFLICT,
                    "application/json",
                    "no instance available in pool",
                ));
                self.events
                    .emit(Event::PoolEmpty {
                        pool: pool.to_string(),
                    })
                    .await;
                if hint {
                    self.hint(&pool);
                }
                return None;
            }
            Ok(store::Checkout::Expired) => {
                return refuse(answer, StatusCode::INTERNAL_SERVER_ERROR, HTML, LATE);
            }
            // A fresh identity has no lease to find. (The variant holds the entry, key and
            // all: it is not logged.)
            Ok(_) => {
                tracing::error!(%pool, "checkout over HTTP found a lease it cannot have made");
                self.count(CheckoutOutcome::Internal);
                return refuse(
                    answer,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    HTML,
                    "internal: unexpected lease",
                );
            }
            Err(failure) => {
                tracing::error!(error = %failure, %pool, "checkout over HTTP failed in Redis");
                self.count(CheckoutOutcome::Internal);
                // The pop may have run after all: a VM it took goes back to the head (nothing
                // happens when it did not).
                let failed = "internal: Redis failed during checkout";
                return self
                    .undo(answer, failed, &identity, &pool, Disposal::Head, None)
                    .await;
            }
        };
        let unusable = |why: &str| {
            tracing::error!(%pool, why, "a popped VM cannot be answered with: recorded as orphan");
        };
        let vm = match serde_json::from_str::<PoolEntry>(&entry) {
            Ok(vm) => vm,
            Err(_) => {
                unusable("unreadable pool entry");
                self.count(CheckoutOutcome::Internal);
                let unreadable = "internal: an entry of the pool is not readable";
                let orphan = Disposal::Orphan("unusable_entry");
                return self
                    .undo(answer, unreadable, &identity, &pool, orphan, None)
                    .await;
            }
        };
        // A VM is never sent so late that the client may have given up (and booted cold) before
        // the answer reaches it: it stays unsent, in the pool.
        if now_ms() > send_by {
            tracing::warn!(%pool, vm = %vm.name, "a VM taken after the client's time: back at the head of its pool");
            let expired = Some(CheckoutOutcome::Expired);
            return self
                .undo(answer, LATE, &identity, &pool, Disposal::Head, expired)
                .await;
        }
        let body = match serde_json::to_vec(&reply::Vm::from(&vm)) {
            Ok(body) => body,
            Err(_) => {
                unusable("reply not serializable");
                give_back(
                    &self.ctx.store,
                    &self.events,
                    &identity,
                    &pool,
                    Disposal::Head,
                    None,
                )
                .await;
                return None;
            }
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let responded = answer.send(response).is_ok();
        Some(Handout {
            identity,
            pool,
            vm,
            received,
            deadline,
            give_up_at,
            responded,
            _permit: permit,
        })
    }

    /// Answers 500 with `text` first (the client is waiting), then gives the popped VM back
    /// (see [`give_back`]): this checkout hands nothing out.
    async fn undo(
        &self,
        answer: oneshot::Sender<Answer>,
        text: &str,
        identity: &str,
        pool: &PoolName,
        disposal: Disposal,
        outcome: Option<CheckoutOutcome>,
    ) -> Option<Handout> {
        let _ = answer.send(error(StatusCode::INTERNAL_SERVER_ERROR, HTML, text));
        let (store, events) = (&self.ctx.store, &self.events);
        give_back(store, events, identity, pool, disposal, outcome).await;
        None
    }

    /// Decides what became of a connection's checkout once the connection has ended, `served`
    /// if its answer was written and flushed (see the module).
    pub async fn conclude(&self, pending: Pending, served: bool) {
        let task = pending.lock().ok().and_then(|mut slot| slot.take());
        let Some(task) = task else { return };
        let handout = match task.await {
            Ok(Some(handout)) => handout,
            Ok(None) => return,
            Err(failure) => {
                tracing::error!(error = %failure, "an HTTP checkout's task failed: its lease, if any, is swept into orphaned after its grace");
                return;
            }
        };
        let finished = now_ms();
        let Handout {
            identity,
            pool,
            vm,
            received,
            deadline,
            give_up_at,
            responded,
            _permit,
        } = handout;
        if responded && served && finished <= deadline {
            let lease = ToSettle {
                identity,
                pool: pool.clone(),
                keep_until: finished + ms(self.ctx.config.max_handout_age),
                deadline,
                wait: Duration::from_millis(finished.saturating_sub(received)),
            };
            handed_out(&self.settler, &self.events, lease, give_up_at, &vm).await;
            tracing::debug!(%pool, vm = %vm.name, wait_ms = finished.saturating_sub(received), "checked out over HTTP");
            return;
        }
        let (disposal, why) = if responded {
            (
                Disposal::Orphan("reply_unknown"),
                "the answer was not delivered in the client's time: its VM is deleted",
            )
        } else {
            (
                Disposal::Head,
                "the client left before its answer: the VM is back at the head of its pool",
            )
        };
        tracing::info!(%pool, vm = %vm.name, served, late_ms = finished.saturating_sub(deadline), why);
        let gone = Some(CheckoutOutcome::RequesterGone);
        give_back(
            &self.ctx.store,
            &self.events,
            &identity,
            &pool,
            disposal,
            gone,
        )
        .await;
    }

    /// The publisher for hints and fills, connecting (and attaching the events' channel) when
    /// there is none; `None` while the broker cannot be reached.
    async fn publisher(&self) -> Option<Publisher> {
        let mut publisher = self.publisher.lock().await;
        if let Some(open) = publisher
            .as_ref()
            .filter(|p| p.channel().status().connected())
        {
            return Some(open.clone());
        }
        let opened = async {
            let connection = self.broker.get().await?;
            let opened = Publisher::open(&connection).await?;
            self.events.attach(connection.create_channel().await?);
            anyhow::Ok(opened)
        }
        .await;
        match opened {
            Ok(opened) => {
                *publisher = Some(opened.clone());
                Some(opened)
            }
            Err(failure) => {
                tracing::warn!(error = %crate::telemetry::report(&failure), "the HTTP API's broker connection failed");
                self.broker.reset().await;
                *publisher = None;
                None
            }
        }
    }

    /// Sends the refill hint `checkout.lua` recorded, off the request's path (connecting to
    /// the broker may take seconds).
    fn hint(self: &Arc<Self>, pool: &PoolName) {
        let (api, pool) = (self.clone(), pool.clone());
        tokio::spawn(async move {
            let publisher = api.publisher().await;
            send_hint(&api.ctx, publisher, &pool);
        });
    }

    async fn pool_configs(&self, pool: Option<&str>) -> Answer {
        let targets = match self.ctx.store.targets().await {
            Ok(targets) => targets,
            Err(failure) => return internal(&failure.to_string()),
        };
        let mut configs = serde_json::Map::new();
        for (name, target) in targets {
            let name = name.to_string();
            if pool.is_none_or(|pool| pool == name) {
                configs.insert(name, target.to_string().into());
            }
        }
        if pool.is_some() && configs.is_empty() {
            return empty(StatusCode::NOT_FOUND, Some("application/json"));
        }
        json_answer(StatusCode::OK, "application/json", &configs.into())
    }

    async fn set_target(&self, pool: &str, target: &str, token: usize) -> Answer {
        if pool.split(':').count() < 2 {
            return error(
                StatusCode::BAD_REQUEST,
                HTML,
                "Pool name must be of format image_name:machine_type(:public_ip)",
            );
        }
        let pool: PoolName = match pool.parse() {
            Ok(pool) => pool,
            Err(why) => return error(StatusCode::BAD_REQUEST, HTML, &why),
        };
        let Ok(target) = target.trim().parse::<i64>() else {
            return error(
                StatusCode::BAD_REQUEST,
                HTML,
                "Target pool size must be an integer",
            );
        };
        let cap = self.ctx.config.max_vms;
        let target = match u32::try_from(target) {
            Ok(target) if target <= cap => target,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    HTML,
                    &format!(
                        "Target pool size must be between 0 and WARMER_MAX_VMS ({cap}), got {target}"
                    ),
                );
            }
        };
        let before = self
            .ctx
            .store
            .targets()
            .await
            .ok()
            .and_then(|mut t| t.remove(&pool));
        if let Err(failure) = self.ctx.store.set_target(&pool, target).await {
            return internal(&failure.to_string());
        }
        tracing::info!(%pool, target, "target set over HTTP");
        let change = match before {
            Some(before) => format!("target {before} -> target {target}"),
            None => format!("target {target}"),
        };
        self.record(token, "POST /pool-configs", &pool, change)
            .await;
        let fill = RefillMessage::Fill(FillCommand {
            pool: Some(pool.clone()),
            signer: None,
        });
        let sender = self.ctx.config.amqp_user();
        let sent = match self.publisher().await {
            Some(publisher) => fill.send(&publisher, &self.ctx.names, &sender).await,
            None => Err(anyhow::anyhow!("no broker connection")),
        };
        if let Err(failure) = sent {
            tracing::warn!(error = %crate::telemetry::report(&failure), %pool, "fill not published; the reconciler fills the pool at its next pass");
        }
        empty(StatusCode::OK, Some(HTML))
    }

    async fn delete_pool(&self, pool: &str, token: usize) -> Answer {
        let Ok(pool) = pool.parse::<PoolName>() else {
            return empty(StatusCode::NOT_FOUND, Some(HTML));
        };
        match self.ctx.store.delete_pool(&pool).await {
            Ok(Some(vms)) => {
                tracing::info!(%pool, vms, "pool deleted over HTTP; its warmed VMs recorded for deletion");
                let change = format!("deleted; {vms} warmed VM(s) recorded for deletion");
                self.record(token, "DELETE /pool-configs", &pool, change)
                    .await;
                empty(StatusCode::NO_CONTENT, None)
            }
            Ok(None) => empty(StatusCode::NOT_FOUND, Some(HTML)),
            Err(failure) => internal(&failure.to_string()),
        }
    }

    /// Records a change made over HTTP in the history, naming the token by its place in
    /// WARMER_AUTH_TOKENS (never its value); a failure is logged, the change stays made.
    async fn record(&self, token: usize, command: &str, pool: &PoolName, change: String) {
        let entry = HistoryEntry {
            at: now_secs(),
            who: format!("http api, token {} of WARMER_AUTH_TOKENS", token + 1),
            command: command.into(),
            pool: Some(pool.to_string()),
            change,
        };
        if let Err(error) = self.ctx.store.record(&[entry]).await {
            tracing::warn!(error = %crate::telemetry::report(&error), %pool, "change not recorded in the history");
        }
    }

    /// Closes the broker connection and stops the sweeper.
    pub async fn close(&self) {
        self.sweeper.abort();
        if let Some(publisher) = self.publisher.lock().await.take() {
            let _ = publisher.channel().close(200, "bye".into()).await;
        }
        if let Some(channel) = self.events.detach() {
            let _ = channel.close(200, "bye".into()).await;
        }
        self.broker.close().await;
    }
}

/// The 500's text when the client's time ran out first.
const LATE: &str = "the request's time ran out before a VM was taken";

/// Answers `answer` with `{"error": text}`: the checkout handed nothing out.
fn refuse(
    answer: oneshot::Sender<Answer>,
    status: StatusCode,
    content_type: &'static str,
    text: &str,
) -> Option<Handout> {
    let _ = answer.send(error(status, content_type, text));
    None
}

/// How long before the client's deadline the last VM is sent: its answer still has to cross
/// the network (and Heroku's router) before the client gives up.
const SEND_MARGIN: Duration = Duration::from_millis(500);

/// The checkouts a token may start at once: a tenth of its minute, at least one.
fn burst(per_minute: u32) -> f64 {
    (f64::from(per_minute) / 10.0).max(1.0)
}

/// Sinatra's content type where travis-ci/warmer sets none.
const HTML: &str = "text/html;charset=utf-8";

fn json_answer(status: StatusCode, content_type: &'static str, body: &serde_json::Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `{"error": text}`.
fn error(status: StatusCode, content_type: &'static str, text: &str) -> Answer {
    json_answer(status, content_type, &json!({ "error": text }))
}

fn internal(text: &str) -> Answer {
    error(StatusCode::INTERNAL_SERVER_ERROR, HTML, text)
}

fn empty(status: StatusCode, content_type: Option<&'static str>) -> Answer {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

/// What `Rack::Auth::Basic` answers without the right password.
fn unauthorized() -> Answer {
    let mut response = empty(StatusCode::UNAUTHORIZED, Some("text/plain"));
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Protected Area\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_travis_ci_warmers_with_pool_names_decoded() {
        let route = |method: Method, path: &str| Route::of(&method, path);
        assert_eq!(route(Method::GET, "/"), None, "the operators' page");
        assert_eq!(
            route(Method::POST, "/request-instance"),
            Some(Route::RequestInstance)
        );
        assert_eq!(route(Method::GET, "/request-instance"), None);
        assert_eq!(
            route(Method::GET, "/pool-configs/"),
            Some(Route::PoolConfigs(None))
        );
        assert_eq!(
            route(Method::GET, "/pool-configs/img%3An1-standard-1"),
            Some(Route::PoolConfigs(Some("img:n1-standard-1".into())))
        );
        assert_eq!(
            route(Method::POST, "/pool-configs/img:n1-standard-1/3"),
            Some(Route::SetTarget("img:n1-standard-1".into(), "3".into()))
        );
        assert_eq!(
            route(Method::DELETE, "/pool-configs/img:n1-standard-1"),
            Some(Route::DeletePool("img:n1-standard-1".into()))
        );
        assert_eq!(route(Method::GET, "/health"), None);
        assert_eq!(route(Method::GET, "/metrics"), None);
    }

    #[test]
    fn a_token_starts_a_tenth_of_its_minute_at_once() {
        assert_eq!(burst(600), 60.0);
        assert_eq!(burst(5), 1.0);
    }
}
