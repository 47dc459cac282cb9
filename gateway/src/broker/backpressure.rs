//! Backpressure from the rules to the devices.
//!
//! The router keeps what devices publish in an in-memory log per subscription filter
//! (`segment_size × segment_count` bytes) and acknowledges each message once it is in
//! that log. Ingest reads the log of its one subscription (`#`) at the pace of the
//! streams; when the rules fall behind for longer than the log holds, the router drops
//! its oldest segment and messages already acknowledged to their devices are gone.
//!
//! [`Backpressure`] prevents that. It counts the bytes the broker has taken in that
//! ingest has not taken out yet (the *lag*, counted as the router sizes its log). Above
//! half of what the log always retains, the listeners' thread stops reading from device
//! sockets until ingest has caught up to a quarter: devices then wait in TCP, as they
//! would for a broker working at capacity, and nothing they were acknowledged is lost.
//!
//! The count is an estimate from both ends: a message the router refuses after the
//! listener read it is never taken by ingest. So when the listeners have waited while
//! ingest sat idle and took nothing, the lag is reset to zero.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a paused listener thread looks at the lag again without being woken.
const POLL: Duration = Duration::from_millis(20);
/// A pause that saw ingest idle for this many polls in a row resets the lag.
const IDLE_POLLS: u32 = 10;

/// The lag between the broker's log and ingest, and the pause it calls for.
#[derive(Debug)]
pub struct Backpressure {
    /// Bytes accepted into the log and not yet taken by ingest; never below zero.
    lag: AtomicI64,
    pause_above: i64,
    resume_at: i64,
    /// Messages ingest has taken, to tell an idle ingest from a busy one.
    takes: AtomicU64,
    /// Set while ingest waits for a stream to take a batch.
    ingest_busy: AtomicBool,
    /// Set while the listeners' thread waits.
    paused: AtomicBool,
    stopped: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// Times the listeners paused.
    pub pauses: AtomicU64,
    /// Microseconds the listeners spent paused.
    pub paused_us: AtomicU64,
    /// Times the lag was reset because ingest sat idle during a pause.
    pub resyncs: AtomicU64,
}

impl Backpressure {
    /// For a log of `segment_count` segments of `segment_size` bytes. The router drops a
    /// whole segment at a time, so it always retains `segment_count - 1` of them (with a
    /// single segment, about nothing: the pause starts at half a segment).
    pub fn new(segment_size: usize, segment_count: usize) -> Backpressure {
        let retained = segment_size.saturating_mul(segment_count.saturating_sub(1).max(1));
        let pause_above = i64::try_from(retained / 2).unwrap_or(i64::MAX);
        Backpressure {
            lag: AtomicI64::new(0),
            pause_above,
            resume_at: pause_above / 2,
            takes: AtomicU64::new(0),
            ingest_busy: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            pauses: AtomicU64::new(0),
            paused_us: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
        }
    }

    /// A message's size in the router's log.
    pub fn size(topic: usize, payload: usize) -> i64 {
        i64::try_from(4 + topic + payload).unwrap_or(i64::MAX)
    }

    /// Bytes now in the lag.
    pub fn lag(&self) -> i64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// A message went into the broker (from a device or an in-process publisher).
    pub fn accepted(&self, bytes: i64) {
        self.lag.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Ingest took a message out of the broker.
    pub fn taken(&self, bytes: i64) {
        let now = self.lag.fetch_sub(bytes, Ordering::SeqCst) - bytes;
        if now < 0 {
            // Taken more than was counted in (a topic alias, say): start again from zero.
            self.lag.fetch_max(0, Ordering::SeqCst);
        }
        self.takes.fetch_add(1, Ordering::Relaxed);
        if now <= self.resume_at && self.paused.load(Ordering::SeqCst) {
            let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_all();
        }
    }

    /// Ingest waits for a stream (`true`) or is back to reading the broker (`false`).
    pub fn ingest_busy(&self, busy: bool) {
        self.ingest_busy.store(busy, Ordering::Relaxed);
    }

    /// Ingest is too far behind: the listeners should wait.
    pub fn lagging(&self) -> bool {
        self.lag.load(Ordering::Relaxed) > self.pause_above && !self.stopped.load(Ordering::Relaxed)
    }

    /// Called by the listeners' thread: blocks it while ingest is too far behind, until
    /// ingest has caught up or the listeners stop.
    pub fn wait(&self) {
        if !self.lagging() {
            return;
        }
        let start = Instant::now();
        self.pauses.fetch_add(1, Ordering::Relaxed);
        let mut held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.paused.store(true, Ordering::SeqCst);
        let mut seen = self.takes.load(Ordering::Relaxed);
        let mut idle = 0;
        loop {
            if self.lag.load(Ordering::SeqCst) <= self.resume_at
                || self.stopped.load(Ordering::SeqCst)
            {
                break;
            }
            let takes = self.takes.load(Ordering::Relaxed);
            if takes == seen && !self.ingest_busy.load(Ordering::Relaxed) {
                idle += 1;
                if idle >= IDLE_POLLS {
                    self.lag.store(0, Ordering::SeqCst);
                    self.resyncs.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("broker backpressure reset: ingest idle while paused");
                    break;
                }
            } else {
                idle = 0;
                seen = takes;
            }
            held = self
                .wake
                .wait_timeout(held, POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        self.paused.store(false, Ordering::SeqCst);
        drop(held);
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.paused_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Releases a paused listener thread for good: the listeners are stopping.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A thread that calls [`Backpressure::wait`], returned once it is paused in it.
    fn paused_listener(bp: &Arc<Backpressure>) -> std::thread::JoinHandle<()> {
        let waiter = {
            let bp = bp.clone();
            std::thread::spawn(move || bp.wait())
        };
        while !bp.paused.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        waiter
    }

    #[test]
    fn pauses_above_half_the_retained_log_and_resumes_at_a_quarter() {
        // 4 segments of 1000 bytes: 3000 always retained, pause above 1500, resume at 750.
        let bp = Arc::new(Backpressure::new(1000, 4));
        bp.accepted(1500);
        bp.wait(); // at the limit: no pause
        assert_eq!(bp.pauses.load(Ordering::Relaxed), 0);
        bp.accepted(1);
        bp.ingest_busy(true);
        let waiter = paused_listener(&bp);
        bp.taken(700); // 801 left: still paused
        std::thread::sleep(POLL * 3);
        assert!(!waiter.is_finished(), "resumed above the resume mark");
        bp.taken(51); // 750
        waiter.join().unwrap();
        assert_eq!(bp.pauses.load(Ordering::Relaxed), 1);
        assert_eq!(bp.resyncs.load(Ordering::Relaxed), 0);
        assert_eq!(bp.lag(), 750);
    }

    #[test]
    fn an_idle_ingest_resets_a_lag_that_will_never_be_taken() {
        let bp = Backpressure::new(1000, 2);
        bp.accepted(10_000);
        bp.wait();
        assert_eq!(bp.resyncs.load(Ordering::Relaxed), 1);
        assert_eq!(bp.lag(), 0);
    }

    #[test]
    fn taking_more_than_was_counted_never_leaves_credit() {
        let bp = Backpressure::new(1000, 2);
        bp.accepted(10);
        bp.taken(50);
        assert_eq!(bp.lag(), 0);
        bp.accepted(600);
        assert_eq!(bp.lag(), 600);
    }

    #[test]
    fn stopping_releases_a_paused_thread() {
        let bp = Arc::new(Backpressure::new(1000, 2));
        bp.accepted(5000);
        bp.ingest_busy(true);
        let waiter = paused_listener(&bp);
        bp.stop();
        waiter.join().unwrap();
        bp.wait(); // stopped: never pauses again
        assert_eq!(bp.pauses.load(Ordering::Relaxed), 1);
    }
}
