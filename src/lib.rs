//! warmer keeps pools of pre-warmed cloud VMs and hands them out over AMQP.
//!
//! `main.rs` parses the command line and calls into this library; the tests and benches call
//! the same functions.
//!
//! # Layout
//!
//! One module per process type, each with a `run` (the loop `main` calls) and a single step
//! that returns a named outcome:
//!
//! | module | process | step |
//! |---|---|---|
//! | [`checkout`] | `warmer checkout`: serves checkout requests (`request.rs` parses one, `reply.rs` answers) | [`checkout::Checkout::handle`] |
//! | [`refill`] | `warmer refill`: boots VMs until every pool is at its target (`boot.rs`), reads refill messages (`command.rs`) | [`refill::Refill::handle`] |
//! | [`reconcile`] | `warmer reconcile`: sizes pools ([`sizing`]), then compares Redis with the cloud; `plan.rs` decides, purely | [`reconcile::Reconciler::pass`] |
//! | [`sizing`] | the sizer inside the reconciler (`sizer.rs`), policies (`policy.rs`), its pure decisions (`plan.rs`), and `warmer simulate` (`simulate.rs`) | [`sizing::sizer::Sizer::step`] |
//! | [`web`] | `warmer web`: health, metrics, HireFire | one HTTP answer |
//! | [`autoscale`] | `warmer autoscale`: scales dynos through the Heroku Platform API; `plan.rs` decides | one check |
//! | [`dev`] | `warmer dev`: all of the above on the local provider | |
//! | [`operator`] | `warmer pool …`, `fill`, `request`, `status` | one command |
//!
//! What they share, private to the crate:
//!
//! | module | owns |
//! |---|---|
//! | `store` | Redis: every key, record format ([`PoolEntry`], [`Lease`], [`OrphanRecord`]) and Lua script, split by aggregate (`pools`, `leases`, `boots`, `orphans`, `reconcile`, `lock`, `metrics`, `sizing`, `local_cloud`). Nothing else issues a Redis command |
//! | `amqp` | RabbitMQ transport: connections, the consume loop, publishing with confirms ([`Publisher`], `Courier`), direct reply-to and its presence probe |
//! | `topology` | what is declared on RabbitMQ, and the queue depths HireFire and the autoscaler read |
//! | `events` | every message besides replies: [`Event`] (routing key and body) and [`FillCommand`] |
//! | `names` | every queue name and Redis key, from the prefix and namespace ([`Names`]) |
//! | `cloud` | where VMs come from: Compute Engine (`gce.rs`) or the local simulation (`local.rs`) |
//! | `deletion` | deleting recorded orphans, for refill and the reconciler |
//! | `load` | what each consumer process type has waiting (HireFire, autoscale) |
//! | `metrics` | every metric family, how its counters are kept in Redis, the exposition |
//! | `pool` | pool names and Compute Engine resource names, parsed |
//! | `sshkey` | each VM's RSA key pair, encrypted the way the travis worker reads it |
//! | `config`, `context` | the environment, read once and validated ([`Config`]); what every process is given ([`Context`]) |
//! | [`shutdown`], [`telemetry`], [`cli`] | SIGTERM, logs that never carry a secret, the command line |
//!
//! The public surface is the process modules above and the items re-exported here.

pub mod autoscale;
pub mod check;
pub mod checkout;
pub mod cli;
pub mod dev;
pub mod operator;
pub mod policy;
pub mod reconcile;
pub mod refill;
pub mod shutdown;
pub mod sizing;
pub mod telemetry;
pub mod watchdog;
pub mod web;

mod amqp;
mod auth;
pub mod clock;
mod cloud;
mod config;
mod context;
mod deletion;
mod events;
mod heroku;
mod load;
mod metrics;
mod names;
mod pool;
mod retry;
mod sshkey;
mod store;
mod topology;

pub use amqp::{
    DIRECT_REPLY_TO, Incoming, Publisher, consume_direct_replies, json_properties, passive_declare,
};
pub use clock::now_ms;
pub use cloud::{Cloud, VmSpec};
pub use config::{Config, DEV_NAMES, Secret, ServerUrl};
pub use context::Context;
pub use deletion::{Deleter, Listed};
pub use events::{Event, Events, FillCommand, RefillMessage};
pub use names::Names;
pub use pool::PoolName;
pub use sshkey::generate_blocking as generate_ssh_key;
pub use store::reconcile::{LeaseView, RedisView, WarmedVm};
pub use store::sizing::{Decision, Rollover, RolloverState, SizingView, StartRollover};
pub use store::{
    Capped, Checkout as CheckoutOutcome, Delivery, Disposal, Finished, GiveBack, Lease, LeaseState,
    Orphan, OrphanRecord, PoolEntry, Reservation, Settled, Store, Swept, ToSettle,
};
pub use topology::{
    DEAD_LETTER_LIMIT, DELIVERY_LIMIT, Permissions, REFILL_QUEUE_LIMIT, Role,
    declare as declare_topology, permissions,
};
