//! Where the test tools are: `tests/tools/build` builds them once (from the
//! Go modules pinned beside it) into a cache outside the clone and prints
//! the directory. Included by path by the sidecar's and the operator's test
//! support, so both find them one way.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A test tool (`h2spec`, `toxiproxy-server`, `stripe-mock`, `promtool`),
/// or with `crds/...` one of the Prometheus Operator's CRDs.
pub fn tool(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/build");
        let out = std::process::Command::new(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: the test tools need Go and the Go module proxy",
            script.display()
        );
        String::from_utf8(out.stdout).unwrap().trim().into()
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}
