//! The gateway's log: text or JSON lines on stderr, at the configured level, with the
//! lines of the libraries under it (the broker's, the HTTP server's) held to a bounded
//! rate, so that nothing a peer does can fill the disk with log lines.
//!
//! The gateway's own code bounds its repeated messages itself (a count of what it did
//! not log goes with the next line); a library's repeated messages are cut here, per
//! place in the code that logs them, and the lines cut are counted
//! ([`suppressed`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::Metadata;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{DynFilterFn, FilterExt};
use tracing_subscriber::prelude::*;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain text lines, coloured on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// Lines one place in a library's code may log per [`WINDOW`].
const BURST: u32 = 20;
const WINDOW: Duration = Duration::from_secs(10);

/// Library log lines cut by the rate limit since start.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Library log lines cut by the rate limit since start.
pub fn suppressed() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// The levels `[log] level` and its directives may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a level or filter as `[log] level` takes it: a level (`info`), or
/// comma-separated directives `target=level` with at most one bare level. A bare word
/// that is not a level (`warning`) would silently name a module, so it is refused.
pub fn check_level(level: &str) -> Result<(), String> {
    let mut bare = 0;
    for directive in level.split(',').map(str::trim) {
        let lvl = match directive.rsplit_once('=') {
            Some((target, lvl)) if !target.is_empty() => lvl,
            Some(_) => return Err(format!("{directive:?} has no target before `=`")),
            None => {
                bare += 1;
                directive
            }
        };
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{lvl:?} is not a level (one of {})",
                LEVELS.join(", ")
            ));
        }
    }
    if bare > 1 {
        return Err("more than one default level".into());
    }
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Starts logging at `level` (a level or filter, as `[log] level` says) unless
/// `RUST_LOG` is set. `library_lines` sees the lines of the libraries under the gateway
/// at info and above, whatever is logged (the broker counts its protocol errors so).
pub fn init<L>(format: Format, level: &str, library_lines: L)
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    // rmqtt reports every client that goes away at info level; keep it to warnings.
    let quiet_broker = "rmqtt=warn,rmqtt_net=warn,rmqtt_codec=warn";
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::try_new(format!("{level},{quiet_broker}"))
            .unwrap_or_else(|_| EnvFilter::new(format!("info,{quiet_broker}")))
    });
    // Colours only on a terminal: files and container logs get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let layer = match format {
        Format::Text => layer.boxed(),
        Format::Json => layer.json().boxed(),
    };
    // The level filter first: only lines it lets through count against the rate limit,
    // which is asked at every line (a dynamic filter: its answer is never cached).
    let limit = Limiter::default();
    let filter = filter.and(DynFilterFn::new(move |meta, _| limit.allow(meta)));
    // Libraries that log through `log` arrive under the target "log".
    let library = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::INFO && !meta.target().starts_with("fieldgate")
    })
    // So that `log`'s own level stays at info where the rest allows no more: its debug
    // lines are then skipped where they are written.
    .with_max_level_hint(tracing::level_filters::LevelFilter::INFO);
    let _ = tracing_subscriber::registry()
        .with(library_lines.with_filter(library))
        .with(layer.with_filter(filter))
        .try_init();
}

pub use fieldgate_connectors::rate_limited::{RateLimited, SharedRateLimited};

/// Counts lines per place in a library's code and window.
#[derive(Default)]
struct Limiter {
    seen: Mutex<HashMap<usize, (Instant, u32)>>,
}

impl Limiter {
    fn allow(&self, meta: &Metadata<'_>) -> bool {
        if !meta.is_event() || meta.target().starts_with("fieldgate") {
            return true;
        }
        // Metadata is static: its address names the place that logs.
        let key = meta as *const Metadata<'_> as usize;
        let Ok(mut seen) = self.seen.lock() else {
            return true;
        };
        let now = Instant::now();
        let (start, n) = seen.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *n = 0;
        }
        *n += 1;
        if *n > BURST {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_checked_strictly() {
        for ok in [
            "info",
            "WARN",
            "debug,fieldgate::queue=trace",
            "rmqtt=off,info",
            "off",
        ] {
            assert_eq!(check_level(ok), Ok(()), "{ok}");
        }
        for bad in [
            "warning",
            "info,verbose",
            "fieldgate=loud",
            "=info",
            "info,debug",
            "",
        ] {
            assert!(check_level(bad).is_err(), "{bad}");
        }
    }
}
