//! Resource measurements recorded with every result.

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
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
    }
}
