//! Logging: `RUST_LOG` (default `info`) to stderr, colour only on a terminal.
//!
//! Message bodies carry SSH keys, so the lapin log targets that print whole messages or frames
//! are capped whatever `RUST_LOG` says.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Targets that would print message bodies (lapin logs returned messages at WARN, frames at TRACE).
const SECRET_BEARING: [&str; 4] = [
    "lapin::returned_messages=off",
    "lapin::frames=info",
    "lapin::channels=info",
    "lapin::channel=info",
];

/// The log filter: `RUST_LOG` or `default`, with the secret-bearing targets capped.
pub fn filter(default: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    for directive in SECRET_BEARING {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the process-wide subscriber.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(filter("info,lapin=warn"))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
