//! Compute Engine v1 over REST: `instances.insert` with a `requestId`, waiting on the
//! zone operation until `DONE`, IPs from `instances.get`, deletion, and listing by label.
//!
//! Errors are classified into [`GceError`]: rate limits, 5xx and transport errors are retried
//! with backoff (the same `requestId`, so a retried insert cannot create two VMs; a
//! `rateLimitExceeded` waits for the next minute, when the quota refills); a stockout tries the
//! next zone of the region; a quota error stops and is reported; a boot that times out or fails
//! after its insert was accepted is reported as [`BootError::Halfway`] so the caller records the
//! VM as an orphan. Tokens come from gcp_auth and never appear in logs or errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backon::Retryable;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{BootError, Booted, CloudVm, DeleteError, VmSpec, label_value};
use crate::config::GoogleConfig;
use crate::pool::short_zone;

const SCOPE: &str = "https://www.googleapis.com/auth/compute";
/// The user the travis worker logs in as.
const SSH_USER: &str = "travis";

/// A Compute Engine API error, classified by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum GceError {
    #[error("not found")]
    NotFound,
    #[error("rate limited: {message}")]
    RateLimited {
        message: String,
        /// Rate limits of the `rateLimitExceeded` kind refill at the next minute.
        per_minute: bool,
        retry_after: Option<Duration>,
    },
    #[error("quota exceeded: {0}")]
    Quota(String),
    #[error("Compute Engine unavailable (HTTP {status}): {message}")]
    Unavailable { status: u16, message: String },
    #[error("Compute Engine refused the request (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("cannot reach Compute Engine: {0}")]
    Transport(String),
    #[error("cannot get an access token: {0}")]
    Auth(String),
    /// A name from outside (Redis) that is not a Compute Engine name: never sent.
    #[error("{0}")]
    InvalidName(String),
}

/// A name that goes into a URL, checked against Compute Engine's pattern first: a name read
/// from Redis can never be a path (`../../global/firewalls/x`), a query or another resource.
pub fn checked<'a>(what: &str, name: &'a str) -> Result<&'a str, GceError> {
    if crate::pool::is_gce_name(name) {
        Ok(name)
    } else {
        Err(GceError::InvalidName(format!(
            "{what} `{}` is not a valid Compute Engine name: not sent",
            name.chars().take(80).collect::<String>().escape_debug()
        )))
    }
}

impl GceError {
    /// Worth retrying with the same request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GceError::RateLimited { .. } | GceError::Unavailable { .. } | GceError::Transport(_)
        )
    }

    /// Reads an error response (`{"error":{"code","message","errors":[{"reason"}]}}`).
    pub fn from_response(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Self {
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let message = parsed["error"]["message"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        let reasons: Vec<&str> = parsed["error"]["errors"]
            .as_array()
            .map(|errors| errors.iter().filter_map(|e| e["reason"].as_str()).collect())
            .unwrap_or_default();
        let has = |reason: &str| reasons.contains(&reason);
        let status_code = status.as_u16();
        if status == StatusCode::NOT_FOUND {
            GceError::NotFound
        } else if has("rateLimitExceeded") || has("userRateLimitExceeded") {
            GceError::RateLimited {
                message,
                per_minute: true,
                retry_after,
            }
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            GceError::RateLimited {
                message,
                per_minute: false,
                retry_after,
            }
        } else if has("quotaExceeded") || has("QUOTA_EXCEEDED") {
            GceError::Quota(message)
        } else if status.is_server_error() {
            GceError::Unavailable {
                status: status_code,
                message,
            }
        } else {
            GceError::Refused {
                status: status_code,
                message,
            }
        }
    }
}

/// The Compute Engine client of one project and region.
#[derive(Clone)]
pub struct Gce {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    auth: Arc<dyn gcp_auth::TokenProvider>,
    base: reqwest::Url,
    project: String,
    region: String,
    configured_zones: Vec<String>,
    zones: OnceCell<Vec<String>>,
    image_project: String,
    network: String,
    subnetwork: Option<String>,
    creation_timeout: Duration,
    next_zone: AtomicUsize,
}

/// How one zone's attempt ended, when it did not produce a VM.
enum Attempt {
    Stockout(String),
    Failed(BootError),
}

impl Gce {
    /// A client with credentials from `WARMER_GOOGLE_CLOUD_KEYFILE_JSON` (its `token_uri` is
    /// used) or, without it, application default credentials.
    pub async fn new(config: &GoogleConfig, creation_timeout: Duration) -> anyhow::Result<Self> {
        let auth: Arc<dyn gcp_auth::TokenProvider> = match &config.keyfile_json {
            Some(json) => Arc::new(
                gcp_auth::CustomServiceAccount::from_json(json.expose()).map_err(|e| {
                    anyhow::anyhow!(
                        "WARMER_GOOGLE_CLOUD_KEYFILE_JSON is not a usable service account key: {e}"
                    )
                })?,
            ),
            None => gcp_auth::provider().await.context(
                "no WARMER_GOOGLE_CLOUD_KEYFILE_JSON and no application default credentials",
            )?,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(150))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("warmer/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                auth,
                base: reqwest::Url::parse(&config.compute_url).with_context(|| {
                    format!(
                        "WARMER_GOOGLE_COMPUTE_URL `{}` is not a URL",
                        config.compute_url
                    )
                })?,
                project: config.project.clone(),
                region: config.region.clone(),
                configured_zones: config.zones.clone(),
                zones: OnceCell::new(),
                image_project: config.image_project.clone(),
                network: config.network.clone(),
                subnetwork: config.subnetwork.clone(),
                creation_timeout,
                next_zone: AtomicUsize::new(0),
            }),
        })
    }

    pub fn boot_budget(&self) -> Duration {
        self.inner.creation_timeout + Duration::from_secs(60)
    }

    /// The URL of `segments` below `projects/<project>` of the API base, with `query`: each
    /// segment percent-encoded on its own (a `/` in one stays inside it; `.` and `..` are
    /// dropped), so nothing can reach another path. Names from outside are [`checked`] first.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> reqwest::Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["projects", self.inner.project.as_str()])
                .extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// The URL of an instance (and of `rest` below it), its zone and name [`checked`].
    fn instance_url(
        &self,
        zone: &str,
        name: &str,
        rest: &[&str],
    ) -> Result<reqwest::Url, GceError> {
        let zone = checked("zone", short_zone(zone))?;
        let name = checked("VM name", name)?;
        let mut segments = vec!["zones", zone, "instances", name];
        segments.extend_from_slice(rest);
        Ok(self.url(&segments, &[]))
    }

    /// One API call, without retries.
    async fn call(
        &self,
        method: Method,
        url: &reqwest::Url,
        body: Option<&Value>,
    ) -> Result<Value, GceError> {
        let token = self
            .inner
            .auth
            .token(&[SCOPE])
            .await
            .map_err(|e| GceError::Auth(e.to_string()))?;
        let mut request = self
            .inner
            .http
            .request(method, url.clone())
            .bearer_auth(token.as_str());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| GceError::Transport(e.without_url().to_string()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| GceError::Transport(e.without_url().to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| GceError::Unavailable {
                status: status.as_u16(),
                message: format!("unreadable response: {e}"),
            });
        }
        Err(GceError::from_response(status, &bytes, retry_after))
    }

    /// One API call, retrying transient errors (at most ~2 minutes).
    async fn call_retrying(
        &self,
        method: Method,
        url: &reqwest::Url,
        body: Option<&Value>,
    ) -> Result<Value, GceError> {
        let path = url.path();
        (|| self.call(method.clone(), url, body))
            .retry(crate::retry::compute_engine())
            .when(GceError::is_transient)
            .adjust(|error, delay| match error {
                GceError::RateLimited {
                    retry_after: Some(after),
                    ..
                } => Some(*after),
                GceError::RateLimited {
                    per_minute: true, ..
                } => Some(until_next_minute()),
                _ => delay,
            })
            .notify(|error, delay| {
                tracing::warn!(%error, ?delay, path, "Compute Engine call failed; retrying")
            })
            .await
    }

    /// The zones to boot in: `WARMER_GOOGLE_CLOUD_ZONES`, else the region's (asked once).
    async fn zones(&self) -> Result<&[String], GceError> {
        if !self.inner.configured_zones.is_empty() {
            return Ok(&self.inner.configured_zones);
        }
        self.inner
            .zones
            .get_or_try_init(|| async {
                let url = self.url(&["regions", &self.inner.region], &[]);
                let region = self.call_retrying(Method::GET, &url, None).await?;
                let zones: Vec<String> = region["zones"]
                    .as_array()
                    .map(|z| {
                        z.iter()
                            .filter_map(Value::as_str)
                            .map(short_zone)
                            .filter(|z| crate::pool::is_gce_name(z))
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                if zones.is_empty() {
                    return Err(GceError::Refused {
                        status: 200,
                        message: format!("region {} lists no zones", self.inner.region),
                    });
                }
                Ok(zones)
            })
            .await
            .map(Vec::as_slice)
    }

    /// Boots a VM, trying the region's other zones on a stockout.
    pub async fn boot(&self, spec: &VmSpec) -> Result<Booted, BootError> {
        let zones = self
            .zones()
            .await
            .map_err(|e| BootError::NotCreated(format!("cannot list the region's zones: {e}")))?;
        let first = self.inner.next_zone.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.inner.creation_timeout;
        let mut stockouts = Vec::new();
        for i in 0..zones.len() {
            let zone = &zones[(first + i) % zones.len()];
            match self.boot_in_zone(spec, zone, deadline).await {
                Ok(booted) => return Ok(booted),
                Err(Attempt::Stockout(message)) => {
                    tracing::warn!(zone, vm = %spec.name, %message, "zone out of capacity; trying another");
                    stockouts.push(zone.as_str());
                }
                Err(Attempt::Failed(error)) => return Err(error),
            }
        }
        Err(BootError::NotCreated(format!(
            "every zone is out of capacity ({})",
            stockouts.join(", ")
        )))
    }

    async fn boot_in_zone(
        &self,
        spec: &VmSpec,
        zone: &str,
        deadline: Instant,
    ) -> Result<Booted, Attempt> {
        let halfway = |reason: String| {
            Attempt::Failed(BootError::Halfway {
                zone: zone.to_string(),
                reason,
            })
        };
        let request_id = uuid::Uuid::new_v4().to_string();
        let insert_url = self.url(
            &["zones", zone, "instances"],
            &[("requestId", request_id.as_str())],
        );
        let body = self.instance_body(spec, zone);
        let insert = self.call_retrying(Method::POST, &insert_url, Some(&body));
        let operation = match tokio::time::timeout_at(deadline.into(), insert).await {
            Err(_) => {
                return Err(halfway(
                    "insert not answered within WARMER_VM_CREATION_TIMEOUT".into(),
                ));
            }
            Ok(Ok(operation)) => operation,
            Ok(Err(GceError::Quota(message))) => {
                return Err(Attempt::Failed(BootError::Quota {
                    zone: zone.to_string(),
                    message,
                }));
            }
            Ok(Err(
                error @ (GceError::Refused { .. } | GceError::Auth(_) | GceError::NotFound),
            )) => {
                return Err(Attempt::Failed(BootError::NotCreated(error.to_string())));
            }
            // Retries ran out: the insert may have been accepted on a lost response.
            Ok(Err(error)) => return Err(halfway(error.to_string())),
        };
        let operation = match tokio::time::timeout_at(
            deadline.into(),
            self.wait_for_operation(zone, operation),
        )
        .await
        {
            Err(_) => {
                return Err(halfway(
                    "operation not DONE within WARMER_VM_CREATION_TIMEOUT".into(),
                ));
            }
            Ok(Err(error)) => return Err(halfway(format!("waiting on the operation: {error}"))),
            Ok(Ok(operation)) => operation,
        };
        if let Some(errors) = operation["error"]["errors"].as_array() {
            let codes: Vec<&str> = errors.iter().filter_map(|e| e["code"].as_str()).collect();
            let messages: Vec<&str> = errors
                .iter()
                .filter_map(|e| e["message"].as_str())
                .collect();
            let text = format!("{} ({})", codes.join(", "), messages.join("; "));
            if codes
                .iter()
                .any(|c| c.starts_with("ZONE_RESOURCE_POOL_EXHAUSTED"))
            {
                return Err(Attempt::Stockout(text));
            }
            if codes.iter().any(|c| c.contains("QUOTA")) {
                return Err(Attempt::Failed(BootError::Quota {
                    zone: zone.to_string(),
                    message: text,
                }));
            }
            return Err(halfway(text));
        }
        let instance_url = self
            .instance_url(zone, &spec.name, &[])
            .map_err(|e| halfway(e.to_string()))?;
        let instance = self
            .call_retrying(Method::GET, &instance_url, None)
            .await
            .map_err(|e| halfway(format!("reading the new instance: {e}")))?;
        let interface = &instance["networkInterfaces"][0];
        let Some(ip) = interface["networkIP"].as_str() else {
            return Err(halfway("the instance has no internal IP".into()));
        };
        let public_ip = interface["accessConfigs"][0]["natIP"]
            .as_str()
            .map(String::from);
        if spec.pool.public_ip && public_ip.is_none() {
            return Err(halfway("the instance has no external IP".into()));
        }
        Ok(Booted {
            zone: zone.to_string(),
            ip: ip.to_string(),
            public_ip,
        })
    }

    /// Waits until a zone operation is `DONE` (`operations.wait` may return early).
    async fn wait_for_operation(
        &self,
        zone: &str,
        mut operation: Value,
    ) -> Result<Value, GceError> {
        loop {
            if operation["status"] == "DONE" {
                return Ok(operation);
            }
            let name = operation["name"].as_str().unwrap_or_default().to_string();
            if name.is_empty() {
                return Err(GceError::Refused {
                    status: 200,
                    message: "an operation without a name".into(),
                });
            }
            let asked = Instant::now();
            let url = self.url(&["zones", zone, "operations", &name, "wait"], &[]);
            operation = self.call_retrying(Method::POST, &url, None).await?;
            if operation["status"] != "DONE" && asked.elapsed() < Duration::from_millis(200) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// The `instances.insert` body for `spec` in `zone`.
    pub fn instance_body(&self, spec: &VmSpec, zone: &str) -> Value {
        let inner = &self.inner;
        let mut interface = json!({
            "network": if inner.network.contains('/') { inner.network.clone() } else {
                format!("projects/{}/global/networks/{}", inner.project, inner.network)
            },
        });
        if let Some(subnetwork) = &inner.subnetwork {
            interface["subnetwork"] = json!(if subnetwork.contains('/') {
                subnetwork.clone()
            } else {
                format!(
                    "projects/{}/regions/{}/subnetworks/{subnetwork}",
                    inner.project, inner.region
                )
            });
        }
        if spec.pool.public_ip {
            interface["accessConfigs"] =
                json!([{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]);
        }
        json!({
            "name": spec.name,
            "machineType": format!("zones/{zone}/machineTypes/{}", spec.pool.machine_type),
            "labels": {
                "warmth": "warmed",
                super::DEPLOYMENT: label_value(&spec.namespace),
                "pool-image": label_value(&spec.pool.image),
                "pool-machine-type": label_value(&spec.pool.machine_type),
                "pool-public": if spec.pool.public_ip { "true" } else { "false" },
            },
            "disks": [{
                "boot": true,
                "autoDelete": true,
                "initializeParams": {
                    "sourceImage": format!("projects/{}/global/images/{}", inner.image_project, spec.pool.image),
                },
            }],
            "networkInterfaces": [interface],
            "metadata": {
                "items": [
                    {"key": "block-project-ssh-keys", "value": "true"},
                    {"key": "ssh-keys", "value": format!("{SSH_USER}:{} {SSH_USER}", spec.ssh_public_key)},
                ],
            },
        })
    }

    /// Deletes a VM (404 counts as deleted). One call, no retry: a rate limit is the caller's
    /// to pace. The caller has checked that the VM is this deployment's ([`super::owner`]).
    pub async fn delete(&self, name: &str, zone: &str) -> Result<(), DeleteError> {
        let url = self
            .instance_url(zone, name, &[])
            .map_err(|e| DeleteError::Failed(e.into()))?;
        let mut url = url;
        url.query_pairs_mut()
            .append_pair("requestId", &uuid::Uuid::new_v4().to_string());
        match self.call(Method::DELETE, &url, None).await {
            Ok(_) | Err(GceError::NotFound) => Ok(()),
            Err(GceError::RateLimited {
                retry_after,
                per_minute,
                ..
            }) => Err(DeleteError::RateLimited {
                retry_after,
                per_minute,
            }),
            Err(error) => Err(anyhow::anyhow!("deleting {name} in {zone}: {error}").into()),
        }
    }

    /// One instance, or `None` if it does not exist; `zone` unknown: each zone of the region is
    /// asked until one has it. One call per zone, no retry (a rate limit is the caller's to
    /// pace), for the deleter.
    pub async fn find(
        &self,
        name: &str,
        zone: Option<&str>,
    ) -> Result<Option<CloudVm>, DeleteError> {
        let zones: Vec<String> = match zone {
            Some(zone) => vec![short_zone(zone).to_string()],
            None => self
                .zones()
                .await
                .map_err(|e| anyhow::anyhow!("listing the region's zones: {e}"))?
                .to_vec(),
        };
        for zone in zones {
            let url = self
                .instance_url(&zone, name, &[])
                .map_err(|e| DeleteError::Failed(e.into()))?;
            match self.call(Method::GET, &url, None).await {
                Ok(instance) => return Ok(Some(cloud_vm(&instance))),
                Err(GceError::NotFound) => {}
                Err(GceError::RateLimited {
                    retry_after,
                    per_minute,
                    ..
                }) => {
                    return Err(DeleteError::RateLimited {
                        retry_after,
                        per_minute,
                    });
                }
                Err(error) => {
                    return Err(anyhow::anyhow!("reading {name} in {zone}: {error}").into());
                }
            }
        }
        Ok(None)
    }

    /// One instance, or `None` if it does not exist.
    pub async fn get(&self, name: &str, zone: &str) -> anyhow::Result<Option<CloudVm>> {
        let url = self.instance_url(zone, name, &[])?;
        match self.call_retrying(Method::GET, &url, None).await {
            Ok(instance) => Ok(Some(cloud_vm(&instance))),
            Err(GceError::NotFound) => Ok(None),
            Err(error) => Err(anyhow::anyhow!("reading {name}: {error}")),
        }
    }

    /// Adds labels with `setLabels`, which needs the current label fingerprint: a stale one
    /// (412 `conditionNotMet`) is re-read and the call retried.
    pub async fn set_labels(&self, vm: &CloudVm, labels: &[(&str, String)]) -> anyhow::Result<()> {
        let instance_url = self.instance_url(&vm.zone, &vm.name, &[])?;
        let set_labels_url = self.instance_url(&vm.zone, &vm.name, &["setLabels"])?;
        let mut current = vm.clone();
        for _ in 0..3 {
            let mut merged: serde_json::Map<String, Value> = current
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            for (key, value) in labels {
                merged.insert(key.to_string(), json!(value));
            }
            let body = json!({"labels": merged, "labelFingerprint": current.label_fingerprint});
            match self
                .call_retrying(Method::POST, &set_labels_url, Some(&body))
                .await
            {
                Ok(_) | Err(GceError::NotFound) => return Ok(()),
                Err(GceError::Refused { status: 412, .. }) => {
                    let fresh = self.call_retrying(Method::GET, &instance_url, None).await?;
                    current = cloud_vm(&fresh);
                }
                Err(error) => return Err(anyhow::anyhow!("labelling {}: {error}", vm.name)),
            }
        }
        anyhow::bail!("labelling {}: the label fingerprint kept changing", vm.name)
    }

    /// What `warmer check` verifies, each step once (a release must not wait out the retries):
    /// a token, the region and its zones (the configured ones among them), and that instances
    /// can be listed. Describes what it found.
    pub async fn check(&self, namespace: &str) -> anyhow::Result<String> {
        let inner = &self.inner;
        self.inner
            .auth
            .token(&[SCOPE])
            .await
            .map_err(|e| anyhow::anyhow!("getting an access token: {e}"))?;
        let region_url = self.url(&["regions", &inner.region], &[]);
        let region = self
            .call(Method::GET, &region_url, None)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "reading region {} of project {}: {e}",
                    inner.region,
                    inner.project
                )
            })?;
        let zones: Vec<&str> = region["zones"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(short_zone)
            .collect();
        if let Some(missing) = inner
            .configured_zones
            .iter()
            .find(|z| !zones.contains(&z.as_str()))
        {
            anyhow::bail!(
                "WARMER_GOOGLE_CLOUD_ZONES names {missing}, which region {} does not have ({})",
                inner.region,
                zones.join(", ")
            );
        }
        let filter = format!("labels.{}={}", super::DEPLOYMENT, label_value(namespace));
        let listing = self.url(
            &["aggregated", "instances"],
            &[("filter", filter.as_str()), ("maxResults", "1")],
        );
        self.call(Method::GET, &listing, None)
            .await
            .map_err(|e| anyhow::anyhow!("listing instances of project {}: {e}", inner.project))?;
        Ok(format!(
            "project {}, region {} (zones {}), instances listed",
            inner.project,
            inner.region,
            zones.join(", ")
        ))
    }

    /// Every VM labelled with this deployment's namespace (paginated `aggregatedList`).
    pub async fn list(&self, namespace: &str) -> anyhow::Result<Vec<CloudVm>> {
        let mut vms = Vec::new();
        let mut page_token = String::new();
        let filter = format!("labels.{}={}", super::DEPLOYMENT, label_value(namespace));
        loop {
            let mut query = vec![("filter", filter.as_str()), ("maxResults", "500")];
            if !page_token.is_empty() {
                query.push(("pageToken", page_token.as_str()));
            }
            let url = self.url(&["aggregated", "instances"], &query);
            let page = self.call_retrying(Method::GET, &url, None).await?;
            if let Some(scopes) = page["items"].as_object() {
                for scope in scopes.values() {
                    for vm in scope["instances"].as_array().into_iter().flatten() {
                        vms.push(cloud_vm(vm));
                    }
                }
            }
            match page["nextPageToken"].as_str() {
                Some(token) if !token.is_empty() => page_token = token.to_string(),
                _ => return Ok(vms),
            }
        }
    }
}

fn cloud_vm(vm: &Value) -> CloudVm {
    let text = |field: &str| vm[field].as_str().unwrap_or_default().to_string();
    CloudVm {
        name: text("name"),
        zone: short_zone(vm["zone"].as_str().unwrap_or_default()).to_string(),
        status: text("status"),
        labels: vm["labels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        label_fingerprint: vm["labelFingerprint"].as_str().map(String::from),
    }
}

/// How long until the next minute starts (and a per-minute quota refills), plus a margin.
pub fn until_next_minute() -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_millis(60_000 - (now.as_millis() % 60_000) as u64 + 250)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_what_to_do() {
        let body = |reason: &str| {
            json!({"error": {"code": 403, "message": "m", "errors": [{"reason": reason}]}})
                .to_string()
        };
        let classify = |status: u16, body: &str| {
            GceError::from_response(StatusCode::from_u16(status).unwrap(), body.as_bytes(), None)
        };
        assert!(matches!(
            classify(403, &body("rateLimitExceeded")),
            GceError::RateLimited {
                per_minute: true,
                ..
            }
        ));
        assert!(matches!(
            classify(429, "{}"),
            GceError::RateLimited {
                per_minute: false,
                ..
            }
        ));
        assert!(matches!(
            classify(403, &body("quotaExceeded")),
            GceError::Quota(_)
        ));
        assert!(matches!(
            classify(503, "oops"),
            GceError::Unavailable { .. }
        ));
        assert!(matches!(classify(404, "{}"), GceError::NotFound));
        assert!(matches!(
            classify(400, &body("invalid")),
            GceError::Refused { .. }
        ));
        assert!(classify(503, "").is_transient());
        assert!(!classify(403, &body("quotaExceeded")).is_transient());
    }
}
