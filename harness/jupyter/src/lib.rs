//! Drives Jupyter through its HTTP and WebSocket APIs, as a browser would.
