//! The active reconciler's point per pool and minute (see `store::points`): the levels, the
//! checkouts and idle VM-seconds counted so far, and why the target is what it is — read as a
//! scrape of `/metrics` reads them, once a minute at most.

use crate::metrics::{CHECKOUTS, CheckoutOutcome, IDLE_VM_SECONDS};
use crate::pool::PoolName;
use crate::store::Store;
use crate::store::points::Point;

/// Records every pool's point of the minute `minute` (Unix minutes); returns how many.
pub async fn sample(store: &Store, minute: u64) -> anyhow::Result<usize> {
    let (pools, _) = store.status().await?;
    let names: Vec<&str> = pools.iter().map(|p| p.level.pool.as_str()).collect();
    let counters = store.counters(&names).await?;
    let sizing = store.sizing_view().await?;
    let small = |n: u64| u16::try_from(n).unwrap_or(u16::MAX);
    // Cumulative counters kept in 32 bits: they wrap, and a difference of two still reads right.
    let wrapped = |n: u64| (n % (1 << 32)) as u32;
    let points: Vec<(PoolName, Point)> = pools
        .iter()
        .filter_map(|p| {
            let pool: PoolName = p.level.pool.parse().ok()?;
            let name = p.level.pool.as_str();
            let outcome = |o: CheckoutOutcome| counters.counter(&CHECKOUTS, &[name, o.label()]);
            let point = Point {
                minute: u32::try_from(minute).ok()?,
                target: small(p.level.target().unwrap_or(0)),
                ready: small(p.level.ready),
                booting: small(p.level.booting),
                handed_out: small(p.handed_out),
                hits: wrapped(outcome(CheckoutOutcome::HandedOut)),
                misses: wrapped(outcome(CheckoutOutcome::PoolEmpty)),
                idle_seconds: wrapped(counters.vm_seconds(&IDLE_VM_SECONDS, name) as u64),
                reason: Point::reason_index(sizing.why(name)),
            };
            Some((pool, point))
        })
        .collect();
    store.record_points(&points).await?;
    Ok(points.len())
}
