//! A simulated cloud for trying warmer on one machine (`WARMER_PROVIDER=local`, `warmer dev`,
//! `heroku local`): boots take `WARMER_LOCAL_BOOT_DELAY`, VMs get distinct private addresses in
//! 10.0.0.0/8, and the keys are real. Nothing runs: the VMs are records in Redis
//! (`<ns>:_local_cloud`, name → VM), so every process of the deployment — refill booting,
//! reconcile listing, each in its own process — sees the same cloud.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BootError, Booted, CloudVm, VmSpec};
use crate::store::Store;

/// A simulated VM as stored.
#[derive(Serialize, Deserialize)]
struct Stored {
    zone: String,
    labels: BTreeMap<String, String>,
}

/// The simulated cloud of one deployment.
#[derive(Clone)]
pub struct Local {
    delay: Duration,
    store: Store,
}

impl Local {
    pub fn new(delay: Duration, store: Store) -> Self {
        Self { delay, store }
    }

    pub async fn boot(&self, spec: &VmSpec) -> Result<Booted, BootError> {
        tokio::time::sleep(self.delay).await;
        let not_created =
            |e: crate::store::Error| BootError::NotCreated(format!("simulated cloud: {e}"));
        let n = self.store.local_address().await.map_err(not_created)?;
        let [_, b, c, d] = n.to_be_bytes();
        let zone = "local-a".to_string();
        let vm = Stored {
            zone: zone.clone(),
            labels: [
                ("warmth".to_string(), "warmed".to_string()),
                (
                    super::DEPLOYMENT.to_string(),
                    super::label_value(&spec.namespace),
                ),
            ]
            .into(),
        };
        let vm = serde_json::to_string(&vm).map_err(|e| BootError::NotCreated(e.to_string()))?;
        self.store
            .local_put(&spec.name, &vm)
            .await
            .map_err(not_created)?;
        Ok(Booted {
            zone,
            ip: format!("10.{b}.{c}.{d}"),
            public_ip: spec
                .pool
                .public_ip
                .then(|| format!("192.0.2.{}", n % 254 + 1)),
        })
    }

    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        Ok(self.store.local_remove(name).await?)
    }

    pub async fn list(&self) -> anyhow::Result<Vec<CloudVm>> {
        let all = self.store.local_all().await?;
        Ok(all
            .into_iter()
            .filter_map(|(name, vm)| cloud_vm(name, &vm))
            .collect())
    }

    pub async fn get(&self, name: &str) -> anyhow::Result<Option<CloudVm>> {
        let vm = self.store.local_get(name).await?;
        Ok(vm.and_then(|vm| cloud_vm(name.to_string(), &vm)))
    }

    pub async fn set_labels(&self, name: &str, labels: &[(&str, String)]) -> anyhow::Result<()> {
        let Some(vm) = self.store.local_get(name).await? else {
            return Ok(());
        };
        let mut vm: Stored = serde_json::from_str(&vm)?;
        for (key, value) in labels {
            vm.labels.insert(key.to_string(), value.clone());
        }
        self.store
            .local_put(name, &serde_json::to_string(&vm)?)
            .await?;
        Ok(())
    }

    pub fn boot_budget(&self) -> Duration {
        self.delay + Duration::from_secs(30)
    }
}

/// A stored VM as the cloud lists it; `None` for the counter or a record it cannot read.
fn cloud_vm(name: String, stored: &str) -> Option<CloudVm> {
    let stored: Stored = serde_json::from_str(stored).ok()?;
    Some(CloudVm {
        name,
        zone: stored.zone,
        status: "RUNNING".into(),
        labels: stored.labels,
        label_fingerprint: None,
    })
}
