//! Where VMs come from: Compute Engine ([`gce`]) or a simulated cloud on this machine
//! ([`local`]). [`Cloud`] is the one type the refill consumer boots and deletes through.

pub mod gce;
pub mod local;

use std::time::Duration;

use crate::pool::PoolName;

/// What a boot needs to know.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub pool: PoolName,
    /// `ssh-rsa AAAA…` for the VM's `ssh-keys` metadata.
    pub ssh_public_key: String,
    /// Redis namespace of this deployment, as a label, so deployments sharing a project are
    /// told apart.
    pub namespace: String,
}

/// A VM that is up.
#[derive(Debug, Clone, PartialEq)]
pub struct Booted {
    pub zone: String,
    pub ip: String,
    pub public_ip: Option<String>,
}

/// Why a boot failed, and what that means for the VM.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Nothing was created (e.g. every zone was out of capacity, or the request was refused).
    #[error("no VM was created: {0}")]
    NotCreated(String),
    /// Quota is exhausted: retrying does not help until an operator acts.
    #[error("quota exceeded in zone {zone}: {message}")]
    Quota { zone: String, message: String },
    /// The VM may exist (timeout, failure halfway): it must be deleted, never used.
    #[error("boot failed halfway in zone {zone}: {reason}")]
    Halfway { zone: String, reason: String },
}

/// Why a deletion did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// Compute Engine refused for its rate limit: try again after `pause` (`per_minute`: the
    /// quota refills at the next minute).
    #[error("rate limited")]
    RateLimited {
        retry_after: Option<Duration>,
        per_minute: bool,
    },
    /// Anything else; the VM may still exist.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl BootError {
    /// `quota`, `not_created` or `halfway`, as `boot.failed` events say.
    pub fn kind(&self) -> &'static str {
        match self {
            BootError::Quota { .. } => "quota",
            BootError::NotCreated(_) => "not_created",
            BootError::Halfway { .. } => "halfway",
        }
    }

    /// The zone the failure happened in, if it was one zone's.
    pub fn zone(&self) -> Option<&str> {
        match self {
            BootError::Quota { zone, .. } | BootError::Halfway { zone, .. } => Some(zone),
            BootError::NotCreated(_) => None,
        }
    }
}

/// A VM as the cloud lists it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CloudVm {
    pub name: String,
    pub zone: String,
    /// `PROVISIONING`, `RUNNING`, `TERMINATED`, …
    pub status: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub label_fingerprint: Option<String>,
}

/// Label marking a VM handed out (`warmth=cooled`) and when (`checked-out-at`, Unix seconds).
pub const COOLED: (&str, &str) = ("warmth", "cooled");
pub const CHECKED_OUT_AT: &str = "checked-out-at";
/// Label naming the deployment (its Redis namespace) a VM belongs to.
pub const DEPLOYMENT: &str = "warmer";
/// The label every warmed VM carries, travis-ci/warmer's as well as warmer's.
pub const WARMED: (&str, &str) = ("warmth", "warmed");

/// Whose a VM is, as its labels say: the only thing that lets warmer delete or relabel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This deployment's: `warmer=<its namespace>`.
    Us,
    /// travis-ci/warmer's: `warmth=warmed` and no `warmer` label (it sets no other label), so
    /// one of the VMs a Redis written by travis-ci/warmer names: adopted, or deleted.
    TravisCiWarmer,
    /// Anyone else's (another deployment's, made by hand, by other tools): never relabelled,
    /// never deleted.
    Other,
}

/// Whose `vm` is, for the deployment of `namespace`.
pub fn owner(vm: &CloudVm, namespace: &str) -> Owner {
    match vm.labels.get(DEPLOYMENT) {
        Some(label) if *label == label_value(namespace) => Owner::Us,
        Some(_) => Owner::Other,
        None if vm.labels.get(WARMED.0).map(String::as_str) == Some(WARMED.1) => {
            Owner::TravisCiWarmer
        }
        None => Owner::Other,
    }
}

/// The configured cloud.
#[derive(Clone)]
pub enum Cloud {
    Gce(gce::Gce),
    Local(local::Local),
}

impl Cloud {
    /// Boots `spec` and waits until it has an internal IP.
    pub async fn boot(&self, spec: &VmSpec) -> Result<Booted, BootError> {
        match self {
            Cloud::Gce(gce) => gce.boot(spec).await,
            Cloud::Local(local) => local.boot(spec).await,
        }
    }

    /// Deletes a VM, one call and no retry: a rate limit goes to the caller, which paces
    /// itself. A VM that does not exist counts as deleted. Only for a VM the caller found to be
    /// this deployment's ([`owner`]).
    pub async fn delete(&self, name: &str, zone: &str) -> Result<(), DeleteError> {
        match self {
            Cloud::Gce(gce) => gce.delete(name, zone).await,
            Cloud::Local(local) => Ok(local.delete(name).await?),
        }
    }

    /// One VM as the cloud has it now, or `None` when it does not exist; `zone` unknown: each
    /// zone of the region is asked. No retry: a rate limit goes to the caller (the deleter).
    pub async fn find(
        &self,
        name: &str,
        zone: Option<&str>,
    ) -> Result<Option<CloudVm>, DeleteError> {
        match self {
            Cloud::Gce(gce) => gce.find(name, zone).await,
            Cloud::Local(local) => Ok(local.get(name).await?),
        }
    }

    /// Checks that warmer can work with this cloud (`warmer check`); describes what it found.
    pub async fn check(&self, namespace: &str) -> anyhow::Result<String> {
        match self {
            Cloud::Gce(gce) => gce.check(namespace).await,
            Cloud::Local(_) => Ok("the simulated local cloud: nothing to reach".into()),
        }
    }

    /// Every VM of this deployment that the cloud knows.
    pub async fn list(&self, namespace: &str) -> anyhow::Result<Vec<CloudVm>> {
        match self {
            Cloud::Gce(gce) => gce.list(namespace).await,
            Cloud::Local(local) => local.list().await,
        }
    }

    /// One VM, or `None` if it does not exist.
    pub async fn get(&self, name: &str, zone: &str) -> anyhow::Result<Option<CloudVm>> {
        match self {
            Cloud::Gce(gce) => gce.get(name, zone).await,
            Cloud::Local(local) => local.get(name).await,
        }
    }

    /// Adds or replaces labels on a VM, keeping its others.
    pub async fn set_labels(&self, vm: &CloudVm, labels: &[(&str, String)]) -> anyhow::Result<()> {
        match self {
            Cloud::Gce(gce) => gce.set_labels(vm, labels).await,
            Cloud::Local(local) => local.set_labels(&vm.name, labels).await,
        }
    }

    /// How long a reservation must outlive a boot attempt.
    pub fn boot_budget(&self) -> Duration {
        match self {
            Cloud::Gce(gce) => gce.boot_budget(),
            Cloud::Local(local) => local.boot_budget(),
        }
    }
}

/// A label value: lowercase letters, digits, `-` and `_`, at most 63 characters.
pub fn label_value(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .take(63)
        .collect()
}

impl Cloud {
    /// The cloud `WARMER_PROVIDER` names, checked and ready; the local one keeps its VMs in
    /// `store`.
    pub async fn from_config(
        config: &crate::config::Config,
        store: &crate::store::Store,
    ) -> anyhow::Result<Self> {
        match config.provider {
            crate::config::Provider::Gce => {
                let google = config.require_google()?;
                Ok(Cloud::Gce(
                    gce::Gce::new(google, config.vm_creation_timeout).await?,
                ))
            }
            crate::config::Provider::Local => Ok(Cloud::Local(local::Local::new(
                config.local_boot_delay,
                store.clone(),
            ))),
        }
    }
}
