//! `warmer dead list | requeue | purge`: the dead letters waiting in `<prefix>.dead`, shown with
//! their secrets redacted, put back into the queue they died in, or removed.
//!
//! # Reading a quorum queue without losing or reordering it
//!
//! AMQP 0-9-1 has no way to look at a queue without taking its messages. `list` (and `requeue`,
//! which must find the dead letters it was asked for) takes at most `--limit` of them with
//! manual acks (one consumer, prefetch = how many it wants, so it is never given more), cancels
//! its consumer, and gives each back with `basic.nack(requeue)`, one by one in the order they
//! came, before closing the channel. How RabbitMQ counts a message given back decides whether
//! that can lose anything, because a quorum queue drops a message returned more often than its
//! delivery limit, and `<prefix>.dead` has nowhere to dead-letter it:
//!
//! | RabbitMQ | delivery limit of `<prefix>.dead` | what counts toward it | where a nacked message goes |
//! |---|---|---|---|
//! | 3.x | none (declared without `x-delivery-limit`) | every return (nack, reject, closed channel) | to the back of the queue (with a limit set: back near the head) |
//! | 4.0–4.2 | 20 by default | every return, whichever way | near the head, in the order nacked |
//! | 4.3 and later | 20 by default | only *failed* deliveries: `basic.reject` and a channel or connection closed with messages unacked; **not** `basic.nack` | near the head, in the order nacked |
//!
//! So `basic.nack` is the one way back that loses nothing on 3.x and 4.3+ (closing the channel
//! would be counted as a failed delivery on 4.3+), and no way back avoids the count on 4.0–4.2:
//! there, each reading costs each dead letter read one of its 20, and a dead letter read 21
//! times is gone. Only a policy helps on those versions (`delivery-limit: -1` on the dead queue;
//! a policy applies to an existing queue); `list` says so once the dead letters it read show
//! (in `x-delivery-count`) that they have been counted [`WORN`] times or more. On 3.x (verified
//! on 3.10.8) a list that reads every dead letter puts them back in the same order, once it has
//! waited for the queue to hold them all again before closing its channel ([`give_back`]); one
//! that reads only the oldest `--limit` of more moves those behind the others: nothing is lost,
//! and neither `list` nor `requeue` depends on the order (an id names a dead letter wherever it
//! is).
//!
//! Why the queue's arguments are not changed instead (`x-delivery-limit: -1` at declaration):
//! RabbitMQ refuses to change the arguments of an existing queue (PRECONDITION_FAILED; warmer
//! then uses it as it is), so deployments that have the queue would keep the default of 20; and
//! RabbitMQ 3.x accepts -1 as an argument and reads it as "drop at the first return" (verified
//! on 3.10.8: one reading emptied a queue declared with it; as a policy, 3.x refuses -1), which
//! would make the first `list` delete every dead letter. On 4.0 and later, -1 (argument or
//! policy) means no limit.
//!
//! # Requeueing
//!
//! A dead letter goes back only to the queue its headers say it died in (`x-first-death-queue`,
//! or the refill queue for the refill consumer's own dead letters, marked `x-warmer-rejected`),
//! and only if that is this deployment's checkout or refill queue: never to another queue a
//! header names (anyone who may publish can write a dead letter). It is published with
//! confirms, `mandatory` (a missing queue is noticed, not a silent drop), and acked from the dead
//! queue only once the broker has confirmed it: a crash in between leaves it in both queues, a
//! duplicate rather than a loss. It keeps its body and properties (its `message_id`, so a
//! checkout keeps its identity), without the headers of its death (`x-death`,
//! `x-first-death-*`, `x-last-death-*`, delivery counts, `x-warmer-rejected`), so its delivery
//! limit starts afresh; its `user_id` only if it is this broker user's (the broker refuses any
//! other). A checkout request whose requester has stopped waiting (it expired, or its deadline
//! has passed) is not requeued: nobody would take its reply.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde_json::{Value, json};

use crate::amqp::{is_not_found, is_soft, passive_declare};
use crate::clock::{now_ms, now_secs};
use crate::context::Context;
use crate::names::Names;
use crate::pool::PoolName;

/// Dead letters `list` shows, and `requeue` looks through, unless told otherwise.
pub const DEFAULT_LIMIT: u16 = 100;
/// The most either reads at once.
pub const MAX_LIMIT: u16 = 1000;
/// Returns (`x-delivery-count`) from which `list` warns that the broker counts its readings.
pub const WORN: i64 = 10;
/// How long reading may take in all, and how long it waits for the next message.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const NEXT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long giving back waits for the queue to hold what it gave back (see [`give_back`]).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a publisher confirm of a requeued message.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of a body shown in the table (JSON gets all of it, up to [`BODY_MAX`]).
const BODY_SHOWN: usize = 160;
const BODY_MAX: usize = 8192;
/// Headers a requeued message leaves behind: those of its death.
const DEATH_HEADERS: [&str; 6] = [
    "x-death",
    "x-delivery-count",
    "x-acquired-count",
    "x-warmer-rejected",
    "x-first-death-",
    "x-last-death-",
];

/// `warmer dead …`.
#[derive(Debug, clap::Subcommand)]
pub enum DeadCommand {
    /// Show the dead letters, oldest first, without removing or reordering any.
    ///
    /// One row each: ID (the message's message_id when it has one of letters, digits and
    /// `._:@/+=-`, else `h-` and 12 hex digits of a SHA-256 of its body, timestamp and death
    /// headers; what `requeue --id` takes), FROM (the queue it died in), WHY (`expired`,
    /// `delivery_limit`, `rejected`, `maxlen`, or the refill consumer's reason), DIED (UTC) and
    /// AGE, POOL, and the BODY with every secret-like field (token, signer, password, secret,
    /// key…) shown as `[redacted]` and control characters escaped. Then the total.
    List {
        /// Show at most this many, the oldest (1 to 1000); the total is counted anyway.
        #[arg(long, default_value_t = DEFAULT_LIMIT, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_LIMIT)))]
        limit: u16,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back into the queue they died in.
    ///
    /// Only this deployment's checkout or refill queue, nothing else, with publisher confirms,
    /// removing each from the dead queue once the broker has it: a crash in between leaves a
    /// duplicate, never a loss. It goes without the headers of its death (its delivery limit
    /// starts afresh). A checkout request whose requester stopped waiting is kept. Exits 1 if
    /// an ID was not found or not requeued.
    Requeue {
        /// The ID of a dead letter, as `warmer dead list` shows it; several may follow.
        #[arg(long = "id", num_args = 1.., required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter among the oldest --limit.
        #[arg(long)]
        all: bool,
        /// Look through at most this many dead letters, the oldest (1 to 1000).
        #[arg(long, default_value_t = DEFAULT_LIMIT, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_LIMIT)))]
        limit: u16,
    },
    /// Remove every dead letter. Without --yes, only says how many it would remove.
    Purge {
        /// Remove them.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters `requeue` puts back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<String>),
    All,
}

/// Runs `command`: what to print, and whether it failed (exit 1).
pub async fn run(ctx: &Context, command: DeadCommand) -> anyhow::Result<(String, bool)> {
    match command {
        DeadCommand::List { limit, json } => Ok((list(ctx, limit, json).await?, false)),
        DeadCommand::Requeue { ids, all, limit } => {
            let selection = if all {
                Selection::All
            } else {
                Selection::Ids(ids)
            };
            requeue(ctx, &selection, limit).await
        }
        DeadCommand::Purge { yes } => Ok((purge(ctx, yes).await?, false)),
    }
}

/// Records a change to the dead letters in the history of changes (Redis); these commands need
/// only RabbitMQ, so a failure is said in `out` and the change stands.
async fn record(ctx: &Context, command: &str, change: String, out: &mut String) {
    if let Some(failed) = ctx.store.record_change(command, None, change).await {
        out.push_str(&failed);
    }
}

// --- Reading ----------------------------------------------------------------------------------

/// Where a dead letter died, as its headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Checkout,
    Refill,
    /// A queue that is not this deployment's checkout or refill queue (shown escaped).
    Elsewhere(String),
    /// No header says.
    Unknown,
}

impl Source {
    fn label(&self) -> String {
        match self {
            Source::Checkout => "checkout".into(),
            Source::Refill => "refill".into(),
            Source::Elsewhere(queue) => queue.clone(),
            Source::Unknown => "?".into(),
        }
    }

    /// The queue a requeue publishes to: only this deployment's own.
    fn queue(&self, names: &Names) -> Option<String> {
        match self {
            Source::Checkout => Some(names.checkout_queue()),
            Source::Refill => Some(names.refill_queue()),
            Source::Elsewhere(_) | Source::Unknown => None,
        }
    }
}

/// What the headers and body of one dead letter say, everything from outside made printable.
#[derive(Debug, Clone)]
struct Letter {
    id: String,
    source: Source,
    /// `expired`, `delivery_limit`, …, or `rejected: <the refill consumer's reason>`.
    reason: String,
    /// RabbitMQ's reason (`expired`, …), `rejected` for the refill consumer's own.
    reason_code: String,
    /// The refill consumer's reason, for its own dead letters (`x-warmer-rejected`).
    rejected_why: Option<String>,
    /// When it died (its latest `x-death`), else when it was sent (`timestamp`), in seconds.
    died_at: Option<u64>,
    pool: Option<String>,
    /// The body, secrets redacted: JSON if it was JSON, else escaped text.
    body: Value,
    /// `x-delivery-count`, and whether the broker also sent `x-acquired-count` (4.3+).
    returns: Option<i64>,
    acquired_count: bool,
}

/// Messages taken from the dead queue, unacked, on `channel`; and how many it held.
struct Batch {
    channel: Channel,
    deliveries: Vec<Delivery>,
    total: u32,
}

/// Takes the oldest `limit` dead letters, unacked: give each back ([`give_back`]) or ack it.
async fn take(connection: &Connection, names: &Names, limit: u16) -> anyhow::Result<Batch> {
    let queue = names.dead_letter_queue();
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    let declared = passive_declare(&channel, &queue)
        .await
        .map_err(|error| unusable(error, &queue, connection))?;
    let total = declared.message_count();
    let wanted = total.min(u32::from(limit));
    let mut deliveries = Vec::new();
    if wanted == 0 {
        return Ok(Batch {
            channel,
            deliveries,
            total,
        });
    }
    let wanted = u16::try_from(wanted).unwrap_or(limit);
    channel
        .basic_qos(wanted, BasicQosOptions::default())
        .await
        .context("setting prefetch")?;
    let tag = format!("warmer-dead-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| unusable(error, &queue, connection))?;
    let started = std::time::Instant::now();
    while deliveries.len() < usize::from(wanted) {
        let left = READ_TIMEOUT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left.min(NEXT_TIMEOUT), consumer.next()).await {
            Ok(Some(Ok(delivery))) => deliveries.push(delivery),
            Ok(Some(Err(error))) => {
                return Err(anyhow!(error).context(format!("reading {queue}")));
            }
            // Fewer than it held (another reader, or the oldest dropped at the length limit).
            Ok(None) | Err(_) => break,
        }
    }
    // No more deliveries: what is given back must not come straight back to this consumer.
    channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await
        .with_context(|| format!("cancelling the reader of {queue}"))?;
    Ok(Batch {
        channel,
        deliveries,
        total,
    })
}

/// The error for a dead queue that cannot be read, saying what to do.
fn unusable(error: lapin::Error, queue: &str, connection: &Connection) -> anyhow::Error {
    if is_not_found(&error) {
        anyhow!(
            "queue {queue} does not exist yet: start a consuming process (`warmer checkout` or `warmer refill`) once to declare it"
        )
    } else if is_soft(&error, AMQPSoftError::ACCESSREFUSED) {
        anyhow!(
            "this broker user may not read {queue}: give it the operator role's permissions (`warmer permissions --role operator`)"
        )
    } else if !connection.status().connected() {
        anyhow!(error).context("the connection to RabbitMQ was lost")
    } else {
        anyhow!(error).context(format!("reading {queue}"))
    }
}

/// Gives `deliveries` back to `queue` with `basic.nack(requeue)`, one by one in the order they
/// came (see the module's header for why nack), waits until the queue holds `ready` messages
/// again (at most [`SETTLE_TIMEOUT`]), then closes the channel.
///
/// The wait is for RabbitMQ 3.x, where a nack to a queue without a delivery limit is handled
/// apart from the queue's log and appended to its back only later: a channel closed before that
/// returns the messages not yet appended to the head instead (seen on 3.10.8 under load), which
/// loses nothing but changes their order.
async fn give_back(
    channel: Channel,
    deliveries: Vec<Delivery>,
    queue: &str,
    ready: u32,
) -> anyhow::Result<()> {
    let mut failed = None;
    let given = !deliveries.is_empty();
    for delivery in deliveries {
        let nacked = delivery
            .acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await;
        if let Err(error) = nacked {
            failed.get_or_insert(error);
        }
    }
    if given && failed.is_none() {
        let started = std::time::Instant::now();
        while started.elapsed() < SETTLE_TIMEOUT {
            match passive_declare(&channel, queue).await {
                Ok(q) if q.message_count() < ready => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => break,
            }
        }
    }
    // Closing waits for the broker, which has handled every nack before it answers.
    let closed = channel.close(200, "given back".into()).await;
    match (failed, closed) {
        (None, Ok(())) => Ok(()),
        (Some(error), _) | (None, Err(error)) => Err(anyhow!(error).context(
            "giving the dead letters back (the broker returns them when the connection closes)",
        )),
    }
}

// --- What a dead letter says ------------------------------------------------------------------

fn headers(properties: &BasicProperties) -> BTreeMap<String, AMQPValue> {
    properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn integer(value: &AMQPValue) -> Option<i64> {
    Some(match value {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

/// The latest death (RabbitMQ keeps it first in `x-death`): its time, in seconds.
fn latest_death(headers: &BTreeMap<String, AMQPValue>) -> Option<u64> {
    let AMQPValue::FieldArray(deaths) = headers.get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else {
        return None;
    };
    match latest.inner().get("time")? {
        AMQPValue::Timestamp(secs) => Some(*secs),
        other => integer(other).and_then(|n| u64::try_from(n).ok()),
    }
}

/// Reads one dead letter. Nothing in it can make this panic.
fn read_letter(names: &Names, data: &[u8], properties: &BasicProperties) -> Letter {
    let headers = headers(properties);
    let header_text = |name: &str| headers.get(name).and_then(text);
    let rejected = header_text("x-warmer-rejected");
    let first_queue = header_text("x-first-death-queue");
    let source = match (&first_queue, &rejected) {
        (Some(queue), _) if *queue == names.checkout_queue() => Source::Checkout,
        (Some(queue), _) if *queue == names.refill_queue() => Source::Refill,
        (Some(queue), _) => Source::Elsewhere(printable(queue, 80)),
        (None, Some(_)) => Source::Refill,
        (None, None) => Source::Unknown,
    };
    let (reason_code, reason) = match (&rejected, header_text("x-first-death-reason")) {
        (Some(why), _) if first_queue.is_none() => {
            ("rejected".to_string(), format!("rejected: {why}"))
        }
        (_, Some(code)) => (code.clone(), code),
        (Some(why), None) => ("rejected".to_string(), format!("rejected: {why}")),
        (None, None) => ("?".to_string(), "?".to_string()),
    };
    let died_at = latest_death(&headers).or(*properties.timestamp());
    let pool = match source {
        Source::Checkout => crate::checkout::request::parse(data)
            .ok()
            .map(|request| request.pool.to_string()),
        Source::Refill => refill_pool(data),
        _ => None,
    };
    Letter {
        id: id_of(data, properties, &headers, died_at),
        source,
        reason: printable(&reason, 80),
        reason_code: printable(&reason_code, 40),
        rejected_why: rejected.as_deref().map(|why| printable(why, 80)),
        died_at,
        pool: pool.map(|p| printable(&p, 120)),
        body: shown_body(data),
        returns: headers.get("x-delivery-count").and_then(integer),
        acquired_count: headers.contains_key("x-acquired-count"),
    }
}

/// The pool a refill message names, `all pools` for a fill of every pool.
fn refill_pool(data: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(data).ok()?;
    match value.get("pool") {
        Some(Value::String(pool)) => pool.parse::<PoolName>().ok().map(|p| p.to_string()),
        None | Some(Value::Null) if value.get("command") == Some(&json!("fill")) => {
            Some("all pools".into())
        }
        _ => None,
    }
}

/// The id `requeue --id` takes: the `message_id` when it is plain, else a hash of what does not
/// change while the message waits (its body, timestamp and death headers).
fn id_of(
    data: &[u8],
    properties: &BasicProperties,
    headers: &BTreeMap<String, AMQPValue>,
    died_at: Option<u64>,
) -> String {
    if let Some(id) = properties.message_id()
        && is_plain_id(id.as_str())
    {
        return id.as_str().to_string();
    }
    let mut hashed = openssl::sha::Sha256::new();
    let timestamp = properties.timestamp().map(|t| t.to_string());
    let died = died_at.map(|t| t.to_string());
    let death = |name: &str| headers.get(name).and_then(text);
    let parts = [
        Some(String::from_utf8_lossy(data).into_owned()),
        timestamp,
        died,
        death("x-first-death-queue"),
        death("x-first-death-reason"),
        death("x-warmer-rejected"),
    ];
    for part in parts {
        let part = part.unwrap_or_default();
        // Length-prefixed, so that no two different lists of parts hash the same bytes.
        hashed.update(&(part.len() as u64).to_be_bytes());
        hashed.update(part.as_bytes());
    }
    let digest = hashed.finish();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

/// An id shown as it is: short, and only characters that survive a terminal and a shell.
fn is_plain_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with("h-")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:@/+=-".contains(c))
}

// --- Showing without secrets or control characters --------------------------------------------

/// Whether a JSON field's name is one a secret goes by.
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "token",
        "signer",
        "password",
        "passwd",
        "secret",
        "key",
        "credential",
    ]
    .iter()
    .any(|secret| name.contains(secret))
}

/// Replaces the value of every secret-like field, however deep, by `"[redacted]"`.
fn redact(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                if is_secret_name(name) {
                    *field = Value::String("[redacted]".into());
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Every string of `value` (names too) made printable.
fn sanitized(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(printable(&s, BODY_MAX)),
        Value::Array(items) => Value::Array(items.into_iter().map(sanitized).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(name, field)| (printable(&name, 200), sanitized(field)))
                .collect(),
        ),
        other => other,
    }
}

/// The body to show: its JSON with secrets redacted, or (not JSON) its text with anything that
/// looks like a secret-like JSON field's value redacted, escaped and cut at [`BODY_MAX`].
fn shown_body(data: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(data) {
        Ok(mut value) => {
            redact(&mut value);
            sanitized(value)
        }
        Err(_) => {
            let text = String::from_utf8_lossy(&data[..data.len().min(BODY_MAX * 4)]);
            Value::String(printable(&redact_text(&text), BODY_MAX))
        }
    }
}

/// In text that is not JSON (JSON cut short, say), the string after `"<secret-like name>":`
/// replaced by `"[redacted]"`, up to its closing quote or the end.
fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('"') {
        let after_open = &rest[open + 1..];
        let Some(close) = after_open.find('"') else {
            break;
        };
        let name = &after_open[..close];
        let after_name = &after_open[close + 1..];
        let value_start = after_name
            .trim_start()
            .strip_prefix(':')
            .map(str::trim_start)
            .and_then(|v| v.strip_prefix('"'));
        match value_start {
            Some(value) if is_secret_name(name) => {
                out.push_str(&rest[..open]);
                let _ = write!(out, "\"{name}\":\"[redacted]\"");
                // Past the value's closing quote (one not escaped), or to the end.
                let mut escaped = false;
                let end = value
                    .char_indices()
                    .find(|&(_, c)| {
                        let done = c == '"' && !escaped;
                        escaped = c == '\\' && !escaped;
                        done
                    })
                    .map_or(value.len(), |(i, _)| i + 1);
                rest = &value[end..];
            }
            _ => {
                out.push_str(&rest[..open + 1 + close + 1]);
                rest = after_name;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `text` with every control or bidirectional-override character escaped (`\u{1b}`), so that
/// nothing from a message can move the cursor or hide text on a terminal; cut at `max` chars.
fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

fn when(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| format!("{secs}s"), |t| t.to_string())
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let kept: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

/// The warning `list` adds when the broker counts its readings against the delivery limit.
fn worn_warning(letters: &[Letter], queue: &str) -> Option<String> {
    // RabbitMQ 4.3+ sends `x-acquired-count` and counts no nack: nothing wears there.
    let worn = letters
        .iter()
        .filter(|l| !l.acquired_count)
        .filter_map(|l| l.returns)
        .max()
        .filter(|n| *n >= WORN)?;
    // The queue's name as a regular expression of itself, quoted for a POSIX shell.
    let pattern: String = queue
        .chars()
        .flat_map(|c| {
            let escape = !c.is_ascii_alphanumeric() && c != '_';
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect();
    let quoted = format!("'^{}$'", pattern.replace('\'', r"'\''"));
    Some(format!(
        "warning: these dead letters have been given back up to {worn} times (x-delivery-count). RabbitMQ 4.0 to 4.2 counts every reading (list, requeue) against a quorum queue's delivery limit, 20 unless a policy says otherwise, and drops a dead letter past it; on those versions run `rabbitmqctl set_policy warmer-dead {quoted} '{{\"delivery-limit\":-1}}' --apply-to queues` (with a --priority above any other policy matching the queue). RabbitMQ 4.3 and later do not count these readings; 3.x has no limit unless one was set (and never take -1 there as a queue argument: 3.x drops at the first return)"
    ))
}

// --- The commands -----------------------------------------------------------------------------

/// `warmer dead list`.
pub async fn list(ctx: &Context, limit: u16, as_json: bool) -> anyhow::Result<String> {
    let limit = limit.clamp(1, MAX_LIMIT);
    let connection = ctx.amqp("dead-letters").await?;
    let listed = async {
        let batch = take(&connection, &ctx.names, limit).await?;
        let letters: Vec<Letter> = batch
            .deliveries
            .iter()
            .map(|d| read_letter(&ctx.names, &d.data, &d.properties))
            .collect();
        let queue = ctx.names.dead_letter_queue();
        give_back(batch.channel, batch.deliveries, &queue, batch.total).await?;
        anyhow::Ok((letters, batch.total))
    }
    .await;
    let _ = connection.close(200, "bye".into()).await;
    let (letters, total) = listed?;
    let queue = ctx.names.dead_letter_queue();
    let warning = worn_warning(&letters, &queue);
    let now = now_secs();
    if as_json {
        let rows: Vec<Value> = letters
            .iter()
            .map(|letter| {
                json!({
                    "id": letter.id,
                    "from": letter.source.label(),
                    "queue": letter.source.queue(&ctx.names),
                    "reason": letter.reason,
                    "died_at": letter.died_at.map(when),
                    "age_seconds": letter.died_at.map(|t| now.saturating_sub(t)),
                    "pool": letter.pool,
                    "body": letter.body,
                })
            })
            .collect();
        let out = json!({
            "queue": queue,
            "total": total,
            "shown": letters.len(),
            "dead_letters": rows,
            "warning": warning,
        });
        return Ok(format!("{out}\n"));
    }
    if letters.is_empty() && total == 0 {
        return Ok("no dead letters\n".into());
    }
    let rows: Vec<[String; 7]> = letters
        .iter()
        .map(|letter| {
            let body = match &letter.body {
                Value::String(text) => cut(text, BODY_SHOWN),
                json => cut(&json.to_string(), BODY_SHOWN),
            };
            [
                letter.id.clone(),
                cut(&letter.source.label(), 40),
                cut(&letter.reason, 48),
                letter.died_at.map_or_else(|| "-".into(), when),
                letter
                    .died_at
                    .map_or_else(|| "-".into(), |t| age(now.saturating_sub(t))),
                letter.pool.clone().unwrap_or_else(|| "-".into()),
                body,
            ]
        })
        .collect();
    let header = ["ID", "FROM", "WHY", "DIED (UTC)", "AGE", "POOL", "BODY"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(out, "{cell:<width$}  ");
        }
        let _ = writeln!(out, "{}", row[6]);
    }
    let _ = writeln!(
        out,
        "{total} dead letters, {} shown{}",
        letters.len(),
        if u64::from(total) > letters.len() as u64 {
            " (the oldest; --limit shows more)"
        } else {
            ""
        }
    );
    if let Some(warning) = warning {
        let _ = writeln!(out, "{warning}");
    }
    Ok(out)
}

/// What became of one dead letter `requeue` was asked for.
enum Fate {
    Requeued { queue: String, note: Option<String> },
    Kept(String),
}

/// `warmer dead requeue`: what to print, and whether anything asked for was not requeued.
pub async fn requeue(
    ctx: &Context,
    selection: &Selection,
    limit: u16,
) -> anyhow::Result<(String, bool)> {
    let limit = limit.clamp(1, MAX_LIMIT);
    let connection = ctx.amqp("dead-letters").await?;
    let done = requeue_on(ctx, &connection, selection, limit).await;
    let _ = connection.close(200, "bye".into()).await;
    let (mut out, failed) = done?;
    // The last line is the count: `N requeued; M dead letters left in …`.
    let summary = out.lines().last().unwrap_or_default().to_string();
    if !summary.starts_with("0 requeued") {
        record(ctx, "dead requeue", summary, &mut out).await;
    }
    Ok((out, failed))
}

async fn requeue_on(
    ctx: &Context,
    connection: &Connection,
    selection: &Selection,
    limit: u16,
) -> anyhow::Result<(String, bool)> {
    let names = &ctx.names;
    let dead = names.dead_letter_queue();
    let batch = take(connection, names, limit).await?;
    let (total, seen) = (batch.total, batch.deliveries.len());
    let mut wanted: Vec<String> = match selection {
        Selection::Ids(ids) => ids.clone(),
        Selection::All => Vec::new(),
    };
    let mut unique = std::collections::HashSet::new();
    wanted.retain(|id| unique.insert(id.clone()));
    let publisher = match connection.create_channel().await {
        Ok(channel) => match channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
        {
            Ok(()) => channel,
            Err(error) => {
                give_back(batch.channel, batch.deliveries, &dead, total).await?;
                return Err(anyhow!(error).context("enabling publisher confirms"));
            }
        },
        Err(error) => {
            give_back(batch.channel, batch.deliveries, &dead, total).await?;
            return Err(anyhow!(error).context("opening a publishing channel"));
        }
    };
    let own_user = ctx.config.amqp_user();
    let mut out = String::new();
    let mut found: Vec<String> = Vec::new();
    let mut failed = false;
    let mut requeued = 0;
    let mut stopped: Option<String> = None;
    let mut left = Vec::new();
    for delivery in batch.deliveries {
        let letter = read_letter(names, &delivery.data, &delivery.properties);
        let chosen = match selection {
            Selection::All => true,
            Selection::Ids(_) => wanted.contains(&letter.id),
        };
        if !chosen || stopped.is_some() {
            left.push(delivery);
            continue;
        }
        found.push(letter.id.clone());
        let fate = match requeue_one(&publisher, names, &own_user, &letter, &delivery).await {
            Ok(fate) => fate,
            Err(error) => {
                let why = crate::telemetry::report(&error);
                stopped = Some(format!(
                    "stopped at {}: {why}; it may have reached its queue and is still a dead letter (a duplicate at worst); the rest were left as they were",
                    letter.id
                ));
                failed = true;
                left.push(delivery);
                continue;
            }
        };
        match fate {
            Fate::Requeued { queue, note } => {
                // Acked only now that the broker has confirmed the copy.
                if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                    stopped = Some(format!(
                        "stopped at {}: it reached {queue} but could not be removed from the dead queue ({error}): it is in both (a duplicate); the rest were left as they were",
                        letter.id
                    ));
                    failed = true;
                    continue;
                }
                requeued += 1;
                let _ = write!(
                    out,
                    "requeued {} ({}, {}) to {queue}",
                    letter.id,
                    letter.source.label(),
                    letter.reason_code
                );
                match note {
                    Some(note) => {
                        let _ = writeln!(out, "; {note}");
                    }
                    None => out.push('\n'),
                }
            }
            Fate::Kept(why) => {
                if matches!(selection, Selection::Ids(_)) {
                    failed = true;
                }
                let _ = writeln!(out, "kept {}: {why}", letter.id);
                left.push(delivery);
            }
        }
    }
    let _ = publisher.close(200, "bye".into()).await;
    // The dead letters left go back in the order they came; closing waits for every ack too.
    let ready = total.saturating_sub(u32::try_from(requeued).unwrap_or(u32::MAX));
    give_back(batch.channel, left, &dead, ready).await?;
    if let Some(stopped) = stopped {
        let _ = writeln!(out, "{stopped}");
    }
    for id in wanted.iter().filter(|id| !found.contains(id)) {
        failed = true;
        let further = if u64::from(total) > seen as u64 {
            format!("; raise --limit (at most {MAX_LIMIT}) to look further")
        } else {
            "; it may have been requeued or purged already".into()
        };
        let _ = writeln!(
            out,
            "not found: no dead letter {} among the {seen} oldest of {total}{further}",
            printable(id, 128)
        );
    }
    let _ = writeln!(
        out,
        "{requeued} requeued; {} dead letters left in {}",
        u64::from(total).saturating_sub(requeued),
        names.dead_letter_queue()
    );
    Ok((out, failed))
}

/// Publishes `letter` back to its queue and waits for the broker's confirm; `Kept` (with why)
/// if it may not or need not go back. An error: the outcome is unknown.
async fn requeue_one(
    publisher: &Channel,
    names: &Names,
    own_user: &str,
    letter: &Letter,
    delivery: &Delivery,
) -> anyhow::Result<Fate> {
    let Some(queue) = letter.source.queue(names) else {
        return Ok(Fate::Kept(match &letter.source {
            Source::Elsewhere(queue) => format!(
                "it died in `{queue}`, not in this deployment's checkout or refill queue: requeue puts nothing anywhere else"
            ),
            _ => "no header says which queue it died in (x-first-death-queue): it is not requeued anywhere".into(),
        }));
    };
    if letter.source == Source::Checkout
        && let Some(gone) = requester_gone(letter, &delivery.properties)
    {
        return Ok(Fate::Kept(format!(
            "a checkout request whose requester has stopped waiting ({gone}): nobody would take its reply; `warmer dead purge --yes` removes it"
        )));
    }
    let (properties, dropped_user) = requeued_properties(&delivery.properties, own_user);
    let confirm = async {
        publisher
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await?
            .await
    };
    let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| anyhow!("no publisher confirm within {CONFIRM_TIMEOUT:?}"))?
        .with_context(|| format!("publishing to {queue}"))?;
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => {}
        // One publish at a time on this channel: a return is this message's.
        Confirmation::Ack(Some(_)) => {
            return Ok(Fate::Kept(format!(
                "queue {queue} does not exist: start a consuming process (`warmer checkout` or `warmer refill`) once to declare it"
            )));
        }
        Confirmation::Nack(_) => {
            return Ok(Fate::Kept(format!(
                "the broker refused it (nack): is {queue} full? (see `warmer status`)"
            )));
        }
    }
    let mut notes = Vec::new();
    let again = "unless what made it invalid has changed, it is rejected again";
    match &letter.rejected_why {
        Some(why) => notes.push(format!("the refill consumer rejected it ({why}): {again}")),
        None if letter.reason_code == "rejected" => {
            notes.push(format!("its consumer rejected it: {again}"));
        }
        None => {}
    }
    if let Some(user) = dropped_user {
        notes.push(format!(
            "sent by broker user `{user}`, it goes back without that user_id (the broker lets no one else send it): with WARMER_AUTH_TOKENS set, the refill consumer refuses a hint or an unsigned fill from anyone but warmer's own user"
        ));
    }
    Ok(Fate::Requeued {
        queue,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    })
}

/// Why a dead checkout request's requester is no longer waiting, if it is not: it expired, or
/// its deadline (as the checkout consumer reads it, from when it died) has passed.
fn requester_gone(letter: &Letter, properties: &BasicProperties) -> Option<String> {
    if letter.reason_code == "expired" {
        return Some("it expired unanswered".into());
    }
    let died_ms = letter
        .died_at
        .map_or_else(now_ms, |secs| secs.saturating_mul(1000));
    let deadline = crate::checkout::request::deadline(properties, died_ms).ok()?;
    (deadline <= now_ms()).then(|| format!("its deadline was {}", when(deadline / 1000)))
}

/// The properties a requeued message goes with: its own, without the headers of its death, and
/// without a `user_id` other than `own_user`'s (returned, to be said).
fn requeued_properties(
    properties: &BasicProperties,
    own_user: &str,
) -> (BasicProperties, Option<String>) {
    let mut out = BasicProperties::default();
    macro_rules! keep {
        ($get:ident, $with:ident) => {
            if let Some(value) = properties.$get() {
                out = out.$with(value.clone());
            }
        };
    }
    keep!(content_type, with_content_type);
    keep!(content_encoding, with_content_encoding);
    keep!(delivery_mode, with_delivery_mode);
    keep!(priority, with_priority);
    keep!(correlation_id, with_correlation_id);
    keep!(reply_to, with_reply_to);
    keep!(expiration, with_expiration);
    keep!(message_id, with_message_id);
    keep!(timestamp, with_timestamp);
    keep!(kind, with_type);
    keep!(app_id, with_app_id);
    keep!(cluster_id, with_cluster_id);
    if let Some(headers) = properties.headers() {
        let mut kept = FieldTable::default();
        for (name, value) in headers.inner() {
            let death = DEATH_HEADERS
                .iter()
                .any(|h| name.as_str() == *h || (h.ends_with('-') && name.as_str().starts_with(h)));
            if !death {
                kept.insert(name.clone(), value.clone());
            }
        }
        if !kept.inner().is_empty() {
            out = out.with_headers(kept);
        }
    }
    let mut dropped = None;
    if let Some(user) = properties.user_id() {
        if user.as_str() == own_user {
            out = out.with_user_id(user.clone());
        } else {
            dropped = Some(printable(user.as_str(), 80));
        }
    }
    (out, dropped)
}

/// `warmer dead purge`: removes every dead letter with `yes`; without, refuses, saying how
/// many it would remove.
pub async fn purge(ctx: &Context, yes: bool) -> anyhow::Result<String> {
    let queue = ctx.names.dead_letter_queue();
    let connection = ctx.amqp("dead-letters").await?;
    let purged = async {
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        let count = passive_declare(&channel, &queue)
            .await
            .map_err(|error| unusable(error, &queue, &connection))?
            .message_count();
        if count == 0 {
            let _ = channel.close(200, "bye".into()).await;
            return Ok(format!("no dead letters in {queue}: nothing to purge\n"));
        }
        if !yes {
            let _ = channel.close(200, "bye".into()).await;
            bail!(
                "not purged: this would remove {count} dead letters from {queue}; `warmer dead list` shows them, `warmer dead purge --yes` removes them"
            );
        }
        let purged = channel
            .queue_purge(ShortString::from(queue.as_str()), QueuePurgeOptions::default())
            .await
            .map_err(|error| unusable(error, &queue, &connection))?;
        let _ = channel.close(200, "bye".into()).await;
        Ok(format!("purged {purged} dead letters from {queue}\n"))
    }
    .await;
    let _ = connection.close(200, "bye".into()).await;
    let mut out = purged?;
    if out.starts_with("purged ") {
        let change = out.trim_end().to_string();
        record(ctx, "dead purge", change, &mut out).await;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new("p", "p")
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    fn died_in(queue: &str, reason: &str, time: u64) -> BasicProperties {
        let mut death = FieldTable::default();
        death.insert("queue".into(), long(queue));
        death.insert("reason".into(), long(reason));
        death.insert("time".into(), AMQPValue::Timestamp(time));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        headers.insert("x-first-death-queue".into(), long(queue));
        headers.insert("x-first-death-reason".into(), long(reason));
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn secrets_are_redacted_however_deep_and_named() {
        let body = br#"{"command":"fill","token":"s3cret","nested":{"Password":"p4ss",
            "list":[{"ssh_private_key":"-----BEGIN"}],"api_key":"k","signer":"x"},"pool":"a:b"}"#;
        let shown = shown_body(body).to_string();
        for secret in ["s3cret", "p4ss", "BEGIN", "\"k\"", "\"x\""] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(shown.matches("[redacted]").count(), 5, "{shown}");
        assert!(shown.contains(r#""pool":"a:b""#), "{shown}");
    }

    #[test]
    fn a_body_that_is_not_json_is_escaped_and_its_secret_like_fields_redacted() {
        let cut_short = b"{\"command\":\"fill\",\"token\": \"s3cr\\\"et\",\"pool\":\"x\x1b[2J";
        let Value::String(shown) = shown_body(cut_short) else {
            panic!("text")
        };
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(!shown.contains('\u{1b}'), "{shown:?}");
        assert!(shown.contains(r"\u{1b}[2J"), "{shown}");
        assert!(shown.contains(r#""pool":"x"#), "{shown}");
        let binary = shown_body(&[0xff, 0x00, b'a', 0x9b, b'\n']);
        assert_eq!(binary, json!("\u{fffd}\\u{0}a\u{fffd}\\u{a}"));
        // C1 controls and bidi overrides too, not only ASCII ones.
        assert_eq!(printable("a\u{9b}b\u{202e}c", 10), r"a\u{9b}b\u{202e}c");
        assert_eq!(printable("abcdef", 3), "abc…");
    }

    #[test]
    fn where_why_and_when_come_from_rabbitmqs_headers_or_the_refill_consumers() {
        let names = names();
        let expired = read_letter(
            &names,
            br#"{"image_name":"img","machine_type":"n1-standard-1"}"#,
            &died_in("p.checkout", "expired", 1_800_000_000)
                .with_message_id("req-1".into())
                .with_timestamp(1_700_000_000),
        );
        assert_eq!(
            (
                expired.id.as_str(),
                &expired.source,
                expired.reason.as_str()
            ),
            ("req-1", &Source::Checkout, "expired")
        );
        assert_eq!(expired.died_at, Some(1_800_000_000));
        assert_eq!(expired.pool.as_deref(), Some("img:n1-standard-1"));

        let mut headers = FieldTable::default();
        headers.insert(
            "x-warmer-rejected".into(),
            long("unknown command \"x\u{1b}\""),
        );
        let rejected = read_letter(
            &names,
            br#"{"command":"drain"}"#,
            &BasicProperties::default().with_headers(headers),
        );
        assert_eq!(rejected.source, Source::Refill);
        assert_eq!(rejected.reason, r#"rejected: unknown command "x\u{1b}""#);
        assert!(rejected.id.starts_with("h-") && rejected.id.len() == 14);

        let foreign = read_letter(&names, b"x", &died_in("other.q\u{7}", "rejected", 1));
        assert_eq!(foreign.source, Source::Elsewhere(r"other.q\u{7}".into()));
        assert_eq!(foreign.source.queue(&names), None);
        let bare = read_letter(&names, b"", &BasicProperties::default());
        assert_eq!((bare.source, bare.reason.as_str()), (Source::Unknown, "?"));
    }

    #[test]
    fn an_id_is_the_message_id_when_plain_else_a_stable_hash() {
        let names = names();
        let plain = BasicProperties::default().with_message_id("5d3c-ab.1:x".into());
        assert_eq!(read_letter(&names, b"a", &plain).id, "5d3c-ab.1:x");
        let odd = BasicProperties::default().with_message_id("has space\u{1b}".into());
        let first = read_letter(&names, b"a", &odd).id;
        assert!(first.starts_with("h-"), "{first}");
        assert_eq!(read_letter(&names, b"a", &odd).id, first, "stable");
        assert_ne!(read_letter(&names, b"b", &odd).id, first, "by body");
        let at = |t| BasicProperties::default().with_timestamp(t);
        assert_ne!(
            read_letter(&names, b"a", &at(1)).id,
            read_letter(&names, b"a", &at(2)).id,
            "by timestamp"
        );
        // An id that looks like a hash is hashed, so no message can pose as another's.
        let posing = BasicProperties::default().with_message_id("h-000000000000".into());
        assert_ne!(read_letter(&names, b"a", &posing).id, "h-000000000000");
    }

    #[test]
    fn a_requeued_message_keeps_its_properties_but_not_its_death_or_anothers_user_id() {
        let mut properties = died_in("p.checkout", "delivery_limit", 5)
            .with_message_id("m".into())
            .with_correlation_id("c".into())
            .with_reply_to("amq.rabbitmq.reply-to.x".into())
            .with_expiration("30000".into())
            .with_timestamp(7)
            .with_user_id("worker".into());
        let mut headers = properties.headers().clone().unwrap();
        headers.insert("x-warmer-deadline".into(), AMQPValue::LongLongInt(9));
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        headers.insert("x-last-death-queue".into(), long("p.checkout"));
        headers.insert("x-warmer-rejected".into(), long("why"));
        properties = properties.with_headers(headers);

        let (out, dropped) = requeued_properties(&properties, "operator");

        assert_eq!(dropped.as_deref(), Some("worker"));
        assert_eq!(out.user_id(), &None);
        let kept: Vec<&str> = out
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(kept, ["x-warmer-deadline"]);
        assert_eq!(out.message_id().as_ref().unwrap().as_str(), "m");
        assert_eq!(out.correlation_id().as_ref().unwrap().as_str(), "c");
        assert_eq!(out.expiration().as_ref().unwrap().as_str(), "30000");
        assert_eq!(out.timestamp(), &Some(7));
        let (own, dropped) = requeued_properties(&properties, "worker");
        assert_eq!(
            (own.user_id().as_ref().map(|u| u.as_str()), dropped),
            (Some("worker"), None)
        );
    }

    #[test]
    fn only_a_checkout_request_someone_still_waits_for_is_worth_requeueing() {
        let names = names();
        let body = br#"{"image_name":"img","machine_type":"m"}"#;
        let now = now_secs();
        let expired = died_in("p.checkout", "expired", now);
        let letter = read_letter(&names, body, &expired);
        assert!(requester_gone(&letter, &expired).is_some());
        // Delivered too often: its deadline decides (30 s from its death without one).
        let recent = died_in("p.checkout", "delivery_limit", now);
        let letter = read_letter(&names, body, &recent);
        assert_eq!(requester_gone(&letter, &recent), None);
        let old = died_in("p.checkout", "delivery_limit", now - 60);
        let letter = read_letter(&names, body, &old);
        assert!(requester_gone(&letter, &old).is_some_and(|w| w.contains("deadline")));
    }

    #[test]
    fn nothing_in_a_dead_letter_makes_reading_it_panic() {
        let names = names();
        let pieces: [&[u8]; 12] = [
            b"\"",
            b":",
            b"\\",
            b"token",
            b"{",
            b"}",
            b" ",
            "é€".as_bytes(),
            b"\x1b",
            &[0xff],
            &[0xe2, 0x82],
            b"\"key\":\"",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5_000 {
            let mut body = Vec::new();
            for _ in 0..(seed % 24) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                body.extend_from_slice(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let text = String::from_utf8_lossy(&body).into_owned();
            let mut headers = FieldTable::default();
            headers.insert(
                "x-death".into(),
                AMQPValue::LongString(text.as_str().into()),
            );
            headers.insert("x-first-death-queue".into(), AMQPValue::Boolean(true));
            headers.insert(
                "x-warmer-rejected".into(),
                AMQPValue::LongString(text.as_str().into()),
            );
            headers.insert("x-delivery-count".into(), AMQPValue::Float(1.5));
            let properties = BasicProperties::default()
                .with_headers(headers)
                .with_message_id(ShortString::from(
                    text.chars().take(100).collect::<String>(),
                ));
            let letter = read_letter(&names, &body, &properties);
            assert!(!letter.id.is_empty());
            let shown = letter.body.to_string() + &letter.reason + &letter.id;
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
            let _ = redact_text(&text);
        }
    }

    #[test]
    fn the_worn_warning_names_the_policy_and_only_comes_when_readings_are_counted() {
        let names = names();
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(WORN));
        let worn = BasicProperties::default().with_headers(headers.clone());
        let letter = read_letter(&names, b"a", &worn);
        let warning = worn_warning(std::slice::from_ref(&letter), "p.dead").unwrap();
        assert!(
            warning.contains(r#"'^p\.dead$' '{"delivery-limit":-1}'"#),
            "{warning}"
        );
        headers.insert("x-acquired-count".into(), AMQPValue::LongLongInt(30));
        let counted_apart = read_letter(
            &names,
            b"a",
            &BasicProperties::default().with_headers(headers),
        );
        assert_eq!(worn_warning(&[counted_apart], "p.dead"), None);
        assert_eq!(worn_warning(&[], "p.dead"), None);
    }
}
