//! Process series read when scraped: resident memory, open file
//! descriptors and their limit (the names Prometheus's own process
//! collectors use, so existing dashboards work).

use super::gauge_fn::GaugeFn;
use super::MetricsRegistry;

/// Registers `process_resident_memory_bytes`, `process_open_fds` and
/// `process_max_fds`. A value that cannot be read is -1.
pub fn register(registry: &MetricsRegistry) {
    registry.register(
        "process_resident_memory_bytes",
        "Resident memory of this process",
        GaugeFn::new(|| resident_memory_bytes().map_or(-1.0, |bytes| bytes as f64)),
    );
    registry.register(
        "process_open_fds",
        "File descriptors open in this process",
        GaugeFn::new(|| open_fds().map_or(-1.0, |count| count as f64)),
    );
    registry.register(
        "process_max_fds",
        "Soft limit of open file descriptors (RLIMIT_NOFILE)",
        GaugeFn::new(|| max_fds().map_or(-1.0, |count| count as f64)),
    );
}

/// Resident set size from `/proc/self/statm` (pages × page size).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    parse_statm_resident_pages(&statm).map(|pages| pages.saturating_mul(page_size()))
}

fn parse_statm_resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size)
        .ok()
        .filter(|size| *size > 0)
        .unwrap_or(4096)
}

/// Entries of `/proc/self/fd` (the directory's own handle included).
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count() as u64)
}

/// The soft `RLIMIT_NOFILE`.
pub fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (result == 0).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_gives_the_second_field_and_garbage_gives_none() {
        assert_eq!(parse_statm_resident_pages("100 42 7 1 0 50 0\n"), Some(42));
        assert_eq!(parse_statm_resident_pages("100"), None);
        assert_eq!(parse_statm_resident_pages("100 x"), None);
        assert_eq!(parse_statm_resident_pages(""), None);
    }

    #[test]
    fn this_process_has_memory_and_files_open_below_its_limit() {
        let resident = resident_memory_bytes().expect("statm");
        assert!(resident > 1024 * 1024, "{resident}");
        let open = open_fds().expect("/proc/self/fd");
        let max = max_fds().expect("getrlimit");
        assert!(open >= 3 && open <= max, "{open} of {max}");
    }
}
