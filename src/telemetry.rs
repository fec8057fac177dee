//! Logging setup. `RUST_LOG` filters; `BOOKENGINE_LOG_FORMAT=json` for structured logs.
//! Colours only on a terminal: logs sent to a file or a pipe are plain text.

use std::io::IsTerminal;
use tracing_subscriber::{fmt, EnvFilter};

/// ANSI colours when stderr is a terminal and NO_COLOR is not set.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// For short CLI commands: warnings only, to stderr.
pub fn init_cli() {
    let _ = fmt()
        .with_env_filter(filter("warn"))
        .with_ansi(colours())
        .with_writer(std::io::stderr)
        .try_init();
}

/// For `serve` and `worker`: info by default, JSON when asked.
pub fn init_service() {
    let json = std::env::var("BOOKENGINE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = fmt()
        .with_env_filter(filter("info,tower_http=warn"))
        .with_ansi(colours())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
