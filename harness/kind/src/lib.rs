//! The kind backend: the same lab on a Kubernetes cluster.
