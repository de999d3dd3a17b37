//! A client for the lab's cluster: from the kubeconfig `kind` gives for its cluster, or from a
//! context of the user's kubeconfig.

use guardlab_lab_api::LabError;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

use crate::state::StateTarget;
use crate::tools::{KindCli, KindRunError, KindUnavailable};

/// Why there is no client for the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kind cluster's kubeconfig comes from the `kind` CLI, which is not there.
    #[error(transparent)]
    NoKind(#[from] KindUnavailable),
    #[error(transparent)]
    Kind(#[from] KindRunError),
    #[error("the kubeconfig of kind cluster {cluster}: {source}")]
    KindKubeconfig {
        cluster: String,
        #[source]
        source: KubeconfigError,
    },
    #[error("kubeconfig context `{context}`: {source}")]
    Context {
        context: String,
        #[source]
        source: KubeconfigError,
    },
    /// The kubeconfig was read; a client could not be made from it. `to` says which cluster.
    #[error("connecting {to}: {source}")]
    Client {
        to: String,
        #[source]
        source: kube::Error,
    },
}

impl From<ConnectError> for LabError {
    fn from(error: ConnectError) -> LabError {
        match error {
            ConnectError::NoKind(e) => e.into(),
            ConnectError::Kind(e) => e.into(),
            e @ (ConnectError::KindKubeconfig { .. } | ConnectError::Context { .. }) => {
                LabError::backend("the cluster's kubeconfig", e)
            }
            e @ ConnectError::Client { .. } => LabError::backend("the Kubernetes API", e),
        }
    }
}

/// A client for the cluster of `target`. A kind cluster's kubeconfig is asked of `kind` (the
/// one given, else the one on `search_path`).
pub async fn connect(
    target: &StateTarget,
    kind: Option<&KindCli>,
    search_path: &std::ffi::OsStr,
) -> Result<Client, ConnectError> {
    match target {
        StateTarget::Kind { cluster, .. } => {
            let kind = match kind {
                Some(kind) => kind.clone(),
                None => KindCli::find(search_path).await?,
            };
            let yaml = kind.kubeconfig(cluster).await?;
            let kubeconfig_error = |source| ConnectError::KindKubeconfig {
                cluster: cluster.clone(),
                source,
            };
            let kubeconfig = Kubeconfig::from_yaml(&yaml).map_err(kubeconfig_error)?;
            let options = KubeConfigOptions {
                context: Some(format!("kind-{cluster}")),
                ..Default::default()
            };
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(kubeconfig_error)?;
            Client::try_from(config).map_err(|source| ConnectError::Client {
                to: format!("to kind cluster {cluster}"),
                source,
            })
        }
        StateTarget::Context { context } => {
            let options = KubeConfigOptions {
                context: Some(context.clone()),
                ..Default::default()
            };
            let config = kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|source| ConnectError::Context {
                    context: context.clone(),
                    source,
                })?;
            Client::try_from(config).map_err(|source| ConnectError::Client {
                to: format!("with context `{context}`"),
                source,
            })
        }
    }
}
