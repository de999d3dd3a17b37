//! The wall clock, read one way: nanoseconds since the Unix epoch (the unit of event times).

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_time_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_is_after_2020_and_moves_forward() {
        let a = super::unix_time_ns();
        let b = super::unix_time_ns();
        assert!(a > 1_577_836_800_000_000_000, "{a}");
        assert!(b >= a);
    }
}
