//! What this process (or a child replica) costs: CPU time (`clock_gettime` for this process,
//! `/proc/<pid>/stat` for a child) and peak resident memory (from `/proc`), and handing freed
//! heap back to the OS before measuring. Linux only.

use anyhow::Context;

/// CPU time of this process (every thread, user and system), in seconds, to the nanosecond:
/// `CLOCK_PROCESS_CPUTIME_ID`. `/proc/self/stat` counts in 10 ms ticks, too coarse for the
/// few hundred microseconds of one request over a run of a few hundred requests.
pub fn cpu_seconds() -> anyhow::Result<f64> {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: std::ffi::c_int, ts: *mut Timespec) -> std::ffi::c_int;
    }
    const CLOCK_PROCESS_CPUTIME_ID: std::ffi::c_int = 2;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec (two 64-bit fields on 64-bit Linux) that
    // outlives the call; clock_gettime writes nothing else.
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &raw mut ts) };
    if rc != 0 {
        anyhow::bail!(
            "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// utime + stime of process `pid` (a child: `--replicas`), in seconds.
pub fn cpu_seconds_of(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_seconds(&stat)
}

fn parse_cpu_seconds(stat: &str) -> anyhow::Result<f64> {
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("unexpected /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/self/stat")?
            .parse::<u64>()
            .context("unexpected /proc/self/stat")? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// VmHWM of this process, MiB.
pub fn peak_rss_mb() -> anyhow::Result<f64> {
    peak_rss_mb_at("/proc/self/status")
}

/// VmHWM of process `pid` (a child: `--replicas`), MiB.
pub fn peak_rss_mb_of(pid: u32) -> anyhow::Result<f64> {
    peak_rss_mb_at(&format!("/proc/{pid}/status"))
}

fn peak_rss_mb_at(path: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no VmHWM in {path}"))?;
    Ok(kb / 1024.0)
}

/// Resets VmHWM to the current RSS; false when `/proc/self/clear_refs` is not writable (the
/// peak then counts from process start).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Returns the heap memory freed so far to the OS. glibc keeps freed memory in its arenas,
/// where the setup's garbage (thousands of CreateMeeting and BatchCreateAttendee answers)
/// would count as the daemon's resident memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointer; it only hands free heap pages back to the kernel,
    // and is safe to call at any time from any thread.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn utime_and_stime_are_read_after_a_command_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime …
        let stat = "4242 (roster bench (x)) R 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0";
        assert_eq!(parse_cpu_seconds(stat).unwrap(), 3.25);
        assert!(parse_cpu_seconds("4242 (cut) R 1 2").is_err());
    }

    #[test]
    fn cpu_seconds_grow_while_this_process_computes() {
        let before = cpu_seconds().unwrap();
        // Spin until the kernel has charged at least two ticks; the deadline only guards
        // against a counter that never moves.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while cpu_seconds().unwrap() < before + 0.02 {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            assert!(Instant::now() < deadline, "cpu_seconds never grew ({x})");
        }
    }

    #[test]
    fn peak_rss_counts_memory_this_process_touched() {
        let before = peak_rss_mb().unwrap();
        assert!(before > 0.0);
        // 64 MiB, every page written so it is resident.
        let block = vec![1u8; 64 << 20];
        let after = peak_rss_mb().unwrap();
        // At least the block; and in MiB, not kB (a unit slip would read 65,536 or more).
        assert!(
            (64.0..16_384.0).contains(&after),
            "peak RSS {after:.1} MiB after touching 64 MiB (was {before:.1})"
        );
        drop(block);
    }
}
