//! What warmer declares on RabbitMQ, and the consumer queues HireFire and the autoscaler watch.
//!
//! | name | kind | purpose |
//! |---|---|---|
//! | `<prefix>.checkout` | durable quorum queue | checkout requests |
//! | `<prefix>.refill` | durable quorum queue, at most [`REFILL_QUEUE_LIMIT`] messages (further publishes are refused; those already in flight when it fills may still get in, as a quorum queue learns its length as its log commits) | refill hints and fill commands ([`RefillMessage`](crate::refill_message::RefillMessage)) |
//! | `<prefix>.events` | durable topic exchange | [`Event`]s |
//! | `<prefix>.dead` | durable quorum queue, at most [`DEAD_LETTER_LIMIT`] messages (the oldest go first) | dead letters |
//!
//! Both quorum queues redeliver a message at most [`DELIVERY_LIMIT`] times, then dead-letter it
//! to `<prefix>.dead` through the default exchange. Every queue is a quorum queue, replicated on
//! the nodes of a cluster, so the loss of one node costs a leader election (seconds), never a
//! queue (RabbitMQ 3.10 or later: quorum queues take `x-max-length` with `drop-head` or
//! `reject-publish`, `x-delivery-limit`, dead-lettering, and per-message TTL). Every consuming
//! process declares all of it, idempotently, each queue on its own ([`declare_each`]): what
//! cannot be declared now does not stop the consumer of another queue, and is declared again in
//! the background ([`redeclare`]); `web` and `autoscale` only read queue depths
//! ([`QueueMonitor`]), queue by queue.
//!
//! Why the limits lose nothing that matters: refill messages are hints, idempotent and coalesced
//! (one pending per pool), so the refill queue holds about one message per pool; a hint refused
//! because the queue is full is cleared, so the next checkout sends it again, and the reconciler
//! sends a fill for any pool short with nothing booting. Dead letters are kept for inspection;
//! past the limit the oldest are dropped, never the newest. A queue declared by an older warmer
//! without these arguments keeps working as it is (RabbitMQ refuses to change a queue's
//! arguments): warmer says so at start, and the arguments apply once it is deleted.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use lapin::Connection;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};

use crate::amqp::{LazyConnection, is_not_found, passive_declare};
use crate::config::ServerUrl;
use crate::events::Event;
use crate::names::Names;
use crate::process::ProcessType;

/// Deliveries of one message before it is dead-lettered instead of redelivered again.
pub const DELIVERY_LIMIT: i64 = 5;
/// Messages the refill queue holds at most; a publish beyond is refused (nacked).
pub const REFILL_QUEUE_LIMIT: i64 = 20_000;
/// Dead letters kept at most; beyond, the oldest are dropped.
pub const DEAD_LETTER_LIMIT: i64 = 10_000;

fn quorum_queue_arguments(names: &Names) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(names.dead_letter_queue().as_str().into()),
    );
    args
}

fn bounded(mut args: FieldTable, limit: i64, overflow: &str) -> FieldTable {
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(limit));
    args.insert("x-overflow".into(), AMQPValue::LongString(overflow.into()));
    args
}

/// What [`declare_each`] could not declare, each with why; everything else is declared.
#[derive(Debug, Default)]
pub struct Declared {
    pub failed: Vec<(String, anyhow::Error)>,
}

impl Declared {
    /// `Ok` unless `name` is among what failed.
    pub fn require(&self, name: &str) -> anyhow::Result<()> {
        match self.failed.iter().find(|(failed, _)| failed == name) {
            Some((_, error)) => Err(anyhow!("{}", crate::telemetry::report(error))),
            None => Ok(()),
        }
    }

    /// Whether everything was declared.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Declares every queue, exchange and binding (idempotent); fails if any one fails. For the
/// release check and the tests; consumers use [`declare_each`].
pub async fn declare(connection: &Connection, names: &Names) -> anyhow::Result<()> {
    let declared = declare_each(connection, names).await;
    match declared.failed.into_iter().next() {
        None => Ok(()),
        Some((_, error)) => Err(error),
    }
}

/// The queues, each with its arguments.
fn queues(names: &Names) -> [(String, FieldTable); 3] {
    let mut dead = FieldTable::default();
    dead.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    [
        (
            names.dead_letter_queue(),
            bounded(dead, DEAD_LETTER_LIMIT, "drop-head"),
        ),
        (names.checkout_queue(), quorum_queue_arguments(names)),
        (
            names.refill_queue(),
            bounded(
                quorum_queue_arguments(names),
                REFILL_QUEUE_LIMIT,
                "reject-publish",
            ),
        ),
    ]
}

/// Declares each queue, the events exchange and the bindings on a channel of its own, each
/// independently: one that cannot be declared now (a classic queue whose node is down, a
/// quorum queue without a majority) does not stop the others, and is returned with why.
pub async fn declare_each(connection: &Connection, names: &Names) -> Declared {
    let mut declared = Declared::default();
    for (queue, arguments) in queues(names) {
        if let Err(error) = declare_queue(connection, &queue, arguments).await {
            declared.failed.push((queue, error));
        }
    }
    let exchange = names.events_exchange();
    if let Err(error) = declare_exchange(connection, names).await {
        declared.failed.push((exchange, error));
    }
    declared
}

/// Declares the events exchange, and removes the bindings of earlier versions.
async fn declare_exchange(connection: &Connection, names: &Names) -> anyhow::Result<()> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    channel
        .exchange_declare(
            names.events_exchange().as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring the events exchange")?;
    // Hints reach the refill queue directly now: per-checkout events no longer go through it.
    for key in Event::FORMER_REFILL_BINDINGS {
        channel
            .queue_unbind(
                names.refill_queue().as_str().into(),
                names.events_exchange().as_str().into(),
                key.into(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("unbinding {} from {key}", names.refill_queue()))?;
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// What a consumer does first in each broker session: declares everything it can, fails only if
/// `queue` (the one it consumes) cannot be declared, and declares the rest again in the
/// background (see [`redeclare`]).
pub async fn declare_for(
    connection: &std::sync::Arc<Connection>,
    names: &Names,
    queue: &str,
    shutdown: &crate::shutdown::Shutdown,
) -> anyhow::Result<()> {
    let declared = declare_each(connection, names).await;
    declared.require(queue)?;
    tokio::spawn(redeclare(
        connection.clone(),
        names.clone(),
        declared,
        shutdown.clone(),
    ));
    Ok(())
}

/// Declares again, in the background, what `declared` says failed, until all of it is
/// declared, the connection is gone or `shutdown`: each failure is logged once, when the
/// session finds it (so a broker node down is not an ERROR a second), and its recovery once.
async fn redeclare(
    connection: std::sync::Arc<Connection>,
    names: Names,
    declared: Declared,
    shutdown: crate::shutdown::Shutdown,
) {
    if declared.is_complete() {
        return;
    }
    for (name, error) in &declared.failed {
        tracing::warn!(
            what = %name,
            error = %crate::telemetry::report(error),
            "cannot be declared now (a broker node down?): consuming the rest, retrying in the background"
        );
    }
    let mut waiting: Vec<String> = declared.failed.into_iter().map(|(name, _)| name).collect();
    let mut pause = Duration::from_secs(1);
    while !waiting.is_empty() && connection.status().connected() && shutdown.sleep(pause).await {
        let again = declare_each(&connection, &names).await;
        waiting.retain(|name| {
            let still = again.failed.iter().any(|(failed, _)| failed == name);
            if !still {
                tracing::info!(what = %name, "declared again");
            }
            still
        });
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// Declares a durable queue with `arguments`; if it exists with others (declared by an older
/// warmer), it is used as it is, with a warning that says how to have it declared anew.
async fn declare_queue(
    connection: &Connection,
    queue: &str,
    arguments: FieldTable,
) -> anyhow::Result<()> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(queue.into(), durable, arguments)
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "declared".into()).await;
            Ok(())
        }
        Err(error) if is_precondition_failed(&error) => {
            let channel = connection
                .create_channel()
                .await
                .context("opening a channel")?;
            passive_declare(&channel, queue)
                .await
                .with_context(|| format!("declaring queue {queue}"))?;
            let _ = channel.close(200, "declared".into()).await;
            if error.to_string().contains("'x-queue-type'") {
                tracing::warn!(
                    queue,
                    "the queue is a classic queue (declared by an older warmer): used as it is, but it lives on one node, and while that node is down it is unavailable; to have it declared as a replicated (quorum) queue, move or discard its messages and delete it (`rabbitmqctl delete_queue {queue}`, or the management UI): the next warmer process declares it anew"
                );
            } else {
                tracing::warn!(
                    queue,
                    "the queue exists with other arguments (declared by an older warmer): used as it is, without a length limit; delete it while it is empty to have it declared anew"
                );
            }
            Ok(())
        }
        Err(error) => Err(anyhow!(error).context(format!("declaring queue {queue}"))),
    }
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    )
}

/// Who uses the broker: each should connect as a RabbitMQ user of its own, with the narrowest
/// permissions that work ([`permissions`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// A CI worker: publishes checkout requests and reads its direct replies.
    Worker,
    /// An operator's CLI: publishes (signed) fill commands, checkout requests and rollover
    /// events, reads direct replies and queue depths, and reads, requeues and purges dead
    /// letters (`warmer dead`).
    Operator,
    /// Warmer's own processes: declare the topology, consume their queues, publish replies,
    /// refill messages and events.
    Service,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Worker, Role::Operator, Role::Service];

    pub fn name(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Operator => "operator",
            Role::Service => "service",
        }
    }

    /// What the role's user does, in a line.
    pub fn purpose(self) -> &'static str {
        match self {
            Role::Worker => {
                "a CI worker: publishes checkout requests, reads its direct replies; nothing else"
            }
            Role::Operator => {
                "the operator CLI: signed fills, checkout requests, rollover events, queue depths, dead letters"
            }
            Role::Service => {
                "warmer's processes (checkout, refill, reconcile, web, autoscale, watchdog, check)"
            }
        }
    }
}

/// A role's RabbitMQ permissions on the vhost: regular expressions of the queue and exchange
/// names it may configure (declare, delete), write (publish to, bind) and read (consume, get).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// What `role` needs, and nothing more. RabbitMQ checks nothing for the direct reply-to
/// pseudo-queue or for a passive declare, and one permission on the default exchange
/// (`amq.default`) covers every queue it routes to: a worker that may publish checkout
/// requests may also publish to `<prefix>.refill`, which is why the refill consumer believes a
/// message only from warmer's own user or signed with an operator token (see `auth.rs`).
pub fn permissions(role: Role, names: &Names) -> Permissions {
    let escaped: String = names
        .prefix()
        .chars()
        .flat_map(|c| {
            let escape = !c.is_ascii_alphanumeric() && c != '_';
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect();
    let own = format!("{escaped}\\.(checkout|refill|dead|events)");
    let nothing = "^$".to_string();
    match role {
        Role::Worker => Permissions {
            configure: nothing.clone(),
            write: "^amq\\.default$".into(),
            read: nothing,
        },
        // Reading the dead-letter queue is for `warmer dead` (list, requeue, purge).
        Role::Operator => Permissions {
            configure: nothing.clone(),
            write: format!("^(amq\\.default|{escaped}\\.events)$"),
            read: format!("^{escaped}\\.dead$"),
        },
        // Writing to its queues is for unbinding them; reading a queue with a dead-letter
        // exchange is what RabbitMQ asks of whoever declares it.
        Role::Service => Permissions {
            configure: format!("^{own}$"),
            write: format!("^(amq\\.default|{own})$"),
            read: format!("^{own}$"),
        },
    }
}

/// What the broker lets this connection's user do beyond [`Role::Service`]'s permissions, found
/// by asking for what the role must be refused, on names nobody uses: each `true` is a
/// permission broader than warmer's processes need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breadth {
    /// May declare queues and exchanges that are not warmer's.
    pub configure: bool,
    /// May publish to exchanges that are not warmer's.
    pub write: bool,
    /// May read queues that are not warmer's.
    pub read: bool,
    /// May publish as another user (the `impersonator` tag): it could forge warmer's own.
    pub impersonate: bool,
}

impl Breadth {
    /// What is broader than needed, in words; empty when nothing is.
    pub fn describe(&self) -> Vec<&'static str> {
        [
            (
                self.configure,
                "configure queues and exchanges that are not warmer's",
            ),
            (self.write, "publish to exchanges that are not warmer's"),
            (self.read, "read queues that are not warmer's"),
            (
                self.impersonate,
                "publish as another user (impersonator tag)",
            ),
        ]
        .into_iter()
        .filter_map(|(broad, what)| broad.then_some(what))
        .collect()
    }
}

/// Asks the broker, on channels of their own, for what warmer's processes must be refused:
/// declaring a queue, reading a queue and publishing to an exchange that are not warmer's
/// (names in its prefix and outside it that nobody uses), and publishing as someone else.
/// Whatever is not refused is broader than needed. Leaves nothing behind: the probe queue is
/// exclusive, and nothing is routed.
pub async fn probe_permissions(connection: &Connection, names: &Names) -> anyhow::Result<Breadth> {
    use lapin::options::BasicGetOptions;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let probes = [
        format!("{}.check-{}", names.prefix(), &id[..12]),
        format!("warmer-check-{}", &id[..12]),
    ];
    // What a refused probe is told when its name does not exist but it may use it.
    let allowed_but_missing = |result: lapin::Result<()>| match result {
        Ok(()) => true,
        Err(error) => crate::amqp::is_not_found(&error),
    };
    let mut breadth = Breadth::default();
    for name in &probes {
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let declared = probe(connection, async |channel| {
            channel
                .queue_declare(name.as_str().into(), exclusive, FieldTable::default())
                .await
                .map(|_| ())
        });
        breadth.configure |= declared.await?.is_ok();
        let read = probe(connection, async |channel| {
            let missing = format!("{name}-read");
            channel
                .basic_get(missing.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .map(|_| ())
        });
        breadth.read |= allowed_but_missing(read.await?);
        let missing = format!("{name}-write");
        let written = publish_probe(connection, &missing, "", None).await?;
        breadth.write |= allowed_but_missing(written);
    }
    // Refused with PRECONDITION_FAILED unless the user may impersonate.
    let impersonated = publish_probe(connection, "", &probes[0], Some(&probes[1]));
    breadth.impersonate = impersonated.await?.is_ok();
    Ok(breadth)
}

/// Runs `op` on a channel of its own, then closes it: a refusal closes the channel anyway.
async fn probe<T>(
    connection: &Connection,
    op: impl AsyncFnOnce(&lapin::Channel) -> lapin::Result<T>,
) -> anyhow::Result<lapin::Result<T>> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    let result = op(&channel).await;
    let _ = channel.close(200, "probed".into()).await;
    Ok(result)
}

/// Publishes an empty message to `exchange` with `routing_key` (as `user_id`, if given) and
/// waits for the broker's confirm: the broker's answer to whether it may be published.
async fn publish_probe(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    user_id: Option<&str>,
) -> anyhow::Result<lapin::Result<()>> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    probe(connection, async |channel| {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut properties = lapin::BasicProperties::default();
        if let Some(user) = user_id {
            properties = properties.with_user_id(user.into());
        }
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                b"",
                properties,
            )
            .await?
            .await
            .map(|_| ())
    })
    .await
}

/// The queues [`QueueMonitor`] reads: each consumer process type's (what HireFire and `warmer
/// autoscale` scale by), and the dead-letter queue (as process `dead`), whose depth operators
/// watch.
fn monitored_queues(names: &Names) -> [(&'static str, String); 3] {
    [
        (ProcessType::Checkout.name(), names.checkout_queue()),
        (ProcessType::Refill.name(), names.refill_queue()),
        ("dead", names.dead_letter_queue()),
    ]
}

/// One monitored queue's state; counts are `None` when the broker could not give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub process: &'static str,
    pub queue: String,
    pub ready: Option<u32>,
    pub consumers: Option<u32>,
    pub state: QueueState,
}

/// Whether a queue can be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueState {
    Ok,
    /// Not declared yet (no consuming process has run).
    Missing,
    /// It exists but the broker cannot serve it now, and why: a classic queue whose node is
    /// down, a quorum queue without a majority.
    Unavailable(String),
}

/// Reads the depths of the consumer queues and the dead-letter queue on a connection of its own.
/// Declares nothing.
pub struct QueueMonitor {
    connection: LazyConnection,
    names: Names,
    timeout: Duration,
}

impl QueueMonitor {
    /// `name` names the connection in RabbitMQ; [`Self::depths`] takes at most `timeout`.
    pub fn new(url: ServerUrl, name: String, names: Names, timeout: Duration) -> Self {
        Self {
            connection: LazyConnection::new(url, name),
            names,
            timeout,
        }
    }

    /// Ready messages and consumers of every consumer queue and of the dead-letter queue, by
    /// passive declare, each queue on its own: one that is unavailable is said so, the others
    /// are read. An error only when the broker cannot be reached (the connection is then
    /// dropped, so a hung one does not fail every later call).
    pub async fn depths(&self) -> anyhow::Result<Vec<QueueDepth>> {
        let depths = tokio::time::timeout(self.timeout, async {
            let connection = self.connection.get().await?;
            let queues = monitored_queues(&self.names);
            let mut depths = Vec::with_capacity(queues.len());
            for (process, queue) in queues {
                let (state, counts) = queue_depth(&connection, &queue).await?;
                depths.push(QueueDepth {
                    process,
                    queue,
                    ready: counts.map(|d| d.0),
                    consumers: counts.map(|d| d.1),
                    state,
                });
            }
            anyhow::Ok(depths)
        })
        .await
        .map_err(|_| anyhow!("reading queue depths from RabbitMQ timed out"))
        .and_then(|depths| depths);
        if depths.is_err() {
            self.connection.reset().await;
        }
        depths
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.connection.close().await;
    }
}

/// `queue`'s state and (ready messages, consumers), on a channel of its own. An error only when
/// the connection itself fails.
async fn queue_depth(
    connection: &Connection,
    queue: &str,
) -> anyhow::Result<(QueueState, Option<(u32, u32)>)> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    match passive_declare(&channel, queue).await {
        Ok(q) => {
            let _ = channel.close(200, "ok".into()).await;
            Ok((
                QueueState::Ok,
                Some((q.message_count(), q.consumer_count())),
            ))
        }
        // RabbitMQ says NOT_FOUND for a queue whose home node is down, too.
        Err(error) if is_not_found(&error) && !error.to_string().contains("home node") => {
            Ok((QueueState::Missing, None))
        }
        Err(_) if !connection.status().connected() => {
            anyhow::bail!("the connection to RabbitMQ was lost")
        }
        Err(error) => Ok((QueueState::Unavailable(error.to_string()), None)),
    }
}
