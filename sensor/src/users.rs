//! User names as the container sees them: its own /etc/passwd, read through /proc/PID/root.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// uid -> name from a passwd file's text. Malformed lines are skipped (a passwd file is not
/// ours to validate; a missing name is reported as no name).
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut users = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse::<u32>() {
            users.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    users
}

/// One container's users, re-read when a uid is missing (someone may have run useradd), at
/// most once per `RELOAD_AFTER`.
#[derive(Debug, Default)]
pub struct UserTable {
    users: HashMap<u32, String>,
    loaded_at: Option<Instant>,
}

const RELOAD_AFTER: Duration = Duration::from_secs(2);

impl UserTable {
    /// The name of `uid`, reading `/proc/<pid>/root/etc/passwd` (or a fallback pid's) when
    /// needed. `pids` gives candidates in order, only called on a miss: the event's process
    /// first where its pid is valid in this /proc (it may be gone already), then other
    /// members of the cgroup.
    pub fn name<I: IntoIterator<Item = u32>>(
        &mut self,
        uid: u32,
        pids: impl FnOnce() -> I,
    ) -> Option<String> {
        if let Some(name) = self.users.get(&uid) {
            return Some(name.clone());
        }
        let stale = self.loaded_at.is_none_or(|t| t.elapsed() >= RELOAD_AFTER);
        if stale {
            for pid in pids() {
                let path = format!("/proc/{pid}/root/etc/passwd");
                if let Ok(text) = std::fs::read_to_string(Path::new(&path)) {
                    self.users = parse_passwd(&text);
                    self.loaded_at = Some(Instant::now());
                    break;
                }
            }
        }
        self.users.get(&uid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_skips_junk() {
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\njunk\njovyan:x:1000:100::/home/jovyan:/bin/bash\nbad:x:nope:1\n",
        );
        assert_eq!(users.get(&0).map(String::as_str), Some("root"));
        assert_eq!(users.get(&1000).map(String::as_str), Some("jovyan"));
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn reads_this_process_root() {
        let mut table = UserTable::default();
        // uid 0 is root in every passwd file this runs against.
        assert_eq!(
            table.name(0, || [std::process::id()]).as_deref(),
            Some("root")
        );
        // Cached: no candidate needed any more.
        assert_eq!(
            table
                .name(0, || -> [u32; 0] { panic!("re-read on a hit") })
                .as_deref(),
            Some("root")
        );
    }
}
