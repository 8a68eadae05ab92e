//! Operator commands: pool targets, fill commands, one-off checkout requests, status; pools as
//! a file and the history of changes in [`apply`].
//!
//! Each command does its work and returns what to print; `main` prints it. Errors say what was
//! wrong and what to try. Every command that changes a pool records the change in the history.

mod apply;
pub mod brake;
mod status;

pub use apply::{apply, export, history};
pub use status::{StatusOptions, status};

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
use crate::topology::Role;

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
    let api_vhost = crate::config::percent_encode(&vhost, &[]);
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

/// `warmer pool list [--json]`: every pool and its target, one per line under a header, with
/// its policy if it has one.
pub async fn pool_list(ctx: &Context, json: bool) -> anyhow::Result<String> {
    let view = ctx.store.sizing_view().await?;
    if json {
        let pools: Vec<serde_json::Value> = view
            .targets
            .iter()
            .map(|(pool, target)| match view.policies.get(pool) {
                None => json!({"pool": pool, "target": target, "policy": null}),
                Some(Ok(policy)) => json!({"pool": pool, "target": target, "policy": policy}),
                Some(Err(error)) => {
                    json!({"pool": pool, "target": target, "policy": null, "policy_error": error})
                }
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&pools)? + "\n");
    }
    if view.targets.is_empty() {
        return Ok(
            "(no pools: add one with `warmer pool set <image>:<machine_type> <target>`)\n".into(),
        );
    }
    let mut out = String::from("POOL\tTARGET\tPOLICY\n");
    for (pool, target) in &view.targets {
        let _ = match view.policies.get(pool) {
            None => writeln!(out, "{pool}\t{target}\tstatic"),
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
    not_rolling(ctx, pool, "changed").await?;
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
        let events = ctx.events();
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
    not_rolling(ctx, pool, "changed").await?;
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
    not_rolling(ctx, pool, "deleted").await?;
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

/// Refuses a change to a pool that takes part in a rollover in progress: completing or aborting
/// it sets the pools' targets and policies, which would undo the change behind the operator's
/// back.
async fn not_rolling(ctx: &Context, pool: &PoolName, what: &str) -> anyhow::Result<()> {
    let rollovers = ctx.store.sizing_view().await?.rollovers;
    let name = pool.to_string();
    let rolling = rollovers.iter().find(|(from, rollover)| {
        rollover.state == RolloverState::Rolling && (**from == name || rollover.to == name)
    });
    if let Some((from, rollover)) = rolling {
        bail!(
            "{pool} not {what}: it takes part in the rollover {from} -> {} in progress, whose end sets its target and policy; wait until `warmer status` shows it completed or aborted",
            rollover.to
        );
    }
    Ok(())
}

/// Records a change `command` made to `pool` in the history; if that fails, says so in `out`
/// (the change itself is made).
async fn record(ctx: &Context, command: &str, pool: &PoolName, change: String, out: &mut String) {
    let pool = pool.to_string();
    if let Some(failed) = ctx.store.record_change(command, Some(&pool), change).await {
        out.push_str(&failed);
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
