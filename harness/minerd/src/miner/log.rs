//! The miner's log, in cpuminer's format: what the lab's learner (and the tests) read.
#![allow(unsafe_code)] // time(2) and localtime_r(3) for cpuminer's log stamps

use std::io::Write;

/// Writes a cpuminer-style log line (`[YYYY-MM-DD hh:mm:ss] text`, local time) to stderr.
pub fn applog(text: &str) {
    let line = format!("[{}] {}\n", local_timestamp(), text);
    // One write per line so that threads do not interleave; stderr is unbuffered.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn local_timestamp() -> String {
    // SAFETY: time and localtime_r only write into the tm we own.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "????-??-?? ??:??:??".into();
        }
        format!(
            "{}-{:02}-{:02} {:02}:{:02}:{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        )
    }
}

/// cpuminer prints rates below 1 Ghash/s with two decimals.
pub(super) fn format_khash(hashes_per_second: f64) -> String {
    if hashes_per_second < 1e6 {
        format!("{:.2}", hashes_per_second / 1e3)
    } else {
        format!("{:.0}", hashes_per_second / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_rates_print_like_cpuminer() {
        assert_eq!(format_khash(1234.5), "1.23");
        assert_eq!(format_khash(2_500_000.0), "2500");
    }
}
