//! What each consumer process type has waiting: the signal HireFire (through `warmer web`) and
//! `warmer autoscale` scale by.
//!
//! - `checkout`: requests waiting in `<prefix>.checkout`. These are ready messages, so every
//!   running consumer already holds its prefetch of [`CHECKOUT_PREFETCH`].
//! - `refill`: VMs the pools lack with no boot reserved for them, Σ max(0, target − ready −
//!   booting); 0 while the safety brake holds every boot. The refill queue is no signal: its
//!   messages are hints, acked at once even when every boot slot is taken.

use crate::pool::PoolLevel;
use crate::process::{CHECKOUT_PREFETCH, ProcessType};
use crate::topology::QueueDepth;

/// One consumer process type's waiting work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub process: ProcessType,
    /// Work waiting for a consumer of this type.
    pub waiting: u32,
    /// How much of it one more dyno takes on at once.
    pub per_dyno: u32,
}

/// The backlog of `checkout` and `refill`, from the checkout queue's depth and the pools.
pub fn backlogs(
    depths: &[QueueDepth],
    pools: &[PoolLevel],
    brake: bool,
    boot_concurrency: usize,
) -> [Backlog; 2] {
    let requests = depths
        .iter()
        .find(|d| d.process == ProcessType::Checkout.name())
        .and_then(|d| d.ready)
        .unwrap_or(0);
    let unbooted: u64 = if brake {
        0
    } else {
        pools
            .iter()
            .filter_map(|p| Some(p.target()?.saturating_sub(p.ready + p.booting)))
            .sum()
    };
    [
        Backlog {
            process: ProcessType::Checkout,
            waiting: requests,
            per_dyno: u32::from(CHECKOUT_PREFETCH),
        },
        Backlog {
            process: ProcessType::Refill,
            waiting: u32::try_from(unbooted).unwrap_or(u32::MAX),
            per_dyno: u32::try_from(boot_concurrency).unwrap_or(u32::MAX),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(target: &str, ready: u64, booting: u64) -> PoolLevel {
        PoolLevel {
            pool: "img:n1-standard-1".into(),
            target: target.into(),
            ready,
            booting,
        }
    }

    #[test]
    fn checkout_waits_on_queued_requests_and_refill_on_vms_no_boot_is_reserved_for() {
        let depths = [QueueDepth {
            process: "checkout",
            queue: "w.checkout".into(),
            ready: Some(70),
            consumers: Some(1),
            state: crate::topology::QueueState::Ok,
        }];
        let pools = [pool("10", 3, 2), pool("2", 5, 0), pool("legacy", 0, 0)];

        let [checkout, refill] = backlogs(&depths, &pools, false, 8);

        assert_eq!(
            (checkout.process, checkout.waiting, checkout.per_dyno),
            (ProcessType::Checkout, 70, 64)
        );
        assert_eq!(
            (refill.process, refill.waiting, refill.per_dyno),
            (ProcessType::Refill, 5, 8)
        );
        let [_, braked] = backlogs(&depths, &pools, true, 8);
        assert_eq!(
            braked.waiting, 0,
            "boots are held: more refill dynos would not help"
        );
        let [missing, _] = backlogs(&[], &pools, false, 8);
        assert_eq!(missing.waiting, 0, "no queue yet: nothing waits");
    }
}
