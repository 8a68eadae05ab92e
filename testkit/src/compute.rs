//! A stateful stand-in for the Compute Engine v1 REST API and Google's OAuth token endpoint,
//! served over HTTP on loopback, written from the API reference: `instances.insert` (with
//! `requestId` idempotency), zone operations and `operations.wait`, `instances.get`,
//! `instances.delete`, `regions.get`, `aggregated/instances` with pagination, and the
//! JWT-bearer token grant. It records what it was sent and can inject faults.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::serve_http;

pub const PROJECT: &str = "warmer-test";
pub const REGION: &str = "us-central1";
pub const TOKEN: &str = "standin-access-token";

/// An accepted `instances.insert`.
#[derive(Clone, Debug)]
pub struct Insert {
    pub request_id: String,
    pub zone: String,
    pub body: Value,
}

#[derive(Default)]
pub struct State {
    pub instances: HashMap<String, Value>,
    operations: HashMap<String, Operation>,
    by_request_id: HashMap<String, String>,
    /// Every insert that created an operation (one per distinct requestId).
    pub inserts: Vec<Insert>,
    /// The requestId of every insert call, retries included.
    pub insert_calls: Vec<String>,
    pub in_flight: usize,
    pub peak_in_flight: usize,
    pub deleted: Vec<String>,
    /// Statuses to answer the next insert calls with, before any succeeds.
    pub insert_faults: VecDeque<u16>,
    pub stockout_zones: HashSet<String>,
    pub quota_exhausted: bool,
    /// Images that do not exist: an insert booting one is refused with 404, as the real API
    /// does for a deleted or misspelled image.
    pub missing_images: HashSet<String>,
    /// Operations never reach DONE.
    pub never_finish: bool,
    pub boot_delay: Duration,
    pub token_grants: usize,
    /// The next `setLabels` finds its fingerprint stale (as if someone else changed labels).
    pub stale_fingerprint_once: bool,
    pub set_labels_calls: usize,
    /// Listings started (first pages of `aggregated/instances`): one per reconcile pass.
    pub listings: usize,
    /// The next listings answer 403 `forbidden` (a permission withdrawn, then restored).
    pub refused_listings: usize,
    /// Every `instances.delete` call, refused ones included.
    pub delete_calls: usize,
    /// How long a delete takes to answer.
    pub delete_delay: Duration,
    pub deletes_in_flight: usize,
    pub peak_deletes_in_flight: usize,
    /// Deletes accepted per wall-clock minute before the rest of the minute answers 403
    /// `rateLimitExceeded` (Compute Engine's per-minute write quota).
    pub delete_quota_per_minute: Option<usize>,
    delete_minute: (u64, usize),
    /// Deletes per second, with a burst: beyond, 429 without a reason (a per-second limit).
    pub delete_rate: Option<(f64, f64)>,
    delete_tokens: Option<(f64, Instant)>,
    /// Calls refused for the rate.
    pub rate_limited: usize,
    /// Every call but the token's: method and path (percent-decoded as the server reads it).
    pub calls: Vec<(String, String)>,
    next_ip: u32,
}

struct Operation {
    zone: String,
    target: String,
    done_at: Option<Instant>,
    error: Option<Value>,
    finished: bool,
}

/// The running stand-in.
pub struct ComputeStandIn {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ComputeStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ComputeStandIn {
    pub async fn start(boot_delay: Duration) -> ComputeStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            boot_delay,
            ..State::default()
        }));
        let server = serve_http(listener, {
            let state = state.clone();
            move |request| handle(state.clone(), request)
        });
        ComputeStandIn {
            port,
            state,
            server,
        }
    }

    /// `WARMER_GOOGLE_COMPUTE_URL`.
    pub fn compute_url(&self) -> String {
        format!("http://127.0.0.1:{}/compute/v1", self.port)
    }

    /// The environment of a deployment booting here: the `gce` provider, this project and
    /// region, this URL, a key whose token endpoint is this stand-in, a passphrase.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("WARMER_PROVIDER", "gce".to_string()),
            ("WARMER_GOOGLE_CLOUD_PROJECT", PROJECT.to_string()),
            ("WARMER_GOOGLE_CLOUD_REGION", REGION.to_string()),
            ("WARMER_GOOGLE_COMPUTE_URL", self.compute_url()),
            ("WARMER_GOOGLE_CLOUD_KEYFILE_JSON", self.keyfile_json()),
            ("WARMER_IMAGE_PROJECT", "travis-ci-images".to_string()),
            ("WARMER_SSH_KEY_PASSPHRASE", crate::PASSPHRASE.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A service-account key whose `token_uri` is this stand-in.
    pub fn keyfile_json(&self) -> String {
        let key = openssl::rsa::Rsa::generate(2048).unwrap();
        let pkey = openssl::pkey::PKey::from_rsa(key).unwrap();
        let pem = String::from_utf8(pkey.private_key_to_pem_pkcs8().unwrap()).unwrap();
        json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "standin-key",
            "private_key": pem,
            "client_email": format!("warmer@{PROJECT}.iam.gserviceaccount.com"),
            "client_id": "1",
            "token_uri": format!("http://127.0.0.1:{}/token", self.port),
        })
        .to_string()
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Creates a running instance directly, as if warmer (or someone) had booted it.
    pub fn add_instance(&self, name: &str, zone: &str, labels: Value) {
        self.with(|s| {
            s.instances.insert(
                name.to_string(),
                json!({
                    "kind": "compute#instance",
                    "name": name,
                    "zone": zone_url(zone),
                    "status": "RUNNING",
                    "labels": labels,
                    "labelFingerprint": "fp-0",
                    "networkInterfaces": [{"networkIP": "10.128.9.9"}],
                }),
            );
        });
    }

    /// Labels of an instance.
    pub fn labels(&self, name: &str) -> Value {
        self.with(|s| s.instances[name]["labels"].clone())
    }

    /// The paths of every `DELETE` call it was sent.
    pub fn delete_paths(&self) -> Vec<String> {
        self.with(|s| {
            s.calls
                .iter()
                .filter(|(method, _)| method == "DELETE")
                .map(|(_, path)| path.clone())
                .collect()
        })
    }

    /// Names of instances that exist now.
    pub fn instances(&self) -> HashSet<String> {
        self.with(|s| s.instances.keys().cloned().collect())
    }
}

fn error(status: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        json!({"error": {"code": status, "message": message, "errors": [{"reason": reason, "message": message}]}}),
    )
}

fn respond(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn zone_url(zone: &str) -> String {
    format!("https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{zone}")
}

fn operation_json(name: &str, op: &Operation) -> Value {
    let mut body = json!({
        "kind": "compute#operation",
        "name": name,
        "zone": zone_url(&op.zone),
        "operationType": "insert",
        "targetLink": format!("{}/instances/{}", zone_url(&op.zone), op.target),
        "status": if op.finished { "DONE" } else { "RUNNING" },
    });
    if op.finished
        && let Some(error) = &op.error
    {
        body["error"] = error.clone();
    }
    body
}

async fn handle(state: Arc<Mutex<State>>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();

    if path == "/token" && method == Method::POST {
        let form = String::from_utf8_lossy(&body);
        if !form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
            || !form.contains("assertion=")
        {
            return respond(400, json!({"error": "invalid_grant"}));
        }
        state.lock().unwrap().token_grants += 1;
        return respond(
            200,
            json!({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}),
        );
    }
    if !authorized {
        return error(401, "authError", "Invalid Credentials");
    }
    state
        .lock()
        .unwrap()
        .calls
        .push((method.to_string(), path.clone()));
    let Some(rest) = path.strip_prefix(&format!("/compute/v1/projects/{PROJECT}/")) else {
        return error(404, "notFound", "unknown project");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["regions", region]) => {
            let zones: Vec<String> = ["a", "b", "c"]
                .iter()
                .map(|z| zone_url(&format!("{region}-{z}")))
                .collect();
            respond(200, json!({"name": region, "zones": zones}))
        }
        (Method::POST, ["zones", zone, "instances"]) => {
            insert(&state, zone, query.get("requestId").cloned(), &body)
        }
        (Method::POST, ["zones", _zone, "operations", name, "wait"]) => wait(&state, name).await,
        (Method::GET, ["zones", zone, "instances", name]) => {
            let state = state.lock().unwrap();
            match state.instances.get(*name) {
                Some(instance) if instance["zone"] == zone_url(zone) => {
                    respond(200, instance.clone())
                }
                _ => error(
                    404,
                    "notFound",
                    &format!("The resource '{name}' was not found"),
                ),
            }
        }
        (Method::DELETE, ["zones", zone, "instances", name]) => {
            let delay = {
                let mut state = state.lock().unwrap();
                state.delete_calls += 1;
                if let Some(refused) = state.refuse_for_rate() {
                    return refused;
                }
                state.deletes_in_flight += 1;
                state.peak_deletes_in_flight =
                    state.peak_deletes_in_flight.max(state.deletes_in_flight);
                state.delete_delay
            };
            tokio::time::sleep(delay).await;
            let mut state = state.lock().unwrap();
            state.deletes_in_flight -= 1;
            match state.instances.get(*name) {
                Some(instance) if instance["zone"] == zone_url(zone) => {
                    state.instances.remove(*name);
                    state.deleted.push(name.to_string());
                    respond(
                        200,
                        json!({"kind": "compute#operation", "name": format!("op-delete-{name}"), "status": "RUNNING"}),
                    )
                }
                _ => error(
                    404,
                    "notFound",
                    &format!("The resource '{name}' was not found"),
                ),
            }
        }
        (Method::GET, ["aggregated", "instances"]) => aggregated(&state, &query),
        (Method::POST, ["zones", zone, "instances", name, "setLabels"]) => {
            set_labels(&state, zone, name, &body)
        }
        _ => error(404, "notFound", "no such method in the stand-in"),
    }
}

impl State {
    /// The answer to a delete refused for a rate limit, if it is.
    fn refuse_for_rate(&mut self) -> Option<Response<Full<Bytes>>> {
        if let Some(quota) = self.delete_quota_per_minute {
            let minute = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                / 60;
            if self.delete_minute.0 != minute {
                self.delete_minute = (minute, 0);
            }
            if self.delete_minute.1 >= quota {
                self.rate_limited += 1;
                return Some(error(
                    403,
                    "rateLimitExceeded",
                    "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute'",
                ));
            }
            self.delete_minute.1 += 1;
        }
        if let Some((rate, burst)) = self.delete_rate {
            let now = Instant::now();
            let (tokens, at) = self.delete_tokens.unwrap_or((burst, now));
            let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate).min(burst);
            if tokens < 1.0 {
                self.delete_tokens = Some((tokens, now));
                self.rate_limited += 1;
                return Some(respond(
                    429,
                    json!({"error": {"code": 429, "message": "Too many requests"}}),
                ));
            }
            self.delete_tokens = Some((tokens - 1.0, now));
        }
        None
    }
}

/// A resource name as the API reference defines it: `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
fn is_resource_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Checks an insert body against what the API requires and what warmer promises of its VMs.
fn check_insert_body(zone: &str, body: &Value) -> Result<(), String> {
    let name = body["name"].as_str().ok_or("name is required")?;
    if !is_resource_name(name) {
        return Err(format!("Invalid value for field 'resource.name': '{name}'"));
    }
    let machine_type = body["machineType"]
        .as_str()
        .ok_or("machineType is required")?;
    if !machine_type.starts_with(&format!("zones/{zone}/machineTypes/")) {
        return Err(format!(
            "Invalid value for field 'resource.machineType': '{machine_type}'"
        ));
    }
    let disk = &body["disks"][0];
    if disk["boot"] != true
        || !disk["initializeParams"]["sourceImage"]
            .as_str()
            .is_some_and(|s| s.starts_with("projects/"))
    {
        return Err("a boot disk with initializeParams.sourceImage is required".into());
    }
    if body["networkInterfaces"][0]["network"].as_str().is_none() {
        return Err("networkInterfaces[0].network is required".into());
    }
    if body.get("serviceAccounts").is_some() {
        return Err("warmer's VMs run customers' jobs: they get no service account".into());
    }
    if body["labels"]["warmth"] != "warmed" {
        return Err("warmer's VMs carry the label warmth=warmed".into());
    }
    for (key, value) in body["labels"].as_object().ok_or("labels")? {
        let ok = |s: &str| {
            s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        };
        if !ok(key) || !value.as_str().is_some_and(ok) {
            return Err(format!("Invalid label {key}={value}"));
        }
    }
    let items = body["metadata"]["items"]
        .as_array()
        .ok_or("metadata.items is required")?;
    let item = |key: &str| {
        items
            .iter()
            .find(|i| i["key"] == key)
            .and_then(|i| i["value"].as_str())
    };
    if item("block-project-ssh-keys") != Some("true") {
        return Err("block-project-ssh-keys must be true".into());
    }
    if !item("ssh-keys").is_some_and(|k| k.starts_with("travis:ssh-rsa ")) {
        return Err("ssh-keys must hold the VM's key".into());
    }
    Ok(())
}

fn insert(
    state: &Arc<Mutex<State>>,
    zone: &str,
    request_id: Option<String>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap();
    let request_id = request_id.unwrap_or_default();
    state.insert_calls.push(request_id.clone());
    if let Some(status) = state.insert_faults.pop_front() {
        let response = match status {
            429 => error(429, "rateLimitExceeded", "Rate Limit Exceeded"),
            _ => error(status, "backendError", "Internal error. Please try again."),
        };
        let mut response = response;
        response
            .headers_mut()
            .insert("retry-after", "1".parse().unwrap());
        return response;
    }
    if let Some(op) = state.by_request_id.get(&request_id) {
        let op = op.clone();
        return respond(200, operation_json(&op, &state.operations[&op]));
    }
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return error(
            400,
            "parseError",
            "This API does not support parsing form-encoded input.",
        );
    };
    if let Err(message) = check_insert_body(zone, &body) {
        return error(400, "invalid", &message);
    }
    let image = body["disks"][0]["initializeParams"]["sourceImage"]
        .as_str()
        .unwrap_or_default();
    if let Some((_, name)) = image.rsplit_once("/images/")
        && state.missing_images.contains(name)
    {
        return error(
            404,
            "notFound",
            &format!("The resource '{image}' was not found"),
        );
    }
    let name = body["name"].as_str().unwrap_or_default().to_string();
    if state.instances.contains_key(&name) {
        return error(
            409,
            "alreadyExists",
            &format!("The resource '{name}' already exists"),
        );
    }
    let op_name = format!("operation-{}", uuid::Uuid::new_v4().simple());
    state.inserts.push(Insert {
        request_id: request_id.clone(),
        zone: zone.to_string(),
        body: body.clone(),
    });
    if !request_id.is_empty() {
        state.by_request_id.insert(request_id, op_name.clone());
    }
    let mut op = Operation {
        zone: zone.to_string(),
        target: name.clone(),
        done_at: None,
        error: None,
        finished: false,
    };
    if state.stockout_zones.contains(zone) {
        op.error = Some(
            json!({"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": format!("The zone '{}' does not have enough resources available to fulfill the request.", zone_url(zone))}]}),
        );
        op.finished = true;
    } else if state.quota_exhausted {
        op.error = Some(
            json!({"errors": [{"code": "QUOTA_EXCEEDED", "message": "Quota 'CPUS' exceeded.  Limit: 24.0 in region us-central1."}]}),
        );
        op.finished = true;
    } else {
        state.next_ip += 1;
        let ip = state.next_ip;
        let mut interface = json!({"network": body["networkInterfaces"][0]["network"], "networkIP": format!("10.128.{}.{}", ip / 250, ip % 250 + 2)});
        if body["networkInterfaces"][0]["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT" {
            interface["accessConfigs"] = json!([{"type": "ONE_TO_ONE_NAT", "natIP": format!("34.1.{}.{}", ip / 250, ip % 250 + 2)}]);
        }
        let instance = json!({
            "kind": "compute#instance",
            "name": name,
            "zone": zone_url(zone),
            "status": "PROVISIONING",
            "labels": body["labels"],
            "labelFingerprint": "42WmSpB8rSM=",
            "metadata": body["metadata"],
            "networkInterfaces": [interface],
        });
        state.instances.insert(name.clone(), instance);
        op.done_at = (!state.never_finish).then(|| Instant::now() + state.boot_delay);
        state.in_flight += 1;
        state.peak_in_flight = state.peak_in_flight.max(state.in_flight);
    }
    let response = operation_json(&op_name, &op);
    state.operations.insert(op_name, op);
    respond(200, response)
}

/// `operations.wait`: returns when DONE or after at most a second (the real one: two minutes).
async fn wait(state: &Arc<Mutex<State>>, name: &str) -> Response<Full<Bytes>> {
    let until = {
        let state = state.lock().unwrap();
        let Some(op) = state.operations.get(name) else {
            return error(404, "notFound", "operation not found");
        };
        let latest = Instant::now() + Duration::from_secs(1);
        op.done_at.map_or(latest, |d| d.min(latest))
    };
    tokio::time::sleep_until(until.into()).await;
    let mut state = state.lock().unwrap();
    let state = &mut *state;
    let op = state.operations.get_mut(name).unwrap();
    if !op.finished && op.done_at.is_some_and(|d| d <= Instant::now()) {
        op.finished = true;
        state.in_flight -= 1;
        if let Some(instance) = state.instances.get_mut(&op.target) {
            instance["status"] = json!("RUNNING");
        }
    }
    respond(200, operation_json(name, op))
}

fn aggregated(state: &Arc<Mutex<State>>, query: &HashMap<String, String>) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap();
    if !query.contains_key("pageToken") {
        state.listings += 1;
    }
    if state.refused_listings > 0 {
        state.refused_listings -= 1;
        return error(
            403,
            "forbidden",
            "Required 'compute.instances.list' permission for 'projects/warmer-test'",
        );
    }
    let filter = query
        .get("filter")
        .cloned()
        .unwrap_or_default()
        .replace("%3D", "=");
    let (label, value) = filter
        .strip_prefix("labels.")
        .and_then(|f| f.split_once('='))
        .unwrap_or(("", ""));
    let mut names: Vec<&String> = state
        .instances
        .iter()
        .filter(|(_, i)| label.is_empty() || i["labels"][label] == value)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    let page_size: usize = query
        .get("maxResults")
        .and_then(|m| m.parse().ok())
        .unwrap_or(500);
    let start: usize = query
        .get("pageToken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let page = names.iter().skip(start).take(page_size);
    let mut items: HashMap<String, Vec<Value>> = HashMap::new();
    for name in page {
        let instance = &state.instances[*name];
        let zone = instance["zone"]
            .as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default();
        items
            .entry(format!("zones/{zone}"))
            .or_default()
            .push(instance.clone());
    }
    let mut body = json!({
        "kind": "compute#instanceAggregatedList",
        "items": items.into_iter().map(|(k, v)| (k, json!({"instances": v}))).collect::<serde_json::Map<_, _>>(),
    });
    if start + page_size < names.len() {
        body["nextPageToken"] = json!((start + page_size).to_string());
    }
    respond(200, body)
}

/// `instances.setLabels`: the request's `labelFingerprint` must match the current one.
fn set_labels(
    state: &Arc<Mutex<State>>,
    zone: &str,
    name: &str,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap();
    state.set_labels_calls += 1;
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return error(400, "parseError", "bad body");
    };
    if std::mem::take(&mut state.stale_fingerprint_once)
        && let Some(instance) = state.instances.get_mut(name)
    {
        instance["labelFingerprint"] = json!("fp-changed-by-someone-else");
    }
    let Some(instance) = state
        .instances
        .get_mut(name)
        .filter(|i| i["zone"] == zone_url(zone))
    else {
        return error(
            404,
            "notFound",
            &format!("The resource '{name}' was not found"),
        );
    };
    if body["labelFingerprint"] != instance["labelFingerprint"] {
        return error(
            412,
            "conditionNotMet",
            "Supplied fingerprint does not match current metadata fingerprint.",
        );
    }
    instance["labels"] = body["labels"].clone();
    instance["labelFingerprint"] = json!(format!("fp-{}", uuid::Uuid::new_v4().simple()));
    respond(
        200,
        json!({"kind": "compute#operation", "name": "op-labels", "status": "DONE"}),
    )
}
