//! The reconciler's decision: a pure function from a [`Snapshot`] of Redis and the cloud to a
//! [`Plan`]. No I/O here; every rule is unit-tested below.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::cloud::{CHECKED_OUT_AT, COOLED, CloudVm};
use crate::pool::{is_gce_name, resource_name};
use crate::store::reconcile::WarmedVm;
use crate::store::{Orphan, OrphanRecord};

/// A pool entry whose VM was just booted is not evicted as "gone" for this long (seconds): the
/// cloud's list may lag behind a fresh VM.
pub const FRESH_GRACE_SECS: u64 = 60;
/// A refill hint pending longer than this (seconds) is taken as lost: the pool gets a fill.
pub const HINT_STALE_SECS: u64 = 300;

/// A lease: a VM taken for a request, pending its reply or handed out.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedVm {
    /// The request's identity, the lease's key.
    pub identity: String,
    pub name: String,
    pub pool: String,
    pub handed: bool,
    /// When it was popped or handed out, in Unix seconds.
    pub at: u64,
    /// Its request's deadline, in Unix seconds (unknown for an older warmer's lease).
    pub deadline: Option<u64>,
}

/// How long after its pop a lease of an older warmer (no deadline recorded) may still be
/// redelivered: the longest deadline a request may ask for.
pub const LONGEST_DEADLINE_SECS: u64 = 3_600;

/// Everything a pass decides on. Redis is read first (atomically), the cloud second, so a VM
/// that moves between states while the snapshot is taken is always seen somewhere.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Unix seconds.
    pub now: u64,
    pub targets: BTreeMap<String, u64>,
    /// Pool lists, including lists whose pool has no target any more.
    pub pools: BTreeMap<String, Vec<WarmedVm>>,
    pub booting: BTreeMap<String, Vec<String>>,
    pub leases: Vec<LeasedVm>,
    pub orphans: Vec<Orphan>,
    /// Unaccounted VMs marked by the previous pass.
    pub suspects: BTreeSet<String>,
    pub brake_on: bool,
    /// Unaccounted VMs an operator has looked at and released the brake for (`warmer brake
    /// release`): they no longer hold it, and are deleted as any unaccounted VM.
    pub released: BTreeSet<String>,
    /// Pools with a refill hint pending → since when (Unix ms).
    pub hints: BTreeMap<String, u64>,
    pub cloud: Vec<CloudVm>,
}

/// Limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_vm_age_secs: u64,
    pub max_handout_age_secs: u64,
    pub orphan_threshold: u64,
}

/// A warmed VM to take out of its pool (and delete).
#[derive(Debug, Clone, PartialEq)]
pub struct Eviction {
    pub pool: String,
    pub vm: WarmedVm,
    pub reason: &'static str,
}

/// What a pass does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub evict: Vec<Eviction>,
    /// Pool entries whose VM the listing does not show (gone, or not labelled for this
    /// deployment, e.g. booted by travis-ci/warmer): looked up one by one, then evicted or
    /// adopted (labelled).
    pub verify: Vec<(String, WarmedVm)>,
    /// VMs to delete directly.
    pub delete: Vec<OrphanRecord>,
    /// Unaccounted VMs seen for the first time; deleted next pass if still unaccounted.
    pub mark: Vec<String>,
    /// Suspects that are accounted for (or gone) now.
    pub unmark: Vec<String>,
    /// Handed-out VMs to label `warmth=cooled`, with their checkout time.
    pub label: Vec<(CloudVm, u64)>,
    /// Handed-out leases (identity, VM) whose VM the cloud no longer has, past their request's
    /// deadline: forgotten, so that the leases count only VMs that exist (the fleet cap).
    pub forget_leases: Vec<(String, String)>,
    /// Pools below target with nothing booting and no fresh refill hint pending: publish a fill
    /// for each.
    pub fill: Vec<String>,
    /// `Some(true)`: engage the brake; `Some(false)`: release it.
    pub brake: Option<bool>,
    /// Whether the brake holds after this pass (unaccounted VMs are kept, not deleted).
    pub holding: bool,
    /// VMs in the cloud that nothing in Redis accounts for.
    pub unaccounted: u64,
    /// Orphans recorded in Redis, to delete.
    pub orphans: usize,
}

impl Plan {
    /// True when the pass has nothing to do (the brake's steady state aside).
    pub fn is_idle(&self) -> bool {
        self.evict.is_empty()
            && self.verify.is_empty()
            && self.delete.is_empty()
            && self.mark.is_empty()
            && self.unmark.is_empty()
            && self.label.is_empty()
            && self.forget_leases.is_empty()
            && self.fill.is_empty()
            && self.brake.is_none()
            && self.orphans == 0
    }
}

/// Decides a pass.
pub fn decide(snapshot: &Snapshot, limits: Limits) -> Plan {
    let now = snapshot.now;
    let mut plan = Plan {
        orphans: snapshot.orphans.len(),
        ..Plan::default()
    };
    let cloud: HashMap<&str, &CloudVm> = snapshot
        .cloud
        .iter()
        .map(|vm| (vm.name.as_str(), vm))
        .collect();

    // What Redis accounts for.
    let mut accounted: BTreeSet<&str> = BTreeSet::new();
    accounted.extend(snapshot.pools.values().flatten().map(|vm| vm.name.as_str()));
    accounted.extend(snapshot.booting.values().flatten().map(String::as_str));
    accounted.extend(snapshot.leases.iter().map(|l| l.name.as_str()));
    accounted.extend(snapshot.orphans.iter().filter_map(Orphan::name));

    // Rules 2 and 5 (cloud side): unaccounted VMs, and handed-out VMs past their age.
    let unaccounted_total = snapshot
        .cloud
        .iter()
        .filter(|vm| !is_cooled(vm) && !accounted.contains(vm.name.as_str()))
        .filter(|vm| !snapshot.released.contains(&vm.name))
        .count() as u64;
    // So many unaccounted VMs at once means Redis lost track (restored, wiped, wrong URL), not
    // a few leaks: hold deletion as well as boots until an operator looks.
    let hold = unaccounted_total > limits.orphan_threshold;
    let mut unaccounted = BTreeSet::new();
    for vm in &snapshot.cloud {
        if is_cooled(vm) {
            let at = vm
                .labels
                .get(CHECKED_OUT_AT)
                .and_then(|t| t.parse::<u64>().ok());
            let expired = at.is_none_or(|at| now.saturating_sub(at) > limits.max_handout_age_secs);
            if expired && !accounted.contains(vm.name.as_str()) {
                plan.delete.push(OrphanRecord::new(
                    &vm.name,
                    Some(&vm.zone),
                    "handout_expired",
                ));
            }
            continue;
        }
        if accounted.contains(vm.name.as_str()) {
            continue;
        }
        unaccounted.insert(vm.name.as_str());
        if snapshot.suspects.contains(&vm.name) && !hold {
            plan.delete
                .push(OrphanRecord::new(&vm.name, Some(&vm.zone), "unaccounted"));
        } else if !snapshot.suspects.contains(&vm.name) {
            plan.mark.push(vm.name.clone());
        }
    }
    plan.unmark = snapshot
        .suspects
        .iter()
        .filter(|s| !unaccounted.contains(s.as_str()))
        .cloned()
        .collect();
    plan.unaccounted = unaccounted.len() as u64;

    // Rules 3 and 4: warmed VMs that are dead, stale, of a deleted pool, or surplus.
    for (pool, vms) in &snapshot.pools {
        let target = snapshot.targets.get(pool).copied();
        let mut kept = Vec::new();
        for vm in vms {
            let age = vm.booted_at.map(|t| now.saturating_sub(t));
            let reason = match cloud.get(vm.name.as_str()) {
                _ if vm.name.is_empty() => Some("unreadable"),
                // Never sent to the cloud: the deleter refuses its record for an operator.
                _ if !is_gce_name(&vm.name) || resource_name(&vm.zone, "zones").is_err() => {
                    Some("invalid_name")
                }
                _ if target.is_none() => Some("pool_deleted"),
                None if age.is_none_or(|a| a > FRESH_GRACE_SECS) => {
                    plan.verify.push((pool.clone(), vm.clone()));
                    kept.push(vm);
                    continue;
                }
                Some(found) if found.status != "RUNNING" => Some("not_running"),
                _ if age.is_some_and(|a| a > limits.max_vm_age_secs) => Some("max_age"),
                _ => None,
            };
            match reason {
                Some(reason) => plan.evict.push(Eviction {
                    pool: pool.clone(),
                    vm: vm.clone(),
                    reason,
                }),
                None => kept.push(vm),
            }
        }
        if let Some(target) = target {
            let booting = snapshot.booting.get(pool).map_or(0, Vec::len) as u64;
            let surplus = (kept.len() as u64 + booting).saturating_sub(target);
            // Oldest first, as trim_pool.lua does.
            for vm in kept.iter().take(surplus as usize) {
                plan.evict.push(Eviction {
                    pool: pool.clone(),
                    vm: (*vm).clone(),
                    reason: "surplus",
                });
            }
        }
    }

    // Rule 5 (labels): handed-out VMs not yet marked in the cloud; leases of VMs that are gone
    // (the worker deleted its VM), once no redelivery can need them and the listing cannot lag.
    for lease in snapshot.leases.iter().filter(|l| l.handed) {
        match cloud.get(lease.name.as_str()) {
            Some(vm) if vm.labels.get(COOLED.0).map(String::as_str) != Some(COOLED.1) => {
                plan.label.push(((*vm).clone(), lease.at));
            }
            Some(_) => {}
            None => {
                let deadline = lease.deadline.unwrap_or(lease.at + LONGEST_DEADLINE_SECS);
                if now > deadline.max(lease.at) + FRESH_GRACE_SECS {
                    plan.forget_leases
                        .push((lease.identity.clone(), lease.name.clone()));
                }
            }
        }
    }

    // Rule 6: a safety net for lost hints, unless one is on its way. Releasing the brake fills
    // whatever a pending hint says: a hint handled while the brake held booted nothing.
    let releasing = snapshot.brake_on && !hold;
    for (pool, target) in &snapshot.targets {
        let booting = snapshot.booting.get(pool).map_or(0, Vec::len);
        let evicted = plan.evict.iter().filter(|e| &e.pool == pool).count();
        let ready = snapshot.pools.get(pool).map_or(0, Vec::len) - evicted;
        let hinted = snapshot
            .hints
            .get(pool)
            .is_some_and(|at| now.saturating_sub(crate::clock::secs(*at)) < HINT_STALE_SECS);
        if booting == 0 && (releasing || !hinted) && (ready as u64) < *target {
            plan.fill.push(pool.clone());
        }
    }

    // Rule 7: the safety brake.
    if hold != snapshot.brake_on {
        plan.brake = Some(hold);
    }
    plan.holding = hold;
    plan
}

fn is_cooled(vm: &CloudVm) -> bool {
    vm.labels.get(COOLED.0).map(String::as_str) == Some(COOLED.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const LIMITS: Limits = Limits {
        max_vm_age_secs: 7 * 86_400,
        max_handout_age_secs: 6 * 3_600,
        orphan_threshold: 2,
    };
    const POOL: &str = "img:n1-standard-2";

    fn ready(name: &str, age: u64) -> WarmedVm {
        WarmedVm {
            name: name.into(),
            zone: "z".into(),
            booted_at: Some(NOW - age),
        }
    }

    fn running(name: &str) -> CloudVm {
        CloudVm {
            name: name.into(),
            zone: "z".into(),
            status: "RUNNING".into(),
            labels: [("warmth".to_string(), "warmed".to_string())].into(),
            label_fingerprint: Some("fp".into()),
        }
    }

    fn world(vms: &[WarmedVm]) -> Snapshot {
        Snapshot {
            now: NOW,
            targets: [(POOL.to_string(), vms.len() as u64)].into(),
            pools: [(POOL.to_string(), vms.to_vec())].into(),
            cloud: vms.iter().map(|vm| running(&vm.name)).collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn an_accounted_world_needs_nothing() {
        let plan = decide(&world(&[ready("a", 100), ready("b", 50)]), LIMITS);
        assert!(plan.is_idle(), "{plan:?}");
    }

    #[test]
    fn an_unaccounted_vm_is_marked_then_deleted_and_a_boot_in_progress_never() {
        let mut snapshot = world(&[ready("a", 100)]);
        snapshot.cloud.push(running("stray"));
        snapshot.cloud.push(running("booting-1"));
        snapshot
            .booting
            .insert(POOL.into(), vec!["booting-1".into()]);

        let first = decide(&snapshot, LIMITS);
        assert_eq!(first.mark, ["stray"]);
        assert!(first.delete.is_empty());

        snapshot.suspects.insert("stray".into());
        snapshot.suspects.insert("gone-meanwhile".into());
        let second = decide(&snapshot, LIMITS);
        assert_eq!(
            second.delete,
            [OrphanRecord::new("stray", Some("z"), "unaccounted")]
        );
        assert_eq!(second.unmark, ["gone-meanwhile"]);
    }

    #[test]
    fn stopped_vms_leave_their_pool_unlisted_ones_are_verified_and_fresh_ones_get_a_grace() {
        let mut snapshot = world(&[
            ready("unlisted", 100),
            ready("stopped", 100),
            ready("fresh", 5),
        ]);
        snapshot.cloud.retain(|vm| vm.name == "stopped");
        snapshot.cloud[0].status = "TERMINATED".into();
        let plan = decide(&snapshot, LIMITS);
        let evicted: Vec<(&str, &str)> = plan
            .evict
            .iter()
            .map(|e| (e.vm.name.as_str(), e.reason))
            .collect();
        assert_eq!(evicted, [("stopped", "not_running")]);
        let verified: Vec<&str> = plan.verify.iter().map(|(_, vm)| vm.name.as_str()).collect();
        assert_eq!(verified, ["unlisted"]);
    }

    #[test]
    fn stale_surplus_and_poolless_vms_are_evicted() {
        let mut snapshot = world(&[
            ready("old", 8 * 86_400),
            ready("a", 300),
            ready("b", 200),
            ready("c", 100),
        ]);
        snapshot.targets.insert(POOL.into(), 2);
        snapshot
            .pools
            .insert("gone:n1".into(), vec![ready("orphan-pool", 10)]);
        snapshot.cloud.push(running("orphan-pool"));
        let plan = decide(&snapshot, LIMITS);
        let evicted: Vec<(&str, &str)> = plan
            .evict
            .iter()
            .map(|e| (e.vm.name.as_str(), e.reason))
            .collect();
        assert_eq!(
            evicted,
            [
                ("orphan-pool", "pool_deleted"),
                ("old", "max_age"),
                ("a", "surplus")
            ]
        );
    }

    #[test]
    fn handed_out_vms_are_labelled_and_deleted_past_their_age() {
        let mut snapshot = world(&[]);
        snapshot.targets.clear();
        snapshot.leases.push(LeasedVm {
            identity: "i:new".into(),
            name: "new".into(),
            pool: POOL.into(),
            handed: true,
            at: NOW - 60,
            deadline: Some(NOW - 30),
        });
        snapshot.cloud.push(running("new"));
        // Gone from the cloud: the worker deleted them. Forgotten once past their deadline
        // and the listing's grace, and an older warmer's lease an hour after its pop.
        for (identity, at, deadline) in [
            ("i:done", NOW - 600, Some(NOW - 570)),
            ("i:just-done", NOW - 60, Some(NOW - 30)),
            ("i:older-warmer", NOW - 2 * 3_600, None),
            ("i:older-warmer-recent", NOW - 600, None),
        ] {
            snapshot.leases.push(LeasedVm {
                identity: identity.into(),
                name: format!("vm-of-{identity}"),
                pool: POOL.into(),
                handed: true,
                at,
                deadline,
            });
        }
        let mut old = running("old");
        old.labels.insert("warmth".into(), "cooled".into());
        old.labels
            .insert(CHECKED_OUT_AT.into(), (NOW - 7 * 3_600).to_string());
        let mut recent = running("recent");
        recent.labels.insert("warmth".into(), "cooled".into());
        recent
            .labels
            .insert(CHECKED_OUT_AT.into(), (NOW - 3_600).to_string());
        snapshot.cloud.extend([old, recent]);

        let plan = decide(&snapshot, LIMITS);

        assert_eq!(
            plan.forget_leases,
            [
                ("i:done".to_string(), "vm-of-i:done".to_string()),
                (
                    "i:older-warmer".to_string(),
                    "vm-of-i:older-warmer".to_string()
                ),
            ]
        );
        assert_eq!(plan.label.len(), 1);
        assert_eq!(
            (plan.label[0].0.name.as_str(), plan.label[0].1),
            ("new", NOW - 60)
        );
        assert_eq!(
            plan.delete,
            [OrphanRecord::new("old", Some("z"), "handout_expired")]
        );
        assert!(
            plan.mark.is_empty(),
            "cooled VMs are accounted for by their label"
        );
    }

    #[test]
    fn pools_below_target_with_nothing_booting_get_a_fill() {
        let mut snapshot = world(&[ready("a", 10)]);
        snapshot.targets.insert(POOL.into(), 3);
        snapshot.targets.insert("other:n1".into(), 1);
        snapshot.booting.insert("other:n1".into(), vec!["b".into()]);
        snapshot.cloud.push(running("b"));
        assert_eq!(decide(&snapshot, LIMITS).fill, [POOL]);
    }

    #[test]
    fn a_pool_with_a_fresh_hint_on_its_way_gets_no_fill_and_a_stale_one_does() {
        let mut snapshot = world(&[ready("a", 10)]);
        snapshot.targets.insert(POOL.into(), 3);
        snapshot.hints.insert(POOL.into(), (NOW - 10) * 1000);
        assert!(
            decide(&snapshot, LIMITS).fill.is_empty(),
            "the hint gets there"
        );
        snapshot
            .hints
            .insert(POOL.into(), (NOW - HINT_STALE_SECS - 1) * 1000);
        assert_eq!(decide(&snapshot, LIMITS).fill, [POOL], "taken as lost");
    }

    #[test]
    fn releasing_the_brake_fills_short_pools_whatever_their_hints_say() {
        let mut snapshot = world(&[ready("a", 10)]);
        snapshot.targets.insert(POOL.into(), 3);
        snapshot.hints.insert(POOL.into(), (NOW - 10) * 1000);
        snapshot.brake_on = true;
        let released = decide(&snapshot, LIMITS);
        assert_eq!(released.brake, Some(false));
        assert_eq!(
            released.fill,
            [POOL],
            "a hint handled under the brake booted nothing"
        );
    }

    #[test]
    fn the_brake_engages_above_the_threshold_holds_deletion_and_releases_below() {
        let mut snapshot = world(&[]);
        snapshot.targets.clear();
        snapshot.cloud = ["x", "y", "z"].map(running).to_vec();
        snapshot.suspects = ["x", "y", "z"].map(String::from).into();
        let braked = decide(&snapshot, LIMITS);
        assert_eq!(braked.brake, Some(true));
        assert!(
            braked.delete.is_empty(),
            "no mass deletion: {:?}",
            braked.delete
        );
        snapshot.brake_on = true;
        assert_eq!(decide(&snapshot, LIMITS).brake, None);
        snapshot.cloud.truncate(2);
        let released = decide(&snapshot, LIMITS);
        assert_eq!(released.brake, Some(false));
        assert_eq!(released.delete.len(), 2, "a few leaks are deleted again");
    }

    #[test]
    fn vms_an_operator_released_the_brake_for_no_longer_hold_it_and_are_deleted() {
        let mut snapshot = world(&[]);
        snapshot.targets.clear();
        snapshot.cloud = ["x", "y", "z", "late"].map(running).to_vec();
        snapshot.suspects = ["x", "y", "z"].map(String::from).into();
        snapshot.brake_on = true;
        snapshot.released = ["x", "y", "z"].map(String::from).into();
        let released = decide(&snapshot, LIMITS);
        assert_eq!(released.brake, Some(false));
        assert!(!released.holding);
        let deleted: Vec<&str> = released
            .delete
            .iter()
            .filter_map(|r| r.name.as_deref())
            .collect();
        assert_eq!(
            deleted,
            ["x", "y", "z"],
            "released suspects; `late` is marked first"
        );
        assert_eq!(released.mark, ["late"]);

        // Others beyond the threshold engage it again.
        snapshot.brake_on = false;
        snapshot.cloud.extend(["p", "q", "r"].map(running));
        let again = decide(&snapshot, LIMITS);
        assert_eq!(
            again.brake,
            Some(true),
            "four unreleased VMs, above the threshold"
        );
        assert!(again.delete.is_empty());
    }
}
