//! h2spec (the HTTP/2 conformance suite) against the app-facing h2c
//! listener: every case must pass.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_h2c_listener_passes_h2spec() {
    let upstream = TestUpstream::plain(handler(|_, _| async { respond(200, "ok") })).await;
    let sidecar = start(vec![integration("h2spec", &upstream)]).await;
    let addr = sidecar.egress_addr("h2spec").unwrap();

    let h2spec = tool("h2spec");
    // Blocking, off the runtime that serves the sidecar; h2spec bounds each
    // case with `-o` seconds, so the run ends.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(h2spec)
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-o", "5"])
            .output()
    })
    .await
    .unwrap()
    .expect("h2spec runs");
    let report = String::from_utf8_lossy(&out.stdout);
    let summary = report
        .lines()
        .rev()
        .find(|l| l.contains(" tests, "))
        .unwrap_or_else(|| panic!("no h2spec summary in:\n{report}"));
    println!("h2spec: {summary}");
    let count = |what: &str| -> usize {
        summary
            .split(", ")
            .find_map(|part| {
                part.strip_suffix(what)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {what:?} count in {summary:?}"))
    };
    assert!(count(" passed") > 100, "{summary}");
    assert_eq!(count(" failed"), 0, "{report}");
    sidecar.shutdown().await;
}
