//! Serves the browser tests' demo page on a loopback address, as a process of its own so that
//! the tests can run it as an unprivileged user.

use std::net::SocketAddr;

use guardlab_browser_test_support::page::{RequestCount, demo_router};

const USAGE: &str = "usage: browser-test-page ADDRESS\n\
Serves guardlab's browser-test demo page (an SVG graph and a button) at ADDRESS until killed.\n\
Example: browser-test-page 127.0.0.1:1235";

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_default();
    if arg.is_empty() || arg == "--help" || arg == "-h" {
        println!("{USAGE}");
        std::process::exit(if arg.is_empty() { 2 } else { 0 });
    }
    let addr: SocketAddr = match arg.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("browser-test-page: {arg:?} is not an address (IP:PORT): {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let result: std::io::Result<()> = guardlab_host::runtime(1).and_then(|runtime| {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            eprintln!("browser-test-page: serving on {addr}");
            axum::serve(listener, demo_router(RequestCount::default())).await
        })
    });
    if let Err(e) = result {
        eprintln!("browser-test-page: serving on {addr}: {e}");
        std::process::exit(1);
    }
}
