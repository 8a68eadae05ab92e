//! The Compute Engine provider's settings (`WARMER_GOOGLE_*`, `WARMER_IMAGE_PROJECT`,
//! `WARMER_NETWORK`, `WARMER_SUBNETWORK`).

use anyhow::bail;

use super::parse::{http_url, list};
use super::secret::Secret;

/// Settings for the Compute Engine provider; present only when `WARMER_PROVIDER=gce` and valid.
#[derive(Clone, Debug)]
pub struct GoogleConfig {
    pub project: String,
    pub region: String,
    pub zones: Vec<String>,
    pub keyfile_json: Option<Secret>,
    pub compute_url: String,
    pub image_project: String,
    pub network: String,
    pub subnetwork: Option<String>,
}

/// The variables [`GoogleConfig::read`] reads, as given.
pub(super) struct GoogleVars {
    pub project: Option<String>,
    pub region: Option<String>,
    pub zones: Option<String>,
    pub keyfile_json: Option<String>,
    pub compute_url: Option<String>,
    pub image_project: Option<String>,
    pub network: Option<String>,
    pub subnetwork: Option<String>,
}

impl GoogleConfig {
    /// `None` without a project (a process that boots nothing, or the local provider).
    pub(super) fn read(vars: GoogleVars) -> anyhow::Result<Option<Self>> {
        let Some(project) = vars.project else {
            return Ok(None);
        };
        let project = project.trim().to_string();
        let Some(region) = vars.region.map(|r| r.trim().to_string()) else {
            bail!(
                "WARMER_GOOGLE_CLOUD_REGION must be set when WARMER_GOOGLE_CLOUD_PROJECT is (e.g. us-central1)"
            );
        };
        let zones = vars.zones.map(|z| list(&z)).unwrap_or_default();
        for zone in &zones {
            if !crate::pool::is_gce_name(zone) {
                bail!(
                    "WARMER_GOOGLE_CLOUD_ZONES: `{zone}` is not a zone name (e.g. us-central1-c)"
                );
            }
        }
        let compute_url = http_url(
            "WARMER_GOOGLE_COMPUTE_URL",
            vars.compute_url,
            "https://compute.googleapis.com/compute/v1",
        )?;
        if let Some(json) = &vars.keyfile_json {
            let parsed: serde_json::Value = serde_json::from_str(json).map_err(|e| {
                anyhow::anyhow!(
                    "WARMER_GOOGLE_CLOUD_KEYFILE_JSON is not valid JSON (line {}, column {}); paste the service account's key file",
                    e.line(),
                    e.column()
                )
            })?;
            if parsed.get("private_key").is_none() || parsed.get("client_email").is_none() {
                bail!(
                    "WARMER_GOOGLE_CLOUD_KEYFILE_JSON must be a service account key with `private_key` and `client_email`"
                );
            }
        }
        Ok(Some(GoogleConfig {
            image_project: vars.image_project.unwrap_or_else(|| project.clone()),
            project,
            region,
            zones,
            keyfile_json: vars.keyfile_json.map(Secret::new),
            compute_url,
            network: vars.network.unwrap_or_else(|| "default".into()),
            subnetwork: vars.subnetwork,
        }))
    }
}
