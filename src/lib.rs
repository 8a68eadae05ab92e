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
//! | [`checkout`] | `warmer checkout`: serves checkout requests (`request.rs` parses one, `reply.rs` answers); `http.rs` serves the same checkout over travis-ci/warmer's HTTP API, in `warmer web` | [`checkout::Checkout::handle`] |
//! | [`refill`] | `warmer refill`: boots VMs until every pool is at its target (`boot.rs`), on the messages of its queue | [`refill::Refill::handle`] |
//! | [`reconcile`] | `warmer reconcile`: sizes pools ([`sizing`]), then compares Redis with the cloud; `plan.rs` decides, purely | [`reconcile::Reconciler::pass`] |
//! | [`web`] | `warmer web`: health, metrics, HireFire, and travis-ci/warmer's HTTP API when tokens are set | one HTTP answer |
//! | [`autoscale`] | `warmer autoscale`: scales dynos through the Heroku Platform API; `plan.rs` decides | one check |
//! | [`watchdog`] | `warmer watchdog`: restarts a Heroku dyno before it swaps, from the app's log stream (`logline.rs` reads a line, `plan.rs` decides) | one log line |
//! | [`dev`] | `warmer dev`: checkout, refill, reconcile and web in one process, on the local provider; `servers.rs` starts a private Redis and RabbitMQ when none answers (also for the test kit) | |
//!
//! And the commands that run once:
//!
//! | module | command |
//! |---|---|
//! | [`check`] | `warmer check`: the release phase's checks, step by step |
//! | [`dead_letters`] | `warmer dead list`, `warmer dead requeue`, `warmer dead purge`: the dead letters of `<prefix>.dead` |
//! | [`operator`] | `warmer pool …`, `warmer fill`, `warmer request`, `warmer permissions`; `status.rs`: `warmer status`; `apply.rs`: `warmer apply`, `warmer export`, `warmer history`; `brake.rs`: `warmer brake` |
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
//! | `svg` | charts drawn as SVG on the server: the operators' page, `simulate --report` |
//! | `names`, `config` | every queue name and Redis key ([`Names`]); the environment, read once and validated by area ([`Config`]) |
//! | `pool`, `policy`, `pools_file`, `demand`, `process` | pool names and levels; a pool's sizing policy; pools as a TOML file and its diff against Redis; demand as recorded; the process types |
//! | [`clock`], `retry`, [`shutdown`], [`telemetry`] | the one clock; the one retry policy per dependency; SIGTERM; logs that never carry a secret |
//! | [`cli`] | the command line |
//!
//! The public surface is the process modules above and the items re-exported here, which the
//! binary, the tests and the benches use.

pub mod autoscale;
pub mod check;
pub mod checkout;
pub mod cli;
pub mod dead_letters;
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
mod pools_file;
mod process;
mod refill_message;
mod retry;
mod sshkey;
mod store;
mod svg;
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
pub use process::actor;
pub use refill_message::{FillCommand, RefillMessage};
pub use sshkey::generate_blocking as generate_ssh_key;
pub use store::points;
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
    use std::path::Path;

    /// The crate's modules from the bottom up: each may import only from those before it, so
    /// there is no circle, and no shared module (up to `sizing`) imports a process module.
    const LAYERS: &[&str] = &[
        "pool",
        "svg",
        "telemetry",
        "config",
        "retry",
        "shutdown",
        "clock",
        "names",
        "events",
        "process",
        "auth",
        "demand",
        "policy",
        "pools_file",
        "amqp",
        "refill_message",
        "topology",
        "metrics",
        "store",
        "context",
        "heroku",
        "sshkey",
        "cloud",
        "deletion",
        "load",
        "sizing",
        // The process modules and the commands.
        "checkout",
        "refill",
        "reconcile",
        "web",
        "autoscale",
        "watchdog",
        "check",
        "dead_letters",
        "operator",
        "dev",
        "cli",
    ];

    /// The modules `source` (a file's text, its tests and comments left out) names as
    /// `crate::<module>`, `use crate::{a, b}` included.
    fn imports(source: &str) -> Vec<String> {
        let code: String = source
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut found = Vec::new();
        for after in code.split("crate::").skip(1) {
            let named = match after.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .collect(),
                None => vec![after],
            };
            for name in named {
                let module: String = name
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !module.is_empty() {
                    found.push(module);
                }
            }
        }
        found
    }

    fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                visit(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }

    #[test]
    fn every_module_imports_only_from_the_layers_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        visit(&src, &mut files);
        let rank = |module: &str| LAYERS.iter().position(|m| *m == module);
        let mut checked = 0;
        for file in files {
            let relative = file.strip_prefix(&src).expect("under src/");
            let module = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .unwrap_or_default()
                .trim_end_matches(".rs");
            if module == "lib" || module == "main" {
                continue;
            }
            let Some(own) = rank(module) else {
                panic!("{module} (src/{}) is not in LAYERS", relative.display());
            };
            let source = std::fs::read_to_string(&file).expect("a source file is readable");
            for imported in imports(&source) {
                if imported == module {
                    continue;
                }
                let Some(theirs) = rank(&imported) else {
                    panic!(
                        "src/{} imports crate::{imported}, which is not in LAYERS",
                        relative.display()
                    );
                };
                assert!(
                    theirs < own,
                    "src/{} ({module}) imports crate::{imported}, which is above it",
                    relative.display()
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} imports read");
    }

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
