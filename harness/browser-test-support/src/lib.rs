//! Test support for the web console's browser tests.
//!
//! A test runs its body with [`LoopbackNetns::run`]: a network namespace whose only device is
//! `lo`, so the server under test, chromedriver and chromium (all started from the body) can
//! reach nothing but loopback. [`Browser`] drives a headless Debian chromium through
//! chromedriver (WebDriver, by fantoccini), optionally as an unprivileged user ([`RunAs`]).
//! Screenshots are checked for content ([`pixels::assert_not_blank`]) and copied to
//! `$GUARDLAB_TEST_ARTIFACTS` for CI to upload ([`artifacts`]).
//!
//! chromium, chromedriver and a font are installed through `guardlab-host` when missing
//! ([`guardlab_host::catalog::BROWSER_TEST`]), before the namespace is made.

pub mod artifacts;
pub mod browser;
pub mod http;
pub mod netns;
pub mod page;
pub mod pixels;

use std::path::PathBuf;
use std::time::Duration;

pub use browser::{Browser, BrowserOptions, FetchOutcome, NetworkLog};
pub use fantoccini;
pub use netns::{LoopbackNetns, Netns, Process, ProcessHome, RunAs};
pub use pixels::{PixelCensus, assert_not_blank};

#[derive(Debug, thiserror::Error)]
pub enum BrowserTestError {
    #[error(
        "the browser tests need root (a network namespace of their own, installing chromium); \
         run them as root"
    )]
    NotRoot,
    #[error(transparent)]
    Host(#[from] guardlab_host::HostError),
    #[error("the test's network namespace: {0}")]
    Namespace(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited ({status}) before it was ready; its log:\n{log}")]
    Exited {
        name: String,
        status: String,
        log: String,
    },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("chromedriver did not start a chromium session: {error}; chromedriver's log:\n{log}")]
    Session { error: String, log: String },
    #[error("WebDriver, {context}: {source}")]
    WebDriver {
        context: String,
        #[source]
        source: Box<fantoccini::error::CmdError>,
    },
    #[error("the page: {what}")]
    Page { what: String },
    #[error("screenshot {}: {why}", path.display())]
    Screenshot { path: PathBuf, why: String },
    #[error("{0} was reached from the test's namespace, which should reach only loopback")]
    Reachable(String),
    #[error(
        "processes were still in the test's network namespace after it ended and were killed: {}",
        .0.join(", ")
    )]
    LeftInNamespace(Vec<String>),
}

impl BrowserTestError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> BrowserTestError {
        BrowserTestError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn webdriver(
        context: impl Into<String>,
        source: fantoccini::error::CmdError,
    ) -> BrowserTestError {
        BrowserTestError::WebDriver {
            context: context.into(),
            source: Box::new(source),
        }
    }
}
