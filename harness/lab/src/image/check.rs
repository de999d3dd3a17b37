//! The check of a built image before anyone relies on it: it has what the scenario relies on
//! (the recipe's user, its Python modules) and not what it must not have (forbidden packages and
//! commands, sudo for the notebook user).

use std::path::Path;

use super::chroot::{self, Bind, RunAs};
use super::error::{CheckFailure, ImageError, IoContext};
use super::recipe::Recipe;

/// Makes a command that runs as root inside the image being built, with extra bind mounts.
pub(super) type InRoot<'a> =
    dyn Fn(&[Bind], &[&str]) -> Result<std::process::Command, ImageError> + 'a;

/// The image has what the scenario relies on, and not what it must not have.
pub(super) fn check_image(rootfs: &Path, r: &Recipe, in_root: &InRoot) -> Result<(), ImageError> {
    for p in &r.debian.forbidden_packages {
        let status = in_root(&[], &["/usr/bin/dpkg-query", "-W", "-f=${Status}", p])?
            .output()
            .context(|| "running dpkg-query")?;
        if String::from_utf8_lossy(&status.stdout).contains("ok installed") {
            return Err(CheckFailure::ForbiddenPackage {
                package: p.to_string(),
            }
            .into());
        }
    }
    let user = RunAs {
        uid: r.user.uid,
        gid: r.user.gid,
    };
    let as_user = |argv: &[&str]| -> Result<std::process::Command, ImageError> {
        let mut c = chroot::rootfs_command(rootfs, Some(user), Some(&r.user.home), &[], argv[0])?;
        c.args(&argv[1..])
            .envs(r.config.env.iter().map(|(k, v)| (k.0.as_str(), v.as_str())));
        Ok(c)
    };
    for c in &r.debian.forbidden_commands {
        let out = as_user(&["/bin/bash", "-lc", &format!("command -v {c}")])?
            .output()
            .context(|| "running bash")?;
        if out.status.success() {
            return Err(CheckFailure::ForbiddenCommand {
                command: c.to_string(),
                found: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            }
            .into());
        }
    }
    let ids = chroot::run_capture(as_user(&["/usr/bin/id"])?, "id")?;
    let expected = format!(
        "uid={}({}) gid={}({})",
        r.user.uid, r.user.name, r.user.gid, r.user.group
    );
    if !ids.starts_with(&expected) {
        return Err(CheckFailure::WrongUser {
            found: ids.trim().to_string(),
            expected,
        }
        .into());
    }
    let sudo = as_user(&["/usr/bin/sudo", "-n", "-l"])?
        .output()
        .context(|| "running sudo")?;
    if sudo.status.success() {
        return Err(CheckFailure::Sudoer {
            user: r.user.name.to_string(),
            listing: String::from_utf8_lossy(&sudo.stdout).trim().to_string(),
        }
        .into());
    }
    if !r.venv.check_imports.is_empty() {
        let python = format!("{}/bin/python", r.venv.path);
        let code = format!(
            "import {}",
            r.venv
                .check_imports
                .iter()
                .map(|m| m.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        chroot::run_capture(
            as_user(&[&python, "-c", &code])?,
            &format!("`{code}` in the image"),
        )?;
    }
    Ok(())
}
