//! What warmer's integration tests (`tests/api`) and benches share.
//!
//! - [`TestApp`]: one deployment of warmer on the real Redis and RabbitMQ of this machine, with
//!   its own AMQP prefix and Redis namespace, removed when it is dropped; built with
//!   [`TestApp::builder`] (or [`spawn_app`]).
//! - Clients of it: a [`Requester`] speaking the travis worker's protocol, a [`Listener`] for
//!   events.
//! - Servers around it: a [`Proxy`] that cuts warmer off a server, a [`PrivateRedis`] to stall
//!   or configure, and stand-ins for the external HTTP APIs ([`ComputeStandIn`],
//!   [`HerokuStandIn`]), written from their API references.
//! - Waiting: [`eventually`] polls a condition, [`within`] bounds a future; both fail the test
//!   after [`PATIENCE`], naming what was awaited.

mod app;
pub mod bench;
mod clients;
pub mod cluster;
pub mod compute;
pub mod heroku;
mod servers;
pub mod tls;

use std::future::Future;
use std::time::Duration;

pub use app::{AppBuilder, Crashed, TestApp, fresh_prefix, remove_deployment, spawn_app, vm};
pub use clients::{Listener, Requester};
pub use compute::ComputeStandIn;
pub use heroku::HerokuStandIn;
pub use servers::{BrokerUser, PrivateRedis, Proxy, serve_http};

/// The servers of the whole test run: the machine's own (RabbitMQ on 127.0.0.1:5672, Redis on
/// 127.0.0.1:6379) when they answer, else private ones started once, on the first use, and
/// shared by every test (each still isolated by its prefix and namespace); they stop when the
/// test binary exits (see `warmer::dev::servers`). `WARMER_TEST_SERVERS=private` starts
/// private ones even beside running servers, which is how CI proves this path.
struct RunServers {
    amqp_url: String,
    redis_url: String,
    amqp_addr: String,
    redis_addr: String,
    /// The private servers, kept alive for the run.
    private: warmer::dev::servers::Servers,
}

fn run_servers() -> &'static RunServers {
    use warmer::dev::servers::{Kind, Mode, Servers};
    static SERVERS: std::sync::OnceLock<RunServers> = std::sync::OnceLock::new();
    SERVERS.get_or_init(|| {
        let mode = match std::env::var("WARMER_TEST_SERVERS").as_deref() {
            Ok("private") => Mode::Private,
            _ => Mode::Auto,
        };
        let (amqp, redis) = ("amqp://127.0.0.1:5672/%2f", "redis://127.0.0.1:6379/0");
        let private = Servers::bring_up(mode, (redis, None), (amqp, None))
            .unwrap_or_else(|error| panic!("the tests need Redis and RabbitMQ: {error:#}"));
        if let Some(summary) = private.summary() {
            eprintln!("warmer-testkit: {summary}");
        }
        let url = |kind, default: &str| private.url(kind).unwrap_or(default).to_string();
        let (amqp_url, redis_url) = (url(Kind::RabbitMq, amqp), url(Kind::Redis, redis));
        RunServers {
            amqp_addr: warmer::dev::servers::host_port(&amqp_url).to_string(),
            redis_addr: warmer::dev::servers::host_port(&redis_url).to_string(),
            amqp_url,
            redis_url,
            private,
        }
    })
}

/// The test run's RabbitMQ (guest may log in from loopback).
pub fn amqp_url() -> &'static str {
    &run_servers().amqp_url
}

/// The test run's Redis.
pub fn redis_url() -> &'static str {
    &run_servers().redis_url
}

/// `127.0.0.1:<port>` of the test run's RabbitMQ.
pub fn amqp_addr() -> &'static str {
    &run_servers().amqp_addr
}

/// `127.0.0.1:<port>` of the test run's Redis.
pub fn redis_addr() -> &'static str {
    &run_servers().redis_addr
}

/// `rabbitmqctl` for the test run's RabbitMQ: the machine's, or the private node's.
pub fn rabbitmqctl() -> std::process::Command {
    let servers = run_servers();
    servers
        .private
        .started
        .iter()
        .find_map(|s| s.rabbitmqctl())
        .unwrap_or_else(|| std::process::Command::new("rabbitmqctl"))
}
/// Every wait in a test is bounded by this.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const POOL: &str = "travis-ci-garnet-trusty-1503417006:n1-standard-2";
/// The travis worker's request for [`POOL`], byte for byte as the protocol shows it.
pub const TRAVIS_REQUEST: &str = r#"{"site":"org","zone":"us-central1-c",
 "image_name":"https://www.googleapis.com/compute/v1/projects/p/global/images/travis-ci-garnet-trusty-1503417006",
 "machine_type":"https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-c/machineTypes/n1-standard-2",
 "public_ip":false}"#;
/// The SSH key passphrase of deployments on the Compute Engine stand-in.
pub const PASSPHRASE: &str = "test passphrase of the stand-in";

/// The first delivery of the request `identity` (its nonce is the identity), received at `now`
/// with `deadline`; an unsettled lease of it is given up at `give_up_at`.
pub fn first_delivery(
    identity: &str,
    now: u64,
    deadline: u64,
    give_up_at: u64,
) -> warmer::Delivery<'_> {
    warmer::Delivery {
        identity,
        nonce: identity,
        redelivered: false,
        now,
        deadline,
        give_up_at,
    }
}

/// Awaits `future` for at most [`PATIENCE`], failing the test with `what` otherwise.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until `condition` holds, asking every 20 ms for at most [`PATIENCE`]; fails the test
/// with `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Waits until `probe` finds something, asking every 20 ms for at most [`PATIENCE`]; returns it.
pub async fn eventually_found<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Counters as [`TestApp::counters`] reads them, for comparing.
pub fn counters(fields: &[(&str, i64)]) -> std::collections::BTreeMap<String, i64> {
    fields.iter().map(|(f, n)| (f.to_string(), *n)).collect()
}

/// The samples of a Prometheus text exposition: `name{labels}` as written → value. Panics on a
/// line that is neither a comment nor `series value`.
pub fn samples(exposition: &str) -> std::collections::BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value = match value {
                "+Inf" => f64::INFINITY,
                value => value.parse().expect("a number"),
            };
            (series.to_string(), value)
        })
        .collect()
}

/// Runs Prometheus's own parser and linter (`promtool check metrics`) over an exposition and
/// fails the test with its findings. `.ci/run` installs promtool (Debian's `prometheus`).
pub fn promtool_check_metrics(exposition: &str) {
    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus, or run .ci/run)");
    let mut stdin = promtool.stdin.take().expect("promtool's stdin");
    stdin
        .write_all(exposition.as_bytes())
        .expect("the exposition written to promtool");
    drop(stdin);
    let checked = promtool.wait_with_output().expect("promtool's verdict");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
