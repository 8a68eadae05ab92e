//! `spawn_app` and the test clients: a requester speaking the travis worker's protocol, an
//! event listener, and a TCP proxy that can cut a server away from warmer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use warmer::config::Config;
use warmer::context::Context;
use warmer::names::Names;
use warmer::pool::PoolName;
use warmer::shutdown::{self, Shutdown, Trigger};

pub const AMQP_URL: &str = "amqp://127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Every wait in a test is bounded by this.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const POOL: &str = "travis-ci-garnet-trusty-1503417006:n1-standard-2";
/// The travis worker's request for [`POOL`], byte for byte as SPEC §3.1 shows it.
pub const TRAVIS_REQUEST: &str = r#"{"site":"org","zone":"us-central1-c",
 "image_name":"https://www.googleapis.com/compute/v1/projects/p/global/images/travis-ci-garnet-trusty-1503417006",
 "machine_type":"https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-c/machineTypes/n1-standard-2",
 "public_ip":false}"#;

/// Awaits `future` for at most [`PATIENCE`], failing the test with `what` otherwise.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// One test's warmer: its own names, a context, and checkout consumers it can stop.
pub struct TestApp {
    pub ctx: Context,
    pub names: Names,
    pub amqp: Connection,
    pub redis: redis::aio::ConnectionManager,
    pub env: HashMap<String, String>,
    trigger: Trigger,
    shutdown: Shutdown,
    consumers: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// A fresh deployment on the real servers, with one checkout consumer running.
pub async fn spawn_app() -> TestApp {
    let app = spawn_app_without_consumer().await;
    let mut app = app;
    app.start_consumer().await;
    app
}

/// A fresh deployment whose topology is declared but no consumer runs yet.
pub async fn spawn_app_without_consumer() -> TestApp {
    spawn_app_with(AMQP_URL, REDIS_URL).await
}

/// A fresh deployment that reaches the servers through the given URLs (e.g. a [`Proxy`]).
pub async fn spawn_app_with(amqp_url: &str, redis_url: &str) -> TestApp {
    spawn_app_configured(amqp_url, redis_url, &[]).await
}

/// A fresh deployment whose refill boots on the Compute Engine stand-in.
pub async fn spawn_gce_app(
    compute: &crate::compute::ComputeStandIn,
    extra: &[(&str, &str)],
) -> TestApp {
    let keyfile = compute.keyfile_json();
    let url = compute.compute_url();
    let mut env = vec![
        ("WARMER_PROVIDER", "gce"),
        ("WARMER_GOOGLE_CLOUD_PROJECT", crate::compute::PROJECT),
        ("WARMER_GOOGLE_CLOUD_REGION", crate::compute::REGION),
        ("WARMER_GOOGLE_COMPUTE_URL", url.as_str()),
        ("WARMER_GOOGLE_CLOUD_KEYFILE_JSON", keyfile.as_str()),
        ("WARMER_IMAGE_PROJECT", "travis-ci-images"),
        ("WARMER_SSH_KEY_PASSPHRASE", PASSPHRASE),
    ];
    env.extend_from_slice(extra);
    spawn_app_configured(AMQP_URL, REDIS_URL, &env).await
}

/// The SSH key passphrase of [`spawn_gce_app`] deployments.
pub const PASSPHRASE: &str = "test passphrase";

/// A fresh deployment with extra environment variables.
pub async fn spawn_app_configured(
    amqp_url: &str,
    redis_url: &str,
    extra: &[(&str, &str)],
) -> TestApp {
    spawn_app_reading(amqp_url, redis_url, REDIS_URL, extra).await
}

/// A fresh deployment on a Redis server of the test's own (the test reads it directly too).
pub async fn spawn_app_on(redis: &PrivateRedis, extra: &[(&str, &str)]) -> TestApp {
    spawn_app_reading(AMQP_URL, &redis.url(), &redis.url(), extra).await
}

/// A fresh deployment on `redis_url`, whose keys the test reads through `own_redis_url`.
async fn spawn_app_reading(
    amqp_url: &str,
    redis_url: &str,
    own_redis_url: &str,
    extra: &[(&str, &str)],
) -> TestApp {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(warmer::telemetry::filter("warn"))
        .with_test_writer()
        .try_init();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("test-{}", &id[..12]);
    let env: HashMap<String, String> = [
        ("WARMER_AMQP_URL", amqp_url),
        ("WARMER_REDIS_URL", redis_url),
        ("WARMER_AMQP_PREFIX", prefix.as_str()),
        ("WARMER_REDIS_NAMESPACE", prefix.as_str()),
        ("WARMER_PROVIDER", "local"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::from_vars(env.clone()).expect("test configuration");
    let ctx = within("Redis", Context::new(config))
        .await
        .expect("Redis is up");
    let amqp = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ is up");
    let channel = amqp.create_channel().await.unwrap();
    warmer::topology::declare(&channel, &ctx.names)
        .await
        .expect("topology");
    let redis = redis::aio::ConnectionManager::new(redis::Client::open(own_redis_url).unwrap())
        .await
        .unwrap();
    let (trigger, shutdown) = shutdown::channel();
    TestApp {
        shutdown,
        names: ctx.names.clone(),
        ctx,
        amqp,
        redis,
        env,
        trigger,
        consumers: Vec::new(),
    }
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
    /// Starts one more checkout consumer in this process.
    pub async fn start_consumer(&mut self) {
        if self.shutdown.is_triggered() {
            (self.trigger, self.shutdown) = shutdown::channel();
        }
        let running = self.queue_counts(&self.names.checkout_queue()).await.1;
        let run = warmer::checkout::run(self.ctx.clone(), self.shutdown.clone());
        self.consumers.push(tokio::spawn(run));
        self.wait_for_consumers(running + 1).await;
    }

    /// Starts one more refill consumer in this process, booting on the configured cloud.
    pub async fn start_refill(&mut self) {
        if self.shutdown.is_triggered() {
            (self.trigger, self.shutdown) = shutdown::channel();
        }
        let running = self.queue_counts(&self.names.refill_queue()).await.1;
        let cloud = warmer::cloud::Cloud::from_config(&self.ctx.config)
            .await
            .expect("cloud");
        let run = warmer::refill::run(self.ctx.clone(), cloud, self.shutdown.clone());
        self.consumers.push(tokio::spawn(run));
        self.wait_for_queue_consumers(&self.names.refill_queue(), running + 1)
            .await;
    }

    /// Starts `warmer web` on a free port of this process; returns its base URL.
    pub async fn start_web(&mut self) -> String {
        if self.shutdown.is_triggered() {
            (self.trigger, self.shutdown) = shutdown::channel();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let serve = warmer::web::serve(self.ctx.clone(), listener, self.shutdown.clone());
        self.consumers.push(tokio::spawn(serve));
        url
    }

    /// Waits until `n` consumers are attached to the checkout queue.
    pub async fn wait_for_consumers(&self, n: u32) {
        self.wait_for_queue_consumers(&self.names.checkout_queue(), n)
            .await
    }

    /// Waits until `n` consumers are attached to `queue`.
    pub async fn wait_for_queue_consumers(&self, queue: &str, n: u32) {
        self.wait_for_consumer_count("consumers", queue, |count| count >= n)
            .await
    }

    /// Waits until no consumer is attached to `queue`. A quorum queue learns of a closed
    /// channel asynchronously, so a count taken right after a close can still include it.
    pub async fn wait_for_no_consumers(&self, queue: &str) {
        self.wait_for_consumer_count("no consumers", queue, |count| count == 0)
            .await
    }

    async fn wait_for_consumer_count(&self, what: &str, queue: &str, done: impl Fn(u32) -> bool) {
        within(what, async {
            while !done(self.queue_counts(queue).await.1) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// (messages ready, consumers) of a queue, by passive declare.
    pub async fn queue_counts(&self, queue: &str) -> (u32, u32) {
        let channel = self.amqp.create_channel().await.unwrap();
        let q = warmer::amqp::passive_declare(&channel, queue)
            .await
            .expect("queue exists");
        let _ = channel.close(200, "ok".into()).await;
        (q.message_count(), q.consumer_count())
    }

    /// Stops every consumer (as SIGTERM would) and waits for them to return.
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

    /// Creates the pool with `target` and pushes `vms` (oldest first).
    pub async fn seed(&self, pool: &str, target: u32, vms: &[Value]) {
        let pool: PoolName = pool.parse().unwrap();
        self.ctx.store.set_target(&pool, target).await.unwrap();
        if !vms.is_empty() {
            let entries: Vec<String> = vms.iter().map(Value::to_string).collect();
            let _: () = self
                .redis
                .clone()
                .rpush(self.names.pool(&pool), entries)
                .await
                .unwrap();
        }
    }

    /// Names of the VMs in a pool, oldest first.
    pub async fn pool_vms(&self, pool: &str) -> Vec<String> {
        let pool: PoolName = pool.parse().unwrap();
        let entries: Vec<String> = self
            .redis
            .clone()
            .lrange(self.names.pool(&pool), 0, -1)
            .await
            .unwrap();
        entries
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(e).unwrap()["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// Names in `orphaned`.
    pub async fn orphaned(&self) -> Vec<String> {
        let entries: Vec<String> = self
            .redis
            .clone()
            .lrange(self.names.orphaned(), 0, -1)
            .await
            .unwrap();
        entries
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(e).unwrap()["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// Leases: (VM name, state) per request identity.
    pub async fn leases(&self) -> HashMap<String, (String, String)> {
        let raw: HashMap<String, String> = self
            .redis
            .clone()
            .hgetall(self.names.leases())
            .await
            .unwrap();
        raw.into_iter()
            .map(|(id, lease)| {
                let lease: Value = serde_json::from_str(&lease).unwrap();
                let entry: Value = serde_json::from_str(lease["entry"].as_str().unwrap()).unwrap();
                (
                    id,
                    (
                        entry["name"].as_str().unwrap().to_string(),
                        lease["state"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    }

    /// A requester on its own channel, using direct reply-to like the travis worker.
    pub async fn requester(&self) -> Requester {
        Requester::new(&self.amqp, &self.names).await
    }

    /// Sends the travis request for [`POOL`] and returns the reply.
    pub async fn checkout(&self) -> Value {
        self.requester().await.send(TRAVIS_REQUEST.as_bytes()).await
    }

    /// Listens to events with `routing_key` on the events exchange.
    pub async fn listen(&self, routing_key: &str) -> Listener {
        Listener::bind(&self.amqp, &self.names.events_exchange(), routing_key).await
    }

    /// The name of a reply queue that existed and is gone.
    pub async fn vanished_queue(&self) -> lapin::types::ShortString {
        let channel = self.amqp.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_delete(queue.name().clone(), QueueDeleteOptions::default())
            .await
            .unwrap();
        queue.name().clone()
    }

    /// The next message waiting in the refill queue (a fill command), taken off it.
    pub async fn take_refill_message(&self) -> Value {
        let channel = self.amqp.create_channel().await.unwrap();
        let message = channel
            .basic_get(
                self.names.refill_queue().as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .expect("a message in the refill queue");
        serde_json::from_slice(&message.delivery.data).unwrap()
    }

    /// Listens to the dead-letter queue.
    pub async fn dead_letters(&self) -> lapin::Consumer {
        let channel = self.amqp.create_channel().await.unwrap();
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
            .unwrap()
    }
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
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(cleanup(names));
        });
        let _ = cleanup.join();
    }
}

async fn cleanup(names: Names) {
    if let Ok(amqp) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await {
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
    if let Ok(client) = redis::Client::open(REDIS_URL)
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

/// A CI worker: one channel consuming its replies (direct reply-to, or an ordinary queue of its
/// own), sending requests and matching replies.
pub struct Requester {
    pub channel: Channel,
    replies: lapin::Consumer,
    checkout_queue: String,
    /// Where replies come back: direct reply-to or this requester's own queue.
    pub reply_to: lapin::types::ShortString,
}

impl Requester {
    pub async fn new(amqp: &Connection, names: &Names) -> Self {
        let channel = amqp.create_channel().await.unwrap();
        let replies = warmer::amqp::consume_direct_replies(&channel)
            .await
            .unwrap();
        Requester {
            channel,
            replies,
            checkout_queue: names.checkout_queue(),
            reply_to: warmer::amqp::DIRECT_REPLY_TO.into(),
        }
    }

    /// A requester whose replies come to an exclusive, server-named queue of its own.
    pub async fn with_reply_queue(amqp: &Connection, names: &Names) -> Self {
        let channel = amqp.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .unwrap();
        let replies = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Requester {
            channel,
            replies,
            checkout_queue: names.checkout_queue(),
            reply_to: queue.name().clone(),
        }
    }

    /// Properties of a fresh request to this requester's reply address.
    pub fn fresh_properties(&self) -> BasicProperties {
        Self::properties().with_reply_to(self.reply_to.clone())
    }

    /// Properties of a fresh request: direct reply-to, a new correlation id, a timestamp.
    pub fn properties() -> BasicProperties {
        BasicProperties::default()
            .with_reply_to(warmer::amqp::DIRECT_REPLY_TO.into())
            .with_correlation_id(uuid::Uuid::new_v4().to_string().as_str().into())
            .with_timestamp(warmer::store::now_ms() / 1000)
    }

    /// Sends `body` and returns the reply.
    pub async fn send(&mut self, body: &[u8]) -> Value {
        self.send_with(body, self.fresh_properties()).await
    }

    /// Publishes a request with `properties` (without waiting for a reply).
    pub async fn publish(&self, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish(
                "".into(),
                self.checkout_queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap();
    }

    /// Sends `body` with `properties` and returns the reply with the same correlation id.
    pub async fn send_with(&mut self, body: &[u8], properties: BasicProperties) -> Value {
        let correlation = properties.correlation_id().clone().expect("correlation id");
        self.publish(body, properties).await;
        self.reply_to(correlation.as_str()).await
    }

    /// The raw reply stream.
    pub fn replies_mut(&mut self) -> &mut lapin::Consumer {
        &mut self.replies
    }

    /// Waits for the reply carrying `correlation`.
    pub async fn reply_to(&mut self, correlation: &str) -> Value {
        within("a checkout reply", async {
            loop {
                let delivery = self.replies.next().await.expect("reply stream").unwrap();
                if delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str())
                    == Some(correlation)
                {
                    assert_eq!(
                        delivery
                            .properties
                            .content_type()
                            .as_ref()
                            .map(|c| c.as_str()),
                        Some("application/json")
                    );
                    return serde_json::from_slice(&delivery.data).expect("reply is JSON");
                }
            }
        })
        .await
    }
}

/// Events of one routing key, from an exclusive queue bound to the events exchange.
pub struct Listener {
    consumer: lapin::Consumer,
}

impl Listener {
    async fn bind(amqp: &Connection, exchange: &str, routing_key: &str) -> Self {
        let channel = amqp.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Listener { consumer }
    }

    /// The next event's body.
    pub async fn next(&mut self) -> Value {
        within("an event", async {
            let delivery = self.consumer.next().await.expect("event stream").unwrap();
            serde_json::from_slice(&delivery.data).expect("event is JSON")
        })
        .await
    }
}

/// A TCP proxy in front of a server: [`Proxy::cut`] drops every connection and refuses new
/// ones (the server "goes away" for whoever uses the proxy), [`Proxy::restore`] brings it back.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (up, connections) = (up.clone(), connections.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: connection refused by reset
                    }
                    let relay = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().unwrap().push(relay);
                }
            }
        });
        Proxy {
            port,
            up,
            connections,
            accept,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for relay in self.connections.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A Redis server of one test's own, on a free port, killed when dropped: for faults that
/// would disturb other tests on the shared server (a stall, a short idle `timeout`).
pub struct PrivateRedis {
    pub port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    /// Starts `redis-server` with `args` added to a memory-only configuration.
    pub async fn start(args: &[&str]) -> PrivateRedis {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        within("the private Redis to listen", async {
            while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        PrivateRedis { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel, nothing answers.
    pub fn stall(&self) {
        self.signal("STOP");
    }

    /// Lets a stalled server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
