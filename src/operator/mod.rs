//! Operator commands: pool targets, fill commands, one-off checkout requests, status; pools as
//! a file and the history of changes in [`apply`].
//!
//! Each command does its work and returns what to print; `main` prints it. Errors say what was
//! wrong and what to try. Every command that changes a pool records the change in the history.

mod apply;

pub use apply::{actor, apply, export, history};

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use serde_json::json;

use crate::amqp::{self, Courier, DIRECT_REPLY_TO, Published};
use crate::clock::now_secs;
use crate::context::Context;
use crate::events::Event;
use crate::policy::Policy;
use crate::pool::PoolName;
use crate::refill_message::{FillCommand, RefillMessage};
use crate::store::sizing::{RolloverState, StartRollover};
use crate::topology::{QueueState, Role};

/// `warmer permissions`: the RabbitMQ user of each role (or of `only`), with the narrowest
/// permissions that work for this prefix, as `rabbitmqctl` commands and management API calls.
pub fn permissions(config: &crate::Config, only: Option<Role>) -> String {
    let names = crate::names::Names::new(&config.amqp_prefix, &config.redis_namespace);
    let vhost = config.amqp_vhost();
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let roles: Vec<Role> = only.map_or(Role::ALL.to_vec(), |role| vec![role]);
    let mut out = format!(
        "# RabbitMQ users for warmer's prefix `{}` on vhost `{vhost}`: one per role, each allowed only\n\
         # what it needs. Set PASSWORD to a new password for each user before its lines; give each\n\
         # process the URL of its role's user (WARMER_AMQP_URL).\n",
        names.prefix()
    );
    let api_vhost: String = vhost
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let mut api = String::from(
        "\n# The same through the management HTTP API (CloudAMQP: the console's API URL), as an\n\
         # administrator: set API to the API's base URL (…/api) and ADMIN to `user:password`.\n",
    );
    for role in roles {
        let user = format!("{}-{}", names.prefix(), role.name());
        let p = crate::topology::permissions(role, &names);
        let _ = writeln!(out, "\n# {}: {}", role.name(), role.purpose());
        let _ = writeln!(out, "rabbitmqctl add_user {} \"$PASSWORD\"", quote(&user));
        let _ = writeln!(
            out,
            "rabbitmqctl set_permissions -p {} {} {} {} {}",
            quote(&vhost),
            quote(&user),
            quote(&p.configure),
            quote(&p.write),
            quote(&p.read)
        );
        let body = json!({"configure": p.configure, "write": p.write, "read": p.read});
        let _ = writeln!(
            api,
            "curl -fsS -u \"$ADMIN\" -X PUT -H 'content-type: application/json' \"$API/users/{user}\" -d '{{\"password\":\"'\"$PASSWORD\"'\",\"tags\":\"\"}}'"
        );
        let _ = writeln!(
            api,
            "curl -fsS -u \"$ADMIN\" -X PUT -H 'content-type: application/json' \"$API/permissions/{api_vhost}/{user}\" -d {}",
            quote(&body.to_string())
        );
    }
    out + &api
}

/// `warmer pool list`: every pool and its target, one per line, with its policy if it has one.
pub async fn pool_list(ctx: &Context) -> anyhow::Result<String> {
    let view = ctx.store.sizing_view().await?;
    let mut out = String::new();
    for (pool, target) in &view.targets {
        let _ = match view.policies.get(pool) {
            None => writeln!(out, "{pool}\t{target}"),
            Some(Ok(policy)) => writeln!(out, "{pool}\t{target}\t{policy}"),
            Some(Err(error)) => writeln!(out, "{pool}\t{target}\tunreadable policy: {error}"),
        };
    }
    Ok(out)
}

/// What `warmer pool policy` sets: the policy, or `None` to remove it.
pub async fn pool_policy(
    ctx: &Context,
    pool: &PoolName,
    policy: Option<&Policy>,
) -> anyhow::Result<String> {
    if let Some(policy) = policy {
        policy
            .validate()
            .map_err(|error| anyhow::anyhow!("policy of {pool} not changed: {error}"))?;
        within_fleet_cap(ctx, pool, "--max", policy.max)?;
    }
    let set = ctx
        .store
        .set_policy(pool, policy)
        .await
        .with_context(|| format!("setting the policy of {pool}"))?;
    if !set {
        bail!(
            "{}; create it with `warmer pool set {pool} <target>` first",
            no_such_pool(ctx, pool).await
        );
    }
    let Some(policy) = policy else {
        let mut out = format!("{pool}: policy removed; its target stays as it is, static\n");
        record(ctx, "pool policy", pool, "policy removed".into(), &mut out).await;
        return Ok(out);
    };
    let mut out =
        format!("{pool}: policy {policy}; the active reconciler sizes it from its next pass\n");
    record(
        ctx,
        "pool policy",
        pool,
        format!("policy {policy}"),
        &mut out,
    )
    .await;
    let target = ctx.store.targets().await?.remove(pool);
    if let Some(target) = target
        && target > u64::from(policy.min)
    {
        let _ = writeln!(
            out,
            "note: its target ({target}) may go down to min {} from that pass (at once when no schedule or recent demand asks for more); warm VMs above the target are deleted",
            policy.min
        );
    }
    Ok(out)
}

/// `warmer pool rollover <from> <to>`: `to` takes `from`'s target and policy and boots; the
/// active reconciler completes or aborts the rollover. Publishes `rollover.started` and a fill
/// for `to`.
pub async fn pool_rollover(
    ctx: &Context,
    from: &PoolName,
    to: &PoolName,
    deadline: Duration,
) -> anyhow::Result<String> {
    if from == to {
        bail!("cannot roll {from} over to itself");
    }
    existing(ctx, from).await?;
    let now = now_secs();
    let started = ctx
        .store
        .start_rollover(from, to, now, now + deadline.as_secs())
        .await
        .context("starting the rollover")?;
    let target = match started {
        StartRollover::Started(target) => target,
        StartRollover::NoTarget => {
            bail!("cannot roll over {from}: it has no target above 0 (see `warmer pool list`)")
        }
        StartRollover::Rolling(pool) => bail!(
            "cannot roll over {from} to {to}: {pool} already takes part in a rollover in progress (see `warmer status`)"
        ),
        StartRollover::ToHasTarget(target) => bail!(
            "cannot roll over to {to}: it has target {target} already; the new pool must have none (or 0)"
        ),
    };
    let mut out = format!(
        "rollover {from} -> {to} started: {to} boots to target {target}; aborted unless done within {}s\n",
        deadline.as_secs()
    );
    let change = format!(
        "rollover to {to} started (target {target}, deadline {}s)",
        deadline.as_secs()
    );
    record(ctx, "pool rollover", from, change, &mut out).await;
    let announced = async {
        let connection = ctx.amqp("rollover").await?;
        let events = crate::events::Events::new(ctx.names.clone());
        events.attach(connection.create_channel().await?);
        events
            .emit(Event::RolloverStarted {
                from: from.to_string(),
                to: to.to_string(),
            })
            .await;
        if let Some(channel) = events.detach() {
            let _ = channel.close(200, "bye".into()).await;
        }
        let _ = connection.close(200, "bye".into()).await;
        anyhow::Ok(())
    };
    if let Err(error) = announced.await {
        let _ = writeln!(
            out,
            "(rollover.started not published: {})",
            crate::telemetry::report(&error)
        );
    }
    Ok(out)
}

/// Refuses a pool that does not exist, naming the closest one that does.
async fn existing(ctx: &Context, pool: &PoolName) -> anyhow::Result<()> {
    let pools = ctx.store.targets().await.context("reading the pools")?;
    if pools.contains_key(pool) {
        return Ok(());
    }
    bail!("{}", nearest(pool, pools.keys()))
}

/// "no pool …", with the closest existing name.
async fn no_such_pool(ctx: &Context, pool: &PoolName) -> String {
    match ctx.store.targets().await {
        Ok(pools) => nearest(pool, pools.keys()),
        Err(_) => format!("no pool {pool}"),
    }
}

fn nearest<'a>(pool: &PoolName, pools: impl Iterator<Item = &'a PoolName>) -> String {
    let name = pool.to_string();
    let closest = pools
        .map(|p| {
            let p = p.to_string();
            (crate::config::edit_distance(&name, &p), p)
        })
        .min()
        .filter(|(distance, _)| *distance <= name.len() / 3 + 2);
    match closest {
        Some((_, closest)) => {
            format!("no pool {pool} (did you mean {closest}?; `warmer pool list` shows every pool)")
        }
        None => format!("no pool {pool} (`warmer pool list` shows every pool)"),
    }
}

/// Refuses a pool `what` (its target, its policy's max) above the fleet cap: no pool can have
/// more VMs than the whole deployment.
fn within_fleet_cap(ctx: &Context, pool: &PoolName, what: &str, n: u32) -> anyhow::Result<()> {
    let cap = ctx.config.max_vms;
    if n > cap {
        bail!(
            "{pool} not changed: {what} {n} is above WARMER_MAX_VMS ({cap}), the most VMs this deployment may have over every pool; raise WARMER_MAX_VMS first if you mean it"
        );
    }
    Ok(())
}

/// `warmer pool set <pool> <target>`.
pub async fn pool_set(ctx: &Context, pool: &PoolName, target: u32) -> anyhow::Result<String> {
    within_fleet_cap(ctx, pool, "target", target)?;
    let before = ctx.store.targets().await?.remove(pool);
    ctx.store
        .set_target(pool, target)
        .await
        .with_context(|| format!("setting the target of {pool}"))?;
    let mut out = format!("{pool}: target {target}\n");
    let change = match before {
        Some(before) => format!("target {before} -> target {target}"),
        None => format!("target {target}"),
    };
    record(ctx, "pool set", pool, change, &mut out).await;
    let sized = ctx
        .store
        .sizing_view()
        .await?
        .policies
        .contains_key(&pool.to_string());
    if sized {
        let _ = writeln!(
            out,
            "note: {pool} has a sizing policy: the sizer sets its target from the next reconcile pass (`warmer pool policy {pool} --remove` makes it static)"
        );
    }
    Ok(out)
}

/// `warmer pool delete <pool>`: the pool's warmed VMs are recorded for deletion.
pub async fn pool_delete(ctx: &Context, pool: &PoolName) -> anyhow::Result<String> {
    existing(ctx, pool).await?;
    // The next pass would abort the rollover: refused, so that nothing is undone behind the
    // operator's back.
    let rollovers = ctx.store.sizing_view().await?.rollovers;
    let rolling = rollovers.iter().find(|(from, rollover)| {
        rollover.state == RolloverState::Rolling
            && (**from == pool.to_string() || rollover.to == pool.to_string())
    });
    if let Some((from, rollover)) = rolling {
        bail!(
            "{pool} not deleted: it takes part in the rollover {from} -> {} in progress; wait until `warmer status` shows it completed or aborted",
            rollover.to
        );
    }
    match ctx
        .store
        .delete_pool(pool)
        .await
        .with_context(|| format!("deleting {pool}"))?
    {
        None => bail!("{}", no_such_pool(ctx, pool).await),
        Some(vms) => {
            let mut out = format!(
                "{pool}: deleted; {vms} warmed VM(s) recorded in {} for deletion\n",
                ctx.names.orphaned()
            );
            let change = format!("deleted; {vms} warmed VM(s) recorded for deletion");
            record(ctx, "pool delete", pool, change, &mut out).await;
            Ok(out)
        }
    }
}

/// Records a change `command` made to `pool` in the history; if that fails, says so in `out`
/// (the change itself is made).
async fn record(ctx: &Context, command: &str, pool: &PoolName, change: String, out: &mut String) {
    let entry = apply::entry(command, Some(&pool.to_string()), change);
    if let Err(error) = ctx.store.record(&[entry]).await {
        let _ = writeln!(
            out,
            "(not recorded in the history: {})",
            crate::telemetry::report(&error)
        );
    }
}

/// `warmer fill [<pool>]`: publishes a fill command for the refill consumer, as this broker
/// user, signed with `token` if there is one (the token itself is not sent; see `auth.rs`).
pub async fn fill(
    ctx: &Context,
    pool: Option<&PoolName>,
    token: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(pool) = pool {
        existing(ctx, pool).await?;
    }
    let fill = RefillMessage::Fill(FillCommand {
        pool: pool.cloned(),
        signer: token.map(crate::config::Secret::new),
    });
    let connection = Arc::new(ctx.amqp("fill").await?);
    let courier = Courier::new(connection.clone());
    let sender = ctx.config.amqp_user();
    let published = courier
        .publish(
            &ctx.names.refill_queue(),
            &fill.body(),
            fill.properties(&sender),
        )
        .await
        .context("publishing the fill command (refused when the refill queue is full)")?;
    courier.close().await;
    let _ = connection.close(200, "bye".into()).await;
    if published != Published::Routed {
        bail!(
            "queue {} does not exist: start `warmer refill` (or `warmer checkout`) once to declare it",
            ctx.names.refill_queue()
        );
    }
    Ok(match pool {
        Some(pool) => format!("fill command published for {pool}\n"),
        None => "fill command published for all pools\n".into(),
    })
}

/// What `warmer request` sends.
pub struct Request {
    pub image: String,
    pub machine_type: String,
    pub public_ip: bool,
    pub site: Option<String>,
    pub timeout: Duration,
}

/// `warmer request`: one checkout over direct reply-to. Returns the reply body and whether it
/// is an error reply.
pub async fn request(ctx: &Context, request: &Request) -> anyhow::Result<(String, bool)> {
    let mut body = json!({
        "image_name": request.image,
        "machine_type": request.machine_type,
        "public_ip": request.public_ip,
    });
    if let Some(site) = &request.site {
        body["site"] = json!(site);
    }
    let connection = ctx.amqp("request").await?;
    let channel = connection.create_channel().await?;
    // The reply consumer must exist before the request is published.
    let mut replies = amqp::consume_direct_replies(&channel)
        .await
        .context("consuming direct replies")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(DIRECT_REPLY_TO.into())
        .with_correlation_id(correlation_id.as_str().into())
        .with_message_id(correlation_id.as_str().into())
        .with_timestamp(now_secs())
        .with_expiration(request.timeout.as_millis().to_string().as_str().into());
    let confirmation = channel
        .basic_publish(
            "".into(),
            ctx.names.checkout_queue().as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &serde_json::to_vec(&body)?,
            properties,
        )
        .await?
        .await?;
    if confirmation.take_message().is_some() {
        bail!(
            "queue {} does not exist: is `warmer checkout` running with WARMER_AMQP_PREFIX={}?",
            ctx.names.checkout_queue(),
            ctx.names.prefix()
        );
    }
    let wait = async {
        while let Some(delivery) = replies.next().await {
            let delivery = delivery?;
            let matches = delivery
                .properties
                .correlation_id()
                .as_ref()
                .is_some_and(|c| c.as_str() == correlation_id);
            if matches {
                return Ok(delivery.data);
            }
        }
        bail!("the connection closed before a reply came")
    };
    let data = tokio::time::timeout(request.timeout, wait)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no reply within {:?}: is `warmer checkout` running?",
                request.timeout
            )
        })??;
    let _ = channel.close(200, "bye".into()).await;
    let _ = connection.close(200, "bye".into()).await;
    let text = String::from_utf8_lossy(&data).into_owned();
    let is_error = serde_json::from_slice::<serde_json::Value>(&data)
        .map(|v| v.get("error").is_some())
        .unwrap_or(true);
    Ok((text, is_error))
}

/// `warmer status`: a table of pools, with how each is sized (its policy's bounds and why its
/// target is what it is), and the rollovers.
pub async fn status(ctx: &Context) -> anyhow::Result<String> {
    let (pools, brake) = ctx.store.status().await?;
    let sizing = ctx.store.sizing_view().await?;
    let now = now_secs();
    let mut out = format!(
        "{:<60} {:>6} {:>5} {:>5} {:<8} {:>6} {:>7} {:>10} {:>10}\n",
        "POOL", "TARGET", "MIN", "MAX", "WHY", "READY", "BOOTING", "HANDED OUT", "OLDEST"
    );
    for pool in &pools {
        let name = &pool.level.pool;
        let oldest = match pool.oldest_booted_at {
            None => "-".to_string(),
            Some(booted_at) => booted_at.map_or("unknown".into(), |t| age(now.saturating_sub(t))),
        };
        let (min, max) = match sizing.policies.get(name) {
            Some(Ok(policy)) => (policy.min.to_string(), policy.max.to_string()),
            Some(Err(_)) => ("?".into(), "?".into()),
            None => ("-".into(), "-".into()),
        };
        let why = match (sizing.policies.get(name), sizing.decisions.get(name)) {
            (Some(Ok(_)), Some(decision)) => decision.reason.as_str(),
            (Some(Ok(_)), None) => "pending",
            (Some(Err(_)), _) => "invalid",
            (None, _) => "static",
        };
        let _ = writeln!(
            out,
            "{:<60} {:>6} {:>5} {:>5} {:<8} {:>6} {:>7} {:>10} {:>10}",
            name,
            pool.level.target,
            min,
            max,
            why,
            pool.level.ready,
            pool.level.booting,
            pool.handed_out,
            oldest
        );
    }
    for (from, rollover) in &sizing.rollovers {
        let to = &rollover.to;
        let _ = match rollover.state {
            RolloverState::Rolling => writeln!(
                out,
                "ROLLOVER {from} -> {to}: in progress for {}, aborted in {} unless {to} is at target",
                age(now.saturating_sub(rollover.started_at)),
                age(rollover.deadline.saturating_sub(now))
            ),
            RolloverState::Completed => writeln!(
                out,
                "ROLLOVER {from} -> {to}: completed {} ago",
                age(now.saturating_sub(rollover.finished_at.unwrap_or(now)))
            ),
            RolloverState::Aborted => writeln!(
                out,
                "ROLLOVER {from} -> {to}: aborted {} ago: {}",
                age(now.saturating_sub(rollover.finished_at.unwrap_or(now))),
                rollover.reason.as_deref().unwrap_or("no reason recorded")
            ),
        };
    }
    if brake {
        let count = ctx.store.brake_count().await?.unwrap_or(0);
        let _ = writeln!(
            out,
            "SAFETY BRAKE ON: {count} VMs labelled for this deployment are unaccounted for (more than WARMER_ORPHAN_THRESHOLD, {}): boots are paused and sizing is frozen; the reconciler's log names them",
            ctx.config.orphan_threshold
        );
    }
    out.push_str(&reconciler_line(ctx, now).await?);
    let orphans = ctx.store.orphan_count().await?;
    if orphans > 0 {
        let _ = writeln!(
            out,
            "ORPHANS: {orphans} VMs recorded for deletion ({}), deleted by refill and the reconciler",
            ctx.names.orphaned()
        );
    }
    out.push_str(&queue_lines(ctx).await);
    if pools.is_empty() {
        out.push_str(
            "(no pools: add one with `warmer pool set <image>:<machine_type> <target>`)\n",
        );
    }
    Ok(out)
}

/// Whether a reconciler is active (it holds the lock), which, and when a pass last succeeded:
/// without one, policies, rollovers, fills and orphan deletion by the reconciler all wait.
async fn reconciler_line(ctx: &Context, now: u64) -> anyhow::Result<String> {
    let holder = ctx.store.reconciler().await?;
    let ago = ctx
        .store
        .last_reconcile()
        .await?
        .map(|at| now.saturating_sub(crate::clock::secs(at)));
    let last = match ago {
        Some(ago) => format!("last successful pass {} ago", age(ago)),
        None => "no successful pass recorded".into(),
    };
    let interval = ctx.config.reconcile_interval.as_secs();
    // The owner is whatever the lock's key holds: shown escaped, so a value written into Redis
    // cannot put control characters on an operator's terminal.
    let holder = holder.map(|owner| owner.escape_debug().to_string());
    Ok(match holder {
        None => format!(
            "RECONCILER: NONE ACTIVE ({last}): until one runs, no policy, schedule or rollover is applied and the reconciler's checks wait\n"
        ),
        Some(owner) if ago.is_none_or(|ago| ago > 3 * interval) => format!(
            "RECONCILER {owner}: active, {last}: more than 3 intervals of {interval}s; are its passes failing? (see its log)\n"
        ),
        Some(owner) => format!("RECONCILER {owner}: active, {last}\n"),
    })
}

/// One line per queue of the broker: ready messages and consumers, or why it cannot be read.
async fn queue_lines(ctx: &Context) -> String {
    let monitor = crate::topology::QueueMonitor::new(
        ctx.config.amqp_url.clone(),
        format!("{}.status", ctx.names.prefix()),
        ctx.names.clone(),
        Duration::from_secs(5),
    );
    let depths = monitor.depths().await;
    monitor.close().await;
    match depths {
        Err(error) => format!(
            "QUEUES: RabbitMQ cannot be read: {}\n",
            crate::telemetry::report(&error)
        ),
        Ok(depths) => depths
            .iter()
            .map(|depth| match &depth.state {
                QueueState::Ok => format!(
                    "QUEUE {}: {} ready, {} consumers\n",
                    depth.queue,
                    depth.ready.unwrap_or(0),
                    depth.consumers.unwrap_or(0)
                ),
                QueueState::Missing => format!(
                    "QUEUE {}: not declared yet (start a consuming process)\n",
                    depth.queue
                ),
                QueueState::Unavailable(why) => {
                    format!("QUEUE {}: UNAVAILABLE: {why}\n", depth.queue)
                }
            })
            .collect(),
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}
