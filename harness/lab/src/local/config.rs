//! What `lab up` hands the daemon (`<lab dir>/config.json`): everything resolved, so the daemon
//! builds nothing and downloads nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lab_files::CONFIG_FILE;
use crate::local::manifest::{PodTemplate, Seccomp};
use crate::local::pod::{self, ContainerSpec};
use crate::{IoContext, LabError};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonConfig {
    pub lab: String,
    pub lab_dir: PathBuf,
    /// The lab's cgroup (exists; the daemon runs in `<cgroup>/daemon`).
    pub cgroup: PathBuf,
    pub pod: PodTemplate,
    pub runtime: PodRuntime,
    /// Host loopback address forwarded to the notebook (`127.0.0.1:1234`).
    pub forward: Option<SocketAddr>,
    /// The lab's internet; `None` runs the pod on a lab network with no hosts at all.
    pub services: Option<ServicesConfig>,
    /// Run the sensor on the lab's pods.
    pub sensor: bool,
    /// How long the notebook may take to answer after the pod starts.
    pub ready_timeout_secs: u64,
}

impl DaemonConfig {
    pub fn path(lab_dir: &Path) -> PathBuf {
        lab_dir.join(CONFIG_FILE)
    }

    pub fn read(lab_dir: &Path) -> Result<DaemonConfig, LabError> {
        let path = DaemonConfig::path(lab_dir);
        let text =
            std::fs::read_to_string(&path).context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| LabError::input(&path, None, None, e.to_string()))
    }

    pub fn write(&self) -> Result<(), LabError> {
        let path = DaemonConfig::path(&self.lab_dir);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| LabError::backend(format!("encoding {}", path.display()), e))?;
        std::fs::write(&path, text).context(|| format!("writing {}", path.display()))
    }
}

/// The image the pod runs and the image's own settings (an OCI image config's part that
/// matters here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRuntime {
    /// The image's root filesystem (read-only lower layer of the pod's overlay).
    pub rootfs: PathBuf,
    /// Image reference, e.g. `jupyter/minimal-notebook:latest`.
    pub image: String,
    /// e.g. `sha256:...`.
    pub image_id: String,
    /// The image's environment (PATH, HOME, LANG, ...).
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// The image's user, used when the Deployment sets no `runAsUser`/`runAsGroup`.
    pub uid: u32,
    pub gid: u32,
    /// Image entrypoint and cmd, as an OCI image has them (the Deployment's command and args
    /// replace them).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
}

/// The lab internet's inputs, prepared by `lab up`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesConfig {
    /// The lab CA's directory (created when missing).
    pub ca_dir: PathBuf,
    /// The wheels the package index serves (fetched by `lab up`).
    pub wheels_dir: PathBuf,
    /// The file served as the scenario's miner download.
    pub miner_tarball: PathBuf,
}

impl PodRuntime {
    /// An image root filesystem already on disk, with the settings (image name, user,
    /// environment) of the image recipe in `recipe_dir` (`manifests/image`).
    pub fn prebuilt(rootfs: &Path, recipe_dir: &Path) -> Result<PodRuntime, LabError> {
        let loaded = crate::image::load_recipe(recipe_dir)?;
        let recipe = &loaded.recipe;
        Ok(PodRuntime {
            rootfs: rootfs.to_path_buf(),
            image: recipe.image.clone(),
            image_id: format!("sha256:{}", loaded.hash),
            env: recipe
                .config
                .env
                .iter()
                .map(|(k, v)| (k.0.clone(), v.clone()))
                .collect(),
            working_dir: Some(recipe.config.working_dir.0.clone()),
            uid: recipe.user.uid,
            gid: recipe.user.gid,
            entrypoint: Vec::new(),
            cmd: Vec::new(),
        })
    }

    /// The container the pod runs, Kubernetes' way: `command` replaces the entrypoint, `args`
    /// replace the cmd; the Deployment's env comes after the image's; the security context
    /// chooses the user.
    pub fn container_spec(
        &self,
        template: &PodTemplate,
        pod_dir: &Path,
        pod_name: &str,
    ) -> Result<ContainerSpec, LabError> {
        let mut argv = if template.command.is_empty() {
            self.entrypoint.clone()
        } else {
            template.command.clone()
        };
        if !template.args.is_empty() {
            argv.extend(template.args.iter().cloned());
        } else if template.command.is_empty() {
            argv.extend(self.cmd.iter().cloned());
        }
        if argv.is_empty() {
            return Err(template.error(
                "spec.template.spec.containers[0].command",
                format!(
                    "container {}: neither the Deployment nor the image {} gives a command",
                    template.container_name, self.image
                ),
            ));
        }
        let uid = template.run_as_user.unwrap_or(self.uid);
        let gid = template.run_as_group.unwrap_or(self.gid);
        let user = pod::image_user_name(&self.rootfs, uid);
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |key: &str, value: &str| {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value.to_string()));
        };
        set(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        set("HOSTNAME", pod_name);
        for (key, value) in &self.env {
            set(key, value);
        }
        for (key, value) in &template.env {
            set(key, value);
        }
        if !env.iter().any(|(k, _)| k == "HOME") {
            let home = home_of(&self.rootfs, uid).unwrap_or_else(|| "/".into());
            env.push(("HOME".into(), home));
        }
        let bounding_set =
            pod::bounding_set(&template.capabilities_add, &template.capabilities_drop).map_err(
                |e| {
                    template.error(
                        "spec.template.spec.containers[0].securityContext.capabilities",
                        format!("container {}: {e}", template.container_name),
                    )
                },
            )?;
        let working_dir = template
            .working_dir
            .clone()
            .or_else(|| self.working_dir.clone())
            .unwrap_or_else(|| "/".into());
        Ok(ContainerSpec {
            lower_dirs: vec![self.rootfs.clone()],
            pod_dir: pod_dir.to_path_buf(),
            hostname: pod_name.to_string(),
            argv,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir,
            uid,
            gid,
            supplementary_groups: pod::image_groups(
                &self.rootfs,
                user.as_deref().unwrap_or(""),
                gid,
            ),
            bounding_set,
            no_new_privs: template.allow_privilege_escalation == Some(false),
            seccomp: match &template.seccomp {
                Seccomp::RuntimeDefault(profile) => Some((**profile).clone()),
                Seccomp::Unconfined => None,
            },
            log_file: pod_dir.join("container.log"),
        })
    }
}

fn home_of(rootfs: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 5 && fields[2].parse::<u32>().ok() == Some(uid))
            .then(|| fields[5].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::manifest;

    fn runtime(rootfs: &Path) -> PodRuntime {
        PodRuntime {
            rootfs: rootfs.to_path_buf(),
            image: "jupyter/minimal-notebook:latest".into(),
            image_id: "sha256:x".into(),
            env: vec![
                ("PATH".into(), "/opt/venv/bin:/usr/bin:/bin".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            working_dir: Some("/home/jovyan".into()),
            uid: 0,
            gid: 0,
            entrypoint: vec!["tini".into(), "--".into()],
            cmd: vec!["start-notebook.py".into()],
        }
    }

    #[test]
    fn the_deployment_args_replace_the_image_cmd_and_keep_its_entrypoint() {
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(rootfs.path().join("etc")).unwrap();
        std::fs::write(
            rootfs.path().join("etc/passwd"),
            "jovyan:x:1000:100::/home/jovyan:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(rootfs.path().join("etc/group"), "users:x:100:\n").unwrap();
        let template = manifest::load(&manifest::default_manifests_dir()).unwrap();
        let spec = runtime(rootfs.path())
            .container_spec(&template, Path::new("/p"), "jupyter-notebook-abc-xyz")
            .unwrap();
        assert_eq!(&spec.argv[..3], &["tini", "--", "start-notebook.py"]);
        assert!(spec.argv.contains(&"--IdentityProvider.token=".to_string()));
        assert_eq!((spec.uid, spec.gid), (1000, 100));
        assert_eq!(spec.supplementary_groups, vec![100]);
        assert!(
            spec.env
                .contains(&"PATH=/opt/venv/bin:/usr/bin:/bin".to_string()),
            "{:?}",
            spec.env
        );
        assert!(
            spec.env.contains(&"HOME=/home/jovyan".to_string()),
            "{:?}",
            spec.env
        );
        assert!(
            spec.env
                .contains(&"HOSTNAME=jupyter-notebook-abc-xyz".to_string())
        );
        assert_eq!(spec.working_dir, "/home/jovyan");
        // The runtime's default seccomp profile, and no no_new_privs (sudo asks its password).
        assert!(spec.seccomp.is_some());
        assert!(!spec.no_new_privs);
        assert_eq!(
            spec.env.iter().filter(|e| e.starts_with("PATH=")).count(),
            1
        );
    }
}
