//! A stand-in for the Heroku Platform API, served over HTTP on loopback and written from the API
//! reference: `GET /apps/{app}/formation` and `PATCH /apps/{app}/formation` with
//! `{"updates": [{"type", "quantity"}]}`; `POST /apps/{app}/log-sessions` answering a
//! `logplex_url` whose stream the test scripts; `DELETE /apps/{app}/dynos/{dyno}` (restart).
//! Version-3 `Accept` header and bearer token required (not on the log stream, whose URL carries
//! its own credentials), errors as `{"id", "message"}`, 429 with `RateLimit-Remaining` and
//! `Retry-After`. It records every PATCH, log session and restart and can inject faults.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::serve_http;

pub const APP: &str = "warmer-test-app";
pub const TOKEN: &str = "heroku-standin-token";

#[derive(Default)]
pub struct State {
    /// Process type → dynos.
    pub formation: BTreeMap<String, u32>,
    /// Every accepted PATCH body.
    pub patches: Vec<Value>,
    /// Statuses to answer the next requests with.
    pub faults: VecDeque<u16>,
    /// Statuses to answer the next PATCH requests with (reads succeed).
    pub patch_faults: VecDeque<u16>,
    /// What each log session streams, in order: its lines, then the stream ends. Once they are
    /// used up, a stream sends nothing and stays open.
    pub log_streams: VecDeque<Vec<String>>,
    /// Log sessions opened.
    pub log_sessions: usize,
    /// Dynos restarted, in order.
    pub restarts: Vec<String>,
    /// Statuses to answer the next restarts with (429 carries `Retry-After: 1`).
    pub restart_faults: VecDeque<u16>,
}

/// The credentials a log session's URL carries.
const LOGPLEX_SECRET: &str = "logplex-session-secret";

pub struct HerokuStandIn {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for HerokuStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl HerokuStandIn {
    pub async fn start(formation: &[(&str, u32)]) -> HerokuStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            formation: formation
                .iter()
                .map(|(process, n)| (process.to_string(), *n))
                .collect(),
            ..State::default()
        }));
        let server = serve_http(listener, {
            let state = state.clone();
            move |request| handle(state.clone(), request)
        });
        HerokuStandIn {
            port,
            state,
            server,
        }
    }

    /// `WARMER_HEROKU_API_URL`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn quantity(&self, process: &str) -> u32 {
        self.with(|s| s.formation[process])
    }
}

fn respond(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .header(
            "ratelimit-remaining",
            if status == 429 { "0" } else { "4400" },
        );
    if status == 429 {
        response = response.header("retry-after", "60");
    }
    response
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn error(status: u16, id: &str, message: &str) -> Response<Full<Bytes>> {
    respond(status, json!({"id": id, "message": message}))
}

fn formation_json(process: &str, quantity: u32) -> Value {
    json!({"app": {"name": APP, "id": "01234567-89ab-cdef-0123-456789abcdef"},
           "command": format!("./target/release/warmer {process}"), "type": process,
           "quantity": quantity, "size": "Standard-1X", "id": format!("formation-{process}"),
           "created_at": "2026-11-25T00:00:00Z", "updated_at": "2026-11-25T00:00:00Z"})
}

async fn handle(state: Arc<Mutex<State>>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    if parts.uri.path() == "/logplex" {
        return log_stream(state, parts.uri.query().unwrap_or_default()).await;
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    if header("accept") != "application/vnd.heroku+json; version=3" {
        return error(
            400,
            "bad_request",
            "Accept must be application/vnd.heroku+json; version=3",
        );
    }
    if header("authorization") != format!("Bearer {TOKEN}") {
        return error(401, "unauthorized", "Invalid credentials provided.");
    }
    let body = body.collect().await.unwrap().to_bytes();
    let mut state = state.lock().unwrap();
    if let Some(status) = state.faults.pop_front() {
        return error(status, "fault", "injected by the test");
    }
    let path: Vec<&str> = parts.uri.path().trim_matches('/').split('/').collect();
    match (&parts.method, path.as_slice()) {
        (_, ["apps", app, "formation"]) if *app != APP => {
            error(404, "not_found", "Couldn't find that app.")
        }
        (&Method::GET, ["apps", _, "formation"]) => respond(
            200,
            state
                .formation
                .iter()
                .map(|(p, n)| formation_json(p, *n))
                .collect(),
        ),
        (&Method::PATCH, ["apps", _, "formation"]) => {
            if let Some(status) = state.patch_faults.pop_front() {
                return error(status, "fault", "injected by the test");
            }
            if header("content-type") != "application/json" {
                return error(400, "bad_request", "Content-Type must be application/json");
            }
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return error(400, "bad_request", "Request body must be JSON.");
            };
            let Some(updates) = patch["updates"].as_array() else {
                return error(422, "invalid_params", "updates is required");
            };
            let mut applied = Vec::new();
            for update in updates {
                let (Some(process), Some(quantity)) =
                    (update["type"].as_str(), update["quantity"].as_u64())
                else {
                    return error(422, "invalid_params", "type and quantity are required");
                };
                if !state.formation.contains_key(process) {
                    return error(404, "not_found", "Couldn't find that formation.");
                }
                applied.push((process.to_string(), quantity as u32));
            }
            for (process, quantity) in &applied {
                state.formation.insert(process.clone(), *quantity);
            }
            state.patches.push(patch);
            respond(
                200,
                applied.iter().map(|(p, n)| formation_json(p, *n)).collect(),
            )
        }
        (&Method::POST, ["apps", app, "log-sessions"]) if *app == APP => {
            let Ok(session) = serde_json::from_slice::<Value>(&body) else {
                return error(400, "bad_request", "Request body must be JSON.");
            };
            if session["tail"] != true {
                return error(
                    422,
                    "invalid_params",
                    "the stand-in serves tailing sessions only",
                );
            }
            state.log_sessions += 1;
            let port = parts
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_string();
            respond(
                201,
                json!({"id": format!("session-{}", state.log_sessions),
                       "logplex_url": format!("http://{port}/logplex?srv={LOGPLEX_SECRET}"),
                       "created_at": "2026-11-29T00:00:00Z", "updated_at": "2026-11-29T00:00:00Z"}),
            )
        }
        (&Method::DELETE, ["apps", app, "dynos", dyno]) if *app == APP => {
            match state.restart_faults.pop_front() {
                Some(429) => Response::builder()
                    .status(429)
                    .header("content-type", "application/json")
                    .header("ratelimit-remaining", "0")
                    .header("retry-after", "1")
                    .body(Full::new(Bytes::from(
                        json!({"id": "rate_limit", "message": "Your account reached the API rate limit"}).to_string(),
                    )))
                    .unwrap(),
                Some(status) => error(status, "fault", "injected by the test"),
                None => {
                    state.restarts.push(dyno.to_string());
                    respond(202, json!({}))
                }
            }
        }
        _ => error(404, "not_found", "no such endpoint in the stand-in"),
    }
}

/// A log session's stream: its script, then the end; or, with no script left, nothing for ten
/// minutes (a quiet stream).
async fn log_stream(state: Arc<Mutex<State>>, query: &str) -> Response<Full<Bytes>> {
    if query != format!("srv={LOGPLEX_SECRET}") {
        return error(401, "unauthorized", "not a log session of this app");
    }
    let script = state.lock().unwrap().log_streams.pop_front();
    let Some(lines) = script else {
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        return error(504, "timeout", "quiet");
    };
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    Response::builder()
        .status(200)
        .header("content-type", "application/logplex-1")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}
