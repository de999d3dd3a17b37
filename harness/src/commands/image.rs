//! `guardlab image lock`: new pins for the pod image's Python packages.

use std::path::Path;

use anyhow::Context;
use guardlab_lab::image::{self, ImageCache, Pin};

use crate::console::ConsoleProgress;
use crate::privilege;
use crate::report::{CommandResult, Outcome};

pub fn lock(recipe_dir: &Path) -> CommandResult {
    privilege::ensure_root("making the image's pins (debootstrap, chroot)")?;
    let loaded = image::load_recipe_unlocked(recipe_dir)
        .with_context(|| format!("reading the recipe in {}", recipe_dir.display()))?;
    let cache = ImageCache::new(&image::default_cache_dir());
    let index_lock = recipe_dir.join(image::INDEX_LOCK_FILE);
    let progress = ConsoleProgress { quiet: false };
    let report = image::lock_recipe(&loaded, &cache, &index_lock, &progress)?;
    for (file, before, after) in &report.files {
        let changes = pin_changes(before, after);
        println!(
            "{}: {} pins, {}",
            file.display(),
            after.len(),
            if changes.is_empty() {
                "unchanged".to_string()
            } else {
                format!("{} changed", changes.len())
            }
        );
        for c in changes {
            println!("  {c}");
        }
    }
    println!(
        "Review the new pins (git diff {}); the next lab builds a new image from them.",
        recipe_dir.display()
    );
    Ok(Outcome::Clean)
}

/// One line per pin added, removed or moved to another version or file, by project name.
fn pin_changes(before: &[Pin], after: &[Pin]) -> Vec<String> {
    let mut out = Vec::new();
    for a in after {
        match before.iter().find(|b| b.project == a.project) {
            None => out.push(format!("+ {}=={}", a.name, a.version)),
            Some(b) if b.version != a.version => {
                out.push(format!("~ {} {} -> {}", a.name, b.version, a.version))
            }
            Some(b) if b.hashes != a.hashes => {
                out.push(format!("~ {}=={} (other files)", a.name, a.version))
            }
            Some(_) => {}
        }
    }
    for b in before {
        if !after.iter().any(|a| a.project == b.project) {
            out.push(format!("- {}=={}", b.name, b.version));
        }
    }
    // By name, whatever the order of the files.
    out.sort_by_key(|line| line[2..].to_ascii_lowercase());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(name: &str, version: &str, hash: char) -> Pin {
        Pin {
            name: name.into(),
            project: guardlab_lab::image::normalize_project_name(name),
            version: version.into(),
            hashes: vec![hash.to_string().repeat(64)],
            line: 0,
        }
    }

    #[test]
    fn changes_name_each_added_removed_moved_or_rehashed_pin() {
        let before = [
            pin("pip", "26.3", 'a'),
            pin("wheel", "0.48.0", 'b'),
            pin("six", "1", 'c'),
        ];
        let after = [
            pin("pip", "26.4", 'd'),
            pin("Wheel", "0.48.0", 'e'),
            pin("six", "1", 'c'),
            pin("idna", "3", 'f'),
        ];
        assert_eq!(
            pin_changes(&before, &after),
            [
                "+ idna==3",
                "~ pip 26.3 -> 26.4",
                "~ Wheel==0.48.0 (other files)",
            ]
        );
        assert_eq!(pin_changes(&after, &before)[0], "- idna==3");
        assert!(pin_changes(&before, &before).is_empty());
    }
}
