//! A policy's executables as the kernel sees them in a pod: symlinks resolved against the
//! pod's own root (`/bin/sh` is `/usr/bin/dash` on a merged-/usr image), as the sensor reports
//! the paths it kills on.

use std::path::{Component, Path, PathBuf};

/// Symlinks followed before giving up (as the kernel's MAXSYMLINKS).
const MAX_LINKS: u32 = 40;

/// `path` with every symlink resolved inside `root` (absolute targets start again at `root`,
/// `..` stops at it). `None` when something along the way does not exist or loops.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<String> {
    let mut todo: Vec<String> = components(path);
    todo.reverse();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here: PathBuf = root.join(done.iter().chain([&part]).collect::<PathBuf>());
        let meta = std::fs::symlink_metadata(&here).ok()?;
        if !meta.file_type().is_symlink() {
            done.push(part);
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return None;
        }
        let target = std::fs::read_link(&here).ok()?;
        let target = target.to_string_lossy();
        if target.starts_with('/') {
            done.clear();
        }
        let mut more = components(&target);
        more.reverse();
        todo.extend(more);
    }
    Some(format!("/{}", done.join("/")))
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// The patterns to give the kernel for a policy `exe` in the pod whose root is `root`: the
/// pattern itself, and its resolved form when that differs (for a `dir/prefix*` glob, the
/// directory is resolved).
pub fn kernel_patterns(root: Option<&Path>, exe: &str) -> Vec<String> {
    let mut out = vec![exe.to_string()];
    let Some(root) = root else {
        return out;
    };
    let resolved = match exe.strip_suffix('*') {
        Some(prefix) => prefix.rfind('/').and_then(|slash| {
            let (dir, rest) = prefix.split_at(slash);
            let dir = if dir.is_empty() { "/" } else { dir };
            resolve_in_root(root, dir).map(|d| {
                let d = d.trim_end_matches('/');
                format!("{d}{rest}*")
            })
        }),
        None => resolve_in_root(root, exe),
    };
    if let Some(r) = resolved.filter(|r| *r != exe) {
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_pods_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/dash"), "").unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        symlink("dash", r.join("usr/bin/sh")).unwrap();
        // Absolute: inside the pod, not the host.
        symlink("/usr/bin/dash", r.join("usr/bin/abs")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(r, "/bin/sh").as_deref(),
            Some("/usr/bin/dash")
        );
        assert_eq!(
            resolve_in_root(r, "/usr/bin/abs").as_deref(),
            Some("/usr/bin/dash")
        );
        assert_eq!(
            resolve_in_root(r, "/../bin/sh").as_deref(),
            Some("/usr/bin/dash")
        );
        assert_eq!(resolve_in_root(r, "/missing"), None);
        assert_eq!(resolve_in_root(r, "/loop"), None);
        assert_eq!(kernel_patterns(Some(r), "/bin/*"), ["/bin/*", "/usr/bin/*"]);
        assert_eq!(
            kernel_patterns(Some(r), "/bin/sh"),
            ["/bin/sh", "/usr/bin/dash"]
        );
        assert_eq!(kernel_patterns(Some(r), "/usr/bin/dash"), ["/usr/bin/dash"]);
        assert_eq!(kernel_patterns(None, "/bin/sh"), ["/bin/sh"]);
    }
}
