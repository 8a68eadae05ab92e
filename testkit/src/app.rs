//! The app under test: one deployment of warmer with names of its own, its processes run as
//! tasks of the test, and what the test reads of Redis and RabbitMQ directly.

use std::collections::{BTreeMap, HashMap};

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use warmer::shutdown::{self, Shutdown, Trigger};
use warmer::{
    CheckoutStep, Cloud, Config, Context, Delivery, Lease, LeaseState, Names, PoolName, Publisher,
    now_ms,
};

use crate::clients::{Listener, Requester};
use crate::compute::ComputeStandIn;
use crate::{PrivateRedis, TRAVIS_REQUEST, amqp_url, redis_url};
use crate::{eventually, within};

/// How to build a [`TestApp`]: the servers it reaches, its environment, its consumers.
pub struct AppBuilder {
    amqp_url: String,
    /// Where the test reaches RabbitMQ itself.
    own_amqp_url: String,
    redis_url: String,
    /// Where the test reads Redis itself (not through a proxy in front of the app's).
    own_redis_url: String,
    env: Vec<(String, String)>,
    checkout_consumers: usize,
    prefix: Option<String>,
}

/// A fresh AMQP prefix and Redis namespace for one test's deployment.
pub fn fresh_prefix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("test-{}", &id[..12])
}

impl AppBuilder {
    /// The deployment's AMQP prefix and Redis namespace (from [`fresh_prefix`]): for what must
    /// know its names before it starts, such as broker users' permissions.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The app reaches RabbitMQ through `url` (e.g. a [`crate::Proxy`]).
    pub fn amqp_url(mut self, url: &str) -> Self {
        self.amqp_url = url.into();
        self
    }

    /// The app reaches Redis through `url`; the test still reads the shared server directly.
    pub fn redis_url(mut self, url: &str) -> Self {
        self.redis_url = url.into();
        self
    }

    /// The app and the test both use this broker (a cluster of the test's own, say).
    pub fn on_broker(mut self, url: &str) -> Self {
        self.amqp_url = url.into();
        self.own_amqp_url = url.into();
        self
    }

    /// The app and the test both use a Redis server of the test's own.
    pub fn on_redis(mut self, redis: &PrivateRedis) -> Self {
        self.redis_url = redis.url();
        self.own_redis_url = redis.url();
        self
    }

    /// Sets an environment variable of the app.
    pub fn env(mut self, var: &str, value: &str) -> Self {
        self.env.push((var.into(), value.into()));
        self
    }

    /// Sets environment variables of the app.
    pub fn envs(mut self, vars: &[(&str, &str)]) -> Self {
        for (var, value) in vars {
            self = self.env(var, value);
        }
        self
    }

    /// The app boots on the Compute Engine stand-in.
    pub fn gce(mut self, compute: &ComputeStandIn) -> Self {
        self.env.extend(compute.env());
        self
    }

    /// Starts `n` checkout consumers with the app.
    pub fn checkout_consumers(mut self, n: usize) -> Self {
        self.checkout_consumers = n;
        self
    }

    /// A fresh deployment: its own prefix and namespace, its topology declared, its consumers
    /// started and attached.
    pub async fn start(self) -> TestApp {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(warmer::telemetry::filter("warn"))
            .with_test_writer()
            .try_init();
        let prefix = self.prefix.unwrap_or_else(fresh_prefix);
        let env: HashMap<String, String> = [
            ("WARMER_AMQP_URL", self.amqp_url.as_str()),
            ("WARMER_REDIS_URL", self.redis_url.as_str()),
            ("WARMER_AMQP_PREFIX", prefix.as_str()),
            ("WARMER_REDIS_NAMESPACE", prefix.as_str()),
            ("WARMER_PROVIDER", "local"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(self.env)
        .collect();
        let config = Config::from_vars(env.clone()).expect("test configuration");
        let ctx = within("Redis", Context::new(config))
            .await
            .expect("Redis is up");
        let amqp = Connection::connect(&self.own_amqp_url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ is up");
        warmer::declare_topology(&amqp, &ctx.names)
            .await
            .expect("topology");
        let redis_client = redis::Client::open(self.own_redis_url.as_str()).expect("Redis URL");
        // The client's default 500 ms answer timeout fails reads on a machine loaded by the suite.
        let patient = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(10)));
        let redis = redis::aio::ConnectionManager::new_with_config(redis_client, patient)
            .await
            .expect("Redis is up");
        let (trigger, shutdown) = shutdown::channel();
        let mut app = TestApp {
            shutdown,
            names: ctx.names.clone(),
            ctx,
            amqp,
            redis,
            env,
            own_amqp_url: self.own_amqp_url,
            trigger,
            consumers: Vec::new(),
        };
        for _ in 0..self.checkout_consumers {
            app.start_consumer().await;
        }
        app
    }
}

/// What [`TestApp::crashed_consumer`] did before it died.
#[derive(Debug)]
pub struct Crashed {
    /// The request's identity.
    pub identity: String,
    /// What its pop found.
    pub popped: CheckoutStep,
    /// The request's deadline (ms), as warmer reads it.
    pub deadline: u64,
    /// Where its reply goes, as the broker delivered it (a direct reply-to name is expanded).
    pub reply_to: lapin::types::ShortString,
}

/// One test's warmer: its own names, a context, and processes it can stop.
pub struct TestApp {
    pub ctx: Context,
    pub names: Names,
    /// The test's own connection to RabbitMQ.
    pub amqp: Connection,
    /// The test's own connection to Redis.
    pub redis: redis::aio::ConnectionManager,
    /// The app's environment (also given to `warmer` processes the test starts).
    pub env: HashMap<String, String>,
    /// Where the test reaches RabbitMQ itself.
    own_amqp_url: String,
    trigger: Trigger,
    shutdown: Shutdown,
    consumers: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// A fresh deployment on the shared servers, with one checkout consumer running.
pub async fn spawn_app() -> TestApp {
    TestApp::builder().checkout_consumers(1).start().await
}

/// A pool entry shaped like the ones warmer writes.
pub fn vm(name: &str) -> Value {
    json!({
        "name": name,
        "zone": "us-central1-c",
        "ip": "10.0.0.1",
        "public_ip": null,
        "ssh_private_key": "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n",
        "booted_at": 1_700_000_000u64,
    })
}

impl TestApp {
    /// A deployment on the shared servers with no process running yet.
    pub fn builder() -> AppBuilder {
        AppBuilder {
            amqp_url: amqp_url().into(),
            own_amqp_url: amqp_url().into(),
            redis_url: redis_url().into(),
            own_redis_url: redis_url().into(),
            env: Vec::new(),
            checkout_consumers: 0,
            prefix: None,
        }
    }

    /// A context of this deployment whose processes reach RabbitMQ through `amqp_url` (another
    /// broker user, say).
    pub async fn context_as(&self, amqp_url: &str) -> Context {
        let mut env = self.env.clone();
        env.insert("WARMER_AMQP_URL".into(), amqp_url.into());
        let config = Config::from_vars(env).expect("test configuration");
        Context::new(config).await.expect("Redis is up")
    }

    /// A shutdown signal for a new process (a fresh one after [`Self::stop_consumers`]).
    fn signal(&mut self) -> Shutdown {
        if self.shutdown.is_triggered() {
            (self.trigger, self.shutdown) = shutdown::channel();
        }
        self.shutdown.clone()
    }

    /// Starts one more checkout consumer in this process and waits until it consumes.
    pub async fn start_consumer(&mut self) {
        let running = self.queue_counts(&self.names.checkout_queue()).await.1;
        let run = warmer::checkout::run(self.ctx.clone(), self.signal());
        self.consumers.push(tokio::spawn(run));
        self.wait_for_consumers(running + 1).await;
    }

    /// Starts one more refill consumer, booting on the configured cloud.
    pub async fn start_refill(&mut self) {
        let running = self.queue_counts(&self.names.refill_queue()).await.1;
        let cloud = self.cloud().await;
        let run = warmer::refill::run_on(self.ctx.clone(), cloud, self.signal());
        self.consumers.push(tokio::spawn(run));
        self.wait_for_queue_consumers(&self.names.refill_queue(), running + 1)
            .await;
    }

    /// Starts `warmer web` on a free port; returns its base URL.
    pub async fn start_web(&mut self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let serve = warmer::web::serve(self.ctx.clone(), listener, self.signal());
        self.consumers.push(tokio::spawn(serve));
        url
    }

    /// The configured cloud (the local provider unless built with [`AppBuilder::gce`]).
    pub async fn cloud(&self) -> Cloud {
        Cloud::from_config(&self.ctx.config, &self.ctx.store)
            .await
            .expect("cloud")
    }

    /// A reconciler of this deployment.
    pub async fn reconciler(&self) -> warmer::reconcile::Reconciler {
        warmer::reconcile::Reconciler::new(self.ctx.clone(), self.cloud().await)
    }

    /// A publisher on the test's connection.
    pub async fn publisher(&self) -> Publisher {
        Publisher::open(&self.amqp).await.expect("a publisher")
    }

    /// What a reconcile pass publishes through (events and fills), on the test's connection.
    pub async fn broker(&self) -> warmer::reconcile::Broker {
        warmer::reconcile::Broker::open_for(&self.amqp, &self.ctx)
            .await
            .expect("channels")
    }

    /// Stops every process (as SIGTERM would) and waits for them to return `Ok`.
    pub async fn stop_consumers(&mut self) {
        self.trigger.fire();
        for consumer in self.consumers.drain(..) {
            within("consumer shutdown", consumer)
                .await
                .expect("consumer task")
                .expect("consumer returned Ok");
        }
        self.wait_for_no_consumers(&self.names.checkout_queue())
            .await;
        self.wait_for_no_consumers(&self.names.refill_queue()).await;
    }

    /// Waits until `n` consumers are attached to the checkout queue.
    pub async fn wait_for_consumers(&self, n: u32) {
        self.wait_for_queue_consumers(&self.names.checkout_queue(), n)
            .await
    }

    /// Waits until at least `n` consumers are attached to `queue`.
    pub async fn wait_for_queue_consumers(&self, queue: &str, n: u32) {
        eventually(&format!("{n} consumer(s) on {queue}"), || async {
            self.queue_counts(queue).await.1 >= n
        })
        .await
    }

    /// Waits until no consumer is attached to `queue`. A quorum queue learns of a closed
    /// channel asynchronously, so a count taken right after a close can still include it.
    pub async fn wait_for_no_consumers(&self, queue: &str) {
        eventually(&format!("no consumer on {queue}"), || async {
            self.queue_counts(queue).await.1 == 0
        })
        .await
    }

    /// Waits until `queue` holds no ready message.
    pub async fn wait_for_empty(&self, queue: &str) {
        eventually(&format!("{queue} to drain"), || async {
            self.queue_counts(queue).await.0 == 0
        })
        .await
    }

    /// (messages ready, consumers) of a queue, by passive declare; on a connection of its own
    /// once the test's has been lost (a broker node killed).
    pub async fn queue_counts(&self, queue: &str) -> (u32, u32) {
        let fresh;
        let connection = if self.amqp.status().connected() {
            &self.amqp
        } else {
            fresh = Connection::connect(&self.own_amqp_url, ConnectionProperties::default())
                .await
                .expect("RabbitMQ is up");
            &fresh
        };
        let channel = connection.create_channel().await.expect("a channel");
        let q = warmer::passive_declare(&channel, queue)
            .await
            .expect("queue exists");
        let _ = channel.close(200, "ok".into()).await;
        (q.message_count(), q.consumer_count())
    }

    /// Creates the pool with `target` and pushes `vms` (oldest first).
    pub async fn seed(&self, pool: &str, target: u32, vms: &[Value]) {
        let pool: PoolName = pool.parse().expect("a pool name");
        self.ctx
            .store
            .set_target(&pool, target)
            .await
            .expect("target set");
        if !vms.is_empty() {
            let entries: Vec<String> = vms.iter().map(Value::to_string).collect();
            let _: () = self
                .redis
                .clone()
                .rpush(self.names.pool(&pool), entries)
                .await
                .expect("entries pushed");
        }
    }

    /// The entries of a pool, oldest first.
    pub async fn entries(&self, pool: &str) -> Vec<Value> {
        let pool: PoolName = pool.parse().expect("a pool name");
        let raw: Vec<String> = self
            .redis
            .clone()
            .lrange(self.names.pool(&pool), 0, -1)
            .await
            .expect("the pool list");
        raw.iter()
            .map(|e| serde_json::from_str(e).expect("a JSON entry"))
            .collect()
    }

    /// Names of the VMs in a pool, oldest first.
    pub async fn pool_vms(&self, pool: &str) -> Vec<String> {
        let entries = self.entries(pool).await;
        entries.iter().map(name_of).collect()
    }

    /// Boot reservations of a pool (expired or not).
    pub async fn booting(&self, pool: &str) -> u64 {
        let pool: PoolName = pool.parse().expect("a pool name");
        self.redis
            .clone()
            .zcard(self.names.booting(&pool))
            .await
            .expect("the reservations")
    }

    /// Waits until `pool` holds `ready` VMs with nothing booting and the refill queue is drained.
    pub async fn wait_until_settled(&self, pool: &str, ready: usize) {
        eventually(&format!("{pool} to settle at {ready}"), || async {
            self.pool_vms(pool).await.len() == ready
                && self.booting(pool).await == 0
                && self.queue_counts(&self.names.refill_queue()).await.0 == 0
        })
        .await
    }

    /// The counters kept in Redis for `pool`, or those of no pool, as stored: field → value;
    /// without the VM-seconds.
    pub async fn counters(&self, pool: Option<&str>) -> BTreeMap<String, i64> {
        let key = match pool {
            Some(pool) => self.names.pool_metrics(&pool.parse().expect("a pool name")),
            None => self.names.metrics(),
        };
        let all: BTreeMap<String, i64> = self.redis.clone().hgetall(key).await.expect("counters");
        // The VM-seconds integrals change with time itself; their tests read them directly.
        let integral = |field: &str| {
            ["idle_vm|", "booting_vm|", "handed_vm|"]
                .iter()
                .any(|prefix| field.starts_with(prefix))
        };
        all.into_iter()
            .filter(|(field, _)| !integral(field))
            .collect()
    }

    /// Appends `record` to `orphaned` as it is (as travis-ci/warmer, or anyone who can write to
    /// Redis, would).
    pub async fn push_orphan_record(&self, record: &Value) {
        let _: () = self
            .redis
            .clone()
            .rpush(self.names.orphaned(), record.to_string())
            .await
            .expect("a record pushed");
    }

    /// The records of `orphaned`, as stored.
    pub async fn orphan_records(&self) -> Vec<Value> {
        let entries: Vec<String> = self
            .redis
            .clone()
            .lrange(self.names.orphaned(), 0, -1)
            .await
            .expect("orphaned");
        entries
            .iter()
            .map(|e| serde_json::from_str(e).expect("a JSON record"))
            .collect()
    }

    /// Names in `orphaned`.
    pub async fn orphaned(&self) -> Vec<String> {
        let records = self.orphan_records().await;
        records.iter().map(name_of).collect()
    }

    /// Leases: (VM name, state) per request identity.
    pub async fn leases(&self) -> HashMap<String, (String, String)> {
        let raw: HashMap<String, String> = self
            .redis
            .clone()
            .hgetall(self.names.leases())
            .await
            .expect("leases");
        raw.into_iter()
            .map(|(id, lease)| {
                let lease: Lease = serde_json::from_str(&lease).expect("a lease");
                let state = match lease.state {
                    LeaseState::Pending => "pending",
                    LeaseState::Handed => "handed",
                };
                let vm = lease.vm_name().expect("a readable leased entry");
                (id, (vm, state.to_string()))
            })
            .collect()
    }

    /// A requester on its own channel, using direct reply-to like the travis worker.
    pub async fn requester(&self) -> Requester {
        Requester::new(&self.amqp, &self.names).await
    }

    /// A checkout consumer that dies mid-request: it takes the next request off the checkout
    /// queue, pops its VM for `pool` as warmer's consumer would (the request's real identity,
    /// a delivery of its own), and closes its channel without replying or acking, so the broker
    /// redelivers the request. Call it before any consumer of the app runs.
    pub async fn crashed_consumer(&self, pool: &str) -> Crashed {
        let channel = self.amqp.create_channel().await.expect("a channel");
        let mut doomed = channel
            .basic_consume(
                self.names.checkout_queue().as_str().into(),
                "doomed".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consuming the checkout queue");
        let delivery = within(
            "the first delivery",
            futures_lite::StreamExt::next(&mut doomed),
        )
        .await
        .expect("a delivery")
        .expect("a delivery");
        assert!(!delivery.redelivered, "a first delivery");
        let identity =
            warmer::checkout::request::identity(&delivery.properties).expect("an identity");
        let now = now_ms();
        let deadline =
            warmer::checkout::request::deadline(&delivery.properties, now).expect("a deadline");
        let popped = self
            .ctx
            .store
            .checkout(
                Delivery {
                    identity: &identity,
                    nonce: "the-consumer-that-died",
                    redelivered: false,
                    now,
                    deadline,
                    give_up_at: deadline + 60_000,
                },
                &pool.parse().expect("a pool name"),
            )
            .await
            .expect("the pop");
        channel.close(200, "died".into()).await.expect("closed");
        self.wait_for_no_consumers(&self.names.checkout_queue())
            .await;
        Crashed {
            identity,
            popped,
            deadline,
            reply_to: delivery
                .properties
                .reply_to()
                .clone()
                .expect("a reply address"),
        }
    }

    /// Sends the travis request for [`crate::POOL`] and returns the reply.
    pub async fn checkout(&self) -> Value {
        self.requester().await.send(TRAVIS_REQUEST.as_bytes()).await
    }

    /// Publishes a fill command for `pool`, as `warmer fill` does.
    pub async fn fill(&self, pool: &str) {
        warmer::operator::fill(&self.ctx, Some(&pool.parse().expect("a pool name")), None)
            .await
            .expect("fill published");
    }

    /// Listens to events with `routing_key` on the events exchange.
    pub async fn listen(&self, routing_key: &str) -> Listener {
        Listener::bind(&self.amqp, &self.names.events_exchange(), routing_key).await
    }

    /// The name of a reply queue that existed and is gone.
    pub async fn vanished_queue(&self) -> lapin::types::ShortString {
        let channel = self.amqp.create_channel().await.expect("a channel");
        let (queue, _) = crate::clients::exclusive_queue(&channel).await;
        channel
            .queue_delete(queue.clone(), QueueDeleteOptions::default())
            .await
            .expect("queue deleted");
        queue
    }

    /// The next message waiting in the refill queue (a fill command), taken off it.
    pub async fn take_refill_message(&self) -> Value {
        let channel = self.amqp.create_channel().await.expect("a channel");
        let message = channel
            .basic_get(
                self.names.refill_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
            .expect("a message in the refill queue");
        serde_json::from_slice(&message.delivery.data).expect("a JSON message")
    }

    /// Listens to the dead-letter queue.
    pub async fn dead_letters(&self) -> lapin::Consumer {
        let channel = self.amqp.create_channel().await.expect("a channel");
        channel
            .basic_consume(
                self.names.dead_letter_queue().as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consuming dead letters")
    }
}

fn name_of(record: &Value) -> String {
    record["name"].as_str().unwrap_or_default().to_string()
}

impl Drop for TestApp {
    /// Removes this test's queues, exchange and keys, even when the test failed.
    fn drop(&mut self) {
        self.trigger.fire();
        for consumer in &self.consumers {
            consumer.abort();
        }
        let names = self.names.clone();
        let cleanup = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(remove_deployment(&names));
            }
        });
        let _ = cleanup.join();
    }
}

/// Removes a deployment's queues, events exchange and Redis keys from the shared servers.
pub async fn remove_deployment(names: &Names) {
    if let Ok(amqp) = Connection::connect(amqp_url(), ConnectionProperties::default()).await {
        if let Ok(channel) = amqp.create_channel().await {
            for queue in [
                names.checkout_queue(),
                names.refill_queue(),
                names.dead_letter_queue(),
            ] {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = channel
                .exchange_delete(
                    names.events_exchange().as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = amqp.close(200, "bye".into()).await;
    }
    if let Ok(client) = redis::Client::open(redis_url())
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", names.namespace()))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = conn.del(keys).await;
        }
    }
}
