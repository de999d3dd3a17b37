//! A small page of our own that exercises what the console's pages do (an inline SVG graph
//! with labelled nodes, a button whose script changes the page), served by axum: the browser
//! tests of this crate run against it, and `browser-test-page` serves it as a separate process
//! (so it can run as an unprivileged user).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;

/// The labels of the demo graph's nodes, as its SVG `<text>` elements hold them.
pub const DEMO_LABELS: [&str; 3] = ["jupyter", "python3", "minerd"];

/// The text of `#status` before and after the button is clicked.
pub const STATUS_BEFORE: &str = "policy: not applied";
pub const STATUS_AFTER: &str = "policy: applied";

const DEMO_PAGE: &str = r##"<!doctype html>
<html><head><meta charset="utf-8"><title>guardlab browser test page</title>
<style>body { font-family: sans-serif; margin: 20px; background: #fff; }
 .node rect { fill: #dde8f7; stroke: #234; stroke-width: 2; }
 .node text { font-size: 16px; fill: #111; }</style></head>
<body>
<h1>Process graph</h1>
<p id="status">policy: not applied</p>
<button id="apply" onclick="document.getElementById('status').textContent = 'policy: applied'">Apply</button>
<svg id="graph" width="520" height="220" xmlns="http://www.w3.org/2000/svg">
 <line x1="110" y1="60" x2="260" y2="110" stroke="#555" stroke-width="2"/>
 <line x1="330" y1="130" x2="400" y2="170" stroke="#555" stroke-width="2"/>
 <g class="node" transform="translate(20,30)"><rect width="120" height="40" rx="6"/><text x="14" y="26">jupyter</text></g>
 <g class="node" transform="translate(220,95)"><rect width="120" height="40" rx="6"/><text x="14" y="26">python3</text></g>
 <g class="node" transform="translate(380,160)"><rect width="120" height="40" rx="6"/><text x="14" y="26">minerd</text></g>
</svg>
</body></html>
"##;

/// How many requests the demo server answered: a page the browser could have fetched from
/// elsewhere would leave this unchanged.
#[derive(Clone, Default)]
pub struct RequestCount(Arc<AtomicU64>);

impl RequestCount {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The demo page at `/`, and `/requests`: how many requests were answered before it.
pub fn demo_router(count: RequestCount) -> Router {
    Router::new()
        .route(
            "/",
            get(|State(count): State<RequestCount>| async move {
                count.0.fetch_add(1, Ordering::SeqCst);
                Html(DEMO_PAGE)
            }),
        )
        .route(
            "/requests",
            get(|State(count): State<RequestCount>| async move {
                count.0.fetch_add(1, Ordering::SeqCst).to_string()
            }),
        )
        .with_state(count)
}
