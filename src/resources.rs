//! Resource measurements recorded with every result.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// Peak resident memory of this process (VmHWM), for reports.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Resident memory of this process now (VmRSS): the runtime's own share of a run's peak.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// A `kB` field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak above to the current usage (Linux `clear_refs` 5), so each run of a sweep
/// reports its own peak; a no-op where unsupported.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Memory the kernel could give this process now without swapping (MemAvailable).
pub fn mem_available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// glibc's mmap threshold outside [`reuse_freed_memory`] scopes, once
/// [`return_freed_memory_promptly`] set it (0: the user's or glibc's own policy stands).
static PROMPT_THRESHOLD: AtomicI32 = AtomicI32::new(0);
/// Live [`reuse_freed_memory`] scopes.
static REUSE_SCOPES: Mutex<usize> = Mutex::new(0);
/// glibc's largest mmap threshold on 64-bit (`DEFAULT_MMAP_THRESHOLD_MAX`).
const REUSE_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at the top of the heap kept rather than trimmed inside a reuse scope: with glibc's
/// default (twice the mmap threshold) the heap still shrank and regrew once per batch of 8 rows.
const REUSE_TRIM: libc::c_int = 1 << 30;

/// Makes glibc hand every allocation of 1 MiB or more (tensors, in practice) back to the kernel
/// the moment it is freed. By default its mmap threshold grows to the largest block freed so
/// far (up to 32 MiB), after which freed weight matrices of one block stay in its arenas as
/// resident memory while the next block is read: measured on a streamed 2 GB model, 200-400 MiB
/// of a run's peak and most of its run-to-run variance. A threshold the user set
/// (`MALLOC_MMAP_THRESHOLD_`, `GLIBC_TUNABLES`) stands. Must run before other threads start.
pub fn return_freed_memory_promptly() {
    const THRESHOLD: libc::c_int = 1 << 20;
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() || tunables.contains("mmap_threshold") {
        return;
    }
    set_thresholds(THRESHOLD, THRESHOLD);
    PROMPT_THRESHOLD.store(THRESHOLD, Ordering::SeqCst);
}

/// While alive, freed blocks under 32 MiB stay in glibc's arenas for the next allocation of their
/// size. A forward pass frees and allocates the same activation sizes over and over; under the
/// prompt return above each of them is a fresh mmap whose pages fault in on first touch: measured
/// on llama-tiny's zero-shot (7 tasks x 200 documents, one thread), 15.1 s instead of 11.4 at
/// batch size 1 and 19.6 s instead of 12.1 at batch size 8, most of it in the kernel. When the
/// last scope ends the thresholds go back and the arenas give their free memory back.
pub struct ReuseFreedMemory {
    active: bool,
}

pub fn reuse_freed_memory() -> ReuseFreedMemory {
    let active = PROMPT_THRESHOLD.load(Ordering::SeqCst) != 0;
    if active {
        let mut scopes = REUSE_SCOPES.lock().unwrap_or_else(|e| e.into_inner());
        if *scopes == 0 {
            set_thresholds(REUSE_THRESHOLD, REUSE_TRIM);
        }
        *scopes += 1;
    }
    ReuseFreedMemory { active }
}

impl Drop for ReuseFreedMemory {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let mut scopes = REUSE_SCOPES.lock().unwrap_or_else(|e| e.into_inner());
        *scopes -= 1;
        if *scopes == 0 {
            let prompt = PROMPT_THRESHOLD.load(Ordering::SeqCst);
            set_thresholds(prompt, prompt);
            // SAFETY: malloc_trim only returns free arena memory to the kernel.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

fn set_thresholds(mmap: libc::c_int, trim: libc::c_int) {
    // SAFETY: mallopt only changes allocator parameters and takes glibc's own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page faults of this thread so far.
    fn minor_faults() -> i64 {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes into the struct it is given.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) }, 0);
        usage.ru_minflt
    }

    /// Faults taken while allocating, filling and freeing an 8 MiB buffer eight times.
    fn churn() -> i64 {
        let before = minor_faults();
        for _ in 0..8 {
            std::hint::black_box(vec![1u8; 8 << 20]);
        }
        minor_faults() - before
    }

    /// Inside a reuse scope the first buffer's pages serve the other seven. (Outside, each buffer
    /// usually faults its pages in afresh, unless the thread's arena happens to hold a free chunk
    /// that fits: glibc mmaps only what its bins cannot serve, so that side is not asserted.)
    #[test]
    fn freed_buffers_are_reused_inside_a_scope() {
        return_freed_memory_promptly();
        assert_ne!(
            PROMPT_THRESHOLD.load(Ordering::SeqCst),
            0,
            "MALLOC_MMAP_THRESHOLD_ is set"
        );
        let buffer_pages = (8 << 20) / 4096;
        let reused = {
            let _scope = reuse_freed_memory();
            churn()
        };
        assert!(
            reused < 2 * buffer_pages,
            "{reused} faults for eight buffers of {buffer_pages} pages inside a reuse scope"
        );
    }
}
