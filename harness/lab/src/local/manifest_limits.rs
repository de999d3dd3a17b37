//! The pod's limits as the manifests give them: the Deployment's `resources.limits` (`cpu`,
//! `memory`, in Kubernetes quantities) and the pids limit, which Kubernetes sets per pod from
//! the kubelet's configuration (`podPidsLimit`), not in a Deployment: the kind cluster's
//! config (`manifests/kind/cluster.yaml`) patches the kubelet with it, and the local backend
//! reads it there, so both backends keep the same limit.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::LabError;
use crate::local::cgroup_limits::ResourceLimits;

/// The kind cluster's config, relative to the manifests directory.
pub const KIND_CLUSTER_FILE: &str = "kind/cluster.yaml";

/// A Kubernetes quantity in thousandths of its unit, rounded up (`500m` → 500, `1` → 1000,
/// `1Gi` → 1073741824000). `None` for text that is not a quantity, or too large.
pub fn quantity_millis(text: &str) -> Option<u128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // value = digits / 10^scale, times the suffix's multiplier (numerator / denominator).
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let scale = u32::try_from(fraction.len()).ok()?;
    let (numerator, denominator): (u128, u128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "k" => (1000u128.pow(2), 1),
        "M" => (1000u128.pow(3), 1),
        "G" => (1000u128.pow(4), 1),
        "T" => (1000u128.pow(5), 1),
        "P" => (1000u128.pow(6), 1),
        "E" => (1000u128.pow(7), 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "Pi" => (1000 << 50, 1),
        "Ei" => (1000 << 60, 1),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..].parse().ok()?;
            if power >= 0 {
                (
                    1000u128.checked_mul(10u128.checked_pow(power.unsigned_abs())?)?,
                    1,
                )
            } else {
                (1000, 10u128.checked_pow(power.unsigned_abs())?)
            }
        }
        _ => return None,
    };
    let top = digits.checked_mul(numerator)?;
    let bottom = denominator.checked_mul(10u128.checked_pow(scale)?)?;
    Some(top.div_ceil(bottom))
}

/// `resources.limits` of the container, as limits (cpu and memory; the others are refused,
/// naming the field, as the local backend cannot keep them).
pub fn limits_of(
    file: &Path,
    field: &str,
    limits: &BTreeMap<String, serde_yaml::Value>,
) -> Result<ResourceLimits, LabError> {
    let mut result = ResourceLimits::default();
    for (name, value) in limits {
        let at = format!("{field}.{name}");
        let text = match value {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            other => {
                return Err(LabError::input(
                    file,
                    None,
                    Some(&at),
                    format!("{other:?} is not a quantity"),
                ));
            }
        };
        let bad = || {
            LabError::input(
                file,
                None,
                Some(&at),
                format!("{text:?} is not a Kubernetes quantity (`500m`, `1`, `512Mi`, `1Gi`)"),
            )
        };
        let millis = quantity_millis(&text).ok_or_else(bad)?;
        match name.as_str() {
            // A CPU limit is kept in thousandths of a CPU, as Kubernetes rounds it.
            "cpu" => result.cpu_millis = Some(u64::try_from(millis).map_err(|_| bad())?.max(1)),
            "memory" => {
                result.memory = Some(u64::try_from(millis.div_ceil(1000)).map_err(|_| bad())?)
            }
            other => {
                return Err(LabError::input(
                    file,
                    None,
                    Some(&at),
                    format!(
                        "the local backend keeps `cpu` and `memory` limits, not `{other}` (the \
                         pids limit is the kubelet's podPidsLimit in {KIND_CLUSTER_FILE})"
                    ),
                ));
            }
        }
    }
    Ok(result)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KindPatches {
    #[serde(default)]
    kubeadm_config_patches: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubeletPatch {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    pod_pids_limit: Option<i64>,
}

/// The kubelet's `podPidsLimit` in a kind cluster config's `kubeadmConfigPatches` (the patch
/// of `kind: KubeletConfiguration`); `None` when none sets it, or sets it to -1 (no limit).
pub fn pod_pids_limit(file: &Path, text: &str) -> Result<Option<u64>, LabError> {
    let config: KindPatches = serde_yaml::from_str(text).map_err(|e| {
        LabError::input(
            file,
            e.location().map(|l| l.line()),
            Some("kubeadmConfigPatches"),
            e.to_string(),
        )
    })?;
    let mut found = None;
    for (i, patch) in config.kubeadm_config_patches.iter().enumerate() {
        let field = format!("kubeadmConfigPatches[{i}]");
        let patch: KubeletPatch = serde_yaml::from_str(patch)
            .map_err(|e| LabError::input(file, None, Some(&field), e.to_string()))?;
        if patch.kind.as_deref() != Some("KubeletConfiguration") {
            continue;
        }
        found = match patch.pod_pids_limit {
            None => found,
            Some(-1) => None,
            Some(n) if n > 0 => Some(n as u64),
            Some(n) => {
                return Err(LabError::input(
                    file,
                    None,
                    Some(&format!("{field}.podPidsLimit")),
                    format!("{n}: a pids limit is positive, or -1 for none"),
                ));
            }
        };
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_reads_them() {
        let q = |t| quantity_millis(t);
        assert_eq!(q("500m"), Some(500));
        assert_eq!(q("1"), Some(1000));
        assert_eq!(q("0.5"), Some(500));
        assert_eq!(q("1.5"), Some(1500));
        assert_eq!(q("0.0001"), Some(1), "rounded up to a thousandth");
        assert_eq!(q("1Gi"), Some(1000 << 30));
        assert_eq!(q("512Mi"), Some((512 * 1000) << 20));
        assert_eq!(q("1G"), Some(1_000_000_000_000));
        assert_eq!(q("128k"), Some(128_000_000));
        assert_eq!(q("1e3"), Some(1_000_000));
        assert_eq!(q("15e-1"), Some(1500));
        assert_eq!(q("+2"), Some(2000));
        for bad in [
            "",
            "Gi",
            "1 Gi",
            "1GB",
            "-1",
            "1.2.3",
            "x",
            "1e",
            "99999999999999999999Ei",
        ] {
            assert_eq!(q(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn limits_are_cpu_and_memory_and_errors_name_the_field() {
        let limits = |yaml: &str| {
            let map: BTreeMap<String, serde_yaml::Value> = serde_yaml::from_str(yaml).unwrap();
            limits_of(Path::new("d.yaml"), "resources.limits", &map)
        };
        assert_eq!(
            limits("cpu: 1\nmemory: 1Gi\n").unwrap(),
            ResourceLimits {
                memory: Some(1 << 30),
                cpu_millis: Some(1000),
                pids: None
            }
        );
        assert_eq!(limits("cpu: 250m\n").unwrap().cpu_millis, Some(250));
        assert_eq!(limits("memory: \"1e3\"\n").unwrap().memory, Some(1000));
        let err = limits("memory: lots\n").unwrap_err().to_string();
        assert!(
            err.contains("d.yaml") && err.contains("resources.limits.memory"),
            "{err}"
        );
        let err = limits("nvidia.com/gpu: 1\n").unwrap_err().to_string();
        assert!(err.contains("resources.limits.nvidia.com/gpu"), "{err}");
    }

    #[test]
    fn the_pids_limit_is_the_kubelet_patch_of_the_kind_config() {
        let file = Path::new("cluster.yaml");
        let config = "kind: Cluster\nkubeadmConfigPatches:\n- |\n  kind: InitConfiguration\n- |\n  apiVersion: kubelet.config.k8s.io/v1beta1\n  kind: KubeletConfiguration\n  podPidsLimit: 512\n";
        assert_eq!(pod_pids_limit(file, config).unwrap(), Some(512));
        assert_eq!(pod_pids_limit(file, "kind: Cluster\n").unwrap(), None);
        let unlimited = config.replace("512", "-1");
        assert_eq!(pod_pids_limit(file, &unlimited).unwrap(), None);
        let err = pod_pids_limit(file, &config.replace("512", "0"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kubeadmConfigPatches[1].podPidsLimit"),
            "{err}"
        );
        let err = pod_pids_limit(file, &config.replace("512", "many"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cluster.yaml") && err.contains("kubeadmConfigPatches[1]"),
            "{err}"
        );
    }
}
