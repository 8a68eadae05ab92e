//! `warmer brake` and `warmer brake release --yes`: why the safety brake holds and which VMs it
//! holds for, and releasing it once an operator has looked.
//!
//! The reconciler engages the brake when more VMs labelled for this deployment are unaccounted
//! for than `WARMER_ORPHAN_THRESHOLD`: so many at once means Redis lost track (restored, wiped,
//! the wrong URL), and deleting them could kill running jobs. Boots and the deletion of
//! unaccounted VMs wait. Releasing it tells the reconciler that the VMs listed are leaks: they
//! no longer hold the brake and its next pass deletes them, unless accounted for by then; VMs
//! found unaccounted later count again, and engage it again past the threshold.

use std::fmt::Write as _;

use anyhow::bail;

use super::status::age;
use crate::clock::now_secs;
use crate::context::Context;

/// VMs listed per page.
pub const PAGE: usize = 100;

/// `warmer brake [--page N]`: whether the brake holds, why, and the unaccounted VMs (from the
/// last pass), [`PAGE`] per page.
pub async fn show(ctx: &Context, page: usize) -> anyhow::Result<String> {
    let state = ctx.store.brake_state().await?;
    let suspects = ctx.store.suspects().await?;
    let mut out = match &state {
        None => "safety brake off\n".to_string(),
        Some(state) => {
            let threshold = state.threshold.unwrap_or(ctx.config.orphan_threshold);
            let since = state
                .since
                .map_or("since an unrecorded time".into(), |since| {
                    format!("for {}", age(now_secs().saturating_sub(since)))
                });
            format!(
                "SAFETY BRAKE ON {since}: {} VMs labelled for this deployment were unaccounted for, more than WARMER_ORPHAN_THRESHOLD ({threshold}).\n\
                 Boots and the deletion of unaccounted VMs are paused; sizing is frozen.\n\
                 Check that WARMER_REDIS_URL is the deployment's Redis and that none of the VMs below runs a job, then `warmer brake release --yes`: the next reconcile pass deletes them.\n",
                state.unaccounted
            )
        }
    };
    if suspects.is_empty() {
        out.push_str("no unaccounted VMs at the last reconcile pass\n");
        return Ok(out);
    }
    let pages = suspects.len().div_ceil(PAGE);
    let page = page.clamp(1, pages);
    let _ = writeln!(
        out,
        "{} unaccounted VM(s) at the last reconcile pass{}:",
        suspects.len(),
        if pages > 1 {
            format!(", page {page} of {pages} (`--page N` for the others)")
        } else {
            String::new()
        }
    );
    for name in suspects.iter().skip((page - 1) * PAGE).take(PAGE) {
        // Names come from Redis: escaped for the terminal.
        let _ = writeln!(out, "  {}", name.escape_debug());
    }
    Ok(out)
}

/// `warmer brake release --yes`: releases the brake for the unaccounted VMs of the last pass and
/// records it in the history. Without `yes`, refuses and says what it would do.
pub async fn release(ctx: &Context, yes: bool) -> anyhow::Result<String> {
    let Some(state) = ctx.store.brake_state().await? else {
        return Ok("the safety brake is off: nothing to release\n".into());
    };
    let suspects = ctx.store.suspects().await?;
    if !yes {
        bail!(
            "not released: releasing lets the next reconcile pass delete the {} unaccounted VM(s) `warmer brake` lists; look at them, then run `warmer brake release --yes`",
            suspects.len()
        );
    }
    let was_on = ctx.store.release_brake_for(&suspects).await?;
    let change = format!(
        "safety brake released ({} unaccounted when engaged); {} VM(s) released for deletion",
        state.unaccounted,
        suspects.len()
    );
    let mut out = format!(
        "{}; the next reconcile pass deletes them unless accounted for by then, and boots resume\n",
        change
    );
    if !was_on {
        out = "the safety brake was released meanwhile (by the reconciler or another operator); the VMs are released for deletion\n".into();
    }
    if let Some(failed) = ctx.store.record_change("brake release", None, change).await {
        out.push_str(&failed);
    }
    Ok(out)
}
