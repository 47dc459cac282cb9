//! What makes the rules reload: a debounced watch on the rules directory (which also sees
//! a Kubernetes ConfigMap swapping its `..data` symlink), SIGHUP, and requests from the
//! admin API, each answered with the reload's report.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::LiveRules;
use super::view::ReloadReport;

/// Quiet time after a file event before reloading, so a burst of events (an editor
/// saving, a ConfigMap update) causes one reload.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest a stream of file events can put a reload off.
const MAX_DEBOUNCE: Duration = Duration::from_secs(3);

/// What makes the rules reload: file events in the rules directory and SIGHUP. Set up
/// before the gateway reports ready, so no change or signal after that is missed.
pub struct Triggers {
    files: mpsc::Receiver<()>,
    /// Reloads asked for through the admin API, each with where to send the report.
    requests: mpsc::Receiver<oneshot::Sender<ReloadReport>>,
    /// Kept alive for as long as events are wanted.
    _watcher: Option<notify::RecommendedWatcher>,
    hangup: Signal,
}

impl Triggers {
    /// Watches `dir` (not recursively) and SIGHUP. A directory that cannot be watched
    /// is logged; SIGHUP still reloads. Also returns the sender for reloads asked for
    /// through the admin API.
    pub fn start(
        dir: &Path,
    ) -> anyhow::Result<(Triggers, mpsc::Sender<oneshot::Sender<ReloadReport>>)> {
        let (ask, requests) = mpsc::channel(4);
        let hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        let (tx, files) = mpsc::channel(1);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            match res {
                // Reading the files (as a reload does) must not trigger a reload.
                Ok(ev) if matters(&ev.kind) => {
                    // A full channel already holds a pending reload.
                    let _ = tx.try_send(());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "rules directory watch error"),
            }
        })
        .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the rules directory; reload with SIGHUP");
                None
            }
        };
        Ok((
            Triggers {
                files,
                requests,
                _watcher: watcher,
                hangup,
            },
            ask,
        ))
    }

    /// Reloads `rules` on every trigger until `stop` turns true; then hands them back.
    pub async fn run(mut self, mut rules: LiveRules, mut stop: watch::Receiver<bool>) -> LiveRules {
        loop {
            tokio::select! {
                Some(()) = self.files.recv() => {
                    settle(&mut self.files).await;
                    rules.reload("file change").await;
                }
                _ = self.hangup.recv() => {
                    rules.reload("SIGHUP").await;
                }
                Some(reply) = self.requests.recv() => {
                    let _ = reply.send(rules.reload("admin API").await);
                }
                _ = crate::stopped(&mut stop) => break,
            }
        }
        rules
    }
}

/// Whether a file event can change what the rule files say.
fn matters(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Waits until file events pause for [`DEBOUNCE`] (at most [`MAX_DEBOUNCE`]).
async fn settle(events: &mut mpsc::Receiver<()>) {
    let give_up = Instant::now() + MAX_DEBOUNCE;
    loop {
        let quiet = (Instant::now() + DEBOUNCE).min(give_up);
        match tokio::time::timeout_at(quiet, events.recv()).await {
            Ok(Some(())) if Instant::now() < give_up => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};

    #[test]
    fn reading_the_files_does_not_trigger_a_reload() {
        assert!(!matters(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!matters(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(matters(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(matters(&EventKind::Create(CreateKind::File)));
        assert!(matters(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
    }

    #[tokio::test]
    async fn a_burst_of_events_settles_into_one_reload() {
        let (tx, mut rx) = mpsc::channel(1);
        // The watcher's sender lives on after the burst.
        let _watcher = tx.clone();
        let burst = tokio::spawn(async move {
            for _ in 0..5 {
                let _ = tx.try_send(());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let started = Instant::now();
        settle(&mut rx).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(650), "settled after {took:?}");
        assert!(took < MAX_DEBOUNCE, "settled after {took:?}");
        burst.await.unwrap();
        assert!(rx.try_recv().is_err(), "events left after settling");
    }
}
