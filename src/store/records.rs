//! The records kept in Redis, as types: a pool entry, a lease, an orphan record. Their JSON is
//! what the Lua scripts read and write; `Debug` never prints an SSH key.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pool::short_zone;

/// A warmed VM as stored in a pool list. Legacy entries (travis-ci/warmer) have exactly the
/// first five fields, with `zone` as a full URL; unknown fields are kept as they are.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
pub struct PoolEntry {
    pub name: String,
    pub zone: String,
    pub ip: Option<String>,
    #[serde(default)]
    pub public_ip: Option<String>,
    pub ssh_private_key: String,
    /// When the VM was ready, in seconds since the epoch (absent in legacy entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booted_at: Option<u64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Debug for PoolEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolEntry")
            .field("name", &self.name)
            .field("zone", &self.zone)
            .field("ip", &self.ip)
            .field("public_ip", &self.public_ip)
            .field("ssh_private_key", &"[redacted]")
            .field("booted_at", &self.booted_at)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PoolEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, short_zone(&self.zone))
    }
}

/// Whether a lease's VM was only popped, or its reply confirmed.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Popped for a request whose reply is not confirmed yet.
    Pending,
    /// Its reply was confirmed: the VM is handed out.
    Handed,
}

/// The VM popped for one request (`<ns>:_leases`, keyed by the request's identity).
#[derive(Clone, Deserialize, Serialize, PartialEq)]
pub struct Lease {
    pub state: LeaseState,
    pub pool: String,
    /// The pool entry, exactly as it was stored (it goes back to the head as it is).
    pub entry: String,
    /// When it was popped (ms since the epoch); its handout follows within the request's budget.
    pub at: u64,
    /// The deadline of the request's first delivery (ms; absent in leases of older warmers):
    /// no repeat of the request is sent the VM after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
    /// The delivery that made the lease (absent in leases of older warmers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The entry was cut down to the VM's name and zone: its SSH key left Redis.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stripped: bool,
}

impl Lease {
    /// The leased VM's name, if its entry can be read.
    pub fn vm_name(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        serde_json::from_str::<Named>(&self.entry)
            .ok()
            .map(|e| e.name)
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("state", &self.state)
            .field("pool", &self.pool)
            .field("vm", &self.vm_name())
            .field("at", &self.at)
            .field("deadline", &self.deadline)
            .field("stripped", &self.stripped)
            .finish_non_exhaustive()
    }
}

/// An entry of `<ns>:orphaned`: a VM that may exist and must be deleted. Legacy records
/// (travis-ci/warmer) carry only `name` and `zone`; a pool entry that could not be read is kept
/// whole in `entry`, with no name, for an operator.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct OrphanRecord {
    pub name: Option<String>,
    /// `None`: unknown, deleted in every zone of the region.
    pub zone: Option<String>,
    #[serde(default = "legacy_reason")]
    pub reason: String,
}

fn legacy_reason() -> String {
    "orphaned".into()
}

impl OrphanRecord {
    pub fn new(name: &str, zone: Option<&str>, reason: &str) -> Self {
        Self {
            name: Some(name.to_string()),
            zone: zone.filter(|z| !z.is_empty()).map(String::from),
            reason: reason.to_string(),
        }
    }
}

/// An orphan record as read: `raw` (exactly as stored, to remove it) and what it says.
#[derive(Clone, Debug, PartialEq)]
pub struct Orphan {
    pub raw: String,
    pub record: OrphanRecord,
}

impl Orphan {
    /// Reads a stored record; one that is not an [`OrphanRecord`] has no name (an operator's).
    pub fn parse(raw: String) -> Self {
        let record = serde_json::from_str(&raw).unwrap_or(OrphanRecord {
            name: None,
            zone: None,
            reason: "unreadable".into(),
        });
        Orphan { raw, record }
    }

    /// The VM's name, unless the record has none.
    pub fn name(&self) -> Option<&str> {
        self.record.name.as_deref().filter(|n| !n.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_entries_read_with_full_url_zones() {
        let legacy = r#"{"name":"travis-job-1","zone":"https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-c","ip":"10.0.0.2","public_ip":null,"ssh_private_key":"KEY"}"#;
        let entry: PoolEntry = serde_json::from_str(legacy).unwrap();
        assert_eq!(short_zone(&entry.zone), "us-central1-c");
        assert_eq!(entry.public_ip, None);
        assert_eq!(entry.booted_at, None);
        assert!(!format!("{entry:?}").contains("KEY"));
    }

    #[test]
    fn orphan_records_of_every_age_read() {
        let legacy = Orphan::parse(r#"{"name":"vm","zone":"z"}"#.into());
        assert_eq!(
            legacy.record,
            OrphanRecord::new("vm", Some("z"), "orphaned")
        );
        let ours = Orphan::parse(r#"{"name":"vm","zone":null,"reason":"surplus"}"#.into());
        assert_eq!(ours.record, OrphanRecord::new("vm", None, "surplus"));
        let unreadable =
            Orphan::parse(r#"{"name":null,"zone":null,"reason":"unreadable","entry":"{"}"#.into());
        assert_eq!(unreadable.name(), None);
        assert_eq!(Orphan::parse("garbage".into()).name(), None);
    }

    #[test]
    fn a_lease_reads_as_the_scripts_write_it() {
        let lease: Lease = serde_json::from_str(
            r#"{"state":"handed","pool":"i:m","entry":"{\"name\":\"vm\",\"zone\":\"z\",\"ip\":null,\"ssh_private_key\":\"KEY\"}","at":5}"#,
        )
        .unwrap();
        assert_eq!(lease.state, LeaseState::Handed);
        assert_eq!(lease.vm_name().as_deref(), Some("vm"));
        assert!(!format!("{lease:?}").contains("KEY"));
    }
}
