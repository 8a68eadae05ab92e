//! What every process needs, built once from the configuration and passed explicitly.

use std::sync::Arc;

use crate::config::Config;
use crate::names::Names;
use crate::store::Store;

/// Configuration, names and the Redis store; cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub names: Names,
    pub store: Store,
}

impl Context {
    /// Events for this deployment, the notable ones also kept in Redis.
    pub fn events(&self) -> crate::events::Events {
        crate::events::Events::new(self.names.clone()).with_log(self.store.event_log())
    }

    /// Connects to Redis and derives every name from the configuration.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        // OpenSSL set up without its exit handler before any of its functions runs: a
        // function such as SHA-256 that initialises it on first use registers one, and at exit
        // it frees what the key generation thread may still be using (SIGSEGV at exit, seen in
        // the tests 2 times in 8).
        openssl::init();
        let names = Names::new(&config.amqp_prefix, &config.redis_namespace);
        let store = Store::connect(
            &config.redis_url,
            config.redis_ca_pem.as_deref(),
            names.clone(),
        )
        .await?;
        Ok(Self::of(config, names, store))
    }

    /// As [`Self::new`], connecting to Redis on first use (`warmer web`: it answers `/health`
    /// while Redis is away).
    pub fn lazily(config: Config) -> anyhow::Result<Self> {
        openssl::init();
        let names = Names::new(&config.amqp_prefix, &config.redis_namespace);
        let store = Store::connect_lazily(
            &config.redis_url,
            config.redis_ca_pem.as_deref(),
            names.clone(),
        )?;
        Ok(Self::of(config, names, store))
    }

    fn of(config: Config, names: Names, store: Store) -> Self {
        Self {
            config: Arc::new(config),
            names,
            store,
        }
    }

    /// Connects to RabbitMQ, naming the connection after this deployment and process.
    pub async fn amqp(&self, process: impl std::fmt::Display) -> anyhow::Result<lapin::Connection> {
        let name = format!("{}.{process}", self.names.prefix());
        crate::amqp::connect(&self.config.amqp_url, &name).await
    }
}
