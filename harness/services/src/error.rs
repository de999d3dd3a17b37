//! The one error type of the lab's services.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while preparing or starting the lab's internet.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// A file or directory could not be read, written or created.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A socket handed to us could not be adopted by the tokio runtime.
    #[error("cannot use the {what} socket: {source}")]
    Socket {
        what: String,
        #[source]
        source: io::Error,
    },

    /// The CA directory holds only half of the CA; we refuse to overwrite the other half.
    #[error(
        "the lab CA in {} is incomplete: {present} exists but {missing} does not; \
         restore {missing} or remove {present} to create a new CA (the pod image must then be rebuilt)",
        dir.display()
    )]
    IncompleteCa {
        dir: PathBuf,
        present: String,
        missing: String,
    },

    /// A persisted CA file could not be parsed.
    #[error("{}: not a usable {what}: {detail}", path.display())]
    BadCaFile {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },

    /// rcgen refused to make a key or a certificate.
    #[error("cannot make the {what}: {source}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },

    /// rustls refused the certificate or key.
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),

    /// A name of the DNS zone is not a DNS name.
    #[error("zone record {index} ({name:?}): {detail}")]
    BadZoneRecord {
        index: usize,
        name: String,
        detail: String,
    },

    /// A site or one of its routes is malformed, or two sites clash.
    #[error("site {host:?}: {detail}")]
    BadSite { host: String, detail: String },

    /// A file in the wheel directory is not a wheel we can serve.
    #[error("{}: {detail}", path.display())]
    BadWheel { path: PathBuf, detail: String },

    /// A lock file (`manifests/image/*.lock`) is not what guardlab reads.
    #[error("{}:{line}: {message}", file.display())]
    Lock {
        file: PathBuf,
        line: usize,
        message: String,
    },

    /// The host's pip could not fetch the wheels.
    #[error("the host's pip could not fetch {requirements}: {detail}{}", output_tail(.output))]
    Pip {
        requirements: String,
        detail: String,
        output: Vec<String>,
    },

    /// The lab internet was asked to start without a single socket.
    #[error("cannot start the lab internet: no sockets to serve on")]
    NoSockets,

    /// Web sockets were given, but no site to serve on them.
    #[error("cannot start the lab internet: web sockets were given but no sites to serve")]
    NoSites,

    /// A name of the lab zone's own SOA record is not a DNS name.
    #[error("cannot start the lab internet: SOA name {name}: {source}")]
    SoaName {
        name: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
}

fn output_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("\npip said (last lines):\n  {}", lines.join("\n  "))
    }
}

impl ServicesError {
    pub(crate) fn file(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ServicesError::File {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn socket(what: impl Into<String>, source: io::Error) -> Self {
        ServicesError::Socket {
            what: what.into(),
            source,
        }
    }
}
