//! `warmer apply`, `warmer export` and `warmer history`: pools as a file kept in Git, and the
//! record of every change operators made.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};

use crate::context::Context;
use crate::pools_file::{self, Change, PoolsFile};
use crate::store::changes::{Applied, HistoryEntry};

/// How often `apply` diffs again when a pool changed between its diff and its write (the
/// sizer writes the targets of sized pools every pass).
const APPLY_ATTEMPTS: usize = 3;

/// `warmer apply -f FILE [--dry-run] [--prune]`: the diff between the file and Redis, then
/// (unless `dry_run`) every change of it or none. Returns what to print and whether anything
/// changed.
pub async fn apply(
    ctx: &Context,
    path: &Path,
    dry_run: bool,
    prune: bool,
) -> anyhow::Result<(String, bool)> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {shown}"))?;
    let file = PoolsFile::parse(&shown, &text, ctx.config.max_vms).map_err(anyhow::Error::msg)?;
    let command = format!("apply -f {shown}{}", if prune { " --prune" } else { "" });
    for _ in 0..APPLY_ATTEMPTS {
        let current = ctx.store.stored_pools().await?;
        let changes = file.diff(&current, prune);
        let left_alone = current
            .iter()
            .filter(|(pool, stored)| stored.target.is_some() && !file.pools.contains_key(*pool))
            .count();
        let mut out = diff_lines(&shown, &changes);
        if left_alone > 0 && !prune {
            let _ = writeln!(
                out,
                "{left_alone} pool(s) in Redis but not in {shown} left alone (--prune deletes them)"
            );
        }
        if changes.is_empty() {
            return Ok((out, false));
        }
        if dry_run {
            out.push_str("dry run: nothing changed\n");
            return Ok((out, false));
        }
        let history: Vec<HistoryEntry> = changes
            .iter()
            .map(|c| HistoryEntry::now(&command, Some(&c.pool.to_string()), c.describe()))
            .collect();
        match ctx.store.apply(&changes, &history).await? {
            Applied::Done => {
                let _ = writeln!(
                    out,
                    "applied {} change(s); `warmer history` shows them",
                    changes.len()
                );
                return Ok((out, true));
            }
            Applied::Rolling { pool, from, to } => bail!(
                "nothing applied: {pool} takes part in the rollover {from} -> {to} in progress, which would undo the change; wait until `warmer status` shows it completed or aborted"
            ),
            Applied::Changed(pool) => {
                tracing::debug!(pool, "changed since the diff; diffing again");
            }
        }
    }
    bail!(
        "nothing applied: the pools kept changing while the diff was taken ({APPLY_ATTEMPTS} attempts); is another `warmer apply` running?"
    )
}

/// The diff, one line per pool: `+` new, `~` changed, `-` deleted.
fn diff_lines(shown: &str, changes: &[Change]) -> String {
    if changes.is_empty() {
        return format!("{shown}: no changes, Redis holds what the file says\n");
    }
    let mut out = format!("{shown}: {} change(s)\n", changes.len());
    for change in changes {
        let _ = writeln!(
            out,
            "{} {}: {}",
            change.sign(),
            change.pool,
            change.describe()
        );
    }
    out
}

/// `warmer export`: every pool as a file `warmer apply` takes back unchanged.
pub async fn export(ctx: &Context) -> anyhow::Result<String> {
    Ok(pools_file::export(&ctx.store.stored_pools().await?))
}

/// `warmer history [--limit N] [--pool P] [--json]`: the newest changes first.
pub async fn history(
    ctx: &Context,
    limit: usize,
    pool: Option<&str>,
    json: bool,
) -> anyhow::Result<String> {
    // A pool filter reads the whole (bounded) history and keeps its newest `limit`.
    let read = if pool.is_some() {
        crate::store::changes::HISTORY_LIMIT
    } else {
        limit
    };
    let entries: Vec<HistoryEntry> = ctx
        .store
        .history(read)
        .await?
        .into_iter()
        .filter(|e| pool.is_none_or(|p| e.pool.as_deref() == Some(p)))
        .take(limit)
        .collect();
    if json {
        return Ok(serde_json::to_string_pretty(&entries)? + "\n");
    }
    if entries.is_empty() {
        return Ok("no changes recorded\n".into());
    }
    let mut out = format!(
        "{:<20} {:<24} {:<26} {:<40} CHANGE\n",
        "WHEN (UTC)", "WHO", "COMMAND", "POOL"
    );
    for e in &entries {
        // Entries come from Redis: escaped, so that none can put control characters on a
        // terminal.
        let when = i64::try_from(e.at)
            .ok()
            .and_then(|at| jiff::Timestamp::from_second(at).ok())
            .map_or("?".into(), |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        let _ = writeln!(
            out,
            "{:<20} {:<24} {:<26} {:<40} {}",
            when,
            e.who.escape_debug().to_string(),
            e.command.escape_debug().to_string(),
            e.pool.as_deref().unwrap_or("-").escape_debug().to_string(),
            e.change.escape_debug()
        );
    }
    Ok(out)
}
