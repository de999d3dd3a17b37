//! The lab's `sourceforge.net`: a front page for `curl sourceforge.net` and the miner download
//! of the attack (`wget https://sourceforge.net/projects/cpuminer/files/.../download`).

use bytes::Bytes;

use crate::web::{Route, Site};

/// The host name of the lab's sourceforge.
pub const SOURCEFORGE_HOST: &str = "sourceforge.net";

/// The path of the miner tarball, as the scenario's `wget` types it (saved as `download`).
pub const MINER_DOWNLOAD_PATH: &str =
    "/projects/cpuminer/files/pooler-cpuminer-2.5.1-linux-x86_64.tar.gz/download";

const FRONT_PAGE: &str = "<!DOCTYPE html>
<html lang=\"en\">
<head><meta charset=\"utf-8\"><title>SourceForge (guardlab lab copy)</title></head>
<body>
<h1>SourceForge</h1>
<p>This is the guardlab lab's stand-in for sourceforge.net; it only serves the files of the scenario.</p>
<ul><li><a href=\"/projects/cpuminer/files/pooler-cpuminer-2.5.1-linux-x86_64.tar.gz/download\">pooler-cpuminer-2.5.1-linux-x86_64.tar.gz</a></li></ul>
</body>
</html>
";

/// The lab's sourceforge site: `/` (a small HTML page) and the miner tarball at
/// [`MINER_DOWNLOAD_PATH`] with the bytes the scenario provides.
pub fn sourceforge_site(miner_tarball: Bytes) -> Site {
    Site {
        host: SOURCEFORGE_HOST.to_string(),
        routes: vec![
            Route::new(
                "/",
                "text/html; charset=utf-8",
                Bytes::from_static(FRONT_PAGE.as_bytes()),
            ),
            Route::new(MINER_DOWNLOAD_PATH, "application/x-gzip", miner_tarball),
        ],
    }
}
