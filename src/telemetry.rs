//! Logging setup. `RUST_LOG` filters; `BOOKENGINE_LOG_FORMAT=json` for structured logs.

use tracing_subscriber::{fmt, EnvFilter};

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// For short CLI commands: warnings only, to stderr.
pub fn init_cli() {
    let _ = fmt()
        .with_env_filter(filter("warn"))
        .with_writer(std::io::stderr)
        .try_init();
}

/// For `serve` and `worker`: info by default, JSON when asked.
pub fn init_service() {
    let json = std::env::var("BOOKENGINE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = fmt()
        .with_env_filter(filter("info,tower_http=warn"))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
