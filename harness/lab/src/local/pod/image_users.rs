//! The image's users and groups, read from its `/etc/passwd` and `/etc/group` as container
//! runtimes do.

use std::fs;
use std::path::Path;

/// The user's supplementary groups from the image's `/etc/group` (as container runtimes do),
/// with the primary group first.
pub fn image_groups(rootfs: &Path, user: &str, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    if let Ok(text) = fs::read_to_string(rootfs.join("etc/group")) {
        for line in text.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if let [_, _, id, members] = fields.as_slice()
                && members.split(',').any(|m| m == user)
                && let Ok(id) = id.parse::<u32>()
                && !groups.contains(&id)
            {
                groups.push(id);
            }
        }
    }
    groups
}

/// The user name of a uid in the image's `/etc/passwd`.
pub fn image_user_name(rootfs: &Path, uid: u32) -> Option<String> {
    let text = fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 2 && fields[2].parse::<u32>().ok() == Some(uid))
            .then(|| fields[0].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_groups_and_users_from_the_image() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nusers:x:100:\nsudo:x:27:\naudio:x:29:jovyan,other\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/bash\njovyan:x:1000:100::/home/jovyan:/bin/bash\n",
        )
        .unwrap();
        assert_eq!(image_groups(dir.path(), "jovyan", 100), vec![100, 29]);
        assert_eq!(image_user_name(dir.path(), 1000).as_deref(), Some("jovyan"));
        assert_eq!(image_user_name(dir.path(), 7), None);
    }
}
