//! What a process used, printed on stderr when `FIELDSYNC_PEAK_RSS` is set:
//! the memory tests and the bench read it from the agent they run. Test builds
//! only; the device binary carries none of it.

/// Prints `peak-rss-kib`, `cpu-ms` and `write-bytes` lines if asked to.
pub fn report_if_asked() {
    if std::env::var_os("FIELDSYNC_PEAK_RSS").is_none() {
        return;
    }
    if let Some(kib) = peak_rss_kib() {
        eprintln!("peak-rss-kib: {kib}");
    }
    if let Some((cpu_ms, written)) = cpu_and_io() {
        eprintln!("cpu-ms: {cpu_ms}");
        eprintln!("write-bytes: {written}");
    }
}

/// VmHWM from /proc/self/status (Linux), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User+system CPU milliseconds (/proc/self/stat) and bytes this process caused to
/// be written to storage (/proc/self/io `write_bytes` less `cancelled_write_bytes`:
/// what wears the SD card; pages of a file deleted before they were written back,
/// such as SQLite's `-shm`, never reach it).
fn cpu_and_io() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the state field.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let written = field("write_bytes: ").saturating_sub(field("cancelled_write_bytes: "));
    // USER_HZ is 100 on Linux.
    Some((ticks * 10, written))
}
