//! Hands the memory the process freed back to the system.
//!
//! glibc's malloc keeps freed memory in its heaps for reuse and returns to the system
//! only what lies at the top of a heap. A burst of MQTT clients leaves their buffers
//! spread through the heaps: after 2,000 clients connect and leave, some 35 MB stay
//! resident though nothing uses them. `malloc_trim` releases every free page inside the
//! heaps too; [`run`] calls it on a timer. Elsewhere than glibc, it does nothing.

use std::time::Duration;

use tokio::sync::watch;

/// How often the freed heap pages are released.
pub const TRIM_PERIOD: Duration = Duration::from_secs(5);

/// Releases the free pages of the heaps every `period`, until `stop` turns true.
pub async fn run(period: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // It walks the heaps under their locks: off the async workers.
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

/// Releases the free pages of glibc's heaps; `true` when it gave memory back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim only takes the allocator's own locks; 0 keeps no slack at the
    // top of the main heap.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// The allocator returns freed memory itself here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stops_when_told() {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(Duration::from_millis(10), rx));
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stopped")
            .expect("no panic");
    }
}
