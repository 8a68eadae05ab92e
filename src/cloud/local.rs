//! A simulated cloud for trying warmer on one machine (`WARMER_PROVIDER=local`, `warmer dev`):
//! boots take `WARMER_LOCAL_BOOT_DELAY`, VMs get distinct private addresses in 10.0.0.0/8, and
//! the keys are real. Nothing runs: the VMs exist only in this process's memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BootError, Booted, CloudVm, VmSpec};

/// The simulated cloud.
#[derive(Clone)]
pub struct Local {
    delay: Duration,
    next_address: Arc<AtomicU32>,
    vms: Arc<Mutex<BTreeMap<String, CloudVm>>>,
}

impl Local {
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            next_address: Arc::new(AtomicU32::new(1)),
            vms: Arc::default(),
        }
    }

    pub async fn boot(&self, spec: &VmSpec) -> Result<Booted, BootError> {
        tokio::time::sleep(self.delay).await;
        let n = self.next_address.fetch_add(1, Ordering::Relaxed);
        let [_, b, c, d] = n.to_be_bytes();
        let zone = "local-a".to_string();
        if let Ok(mut vms) = self.vms.lock() {
            vms.insert(
                spec.name.clone(),
                CloudVm {
                    name: spec.name.clone(),
                    zone: zone.clone(),
                    status: "RUNNING".into(),
                    labels: [
                        ("warmth".to_string(), "warmed".to_string()),
                        (
                            super::DEPLOYMENT.to_string(),
                            super::label_value(&spec.namespace),
                        ),
                    ]
                    .into(),
                    label_fingerprint: None,
                },
            );
        }
        Ok(Booted {
            zone,
            ip: format!("10.{b}.{c}.{d}"),
            public_ip: spec
                .pool
                .public_ip
                .then(|| format!("192.0.2.{}", n % 254 + 1)),
        })
    }

    pub fn delete(&self, name: &str) {
        if let Ok(mut vms) = self.vms.lock() {
            vms.remove(name);
        }
    }

    pub fn list(&self) -> Vec<CloudVm> {
        self.vms
            .lock()
            .map(|vms| vms.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, name: &str) -> Option<CloudVm> {
        self.vms.lock().ok()?.get(name).cloned()
    }

    pub fn set_labels(&self, name: &str, labels: &[(&str, String)]) {
        if let Ok(mut vms) = self.vms.lock()
            && let Some(vm) = vms.get_mut(name)
        {
            for (key, value) in labels {
                vm.labels.insert(key.to_string(), value.clone());
            }
        }
    }

    pub fn boot_budget(&self) -> Duration {
        self.delay + Duration::from_secs(30)
    }
}
