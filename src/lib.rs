//! warmer keeps pools of pre-warmed cloud VMs and hands them out over AMQP.
//!
//! `main.rs` parses the command line and calls into this library; the tests and benches call
//! the same functions.
//!
//! # Layout
//!
//! One module per process type, each with `run(ctx, shutdown)` (what `main` runs until SIGTERM)
//! and a single step that returns a named outcome:
//!
//! | module | process | step |
//! |---|---|---|
//! | [`checkout`] | `warmer checkout`: serves checkout requests (`request.rs` parses one, `reply.rs` answers) | [`checkout::Checkout::handle`] |
//! | [`refill`] | `warmer refill`: boots VMs until every pool is at its target (`boot.rs`), on the messages of its queue | [`refill::Refill::handle`] |
//! | [`reconcile`] | `warmer reconcile`: sizes pools ([`sizing`]), then compares Redis with the cloud; `plan.rs` decides, purely | [`reconcile::Reconciler::pass`] |
//! | [`web`] | `warmer web`: health, metrics, HireFire | one HTTP answer |
//! | [`autoscale`] | `warmer autoscale`: scales dynos through the Heroku Platform API; `plan.rs` decides | one check |
//! | [`watchdog`] | `warmer watchdog`: restarts a Heroku dyno before it swaps, from the app's log stream (`logline.rs` reads a line, `plan.rs` decides) | one log line |
//! | [`dev`] | `warmer dev`: checkout, refill, reconcile and web in one process, on the local provider | |
//!
//! And the commands that run once:
//!
//! | module | command |
//! |---|---|
//! | [`check`] | `warmer check`: the release phase's checks, step by step |
//! | [`operator`] | `warmer pool …`, `warmer fill`, `warmer request`, `warmer status`, `warmer permissions` |
//! | [`sizing`] | the sizer the reconciler runs (`sizer.rs`), its pure decisions (`plan.rs`), and `warmer simulate` (`simulate.rs`) |
//!
//! What they share, private to the crate, each importing only from the rows below it:
//!
//! | module | owns |
//! |---|---|
//! | `deletion`, `load` | deleting recorded orphans (refill and the reconciler); what each consumer type has waiting (HireFire, autoscale) |
//! | `cloud` | where VMs come from: Compute Engine (`gce.rs`) or the local simulation (`local.rs`); which VMs are this deployment's |
//! | `context` | what every process is given ([`Context`]): configuration, names, store |
//! | `store` | Redis: every key, record format ([`PoolEntry`], [`Lease`], [`OrphanRecord`]) and Lua script, split by aggregate, with its own error (unavailable or other) and retries. Nothing else issues a Redis command |
//! | `metrics` | every metric family, the checkout outcomes ([`CheckoutOutcome`]), how counters are kept in Redis, the exposition |
//! | `topology` | what is declared on RabbitMQ, the broker permissions each role needs, the queue depths HireFire and the autoscaler read |
//! | `events`, `refill_message` | the events published on `<prefix>.events`; the refill queue's one message type ([`RefillMessage`]), written and read in one place |
//! | `amqp` | RabbitMQ transport: connections over a cluster's nodes, the consume loop, publishing with confirms ([`Publisher`], `Courier`), direct reply-to and its presence probe |
//! | `auth`, `sshkey`, `heroku` | signed fill commands; each VM's key pair, encrypted as the travis worker reads it; the Heroku Platform API |
//! | `names`, `config` | every queue name and Redis key ([`Names`]); the environment, read once and validated by area ([`Config`]) |
//! | `pool`, `policy`, `demand`, `process` | pool names and levels; a pool's sizing policy; demand as recorded; the process types |
//! | [`clock`], `retry`, [`shutdown`], [`telemetry`] | the one clock; the one retry policy per dependency; SIGTERM; logs that never carry a secret |
//! | [`cli`] | the command line |
//!
//! The public surface is the process modules above and the items re-exported here, which the
//! binary, the tests and the benches use.

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
mod demand;
mod events;
mod heroku;
mod load;
mod metrics;
mod names;
mod pool;
mod process;
mod refill_message;
mod retry;
mod sshkey;
mod store;
mod topology;

pub use amqp::{
    DIRECT_REPLY_TO, Incoming, Publisher, consume_direct_replies, json_properties, passive_declare,
};
pub use clock::now_ms;
pub use cloud::{Cloud, VmSpec};
pub use config::{Config, DEV_NAMES, Secret};
pub use context::Context;
pub use deletion::{Deleter, Listed};
pub use events::Events;
pub use metrics::CheckoutOutcome;
pub use names::Names;
pub use pool::PoolName;
pub use refill_message::{FillCommand, RefillMessage};
pub use sshkey::generate_blocking as generate_ssh_key;
pub use store::sizing::{Decision, RolloverState, StartRollover};
pub use store::{
    Capped, Checkout as CheckoutStep, Delivery, Disposal, Finished, GiveBack, Lease, LeaseState,
    OrphanRecord, PoolEntry, Settled, Swept, ToSettle,
};
pub use topology::{
    DEAD_LETTER_LIMIT, DELIVERY_LIMIT, Permissions, REFILL_QUEUE_LIMIT, Role,
    declare as declare_topology, permissions,
};

#[cfg(test)]
mod tests {
    /// The crate map above names every command the CLI has.
    #[test]
    fn every_command_of_the_cli_is_in_the_crate_map() {
        use clap::CommandFactory;
        let map = include_str!("lib.rs");
        let commands = crate::cli::Cli::command();
        let names: Vec<&str> = commands.get_subcommands().map(|c| c.get_name()).collect();
        assert!(names.len() >= 12, "{names:?}");
        for name in names {
            assert!(
                map.contains(&format!("`warmer {name}")),
                "`warmer {name}` is a command of the CLI but not in lib.rs's crate map"
            );
        }
    }
}
