//! warmer's integration tests, against the real Redis and RabbitMQ on this machine.
//!
//! One binary (builds are slow); each module is one capability. Every test gets its own AMQP
//! prefix and Redis namespace from `warmer_testkit::TestApp` and removes them when it ends.

mod autoscale;
mod check;
mod checkout;
mod faults;
mod lifecycle;
mod logs;
mod metrics;
mod operator;
mod reconcile;
mod refill;
mod scripts;
mod secrets;
mod simulate;
mod topology;
mod watchdog;
mod web;

/// The `warmer` binary running `process`, with nothing of the test's environment, stdout
/// discarded, killed if the test drops it.
pub fn warmer(process: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_warmer"));
    command
        .arg(process)
        .env_clear()
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}
