//! Logging: `RUST_LOG` (default `info`) to stderr, colour only on a terminal.
//!
//! Message bodies carry SSH keys, so the lapin log targets that print whole messages or frames
//! are capped whatever `RUST_LOG` says.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Targets capped whatever `RUST_LOG` says: lapin prints returned messages (with their bodies)
/// at WARN and frames at TRACE.
const CAPPED: [&str; 4] = [
    "lapin::returned_messages=off",
    "lapin::frames=info",
    "lapin::channels=info",
    // A failed presence probe closes its channel by design; lapin would log each at ERROR.
    "lapin::channel=off",
];

/// The log filter: `RUST_LOG` or `default`, with the secret-bearing targets capped.
pub fn filter(default: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    for directive in CAPPED {
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
