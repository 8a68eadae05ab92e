//! Checkout replies: what the travis worker decodes, and the error codes.

use serde::Serialize;

use crate::pool::short_zone;
use crate::store::PoolEntry;

/// A successful checkout: exactly the fields the travis worker reads, zone always short.
#[derive(Serialize)]
pub struct Vm<'a> {
    pub name: &'a str,
    pub zone: &'a str,
    pub ip: Option<&'a str>,
    pub public_ip: Option<&'a str>,
    pub ssh_private_key: &'a str,
}

impl<'a> From<&'a PoolEntry> for Vm<'a> {
    fn from(entry: &'a PoolEntry) -> Self {
        Vm {
            name: &entry.name,
            zone: short_zone(&entry.zone),
            ip: entry.ip.as_deref(),
            public_ip: entry.public_ip.as_deref().filter(|ip| !ip.is_empty()),
            ssh_private_key: &entry.ssh_private_key,
        }
    }
}

/// The stable error codes of a failed checkout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    NoPool,
    PoolEmpty,
    BadRequest,
    Internal,
}

/// A failed checkout: human text and a stable code.
#[derive(Debug, Serialize)]
pub struct Error {
    pub error: String,
    pub code: Code,
}

impl Error {
    pub fn new(code: Code, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            code,
        }
    }
}
