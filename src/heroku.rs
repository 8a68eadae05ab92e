//! The Heroku Platform API, as much of it as warmer needs: the app's formation and scaling it
//! (`warmer autoscale`), log sessions and dyno restarts (`warmer watchdog`).
//!
//! Every request sends `Accept: application/vnd.heroku+json; version=3` and the token as a
//! bearer token. The token never appears in logs, errors or `Debug`. The API allows 4,500
//! requests an hour per account, shared with every other tool using the token; a 429 is
//! reported as [`HerokuError::RateLimited`] with what `RateLimit-Remaining` said.

use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Config, Secret};
use crate::process::ProcessType;

const ACCEPT: &str = "application/vnd.heroku+json; version=3";
/// Below this many requests left in the hour, a warning is logged.
const LOW_RATE_LIMIT: u32 = 200;

/// A transport error with its causes (reqwest's own message omits them), without the URL.
fn transport(error: reqwest::Error) -> HerokuError {
    HerokuError::Transport(format!("{:#}", anyhow::Error::new(error.without_url())))
}

/// One process type of the app's formation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Formation {
    #[serde(rename = "type")]
    pub process: String,
    pub quantity: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum HerokuError {
    #[error(
        "the Heroku API rejected HEROKU_API_TOKEN (HTTP {status}, {id}): {message}; check the token and its access to HEROKU_APP_NAME"
    )]
    Unauthorized {
        status: u16,
        id: String,
        message: String,
    },
    #[error(
        "Heroku API rate limit reached (RateLimit-Remaining: {remaining}); the limit is shared by every tool using this token"
    )]
    RateLimited {
        remaining: String,
        /// From `Retry-After`, when the API sent one.
        retry_after: Option<Duration>,
    },
    #[error("the Heroku API refused the request (HTTP {status}, {id}): {message}")]
    Refused {
        status: u16,
        id: String,
        message: String,
    },
    #[error("cannot reach the Heroku API: {0}")]
    Transport(String),
}

/// A client for one app.
pub struct Heroku {
    http: reqwest::Client,
    /// `<api>/apps/<app>`.
    app_url: String,
    token: Secret,
}

impl std::fmt::Debug for Heroku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heroku")
            .field("app_url", &self.app_url)
            .finish_non_exhaustive()
    }
}

impl Heroku {
    /// Needs `HEROKU_API_TOKEN` and `HEROKU_APP_NAME`; `process` is the command that needs them.
    pub fn from_config(config: &Config, process: ProcessType) -> anyhow::Result<Self> {
        let Some(token) = config.heroku_api_token.clone() else {
            anyhow::bail!(
                "HEROKU_API_TOKEN must be set for `warmer {process}` (an API token with access to the app, e.g. from `heroku authorizations:create`)"
            );
        };
        let Some(app) = config.heroku_app_name.as_deref().map(str::trim) else {
            anyhow::bail!("HEROKU_APP_NAME must be set for `warmer {process}` (the app's name)");
        };
        // App names are lowercase letters, digits and dashes; an app id is a UUID.
        if app.is_empty()
            || !app
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            anyhow::bail!(
                "HEROKU_APP_NAME must be an app name or id (lowercase letters, digits, `-`), got `{app}`"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("warmer/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            app_url: format!("{}/apps/{app}", config.heroku_api_url),
            token,
        })
    }

    /// The app's process types and how many dynos each runs.
    pub async fn formation(&self) -> Result<Vec<Formation>, HerokuError> {
        let url = format!("{}/formation", self.app_url);
        self.send(self.http.get(url)).await
    }

    /// Sets the quantity of each `(process type, quantity)` in one request.
    pub async fn scale(&self, updates: &[Formation]) -> Result<Vec<Formation>, HerokuError> {
        let url = format!("{}/formation", self.app_url);
        let body = json!({"updates": updates});
        self.send(self.http.patch(url).json(&body)).await
    }

    /// Opens a log session that follows the app's system logs (runtime metrics, R14):
    /// `POST /apps/{app}/log-sessions`. Returns the `logplex_url` to stream, which carries
    /// its own credentials: a secret, never logged.
    pub async fn log_session(&self) -> Result<Secret, HerokuError> {
        #[derive(Deserialize)]
        struct LogSession {
            logplex_url: String,
        }
        let url = format!("{}/log-sessions", self.app_url);
        let body = json!({"tail": true, "source": "heroku"});
        let session: LogSession = self.send(self.http.post(url).json(&body)).await?;
        Ok(Secret::new(session.logplex_url))
    }

    /// Restarts one dyno (`DELETE /apps/{app}/dynos/{dyno}`); Heroku starts its replacement.
    pub async fn restart(&self, dyno: &str) -> Result<(), HerokuError> {
        let url = format!("{}/dynos/{dyno}", self.app_url);
        let _: serde_json::Value = self.send(self.http.delete(url)).await?;
        Ok(())
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, HerokuError> {
        let response = request
            .header(reqwest::header::ACCEPT, ACCEPT)
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let remaining = header("ratelimit-remaining");
        if status.is_success() {
            if let Some(left) = remaining.as_deref().and_then(|r| r.parse::<u32>().ok())
                && left < LOW_RATE_LIMIT
            {
                tracing::warn!(
                    remaining = left,
                    "Heroku API rate limit nearly used up (shared by every tool using HEROKU_API_TOKEN)"
                );
            }
            // A restart answers 202 with `{}`; an empty body reads as `null`.
            let body = response.bytes().await.map_err(transport)?;
            let body: &[u8] = if body.is_empty() { b"null" } else { &body };
            return serde_json::from_slice(body).map_err(|e| {
                HerokuError::Transport(format!("the Heroku API answered unreadable JSON: {e}"))
            });
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = header("retry-after")
                .and_then(|r| r.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(3_600)));
            return Err(HerokuError::RateLimited {
                remaining: remaining.unwrap_or_else(|| "?".into()),
                retry_after,
            });
        }
        // Heroku's errors are `{"id": "...", "message": "..."}`.
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let field = |name: &str| {
            body[name]
                .as_str()
                .unwrap_or("unknown")
                .chars()
                .take(300)
                .collect::<String>()
        };
        let (status, id, message) = (status.as_u16(), field("id"), field("message"));
        Err(if status == 401 || status == 403 {
            HerokuError::Unauthorized {
                status,
                id,
                message,
            }
        } else {
            HerokuError::Refused {
                status,
                id,
                message,
            }
        })
    }
}
