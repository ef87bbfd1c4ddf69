//! Logging of the daemons: journald's structured fields under systemd (when stderr is the
//! journal stream systemd handed over), human-readable text on a terminal or in a file, JSON
//! lines on request. The filter comes from an environment variable (`ORCHESTRATORD_LOG`,
//! `NODEAGENT_LOG`: `info`, `debug`, `warn,flotilla=debug` …).

use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald under systemd, text otherwise.
    #[default]
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// Native journald entries with structured fields.
    Journald,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            "journald" => Ok(Self::Journald),
            other => Err(format!("'{other}': auto, text, json or journald")),
        }
    }
}

/// True when stderr is the journal stream systemd set up (`JOURNAL_STREAM=<dev>:<inode>`).
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(m) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>() == Ok(m.dev()) && ino.parse::<u64>() == Ok(m.ino())
}

/// Installs the global subscriber.
pub fn init(filter_env: &str, default_filter: &str, format: LogFormat) {
    let filter =
        || EnvFilter::try_from_env(filter_env).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => eprintln!("journald unavailable ({e}); logging text to stderr"),
        }
    }
    // Colours only for a person at a terminal, never into files or pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if format == LogFormat::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
