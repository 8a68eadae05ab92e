//! warmer keeps pools of pre-warmed cloud VMs and hands them out over AMQP.
//!
//! `main.rs` parses the command line and calls into this library; tests call the same functions.

pub mod amqp;
pub mod autoscale;
pub mod checkout;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod context;
pub mod deletion;
pub mod dev;
pub mod events;
pub mod load;
pub mod names;
pub mod operator;
pub mod pool;
pub mod reconcile;
pub mod refill;
pub mod shutdown;
pub mod sshkey;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod web;
