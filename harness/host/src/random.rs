//! Random names (lab ids, Jupyter session ids) from the kernel's generator.
#![allow(unsafe_code)] // getrandom(2) into a buffer of ours

/// `bytes` random bytes from getrandom(2), as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let mut filled = 0;
    while filled < bytes {
        // SAFETY: getrandom(2) writes at most the given length into the buffer we own.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), bytes - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // The kernel's generator does not fail once booted; if it ever does, the clock and
            // the pid still make a name unlikely to repeat.
            let fallback = crate::unix_time_ns() ^ u64::from(std::process::id()) << 32;
            for (i, b) in buf[filled..].iter_mut().enumerate() {
                *b = (fallback >> ((i % 8) * 8)) as u8;
            }
            break;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_have_the_asked_length_and_differ() {
        let a = super::random_hex(8);
        let b = super::random_hex(8);
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(super::random_hex(0), "");
    }
}
