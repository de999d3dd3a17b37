//! How the image's own pip reaches the package index during a build: the host's pip settings
//! (its files and `PIP_*` environment, read by [`super::host`]) replayed inside the chroot, with
//! the host files they name (CA bundles, local wheel directories) copied or bind-mounted into a
//! scratch directory of the image that the build takes out again.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use guardlab_host::Progress;

use super::chroot::Bind;
use super::error::{ImageError, IoContext};
use super::{BUILD_SCRATCH, host, remove_tree};

/// Files the build puts inside the image (host CA bundle, pip configuration, the host's
/// resolv.conf) and takes out again, also when the build fails.
pub(super) struct BuildScratch {
    pub(super) rootfs: PathBuf,
}

impl BuildScratch {
    pub(super) fn dir(&self) -> PathBuf {
        self.rootfs.join(BUILD_SCRATCH.trim_start_matches('/'))
    }
}

impl Drop for BuildScratch {
    fn drop(&mut self) {
        let _ = remove_tree(&self.dir());
        // The pod runtime gives each pod its own resolver configuration.
        let _ = fs::write(self.rootfs.join("etc/resolv.conf"), "");
    }
}

/// How the chroot's pip reaches the package index: the host's pip settings, with the host files
/// they name (CA bundles, local wheel directories) copied or bind-mounted into the scratch dir.
pub(super) struct PipSetup {
    pub(super) env: BTreeMap<String, String>,
    pub(super) binds: Vec<Bind>,
    summary: Vec<String>,
}

impl PipSetup {
    pub(super) fn prepare(
        scratch: &BuildScratch,
        pip_cache: &Path,
        progress: &dyn Progress,
    ) -> Result<Self, ImageError> {
        let dir = scratch.dir();
        fs::create_dir_all(dir.join("pip-cache"))
            .context(|| format!("creating {}", dir.display()))?;
        // The host's resolver, for the build only (a file of our own to bind onto).
        let resolv = scratch.rootfs.join("etc/resolv.conf");
        let _ = fs::remove_file(&resolv);
        fs::write(&resolv, "").context(|| format!("creating {}", resolv.display()))?;
        let mut setup = PipSetup {
            env: BTreeMap::new(),
            binds: vec![
                Bind {
                    host: PathBuf::from("/etc/resolv.conf"),
                    inside: PathBuf::from("/etc/resolv.conf"),
                    read_only: true,
                },
                Bind {
                    host: pip_cache.to_path_buf(),
                    inside: PathBuf::from(format!("{BUILD_SCRATCH}/pip-cache")),
                    read_only: false,
                },
            ],
            summary: Vec::new(),
        };
        let host_env: BTreeMap<String, String> = std::env::vars().collect();
        let host = host::host_pip_config(&host_env);
        for f in &host.files_read {
            setup.summary.push(f.display().to_string());
        }
        let mut counter = 0usize;
        let mut settings: BTreeMap<(String, String), String> = BTreeMap::new();
        for ((section, key), value) in &host.file_settings {
            let value = setup.rewrite(&dir, key, value, &mut counter)?;
            settings.insert((section.clone(), key.clone()), value);
        }
        for (k, v) in &host.env {
            let key = k
                .strip_prefix("PIP_")
                .map(|s| s.to_ascii_lowercase().replace('_', "-"))
                .unwrap_or_else(|| match k.as_str() {
                    "REQUESTS_CA_BUNDLE" | "SSL_CERT_FILE" => "cert".into(),
                    _ => String::new(),
                });
            let value = setup.rewrite(&dir, &key, v, &mut counter)?;
            setup.summary.push(format!("${k}"));
            setup.env.insert(k.clone(), value);
        }
        let mut conf = String::from("# The host's pip configuration, for the image build only.\n");
        let mut section = None;
        for ((s, k), v) in &settings {
            if section != Some(s) {
                conf.push_str(&format!("[{s}]\n"));
                section = Some(s);
            }
            conf.push_str(&format!("{k} = {}\n", v.replace('\n', "\n    ")));
        }
        let conf_path = dir.join("pip.conf");
        fs::write(&conf_path, conf).context(|| format!("writing {}", conf_path.display()))?;
        setup.env.insert(
            "PIP_CONFIG_FILE".into(),
            format!("{BUILD_SCRATCH}/pip.conf"),
        );
        setup
            .env
            .insert("PIP_CACHE_DIR".into(), format!("{BUILD_SCRATCH}/pip-cache"));
        for line in &setup.summary {
            progress.detail(&format!("pip setting from the host: {line}"));
        }
        Ok(setup)
    }

    /// A value as the chroot must see it: host files copied in, host directories bind-mounted.
    fn rewrite(
        &mut self,
        dir: &Path,
        key: &str,
        value: &str,
        counter: &mut usize,
    ) -> Result<String, ImageError> {
        if host::FILE_KEYS.contains(&key) && Path::new(value).is_file() {
            *counter += 1;
            let name = format!("file-{counter}");
            fs::copy(value, dir.join(&name)).map_err(|source| ImageError::HostPipFile {
                path: PathBuf::from(value),
                source,
            })?;
            return Ok(format!("{BUILD_SCRATCH}/{name}"));
        }
        if host::DIR_LIST_KEYS.contains(&key) {
            let mut out = Vec::new();
            for item in value.split_whitespace() {
                let local = item.strip_prefix("file://").unwrap_or(item);
                if !local.starts_with('/') {
                    out.push(item.to_string());
                    continue;
                }
                if !Path::new(local).is_dir() {
                    // pip would only warn about it.
                    continue;
                }
                *counter += 1;
                let name = format!("links-{counter}");
                fs::create_dir_all(dir.join(&name)).context(|| "creating a bind-mount point")?;
                self.binds.push(Bind {
                    host: PathBuf::from(local),
                    inside: PathBuf::from(format!("{BUILD_SCRATCH}/{name}")),
                    read_only: true,
                });
                out.push(format!("{BUILD_SCRATCH}/{name}"));
            }
            return Ok(out.join(if value.contains('\n') { "\n" } else { " " }));
        }
        Ok(value.to_string())
    }

    pub(super) fn describe(&self) -> String {
        if self.summary.is_empty() {
            "none, pip's defaults".into()
        } else {
            self.summary.join(", ")
        }
    }
}
