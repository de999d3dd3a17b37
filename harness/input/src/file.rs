//! A whole file as text, no bigger than a limit.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The environment variable that sets the size limit of every file guardlab reads, in bytes
/// (for a recording bigger than the default allows).
pub const ENV_MAX_INPUT_BYTES: &str = "GUARDLAB_MAX_INPUT_BYTES";

const MIB: u64 = 1024 * 1024;

/// The most bytes guardlab reads from one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxBytes(pub u64);

impl MaxBytes {
    /// YAML files (spyctl documents, scenarios, the image recipe): the largest fingerprint
    /// group of a busy image is a few hundred kilobytes, and a parsed YAML tree takes ten to
    /// twenty times its text.
    pub const YAML: MaxBytes = MaxBytes(16 * MIB);
    /// Event streams and recordings: hours of a busy pod; held in memory as events.
    pub const EVENTS: MaxBytes = MaxBytes(256 * MIB);
    /// Lock files of pinned packages: a few hundred lines.
    pub const LOCK: MaxBytes = MaxBytes(4 * MIB);

    /// `default`, unless [`ENV_MAX_INPUT_BYTES`] says otherwise.
    pub fn from_env_or(default: MaxBytes) -> Result<MaxBytes, FileError> {
        Self::from_setting(std::env::var(ENV_MAX_INPUT_BYTES).ok(), default)
    }

    /// `default`, or the limit `setting` (the variable's value, when it is set) gives.
    fn from_setting(setting: Option<String>, default: MaxBytes) -> Result<MaxBytes, FileError> {
        match setting {
            None => Ok(default),
            Some(text) => match text.trim().parse::<u64>() {
                Ok(bytes) if bytes > 0 => Ok(MaxBytes(bytes)),
                _ => Err(FileError::BadLimit { value: text }),
            },
        }
    }
}

impl fmt::Display for MaxBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Size(self.0).fmt(f)
    }
}

/// A number of bytes as a person reads it: `512 bytes`, `16 MiB`, `1.5 GiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", 1024)];
        for (unit, scale) in units {
            if self.0 >= scale {
                let whole = self.0 / scale;
                let tenths = (self.0 % scale) * 10 / scale;
                return if tenths == 0 {
                    write!(f, "{whole} {unit}")
                } else {
                    write!(f, "{whole}.{tenths} {unit}")
                };
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

/// Why a file could not be read as text.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    /// `size` is `None` when the file is not a regular file (a pipe) and only what was read is
    /// known.
    #[error(
        "{file}: {} the {limit} guardlab reads from one file ({ENV_MAX_INPUT_BYTES} raises the limit)",
        match size { Some(size) => format!("{} is more than", Size(*size)), None => "holds more than".to_owned() }
    )]
    TooLarge {
        file: String,
        size: Option<u64>,
        limit: MaxBytes,
    },
    #[error(
        "{file}:{line}:{column}: not UTF-8 text (byte 0x{byte:02x}); guardlab reads UTF-8 files"
    )]
    NotUtf8 {
        file: String,
        line: usize,
        column: usize,
        byte: u8,
    },
    #[error("{ENV_MAX_INPUT_BYTES}={value:?} is not a number of bytes (e.g. 1073741824)")]
    BadLimit { value: String },
}

impl FileError {
    /// The line the error is on, when it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            FileError::NotUtf8 { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Reads the whole file at `path` as UTF-8 text, refusing it when it is bigger than `max`
/// (before reading it when its size is known, else after reading one byte too many).
pub fn read_text(path: &Path, max: MaxBytes) -> Result<String, FileError> {
    let name = || path.display().to_string();
    let io = |source| FileError::Io {
        file: name(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    if let Ok(meta) = file.metadata()
        && meta.is_file()
        && meta.len() > max.0
    {
        return Err(FileError::TooLarge {
            file: name(),
            size: Some(meta.len()),
            limit: max,
        });
    }
    let mut bytes = Vec::new();
    file.take(max.0.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max.0 {
        return Err(FileError::TooLarge {
            file: name(),
            size: None,
            limit: max,
        });
    }
    let mut text = text_of(&name(), bytes)?;
    // A byte order mark says "UTF-8" and nothing else; YAML allows it, yaml-rust2 does not.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// `bytes` as text, or where the first byte that is not UTF-8 is.
pub fn text_of(file: &str, bytes: Vec<u8>) -> Result<String, FileError> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let (line, column) = position_after(&bytes[..valid]);
        FileError::NotUtf8 {
            file: file.to_owned(),
            line,
            column,
            byte: bytes[valid],
        }
    })
}

/// The 1-based line and column just after `valid` (UTF-8 text), counting characters.
pub fn position_after(valid: &[u8]) -> (usize, usize) {
    let line_start = valid
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1);
    let line = 1 + valid.iter().filter(|b| **b == b'\n').count();
    // Continuation bytes (10xxxxxx) do not start a character.
    let column = 1 + valid[line_start..]
        .iter()
        .filter(|b| (**b & 0xC0) != 0x80)
        .count();
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn reads_text_up_to_the_limit() {
        let f = file_with(b"abc\n");
        assert_eq!(read_text(f.path(), MaxBytes(4)).unwrap(), "abc\n");
        let err = read_text(f.path(), MaxBytes(3)).unwrap_err();
        assert!(
            matches!(
                err,
                FileError::TooLarge {
                    size: Some(4),
                    limit: MaxBytes(3),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("4 bytes is more than the 3 bytes"),
            "{err}"
        );
    }

    #[test]
    fn a_huge_sparse_file_is_refused_before_it_is_read() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 30).unwrap();
        let err = read_text(f.path(), MaxBytes::YAML).unwrap_err();
        assert!(
            err.to_string()
                .contains("1 GiB is more than the 16 MiB guardlab reads"),
            "{err}"
        );
    }

    #[test]
    fn a_stream_without_a_size_is_cut_at_the_limit() {
        // /dev/zero has no size and never ends: only the limit stops the read.
        let err = read_text(Path::new("/dev/zero"), MaxBytes(1000)).unwrap_err();
        assert!(
            matches!(err, FileError::TooLarge { size: None, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("holds more than the"), "{err}");
    }

    #[test]
    fn the_first_byte_that_is_not_utf8_is_named_by_line_and_column() {
        let mut bytes = "a: 1\nbé: \u{fffd}x".as_bytes().to_vec();
        bytes.extend([0xff, b'\n']);
        let f = file_with(&bytes);
        let err = read_text(f.path(), MaxBytes(100)).unwrap_err();
        let FileError::NotUtf8 {
            line, column, byte, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        // "bé: �x" then 0xff: the bad byte follows 6 characters of line 2.
        assert_eq!((*line, *column, *byte), (2, 7, 0xff), "{err}");
        assert!(err.to_string().contains(":2:7: not UTF-8"), "{err}");
    }

    #[test]
    fn a_byte_order_mark_is_not_text() {
        let f = file_with("\u{feff}a: 1\n".as_bytes());
        assert_eq!(read_text(f.path(), MaxBytes(100)).unwrap(), "a: 1\n");
    }

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(Size(512).to_string(), "512 bytes");
        assert_eq!(Size(16 * MIB).to_string(), "16 MiB");
        assert_eq!(Size(3 * MIB / 2).to_string(), "1.5 MiB");
        assert_eq!(Size(1 << 30).to_string(), "1 GiB");
    }

    #[test]
    fn the_setting_replaces_the_default_and_must_be_a_size() {
        let setting = |s: &str| MaxBytes::from_setting(Some(s.to_owned()), MaxBytes(7));
        assert_eq!(
            MaxBytes::from_setting(None, MaxBytes(7)).unwrap(),
            MaxBytes(7)
        );
        assert_eq!(setting(" 4096 ").unwrap(), MaxBytes(4096));
        for bad in ["", "0", "16M", "-1"] {
            let err = setting(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("GUARDLAB_MAX_INPUT_BYTES="),
                "{err}"
            );
        }
    }
}
