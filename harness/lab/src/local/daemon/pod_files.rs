//! The files a kubelet gives a container, written into the pod's writable layer before its
//! first process starts.

use std::path::PathBuf;

use super::Daemon;
use crate::local::{network, pod};
use crate::{IoContext, LabError};

/// Files a kubelet gives a container (hostname, hosts, resolv.conf), the lab CA in the system
/// bundle and the pip configuration: written into the pod's writable layer before it starts.
pub(super) fn write_pod_files(
    daemon: &Daemon,
    spec: &pod::ContainerSpec,
    name: &str,
) -> Result<(), LabError> {
    let upper = spec.upper_dir();
    std::fs::create_dir_all(&upper).context(|| format!("creating {}", upper.display()))?;
    let mut files: Vec<(&str, String)> = vec![
        ("etc/hostname", format!("{name}\n")),
        ("etc/hosts", network::etc_hosts(&spec.hostname)),
        (
            "etc/resolv.conf",
            network::resolv_conf(&daemon.config.pod.namespace),
        ),
    ];
    if let Some(services) = daemon
        .services
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        let image_bundle = spec
            .lower_dirs
            .iter()
            .find_map(|dir| {
                std::fs::read_to_string(dir.join("etc/ssl/certs/ca-certificates.crt")).ok()
            })
            .unwrap_or_default();
        let mut bundle = image_bundle;
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str("# guardlab lab CA\n");
        bundle.push_str(&services.ca_pem());
        files.push(("etc/ssl/certs/ca-certificates.crt", bundle));
        files.push(("etc/pip.conf", services.pip_conf()));
    }
    for (relative, content) in files {
        let path = upper.join(relative);
        if let Some(parent) = path.parent() {
            create_dirs_like_image(&upper, parent, &spec.lower_dirs)?;
        }
        std::fs::write(&path, content).context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .context(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}

/// Create directories in the writable layer with the mode and owner they have in the image, so
/// the overlay shows them unchanged.
fn create_dirs_like_image(
    upper: &std::path::Path,
    dir: &std::path::Path,
    lowers: &[PathBuf],
) -> Result<(), LabError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let relative = dir.strip_prefix(upper).unwrap_or(dir);
    let mut current = upper.to_path_buf();
    for part in relative.components() {
        current.push(part);
        if current.exists() {
            continue;
        }
        std::fs::create_dir(&current).context(|| format!("creating {}", current.display()))?;
        let in_image = lowers.iter().find_map(|l| {
            std::fs::metadata(l.join(current.strip_prefix(upper).unwrap_or(&current))).ok()
        });
        let (mode, uid, gid) = in_image
            .map(|m| (m.mode() & 0o7777, m.uid(), m.gid()))
            .unwrap_or((0o755, 0, 0));
        std::fs::set_permissions(&current, std::fs::Permissions::from_mode(mode))
            .context(|| format!("chmod {}", current.display()))?;
        std::os::unix::fs::chown(&current, Some(uid), Some(gid))
            .context(|| format!("chown {}", current.display()))?;
    }
    Ok(())
}
