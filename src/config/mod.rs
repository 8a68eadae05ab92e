//! Configuration, read once from the environment and validated before anything starts.
//!
//! Every variable is read here and nowhere else. An invalid value is an error that names the
//! variable and what was expected; secrets (passwords in URLs, the SSH passphrase) are wrapped so
//! that `Debug` and `Display` never print them.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::telemetry::LogFormat;

mod autoscale;
mod google;
mod http;
mod parse;
mod secret;
mod servers;
mod watchdog;

pub use autoscale::ScaleLimits;
pub use google::GoogleConfig;
pub use http::HttpApiConfig;
pub use parse::parse_duration;
pub use secret::{Secret, ServerUrl};
pub(crate) use secret::{percent_decode, percent_encode};
pub use watchdog::{Threshold, WatchdogConfig};

use autoscale::scale_limits;
use google::GoogleVars;
use parse::{duration, http_url, list, number, prefix, server_url};

/// Which cloud boots the VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Gce,
    Local,
}

/// Everything warmer reads from its environment.
#[derive(Clone, Debug)]
pub struct Config {
    pub amqp_url: ServerUrl,
    pub redis_url: ServerUrl,
    /// `WARMER_REDIS_CA_FILE`'s certificates (PEM): a `rediss://` server is verified with them.
    pub redis_ca_pem: Option<Vec<u8>>,
    pub amqp_prefix: String,
    pub redis_namespace: String,
    pub provider: Provider,
    /// `None` for the local provider, or when a process that boots nothing runs without it.
    pub google: Option<GoogleConfig>,
    pub ssh_key_passphrase: Option<Secret>,
    pub vm_creation_timeout: Duration,
    /// How long a boot takes with the local provider (`WARMER_LOCAL_BOOT_DELAY`).
    pub local_boot_delay: Duration,
    pub boot_concurrency: usize,
    /// The fleet cap: ready + booting + handed-out VMs over every pool.
    pub max_vms: u32,
    pub orphan_threshold: u64,
    pub reconcile_interval: Duration,
    pub max_vm_age: Duration,
    pub max_handout_age: Duration,
    pub auth_tokens: Vec<Secret>,
    /// travis-ci/warmer's HTTP API (served when `auth_tokens` is not empty).
    pub http_api: HttpApiConfig,
    pub port: Option<u16>,
    pub hirefire_token: Option<Secret>,
    /// `/metrics` answers only requests with this bearer token.
    pub metrics_token: Option<Secret>,
    /// `/metrics` is served without a token on a dyno too.
    pub metrics_public: bool,
    pub heroku_api_token: Option<Secret>,
    pub heroku_app_name: Option<String>,
    /// Heroku Platform API base (`WARMER_HEROKU_API_URL`; tests point it at a stand-in).
    pub heroku_api_url: String,
    /// How often `warmer autoscale` looks at the queues (`WARMER_AUTOSCALE_INTERVAL`).
    pub autoscale_interval: Duration,
    /// `warmer autoscale`'s bounds for `checkout` (`WARMER_AUTOSCALE_CHECKOUT_*`).
    pub autoscale_checkout: ScaleLimits,
    /// `warmer autoscale`'s bounds for `refill` (`WARMER_AUTOSCALE_REFILL_*`).
    pub autoscale_refill: ScaleLimits,
    pub log_format: LogFormat,
    /// `warmer watchdog`'s settings.
    pub watchdog: WatchdogConfig,
    /// Running on a Heroku dyno (`DYNO` set).
    pub on_heroku: bool,
    /// Which servers `warmer dev` starts itself (`WARMER_DEV_SERVERS`).
    pub dev_servers: DevServers,
    /// What was set but is not read, e.g. a misspelt `WARMER_*` variable: logged at start.
    pub warnings: Vec<String>,
    /// Which defaults were overridden, for [`Config::for_dev`].
    given: Given,
}

/// Variables set in the environment rather than defaulted.
#[derive(Clone, Copy, Debug, Default)]
struct Given {
    /// The variables that set the servers' URLs, if any did.
    amqp_url: Option<&'static str>,
    redis_url: Option<&'static str>,
    prefix: bool,
    namespace: bool,
    provider: bool,
}

/// What `warmer dev` does about servers (`WARMER_DEV_SERVERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevServers {
    /// Start a private one of each server that does not answer at its default URL.
    #[default]
    Auto,
    /// Always start private ones (the machine's own servers are left alone).
    Private,
    /// Never start one.
    External,
}

impl std::str::FromStr for DevServers {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim() {
            "auto" => Ok(DevServers::Auto),
            "private" => Ok(DevServers::Private),
            "external" => Ok(DevServers::External),
            other => Err(format!(
                "`{other}` is not one of auto (start what does not answer), private (always start its own) or external (never start one)"
            )),
        }
    }
}

/// The prefix and namespace of `warmer dev` unless others are given: never production's.
pub const DEV_NAMES: &str = "warmer-dev";
/// `WARMER_MAX_VMS` unless set.
pub const DEFAULT_MAX_VMS: u32 = 200;

/// The prefix and namespace of every other process unless others are given.
const DEFAULT_NAMES: &str = "warmer";

impl Config {
    /// The configuration of `warmer dev`, whose simulated cloud would evict every real VM of
    /// the namespace it runs in as gone: `warmer-dev` as prefix and namespace unless others are
    /// given, and a refusal of anything that looks like production.
    pub fn for_dev(mut self) -> anyhow::Result<Config> {
        if self.given.provider && self.provider == Provider::Gce {
            bail!(
                "warmer dev runs on a simulated cloud and refuses WARMER_PROVIDER=gce: its reconciler would take every real VM of the namespace for gone and delete it. Run checkout, refill, reconcile and web instead, or unset WARMER_PROVIDER"
            );
        }
        if self.on_heroku {
            bail!(
                "warmer dev refuses to run on a Heroku dyno (DYNO is set): it is for one machine, and its simulated cloud would delete the VMs of a real deployment. Run the Procfile's processes instead"
            );
        }
        self.provider = Provider::Local;
        for (var, given, value) in [
            (
                "WARMER_AMQP_PREFIX",
                self.given.prefix,
                &mut self.amqp_prefix,
            ),
            (
                "WARMER_REDIS_NAMESPACE",
                self.given.namespace,
                &mut self.redis_namespace,
            ),
        ] {
            if !given {
                *value = DEV_NAMES.into();
            } else if value == DEFAULT_NAMES {
                bail!(
                    "warmer dev refuses {var}={DEFAULT_NAMES}, production's default: its simulated cloud would delete the VMs of a real deployment there. Unset it (dev uses `{DEV_NAMES}`) or choose another"
                );
            }
        }
        Ok(self)
    }
}

impl Config {
    /// The variables that set the Redis and RabbitMQ URLs (`None`: the default), for `warmer
    /// dev`, which starts no server for a URL given explicitly.
    pub fn given_urls(&self) -> (Option<&'static str>, Option<&'static str>) {
        (self.given.redis_url, self.given.amqp_url)
    }

    /// This configuration on other servers (`warmer dev`'s private ones).
    pub fn on_servers(mut self, redis: Option<&str>, amqp: Option<&str>) -> anyhow::Result<Config> {
        if let Some(url) = redis {
            self.redis_url = server_url("WARMER_REDIS_URL", url.into(), &["redis"], false)?;
        }
        if let Some(url) = amqp {
            self.amqp_url = servers::amqp_url(Some(url.into()), None)?;
        }
        Ok(self)
    }
}

/// The raw variables, as strings; `envy` reads them, [`Config::from_vars`] validates them.
#[derive(Deserialize, Default)]
struct Raw {
    warmer_amqp_url: Option<String>,
    cloudamqp_url: Option<String>,
    warmer_redis_url: Option<String>,
    redis_url: Option<String>,
    warmer_redis_ca_file: Option<String>,
    warmer_amqp_prefix: Option<String>,
    warmer_redis_namespace: Option<String>,
    warmer_provider: Option<String>,
    warmer_google_cloud_project: Option<String>,
    warmer_google_cloud_region: Option<String>,
    warmer_google_cloud_zones: Option<String>,
    warmer_google_cloud_keyfile_json: Option<String>,
    warmer_google_compute_url: Option<String>,
    warmer_image_project: Option<String>,
    warmer_network: Option<String>,
    warmer_subnetwork: Option<String>,
    warmer_ssh_key_passphrase: Option<String>,
    warmer_vm_creation_timeout: Option<String>,
    warmer_local_boot_delay: Option<String>,
    warmer_boot_concurrency: Option<String>,
    warmer_max_vms: Option<String>,
    warmer_orphan_threshold: Option<String>,
    warmer_reconcile_interval: Option<String>,
    warmer_max_vm_age: Option<String>,
    warmer_max_handout_age: Option<String>,
    warmer_auth_tokens: Option<String>,
    warmer_http_timeout: Option<String>,
    warmer_http_checkouts_per_minute: Option<String>,
    warmer_http_concurrency: Option<String>,
    port: Option<String>,
    hirefire_token: Option<String>,
    warmer_metrics_token: Option<String>,
    warmer_metrics_public: Option<String>,
    heroku_api_token: Option<String>,
    heroku_app_name: Option<String>,
    warmer_heroku_api_url: Option<String>,
    warmer_autoscale_interval: Option<String>,
    warmer_autoscale_max: Option<String>,
    warmer_autoscale_checkout_min: Option<String>,
    warmer_autoscale_checkout_max: Option<String>,
    warmer_autoscale_checkout_per_dyno: Option<String>,
    warmer_autoscale_refill_min: Option<String>,
    warmer_autoscale_refill_max: Option<String>,
    warmer_autoscale_refill_per_dyno: Option<String>,
    warmer_log_format: Option<String>,
    warmer_watchdog_threshold: Option<String>,
    warmer_watchdog_restart_window: Option<String>,
    warmer_watchdog_dynos: Option<String>,
    warmer_dev_servers: Option<String>,
    /// Set by Heroku in every dyno.
    dyno: Option<String>,
}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Raw { .. }")
    }
}

/// Variables warmer reads that [`Raw`] does not: `warmer fill --token` reads it through clap.
const READ_ELSEWHERE: [&str; 1] = ["WARMER_TOKEN"];

/// Set by `build.rs` for the build, and by `cargo run` for the run too: not the operator's, so
/// never reported as unknown.
const SET_BY_CARGO: [&str; 1] = ["WARMER_COMMIT"];

impl Raw {
    /// Every variable [`Raw`] reads, upper case, as serde knows its fields.
    fn variables() -> Vec<String> {
        let fields = field_names::<Raw>();
        fields.iter().map(|f| f.to_ascii_uppercase()).collect()
    }
}

/// `WARMER_*` variables that nothing reads, each with the closest known name when one is near.
fn unknown_variables(vars: &HashMap<String, String>) -> Vec<String> {
    let known: Vec<String> = Raw::variables()
        .into_iter()
        .chain(READ_ELSEWHERE.map(String::from))
        .chain(SET_BY_CARGO.map(String::from))
        .collect();
    let mut unknown: Vec<String> = vars
        .keys()
        .filter(|var| var.starts_with("WARMER_") && !known.contains(var))
        .map(|var| {
            let closest = known
                .iter()
                .map(|k| (edit_distance(var, k), k))
                .min()
                .filter(|(distance, _)| *distance <= 3);
            match closest {
                Some((_, k)) => {
                    format!("{var} is not a warmer variable (did you mean {k}?); it is ignored")
                }
                None => format!("{var} is not a warmer variable; it is ignored (see example.env)"),
            }
        })
        .collect();
    unknown.sort();
    unknown
}

/// Levenshtein distance, for suggesting a variable's right spelling.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(previous + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

/// The field names serde uses for `T` (a struct), asked of `T`'s `Deserialize` itself.
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(&'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("only structs"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(serde::de::Error::custom("fields read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields = Fields(&[]);
    let _ = T::deserialize(&mut fields);
    fields.0
}

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let vars: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self::from_vars(vars)
    }

    /// Validates a set of variables (the environment, or a test's map).
    pub fn from_vars(vars: HashMap<String, String>) -> anyhow::Result<Self> {
        let warnings = unknown_variables(&vars);
        let raw: Raw = envy::from_iter(vars.into_iter().filter(|(_, v)| !v.trim().is_empty()))
            .context("reading the environment")?;

        let mut warnings = warnings;
        let given_amqp_url = match (&raw.warmer_amqp_url, &raw.cloudamqp_url) {
            (Some(_), _) => Some("WARMER_AMQP_URL"),
            (None, Some(_)) => Some("CLOUDAMQP_URL"),
            _ => None,
        };
        let given_redis_url = match (&raw.warmer_redis_url, &raw.redis_url) {
            (Some(_), _) => Some("WARMER_REDIS_URL"),
            (None, Some(_)) => Some("REDIS_URL"),
            _ => None,
        };
        let amqp_url = servers::amqp_url(raw.warmer_amqp_url, raw.cloudamqp_url)?;
        let (redis_url, redis_ca_pem) = servers::redis(
            raw.warmer_redis_url,
            raw.redis_url,
            raw.warmer_redis_ca_file,
            raw.dyno.is_some(),
            &mut warnings,
        )?;

        let given = Given {
            amqp_url: given_amqp_url,
            redis_url: given_redis_url,
            prefix: raw.warmer_amqp_prefix.is_some(),
            namespace: raw.warmer_redis_namespace.is_some(),
            provider: raw.warmer_provider.is_some(),
        };
        let amqp_prefix = prefix("WARMER_AMQP_PREFIX", raw.warmer_amqp_prefix)?;
        let redis_namespace = prefix("WARMER_REDIS_NAMESPACE", raw.warmer_redis_namespace)?;
        // It is also the `warmer` label of every VM: label values are lowercase.
        if redis_namespace.len() > 63
            || !redis_namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            bail!(
                "WARMER_REDIS_NAMESPACE must be at most 63 lowercase letters, digits, `-` or `_` (it labels the VMs), got `{redis_namespace}`"
            );
        }

        let provider = match raw.warmer_provider.as_deref().map(str::trim) {
            None | Some("gce") => Provider::Gce,
            Some("local") => Provider::Local,
            Some(other) => bail!("WARMER_PROVIDER must be `gce` or `local`, got `{other}`"),
        };
        if provider == Provider::Local && raw.dyno.is_some() {
            bail!(
                "WARMER_PROVIDER=local is a simulated cloud for one machine and is refused on a Heroku dyno (DYNO is set): its reconciler would take every real VM for gone. Set WARMER_PROVIDER=gce"
            );
        }
        let ssh_key_passphrase =
            servers::passphrase(raw.warmer_ssh_key_passphrase, provider, &mut warnings)?;

        let google = GoogleConfig::read(GoogleVars {
            project: raw.warmer_google_cloud_project,
            region: raw.warmer_google_cloud_region,
            zones: raw.warmer_google_cloud_zones,
            keyfile_json: raw.warmer_google_cloud_keyfile_json,
            compute_url: raw.warmer_google_compute_url,
            image_project: raw.warmer_image_project,
            network: raw.warmer_network,
            subnetwork: raw.warmer_subnetwork,
        })?;

        let log_format = LogFormat::parse(raw.warmer_log_format.as_deref(), raw.dyno.is_some())
            .map_err(anyhow::Error::msg)?;

        let watchdog = WatchdogConfig::read(
            raw.warmer_watchdog_threshold,
            raw.warmer_watchdog_restart_window,
            raw.warmer_watchdog_dynos,
        )?;

        let default_max = number("WARMER_AUTOSCALE_MAX", raw.warmer_autoscale_max, 4)?;

        let dev_servers = match raw.warmer_dev_servers {
            None => DevServers::default(),
            Some(value) => value
                .parse()
                .map_err(|why: String| anyhow::anyhow!("WARMER_DEV_SERVERS: {why}"))?,
        };
        Ok(Config {
            dev_servers,
            log_format,
            watchdog,
            on_heroku: raw.dyno.is_some(),
            given,
            amqp_url,
            redis_url,
            redis_ca_pem,
            amqp_prefix,
            redis_namespace,
            provider,
            google,
            ssh_key_passphrase,
            vm_creation_timeout: duration(
                "WARMER_VM_CREATION_TIMEOUT",
                raw.warmer_vm_creation_timeout,
                90,
            )?,
            local_boot_delay: duration("WARMER_LOCAL_BOOT_DELAY", raw.warmer_local_boot_delay, 3)?,
            boot_concurrency: number("WARMER_BOOT_CONCURRENCY", raw.warmer_boot_concurrency, 8)?,
            max_vms: number("WARMER_MAX_VMS", raw.warmer_max_vms, DEFAULT_MAX_VMS)?,
            orphan_threshold: number("WARMER_ORPHAN_THRESHOLD", raw.warmer_orphan_threshold, 20)?,
            reconcile_interval: duration(
                "WARMER_RECONCILE_INTERVAL",
                raw.warmer_reconcile_interval,
                30,
            )?,
            max_vm_age: duration("WARMER_MAX_VM_AGE", raw.warmer_max_vm_age, 7 * 86_400)?,
            max_handout_age: duration(
                "WARMER_MAX_HANDOUT_AGE",
                raw.warmer_max_handout_age,
                6 * 3_600,
            )?,
            auth_tokens: raw
                .warmer_auth_tokens
                .map(|t| list(&t).into_iter().map(Secret::new).collect())
                .unwrap_or_default(),
            http_api: HttpApiConfig::read(
                raw.warmer_http_timeout,
                raw.warmer_http_checkouts_per_minute,
                raw.warmer_http_concurrency,
            )?,
            port: raw
                .port
                .map(|p| {
                    p.trim()
                        .parse()
                        .map_err(|_| anyhow::anyhow!("PORT must be a TCP port number, got `{p}`"))
                })
                .transpose()?,
            hirefire_token: raw.hirefire_token.map(Secret::new),
            metrics_token: raw.warmer_metrics_token.map(Secret::new),
            metrics_public: match raw.warmer_metrics_public.as_deref().map(str::trim) {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    bail!("WARMER_METRICS_PUBLIC must be `true` or `false`, got `{other}`")
                }
            },
            heroku_api_token: raw.heroku_api_token.map(Secret::new),
            heroku_app_name: raw.heroku_app_name,
            heroku_api_url: http_url(
                "WARMER_HEROKU_API_URL",
                raw.warmer_heroku_api_url,
                "https://api.heroku.com",
            )?,
            autoscale_interval: duration(
                "WARMER_AUTOSCALE_INTERVAL",
                raw.warmer_autoscale_interval,
                30,
            )?,
            autoscale_checkout: scale_limits(
                "CHECKOUT",
                1,
                default_max,
                [
                    raw.warmer_autoscale_checkout_min,
                    raw.warmer_autoscale_checkout_max,
                    raw.warmer_autoscale_checkout_per_dyno,
                ],
            )?,
            autoscale_refill: scale_limits(
                "REFILL",
                0,
                default_max,
                [
                    raw.warmer_autoscale_refill_min,
                    raw.warmer_autoscale_refill_max,
                    raw.warmer_autoscale_refill_per_dyno,
                ],
            )?,
            warnings,
        })
    }

    /// Every secret value in the configuration, for the log redactor: passwords of both URLs
    /// (as written and percent-decoded), tokens, the SSH passphrase, the service account key.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        for url in [&self.amqp_url, &self.redis_url] {
            for password in url.passwords() {
                secrets.push(percent_decode(&password));
                secrets.push(password);
            }
        }
        let tokens = [
            &self.ssh_key_passphrase,
            &self.hirefire_token,
            &self.heroku_api_token,
            &self.metrics_token,
        ];
        secrets.extend(tokens.into_iter().flatten().map(|s| s.expose().to_string()));
        secrets.extend(self.auth_tokens.iter().map(|s| s.expose().to_string()));
        if let Some(keyfile) = self.google.as_ref().and_then(|g| g.keyfile_json.as_ref()) {
            let key: serde_json::Value = serde_json::from_str(keyfile.expose()).unwrap_or_default();
            for field in ["private_key", "private_key_id"] {
                if let Some(value) = key[field].as_str() {
                    secrets.push(value.to_string());
                    // As it appears inside the JSON text, newlines escaped.
                    secrets.push(value.replace('\n', "\\n"));
                }
            }
        }
        secrets
    }

    /// The broker user warmer's processes connect as (RabbitMQ's default, `guest`, when the URL
    /// names none): the `user_id` of the messages they publish, which the broker vouches for.
    pub fn amqp_user(&self) -> String {
        self.amqp_url.user().unwrap_or_else(|| "guest".into())
    }

    /// The broker's virtual host, from the AMQP URL's path (`/` when it names none).
    pub fn amqp_vhost(&self) -> String {
        let first = self.amqp_url.addresses().into_iter().next();
        let url = first.as_ref().map_or("", ServerUrl::expose);
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        let after_host = after_scheme
            .rsplit_once('@')
            .map_or(after_scheme, |(_, h)| h);
        let path = after_host.split_once('/').map_or("", |(_, path)| path);
        let path = path.split(['?', '#']).next().unwrap_or_default();
        if path.is_empty() {
            "/".into()
        } else {
            percent_decode(path)
        }
    }

    /// Checks what the `gce` provider needs; called by the processes that boot VMs.
    pub fn require_google(&self) -> anyhow::Result<&GoogleConfig> {
        let Some(google) = &self.google else {
            bail!(
                "WARMER_GOOGLE_CLOUD_PROJECT and WARMER_GOOGLE_CLOUD_REGION must be set for WARMER_PROVIDER=gce"
            );
        };
        Ok(google)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dev_gets_names_of_its_own_and_refuses_what_looks_like_production() {
        let dev = Config::from_vars(vars(&[])).unwrap().for_dev().unwrap();
        assert_eq!(
            (dev.amqp_prefix.as_str(), dev.redis_namespace.as_str()),
            (DEV_NAMES, DEV_NAMES)
        );
        let mine = vars(&[
            ("WARMER_AMQP_PREFIX", "mine"),
            ("WARMER_REDIS_NAMESPACE", "mine"),
        ]);
        let dev = Config::from_vars(mine).unwrap().for_dev().unwrap();
        assert_eq!(
            (dev.amqp_prefix.as_str(), dev.redis_namespace.as_str()),
            ("mine", "mine")
        );
        for (setting, named) in [
            (vec![("WARMER_PROVIDER", "gce")], "WARMER_PROVIDER=gce"),
            (vec![("DYNO", "web.1")], "DYNO is set"),
            (
                vec![("WARMER_REDIS_NAMESPACE", "warmer")],
                "WARMER_REDIS_NAMESPACE=warmer",
            ),
            (
                vec![("WARMER_AMQP_PREFIX", "warmer")],
                "WARMER_AMQP_PREFIX=warmer",
            ),
        ] {
            let config = Config::from_vars(vars(&setting)).unwrap();
            let error = config.for_dev().unwrap_err().to_string();
            assert!(error.contains(named), "{setting:?}: {error}");
        }
        let local = vars(&[("WARMER_PROVIDER", "local")]);
        assert!(Config::from_vars(local).unwrap().for_dev().is_ok());
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(config.amqp_url.expose(), "amqp://127.0.0.1:5672/%2f");
        assert_eq!(config.redis_url.expose(), "redis://127.0.0.1:6379/0");
        assert_eq!(config.amqp_prefix, "warmer");
        assert_eq!(config.redis_namespace, "warmer");
        assert_eq!(config.provider, Provider::Gce);
        assert_eq!(config.boot_concurrency, 8);
        assert_eq!(config.max_vm_age, Duration::from_secs(7 * 86_400));
        assert_eq!(config.max_handout_age, Duration::from_secs(6 * 3_600));
    }

    #[test]
    fn heroku_variables_are_fallbacks_and_warmer_variables_win() {
        let config = Config::from_vars(vars(&[
            ("CLOUDAMQP_URL", "amqps://u:p@cloudamqp/vhost"),
            ("REDIS_URL", "rediss://:pw@heroku:6380#insecure"),
        ]))
        .unwrap();
        assert_eq!(config.amqp_url.expose(), "amqps://u:p@cloudamqp/vhost");
        assert_eq!(
            config.redis_url.expose(),
            "rediss://:pw@heroku:6380#insecure"
        );
        let heroku = "rediss://:pw@ec2-3-222-1-2.compute-1.amazonaws.com:13180";
        let on_dyno =
            |url: &str| Config::from_vars(vars(&[("REDIS_URL", url), ("DYNO", "web.1")])).unwrap();
        let config = on_dyno(heroku);
        assert_eq!(
            config.redis_url.expose(),
            format!("{heroku}#insecure"),
            "Heroku Redis's self-signed certificate is accepted, on a dyno"
        );
        assert!(config.warnings.iter().any(|w| w.contains("not verified")));
        // Anywhere else, and for any other host, the certificate is verified.
        let off_dyno = Config::from_vars(vars(&[("REDIS_URL", heroku)])).unwrap();
        assert_eq!(off_dyno.redis_url.expose(), heroku);
        let attacker = "rediss://:pw@redis.attacker.example:6380";
        assert_eq!(on_dyno(attacker).redis_url.expose(), attacker);
        let hidden = "rediss://:pw@redis.attacker.example:6380/?x=.amazonaws.com";
        assert_eq!(on_dyno(hidden).redis_url.expose(), hidden);
        let config = Config::from_vars(vars(&[
            ("CLOUDAMQP_URL", "amqps://u:p@cloudamqp/vhost"),
            ("WARMER_AMQP_URL", "amqp://mine/"),
        ]))
        .unwrap();
        assert_eq!(config.amqp_url.expose(), "amqp://mine/");
    }

    #[test]
    fn weak_passphrases_are_refused_for_compute_engine_and_short_ones_warned_about() {
        let gce = |passphrase: &str| {
            Config::from_vars(vars(&[
                ("WARMER_SSH_KEY_PASSPHRASE", passphrase),
                ("WARMER_PROVIDER", "gce"),
            ]))
        };
        for weak in [
            "FIXME_WAT",
            "secret",
            "password123",
            "kq3x",
            "aaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            let error = gce(weak).unwrap_err().to_string();
            assert!(
                error.contains("WARMER_SSH_KEY_PASSPHRASE is too weak"),
                "{weak}: {error}"
            );
            assert!(
                !error.contains(weak),
                "the passphrase is not printed: {error}"
            );
        }
        let short = gce("correct horse").unwrap();
        assert!(short.warnings.iter().any(|w| w.contains("weak")));
        let good = gce("6f1e0c9a2b7d44e3a8c5f0b1d2e3f4a5").unwrap();
        assert!(good.warnings.is_empty(), "{:?}", good.warnings);
        // The local provider (a simulated cloud) only warns.
        let local = Config::from_vars(vars(&[
            ("WARMER_SSH_KEY_PASSPHRASE", "secret"),
            ("WARMER_PROVIDER", "local"),
        ]))
        .unwrap();
        assert!(local.warnings.iter().any(|w| w.contains("weak")));
    }

    #[test]
    fn an_invalid_value_names_its_variable() {
        let cases = [
            ("WARMER_BOOT_CONCURRENCY", "lots"),
            ("WARMER_BOOT_CONCURRENCY", "0"),
            ("WARMER_MAX_VM_AGE", "7 weeks"),
            ("WARMER_PROVIDER", "aws"),
            ("WARMER_AMQP_URL", "http://rabbit"),
            ("WARMER_REDIS_URL", "127.0.0.1:6379"),
            ("WARMER_AMQP_PREFIX", "has space"),
            ("WARMER_REDIS_NAMESPACE", "Warmer.prod"),
            ("PORT", "http"),
            ("WARMER_AUTOSCALE_MAX", "0"),
            ("WARMER_AUTOSCALE_INTERVAL", "often"),
            ("WARMER_HEROKU_API_URL", "api.heroku.com"),
        ];
        for (var, value) in cases {
            let err = Config::from_vars(vars(&[(var, value)])).unwrap_err();
            assert!(
                err.to_string().contains(var),
                "error for {var}={value} does not name it: {err}"
            );
        }
        let err = Config::from_vars(vars(&[("WARMER_GOOGLE_CLOUD_PROJECT", "p")])).unwrap_err();
        assert!(err.to_string().contains("WARMER_GOOGLE_CLOUD_REGION"));
    }

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("6h"), Some(Duration::from_secs(21_600)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("0"), None);
        assert_eq!(parse_duration("5 m"), None);
        assert_eq!(parse_duration("-5"), None);
        assert_eq!(parse_duration("99999999999999999999d"), None);
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1s500ms"),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("0.25h"), Some(Duration::from_secs(900)));
        for refused in [
            "0s", "0h0m", "30m1h", "1h1h", "1.s", ".5s", "1.2.3s", "0.0001ms", "1e3s", "h", "1x",
            "1h 30m", "",
        ] {
            assert_eq!(parse_duration(refused), None, "{refused}");
        }
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let config = Config::from_vars(vars(&[
            ("WARMER_AMQP_URL", "amqps://user:hunter2@host/vh"),
            ("WARMER_REDIS_URL", "rediss://:swordfish@host:6380#insecure"),
            ("WARMER_SSH_KEY_PASSPHRASE", "correct-horse"),
            ("WARMER_AUTH_TOKENS", "tok-a,tok-b"),
            ("HEROKU_API_TOKEN", "heroku-secret"),
        ]))
        .unwrap();
        let printed = format!("{config:?} {} {}", config.amqp_url, config.redis_url);
        for secret in [
            "hunter2",
            "swordfish",
            "correct-horse",
            "tok-a",
            "heroku-secret",
        ] {
            assert!(!printed.contains(secret), "{secret} leaked: {printed}");
        }
        assert!(printed.contains("amqps://user:***@host/vh"));
        assert!(printed.contains("rediss://:***@host:6380"));
        assert!(!printed.contains("#insecure"));
    }

    #[test]
    fn a_misspelt_variable_is_reported_with_the_name_meant() {
        let config = Config::from_vars(vars(&[
            ("WARMER_RECONCILE_INTERVALL", "10s"),
            ("WARMER_SOMETHING_ELSE", "1"),
            ("WARMER_TOKEN", "t"),
            // What `cargo run` sets from build.rs: no warning on `cargo run -- dev`.
            ("WARMER_COMMIT", "abc123"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(
            config.warnings,
            [
                "WARMER_RECONCILE_INTERVALL is not a warmer variable (did you mean WARMER_RECONCILE_INTERVAL?); it is ignored",
                "WARMER_SOMETHING_ELSE is not a warmer variable; it is ignored (see example.env)",
            ]
        );
        assert_eq!(config.reconcile_interval, Duration::from_secs(30));
    }

    #[test]
    fn example_env_documents_exactly_the_variables_warmer_reads() {
        let documented: std::collections::BTreeSet<String> = include_str!("../../example.env")
            .lines()
            .map(|line| line.trim_start_matches('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(var, _)| var.to_string())
            .filter(|var| {
                !var.is_empty() && var.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            })
            .collect();
        let read: std::collections::BTreeSet<String> = Raw::variables()
            .into_iter()
            .chain(READ_ELSEWHERE.map(String::from))
            .chain(["RUST_LOG".to_string()])
            .collect();
        assert_eq!(documented, read);
    }

    #[test]
    fn autoscale_bounds_are_per_type_with_refill_alone_allowed_zero() {
        let config = Config::from_vars(vars(&[
            ("WARMER_AUTOSCALE_MAX", "6"),
            ("WARMER_AUTOSCALE_REFILL_MIN", "0"),
            ("WARMER_AUTOSCALE_REFILL_PER_DYNO", "3"),
            ("WARMER_AUTOSCALE_CHECKOUT_MAX", "10"),
        ]))
        .unwrap();
        assert_eq!(
            (config.autoscale_checkout, config.autoscale_refill),
            (
                ScaleLimits {
                    min: 1,
                    max: 10,
                    per_dyno: None
                },
                ScaleLimits {
                    min: 0,
                    max: 6,
                    per_dyno: Some(3)
                }
            )
        );
        for (var, value, named) in [
            ("WARMER_AUTOSCALE_CHECKOUT_MIN", "0", "at least 1"),
            (
                "WARMER_AUTOSCALE_REFILL_MIN",
                "5",
                "above WARMER_AUTOSCALE_REFILL_MAX",
            ),
            (
                "WARMER_AUTOSCALE_REFILL_MIN",
                "-1",
                "WARMER_AUTOSCALE_REFILL_MIN must be",
            ),
            (
                "WARMER_AUTOSCALE_CHECKOUT_PER_DYNO",
                "0",
                "WARMER_AUTOSCALE_CHECKOUT_PER_DYNO",
            ),
        ] {
            let error = Config::from_vars(vars(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{var}={value}: {error}");
        }
    }

    #[test]
    fn app_json_sets_only_variables_warmer_reads_and_runs_only_procfile_processes() {
        let app: serde_json::Value = serde_json::from_str(include_str!("../../app.json")).unwrap();
        let read: Vec<String> = Raw::variables()
            .into_iter()
            .chain(READ_ELSEWHERE.map(String::from))
            .collect();
        for var in app["env"].as_object().unwrap().keys() {
            assert!(
                read.contains(var),
                "app.json sets {var}, which warmer does not read"
            );
        }
        let procfile: Vec<(&str, &str)> = include_str!("../../Procfile")
            .lines()
            .filter_map(|line| line.split_once(": "))
            .collect();
        for process in app["formation"].as_object().unwrap().keys() {
            assert!(
                procfile.iter().any(|(p, _)| p == process),
                "app.json scales {process}, which the Procfile does not run"
            );
        }
        for (process, command) in procfile {
            let name = if process == "release" {
                "check"
            } else {
                process
            };
            assert_eq!(
                command,
                format!("./target/release/warmer {name}"),
                "{process}"
            );
        }
    }

    #[test]
    fn every_secret_is_listed_for_the_log_redactor() {
        let config = Config::from_vars(vars(&[
            ("WARMER_AMQP_URL", "amqps://user:p%40ss%2Fword@host/vh"),
            ("WARMER_REDIS_URL", "rediss://:swordfish@host:6380"),
            ("WARMER_SSH_KEY_PASSPHRASE", "correct-horse"),
            ("WARMER_AUTH_TOKENS", "tok-a,tok-b"),
            ("HIREFIRE_TOKEN", "hire-me"),
            ("HEROKU_API_TOKEN", "heroku-secret"),
        ]))
        .unwrap();
        let secrets = config.secrets();
        for secret in [
            "p@ss/word",
            "p%40ss%2Fword",
            "swordfish",
            "correct-horse",
            "tok-a",
            "tok-b",
            "hire-me",
            "heroku-secret",
        ] {
            assert!(secrets.iter().any(|s| s == secret), "{secret} missing");
        }
        assert_eq!(percent_decode("a%2"), "a%2", "a broken escape is kept");
    }

    #[test]
    fn a_password_with_a_raw_slash_or_at_is_still_hidden() {
        for (url, shown) in [
            ("amqp://u:pa/ss@h/v", "amqp://u:***@h/v"),
            ("amqp://u:p@ss@h:5672/%2f", "amqp://u:***@h:5672/%2f"),
            ("redis://h:6379/0", "redis://h:6379/0"),
        ] {
            let url =
                parse::server_url("WARMER_AMQP_URL", url.into(), &["amqp", "redis"], true).unwrap();
            assert_eq!(url.redacted(), shown);
        }
    }

    #[test]
    fn an_amqp_url_may_list_the_nodes_of_a_cluster() {
        let config = Config::from_vars(vars(&[(
            "WARMER_AMQP_URL",
            "amqps://u:p,w@n1.example:5671/v, amqps://u:q@n2.example:5671/v",
        )]))
        .unwrap();
        let addresses: Vec<String> = config
            .amqp_url
            .addresses()
            .iter()
            .map(|a| a.expose().to_string())
            .collect();
        assert_eq!(
            addresses,
            [
                "amqps://u:p,w@n1.example:5671/v",
                "amqps://u:q@n2.example:5671/v"
            ],
            "a raw comma in a password does not split"
        );
        assert_eq!(
            config.amqp_url.redacted(),
            "amqps://u:***@n1.example:5671/v,amqps://u:***@n2.example:5671/v"
        );
        assert_eq!(config.amqp_user(), "u");
        let secrets = config.secrets();
        assert!(secrets.contains(&"p,w".to_string()) && secrets.contains(&"q".to_string()));
        for (var, value, error) in [
            ("WARMER_AMQP_URL", "amqp://a/,http://b/", "address 2"),
            (
                "WARMER_REDIS_URL",
                "redis://a/0,redis://b/0",
                "give one URL",
            ),
        ] {
            let refused = Config::from_vars(vars(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains(var) && refused.contains(error),
                "{refused}"
            );
        }
    }
}
