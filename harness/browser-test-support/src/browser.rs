//! Headless chromium driven through chromedriver (WebDriver, by fantoccini), both started in the
//! test's loopback-only namespace.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use guardlab_host::Host;
use serde_json::{Value, json};

use crate::netns::{Netns, Process, RunAs};
use crate::{BrowserTestError, artifacts, pixels};

/// How to start a [`Browser`].
#[derive(Clone, Debug)]
pub struct BrowserOptions {
    /// Run chromedriver and chromium as this user (chromium then keeps its sandbox); `None`:
    /// as this process's user (root: chromium runs with `--no-sandbox`).
    pub run_as: Option<RunAs>,
    /// The window's size in CSS pixels: what a screenshot of the page covers.
    pub window: (u32, u32),
    /// Where screenshots are written (the test's temp dir).
    pub screenshots_dir: PathBuf,
    /// The subdirectory of `$GUARDLAB_TEST_ARTIFACTS` screenshots are copied to (the test's
    /// name).
    pub artifact_group: String,
    /// How long to wait for chromedriver to listen.
    pub driver_timeout: Duration,
}

impl BrowserOptions {
    pub fn new(screenshots_dir: impl Into<PathBuf>, artifact_group: &str) -> BrowserOptions {
        BrowserOptions {
            run_as: None,
            window: (1280, 900),
            screenshots_dir: screenshots_dir.into(),
            artifact_group: artifact_group.to_string(),
            driver_timeout: Duration::from_secs(30),
        }
    }

    pub fn run_as(mut self, user: RunAs) -> BrowserOptions {
        self.run_as = Some(user);
        self
    }
}

/// Whether a request made by the page got an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The server answered with this HTTP status.
    Answered(u16),
    /// No answer: the browser's error (`TypeError: Failed to fetch`, a timeout's abort).
    Failed(String),
}

/// What chromium's network log says it requested, read when the browser is closed.
#[derive(Clone, Debug, Default)]
pub struct NetworkLog {
    /// Every URL chromium's network stack was asked for, in order of first appearance.
    pub urls: Vec<String>,
}

impl NetworkLog {
    /// The URLs whose host is not a loopback address (`127.0.0.0/8`, `localhost`, `[::1]`),
    /// nor one of `allowed` (hosts the test tried on purpose to show they fail).
    pub fn outside_loopback(&self, allowed: &[&str]) -> Vec<String> {
        self.urls
            .iter()
            .filter(|url| match url_host(url) {
                None => false, // data:, about:, blob:... never leave the browser
                Some(host) => {
                    !(host == "localhost"
                        || host == "[::1]"
                        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
                        || allowed.contains(&host))
                }
            })
            .cloned()
            .collect()
    }
}

/// The host of a network URL (`http`, `https`, `ws`, `wss`, `ftp`), without the port.
fn url_host(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "http" | "https" | "ws" | "wss" | "ftp") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next();
    }
    Some(authority.split(':').next().unwrap_or(authority))
}

/// A headless chromium session in the test's namespace.
pub struct Browser {
    client: Client,
    options: BrowserOptions,
    net_log: PathBuf,
    /// chromedriver (and, in its process group, chromium); last, so it is killed after the
    /// client is dropped.
    driver: Process,
    started_in: Duration,
}

impl Browser {
    /// Starts chromedriver on a free loopback port of `netns` and a headless chromium session
    /// through it. Call from the body of [`crate::LoopbackNetns::run`], which has installed
    /// chromium, chromedriver and the fonts.
    pub async fn start(
        netns: &Netns,
        options: BrowserOptions,
    ) -> Result<Browser, BrowserTestError> {
        let start = Instant::now();
        let host = Host::new(true);
        let program = |name: &str| {
            host.find_program(name).ok_or_else(|| {
                BrowserTestError::Namespace(format!("`{name}` is not on the search path"))
            })
        };
        let chromedriver = program("chromedriver")?;
        let chromium = program("chromium")?;
        std::fs::create_dir_all(&options.screenshots_dir).map_err(|e| {
            BrowserTestError::io(format!("creating {}", options.screenshots_dir.display()), e)
        })?;

        let port = netns.free_port()?;
        let mut command = Command::new(chromedriver);
        command.arg(format!("--port={port}"));
        let mut driver = netns.spawn("chromedriver", command, options.run_as)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        driver.wait_for_port(addr, options.driver_timeout).await?;

        let profile = driver.home().subdir("chromium-profile")?;
        let net_log = driver.home().subdir("net-log")?.join("net-log.json");
        let mut args = vec![
            "--headless=new".to_string(),
            "--disable-gpu".to_string(),
            format!("--window-size={},{}", options.window.0, options.window.1),
            format!("--user-data-dir={}", profile.display()),
            // Every request chromium's network stack makes, for NetworkLog.
            format!("--log-net-log={}", net_log.display()),
            // Nothing of chromium's own: no first-run pages, no updates, no sync, no
            // background fetches, no field trials, no crash uploads.
            "--no-first-run".to_string(),
            "--no-default-browser-check".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-default-apps".to_string(),
            "--disable-extensions".to_string(),
            "--disable-breakpad".to_string(),
            "--disable-domain-reliability".to_string(),
            "--disable-client-side-phishing-detection".to_string(),
            "--disable-field-trial-config".to_string(),
            "--no-pings".to_string(),
            "--metrics-recording-only".to_string(),
            "--safebrowsing-disable-auto-update".to_string(),
            "--password-store=basic".to_string(),
            // The network time queries of the component updater, and the preconnection to the
            // default search engine when a page is opened.
            "--disable-features=Translate,OptimizationHints,MediaRouter,NetworkTimeServiceQuerying,PreconnectToSearch,SearchPrefetchServicePrefetching,AutofillServerCommunication,InterestFeedContentSuggestions,CertificateTransparencyComponentUpdater".to_string(),
            // --disable-component-update still lets on-demand components (the optimization
            // guide's model manifest) ask the update server: send those to a dead loopback
            // port, so they fail in the namespace and show as loopback in the net log.
            "--component-updater=url-source=http://127.0.0.1:9/".to_string(),
            "--hide-scrollbars".to_string(),
            // Debian's initial preferences open a search engine's start page in the first
            // window (a main-frame request outside): open a blank page instead.
            "--homepage=about:blank".to_string(),
            "about:blank".to_string(),
        ];
        // Root cannot use chromium's sandbox (it refuses to start); an unprivileged user can,
        // through user namespaces.
        if options.run_as.is_none() && nix::unistd::geteuid().is_root() {
            args.push("--no-sandbox".to_string());
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_string(),
            json!({
                "binary": chromium,
                "args": args,
                // The first window shows a blank page, not the start page of Debian's default
                // search engine (a request outside).
                "prefs": {
                    "homepage": "about:blank",
                    "homepage_is_newtabpage": false,
                    "session": { "restore_on_startup": 4, "startup_urls": ["about:blank"] },
                    "default_search_provider": { "enabled": false },
                },
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{addr}"))
            .await
            .map_err(|e| BrowserTestError::Session {
                error: e.to_string(),
                log: driver.log_tail(30),
            })?;
        Ok(Browser {
            client,
            options,
            net_log,
            driver,
            started_in: start.elapsed(),
        })
    }

    /// How long [`Browser::start`] took (chromedriver listening, then the session).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The fantoccini client, for what the helpers here do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn goto(&self, url: &str) -> Result<(), BrowserTestError> {
        self.client
            .goto(url)
            .await
            .map_err(|e| BrowserTestError::webdriver(format!("opening {url}"), e))
    }

    /// The first element matching the CSS selector.
    pub async fn find(&self, css: &str) -> Result<Element, BrowserTestError> {
        self.client
            .find(Locator::Css(css))
            .await
            .map_err(|e| BrowserTestError::webdriver(format!("finding `{css}`"), e))
    }

    /// Every element matching the CSS selector.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>, BrowserTestError> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_err(|e| BrowserTestError::webdriver(format!("finding `{css}`"), e))
    }

    pub async fn click(&self, css: &str) -> Result<(), BrowserTestError> {
        self.find(css)
            .await?
            .click()
            .await
            .map_err(|e| BrowserTestError::webdriver(format!("clicking `{css}`"), e))
    }

    /// Types `text` into the element (an input), after what it holds.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<(), BrowserTestError> {
        self.find(css)
            .await?
            .send_keys(text)
            .await
            .map_err(|e| BrowserTestError::webdriver(format!("typing into `{css}`"), e))
    }

    /// The element's rendered text.
    pub async fn text(&self, css: &str) -> Result<String, BrowserTestError> {
        self.find(css)
            .await?
            .text()
            .await
            .map_err(|e| BrowserTestError::webdriver(format!("reading the text of `{css}`"), e))
    }

    /// Runs `script` (a function body: `return ...;`) in the page with `arguments` = `args`.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Result<Value, BrowserTestError> {
        self.client
            .execute(script, args)
            .await
            .map_err(|e| BrowserTestError::webdriver("running a script in the page", e))
    }

    /// Polls `condition` every 100 ms until it returns `Ok(true)`, for at most `timeout`; an
    /// error from it ends the wait. `what` names the condition in the timeout's error.
    pub async fn wait_until<F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: F,
    ) -> Result<(), BrowserTestError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool, BrowserTestError>>,
    {
        let start = Instant::now();
        loop {
            if condition().await? {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(BrowserTestError::Timeout {
                    what: what.to_string(),
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until an element matching `css` exists and its text contains `needle`; returns
    /// the text. The timeout's error says the last text seen.
    pub async fn wait_for_text(
        &self,
        css: &str,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, BrowserTestError> {
        let start = Instant::now();
        let mut last = None;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if text.contains(needle) {
                    return Ok(text);
                }
                last = Some(text);
            }
            if start.elapsed() > timeout {
                return Err(BrowserTestError::Timeout {
                    what: format!(
                        "`{css}` to contain {needle:?} (last text: {})",
                        last.map_or("no such element".to_string(), |t| format!("{t:?}"))
                    ),
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of every SVG `<text>` element inside the elements matching `scope_css`
    /// (`"svg"` for all), in document order.
    pub async fn svg_text_labels(&self, scope_css: &str) -> Result<Vec<String>, BrowserTestError> {
        let value = self
            .eval(
                "return [...document.querySelectorAll(arguments[0])]\
                   .flatMap(s => [...s.querySelectorAll('text')])\
                   .map(t => t.textContent);",
                vec![json!(scope_css)],
            )
            .await?;
        serde_json::from_value(value.clone()).map_err(|_| BrowserTestError::Page {
            what: format!("the SVG labels under `{scope_css}` are not a list of strings: {value}"),
        })
    }

    /// Asks the page to fetch `url` (no-cors, aborted after `timeout`) and says whether it got
    /// an answer.
    pub async fn fetch_from_page(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<FetchOutcome, BrowserTestError> {
        let value = self
            .client
            .execute_async(
                "const [url, ms, done] = arguments;\
                 fetch(url, {mode: 'no-cors', cache: 'no-store', signal: AbortSignal.timeout(ms)})\
                   .then(r => done({status: r.status}))\
                   .catch(e => done({error: String(e)}));",
                vec![json!(url), json!(timeout.as_millis() as u64)],
            )
            .await
            .map_err(|e| BrowserTestError::webdriver(format!("fetching {url} from the page"), e))?;
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            Ok(FetchOutcome::Failed(error.to_string()))
        } else if let Some(status) = value.get("status").and_then(Value::as_u64) {
            // A no-cors answer is opaque (status 0) but still an answer.
            Ok(FetchOutcome::Answered(status as u16))
        } else {
            Err(BrowserTestError::Page {
                what: format!("the page's fetch of {url} returned {value}"),
            })
        }
    }

    /// Fails unless a request from the page to `url` gets no answer.
    pub async fn assert_unreachable(&self, url: &str) -> Result<String, BrowserTestError> {
        match self.fetch_from_page(url, Duration::from_secs(5)).await? {
            FetchOutcome::Failed(error) => Ok(error),
            FetchOutcome::Answered(status) => Err(BrowserTestError::Reachable(format!(
                "{url} (the page's request was answered with status {status})"
            ))),
        }
    }

    /// A screenshot of the window, written to `<screenshots_dir>/<name>.png` and copied to
    /// the artifacts directory when there is one; returns the path in `screenshots_dir`.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf, BrowserTestError> {
        let png = self
            .client
            .screenshot()
            .await
            .map_err(|e| BrowserTestError::webdriver("taking a screenshot", e))?;
        self.save_screenshot(name, &png)
    }

    /// A screenshot of the first element matching `css` (an `svg`, say), saved like
    /// [`Browser::screenshot`].
    pub async fn screenshot_element(
        &self,
        css: &str,
        name: &str,
    ) -> Result<PathBuf, BrowserTestError> {
        let png = self.find(css).await?.screenshot().await.map_err(|e| {
            BrowserTestError::webdriver(format!("taking a screenshot of `{css}`"), e)
        })?;
        self.save_screenshot(name, &png)
    }

    fn save_screenshot(&self, name: &str, png: &[u8]) -> Result<PathBuf, BrowserTestError> {
        let path = self.options.screenshots_dir.join(format!("{name}.png"));
        std::fs::write(&path, png)
            .map_err(|e| BrowserTestError::io(format!("writing {}", path.display()), e))?;
        // Fail here, naming the file, rather than later on a file that is not a picture.
        pixels::census(&path)?;
        artifacts::keep(&path, &self.options.artifact_group)?;
        Ok(path)
    }

    /// Ends the session (chromium quits and completes its network log), stops chromedriver,
    /// and returns what chromium requested.
    pub async fn close(self) -> Result<NetworkLog, BrowserTestError> {
        let Browser {
            client,
            net_log,
            driver,
            ..
        } = self;
        client
            .close()
            .await
            .map_err(|e| BrowserTestError::webdriver("closing the browser session", e))?;
        // chromium completes its net log as it exits; the log lives in chromedriver's home,
        // which goes with it. A browser that does not exit in time is killed with the
        // driver, and its log, cut short, still yields what it holds.
        driver
            .wait_for_group_to_leave(Duration::from_secs(10))
            .await;
        let log = read_network_log(&net_log);
        drop(driver);
        log
    }
}

/// Every `"url"` in chromium's net-log file. Read as text with a pattern rather than parsed as
/// JSON so that a log cut short (a browser that was killed) still yields what it holds.
pub fn read_network_log(path: &Path) -> Result<NetworkLog, BrowserTestError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BrowserTestError::io(format!("reading {}", path.display()), e))?;
    let pattern = regex::Regex::new(r#""url":"((?:[^"\\]|\\.)*)""#).expect("a valid pattern");
    let mut log = NetworkLog::default();
    for found in pattern.captures_iter(&text) {
        let url = serde_json::from_str::<String>(&format!("\"{}\"", &found[1]))
            .unwrap_or_else(|_| found[1].to_string());
        if !log.urls.contains(&url) {
            log.urls.push(url);
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_from_network_urls_only() {
        assert_eq!(url_host("http://127.0.0.1:1235/x"), Some("127.0.0.1"));
        assert_eq!(
            url_host("https://u@example.invalid/"),
            Some("example.invalid")
        );
        assert_eq!(url_host("http://[::1]:80/"), Some("[::1]"));
        assert_eq!(url_host("data:text/html,hi"), None);
        assert_eq!(url_host("about:blank"), None);
    }

    #[test]
    fn only_non_loopback_hosts_are_outside() {
        let log = NetworkLog {
            urls: vec![
                "http://127.0.0.1:1/".into(),
                "http://localhost/".into(),
                "http://198.18.0.1/".into(),
                "https://update.example.invalid/x".into(),
                "data:,x".into(),
            ],
        };
        assert_eq!(
            log.outside_loopback(&["198.18.0.1"]),
            vec!["https://update.example.invalid/x".to_string()]
        );
    }

    #[test]
    fn a_cut_net_log_still_yields_its_urls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.json");
        std::fs::write(
            &path,
            r#"{"constants":{},"events":[{"params":{"url":"http://127.0.0.1:9/a\"b"}},{"params":{"url":"http://127.0.0.1:9/"}},{"params":{"ur"#,
        )
        .unwrap();
        let log = read_network_log(&path).unwrap();
        assert_eq!(log.urls, ["http://127.0.0.1:9/a\"b", "http://127.0.0.1:9/"]);
    }
}
