use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use warmer::Config;
use warmer::cli::Cli;
use warmer::telemetry::{self, Redactor};

#[tokio::main]
async fn main() -> ExitCode {
    // Two TLS stacks (lapin, redis) share rustls: pick its crypto provider before either runs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // OpenSSL initialised without its exit handler, before anything else uses it (see
    // `Context::new`).
    openssl::init();
    let cli = Cli::parse();
    // Configuration errors name the variable, never its value.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => return fail(&telemetry::report(&error)),
    };
    let redactor = Redactor::new(config.secrets());
    telemetry::init(redactor.clone(), config.log_format);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    match warmer::cli::run(cli.command, config).await {
        Ok(output) => {
            // A reader that stopped reading (`warmer status | head`) is no failure.
            let _ = std::io::stdout().write_all(output.text.as_bytes());
            if output.failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => fail(&redactor.redact(&telemetry::report(&error))),
    }
}

fn fail(error: &str) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(2)
}
