//! What the process holds in RAM, and giving back what the allocator holds free.
//!
//! glibc's malloc keeps freed memory in its arenas (one per thread that allocated, up to 8 per
//! core) for reuse instead of returning it, so a process that has been busy — a burst of jobs,
//! thousands of events parsed — keeps its peak resident size although the memory is free, and
//! the resident size creeps up with fragmentation over a long run. `malloc_trim` returns the
//! free pages of every arena. Long-running commands call it periodically ([`trim_every`]);
//! benchmarks call it before a reading, so that what they report is what the code retains.

use std::time::Duration;

/// What this process holds in RAM now, bytes (Linux; `None` elsewhere).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Hands memory the allocator holds free back to the system. Only free memory goes back: what
/// stays is live data. No-op off glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often a long-running process gives free memory back. A trim costs milliseconds on a
/// heap of hundreds of MiB; a minute keeps the resident size near the live data.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Calls [`release_free_memory`] every `period`, for as long as the task runs.
pub async fn trim_every(period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: nothing to give back yet
    loop {
        tick.tick().await;
        // The trim walks every arena under its locks: keep it off the async workers.
        let _ = tokio::task::spawn_blocking(release_free_memory).await;
    }
}
