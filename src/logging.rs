//! Logs: `tracing` to stderr (level from `-v`/`-q`, or `RUST_LOG`) and to a daily-rotated file in
//! `$PYLON_HOME/logs/` when the home exists.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Log files kept before the oldest is deleted.
const KEEP_FILES: usize = 7;

/// Installs the global subscriber. Keep the returned guard alive until exit: it flushes the file.
/// `verbosity` is the count of `-v` minus the count of `-q`.
pub fn init(verbosity: i8, logs_dir: Option<&Path>) -> Option<WorkerGuard> {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    // At the default level the relay libraries' own chatter (peers hanging up, expired events
    // refused) stays out of the way: what matters is reported by Pylon itself. `-v` shows it.
    let stderr_level = match verbosity {
        i8::MIN..=-1 => "error",
        0 => "warn,nostr_relay_pool=off,nostr_sdk=off",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let stderr_filter = match &from_env {
        Some(spec) => EnvFilter::new(spec),
        None => EnvFilter::new(stderr_level),
    };
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(verbosity >= 2)
        .with_filter(stderr_filter);

    let (file_layer, guard) = match logs_dir.and_then(open_rolling) {
        Some(appender) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let filter = EnvFilter::new(from_env.as_deref().unwrap_or("info"));
            let layer = fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .with_filter(filter);
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    // A second init (tests calling run twice) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .try_init();
    guard
}

fn open_rolling(dir: &Path) -> Option<tracing_appender::rolling::RollingFileAppender> {
    if !dir.parent().is_some_and(Path::is_dir) {
        // No home yet (before `pylon init`): don't create one just to log.
        return None;
    }
    std::fs::create_dir_all(dir).ok()?;
    Builder::new()
        .rotation(Rotation::DAILY)
        .filename_prefix("pylon")
        .filename_suffix("log")
        .max_log_files(KEEP_FILES)
        .build(dir)
        .ok()
}
