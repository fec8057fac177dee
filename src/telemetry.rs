//! Logging setup, from the command line's logging settings ([`LogArgs`]).
//! Colours only on a terminal: logs sent to a file or a pipe are plain text.

use std::io::IsTerminal;
use tracing_subscriber::{fmt, EnvFilter};

/// How the process logs (every command).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// What to log, as a tracing filter (`info`, `bookengine=debug,tower_http=warn`, …).
    /// Default: info for `serve` and `worker`, warnings for the other commands.
    #[arg(long = "log", env = "RUST_LOG", global = true)]
    pub filter: Option<String>,

    /// `text`, or `json` for structured logs (`serve` and `worker`).
    #[arg(long, env = "BOOKENGINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// No ANSI colours (set to anything but empty; see no-color.org). Colours are only
    /// used on a terminal anyway.
    #[arg(long = "no-color", env = "NO_COLOR", num_args = 0..=1, default_missing_value = "1",
          global = true, hide_env_values = true)]
    pub no_color: Option<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogArgs {
    /// ANSI colours when stderr is a terminal and NO_COLOR is not set.
    fn colours(&self) -> bool {
        std::io::stderr().is_terminal() && self.no_color.as_deref().is_none_or(str::is_empty)
    }

    /// The filter asked for, else `default`; a filter that does not parse falls back to
    /// `default` (said once on stderr, as there is no logger yet).
    fn env_filter(&self, default: &str) -> EnvFilter {
        match self.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            Some(f) => EnvFilter::try_new(f).unwrap_or_else(|e| {
                eprintln!("warning: RUST_LOG/--log {f:?} is not a filter ({e}); using {default:?}");
                EnvFilter::new(default)
            }),
            None => EnvFilter::new(default),
        }
    }
}

/// For short CLI commands: warnings only, to stderr.
pub fn init_cli(log: &LogArgs) {
    let _ = fmt()
        .with_env_filter(log.env_filter("warn"))
        .with_ansi(log.colours())
        .with_writer(std::io::stderr)
        .try_init();
}

/// For `serve` and `worker`: info by default, JSON when asked.
pub fn init_service(log: &LogArgs) {
    let builder = fmt()
        .with_env_filter(log.env_filter("info,tower_http=warn"))
        .with_ansi(log.colours())
        .with_writer(std::io::stderr);
    let _ = if log.log_format == LogFormat::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
