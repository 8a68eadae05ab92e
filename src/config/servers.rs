//! Where the servers are and how to trust them: RabbitMQ (`WARMER_AMQP_URL`, `CLOUDAMQP_URL`),
//! Redis (`WARMER_REDIS_URL`, `REDIS_URL`, `WARMER_REDIS_CA_FILE`), and the passphrase of the keys
//! that go through them.

use anyhow::{Context as _, bail};

use super::Provider;
use super::parse::{
    GOOD_PASSPHRASE, Strength, is_heroku_redis_host, passphrase_strength, server_url,
};
use super::secret::{Secret, ServerUrl};

/// The broker's URL(s): `WARMER_AMQP_URL`, else Heroku's `CLOUDAMQP_URL`, else the local one.
pub(super) fn amqp_url(
    warmer_amqp_url: Option<String>,
    cloudamqp_url: Option<String>,
) -> anyhow::Result<ServerUrl> {
    let (var, url) = warmer_amqp_url
        .map(|v| ("WARMER_AMQP_URL", v))
        .or(cloudamqp_url.map(|v| ("CLOUDAMQP_URL", v)))
        .unwrap_or(("WARMER_AMQP_URL", "amqp://127.0.0.1:5672/%2f".into()));
    server_url(var, url, &["amqp", "amqps"], true)
}

/// Redis's URL and the certificates to verify it with: `WARMER_REDIS_URL`, else Heroku's
/// `REDIS_URL`, else the local one. Heroku Key-Value Store (Heroku Redis) presents a
/// self-signed certificate and rotates `REDIS_URL` itself: on a dyno, for Heroku's own hosts and
/// nothing else, its certificate goes unverified unless a CA is given (warned about).
pub(super) fn redis(
    warmer_redis_url: Option<String>,
    redis_url: Option<String>,
    ca_file: Option<String>,
    on_dyno: bool,
    warnings: &mut Vec<String>,
) -> anyhow::Result<(ServerUrl, Option<Vec<u8>>)> {
    let ca_pem = match &ca_file {
        None => None,
        Some(path) => {
            let pem = std::fs::read(path.trim())
                .with_context(|| format!("WARMER_REDIS_CA_FILE: cannot read `{}`", path.trim()))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                bail!(
                    "WARMER_REDIS_CA_FILE: `{}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.trim()
                );
            }
            Some(pem)
        }
    };
    let (var, url) = warmer_redis_url
        .map(|v| ("WARMER_REDIS_URL", v))
        .or(redis_url.map(|v| ("REDIS_URL", v)))
        .unwrap_or(("WARMER_REDIS_URL", "redis://127.0.0.1:6379/0".into()));
    let url = if var == "REDIS_URL"
        && on_dyno
        && ca_pem.is_none()
        && url.starts_with("rediss://")
        && !url.contains('#')
        && is_heroku_redis_host(&url)
    {
        warnings.push(
            "REDIS_URL: Heroku Redis's certificate is self-signed, so it is not verified; set WARMER_REDIS_CA_FILE to verify it".into(),
        );
        format!("{url}#insecure")
    } else {
        if url.starts_with("rediss://") && url.ends_with("#insecure") {
            warnings.push(format!(
                "{var} asks not to verify the Redis server's certificate (its insecure fragment): anyone on the path can pose as the server"
            ));
        }
        url
    };
    Ok((server_url(var, url, &["redis", "rediss"], false)?, ca_pem))
}

/// `WARMER_SSH_KEY_PASSPHRASE`: refused for Compute Engine when weak, warned about when short.
pub(super) fn passphrase(
    value: Option<String>,
    provider: Provider,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Option<Secret>> {
    let Some(passphrase) = value.map(Secret::new) else {
        return Ok(None);
    };
    match passphrase_strength(passphrase.expose()) {
        Strength::Weak(why) if provider == Provider::Gce => bail!(
            "WARMER_SSH_KEY_PASSPHRASE is too weak ({why}): it encrypts every VM's SSH key with OpenSSL's legacy, fast key derivation, so anyone who reads Redis can guess it; use at least {GOOD_PASSPHRASE} random characters, e.g. `openssl rand -hex 24`"
        ),
        Strength::Weak(why) | Strength::Short(why) => warnings.push(format!(
            "WARMER_SSH_KEY_PASSPHRASE is weak ({why}): use at least {GOOD_PASSPHRASE} random characters, e.g. `openssl rand -hex 24`"
        )),
        Strength::Good => {}
    }
    Ok(Some(passphrase))
}
