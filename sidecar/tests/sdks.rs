//! The providers' official SDKs (stripe, openai, easypost; Python, pinned in
//! tests/webhooks/requirements.txt) meet each answer Sluice gives itself and
//! must raise their own error types, with Sluice's code and message: an SDK
//! that crashes on the body escapes the app's `except StripeError`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use sluice_sidecar::config::IntegrationConfig;
use support::*;

fn config(name: &str, base_url: &str, rest: &str) -> IntegrationConfig {
    serde_yaml_ng::from_str(&format!(
        "name: {name}\nlisten: 127.0.0.1:0\nupstream: {{baseUrl: '{base_url}', timeout: 300ms, totalTimeout: 2s}}\nretry: {{maxAttempts: 1}}\n{rest}"
    ))
    .unwrap()
}

/// An upstream that accepts and never answers.
async fn silent_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_sdks_raise_their_own_errors_for_every_sluice_answer() {
    // Phase 1: one integration per code Sluice answers with itself.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let silent = silent_upstream().await;
    let failing = TestUpstream::plain(handler(|_, _| async { respond(500, "down") })).await;
    let fine = TestUpstream::plain(handler(|_, _| async { respond(200, "{}") })).await;
    let one_a_minute =
        "rateLimits:\n- name: all\n  requests: 1\n  per: 1m\n  burst: 1\n  whenExceeded";
    let integrations = vec![
        config("connect", &format!("http://{closed}"), ""),
        config("timeout", &format!("http://{silent}"), ""),
        config(
            "breaker",
            &failing.url(),
            "circuitBreaker: {failureRatio: 0.5, minRequests: 1, window: 60s, openFor: 60s}\n",
        ),
        config("reject", &fine.url(), &format!("{one_a_minute}: Reject\n")),
        config(
            "queue",
            &fine.url(),
            &format!("{one_a_minute}: Queue\n  queue: {{maxWait: 1s}}\n"),
        ),
    ];
    let sidecar = start(integrations).await;
    let url = |name: &str| format!("http://{}", sidecar.egress_addr(name).unwrap());
    // The breaker opens on one failure; each limit's one slot is spent.
    for name in ["breaker", "reject", "queue"] {
        App::new(sidecar.egress_addr(name).unwrap())
            .get("/warm-up")
            .await;
    }

    // Phase 2: every SDK against every code.
    let cases = [
        ("upstream-connect", "connect", 502),
        ("upstream-timeout", "timeout", 504),
        ("circuit-open", "breaker", 503),
        ("rate-limited", "reject", 429),
        ("queue-full", "queue", 429),
    ];
    let mut args = Vec::new();
    for (code, name, _) in cases {
        args.push(code.to_string());
        args.push(url(name));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sdks/errors.py");
    let out =
        tokio::task::spawn_blocking(move || Command::new(python()).arg(script).args(args).output())
            .await
            .unwrap()
            .expect("the SDK script runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    // Phase 3: what each SDK raised.
    let reports: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), cases.len() * 3, "{reports:?}\n{stderr}");
    for report in &reports {
        let (code, _, status) = cases
            .iter()
            .find(|(code, _, _)| report["expected"] == *code)
            .unwrap();
        assert_eq!(
            report["sdk_error"], true,
            "not the SDK's own error: {report}"
        );
        assert_eq!(report["status"], *status, "{report}");
        assert!(
            report["message"].as_str().is_some_and(|m| !m.is_empty()),
            "Sluice's message is lost: {report}"
        );
        if report["sdk"] != "easypost" {
            // Stripe and OpenAI give the app `error.code`.
            assert_eq!(report["code"], *code, "{report}");
        }
        println!("{report}");
    }
    sidecar.shutdown().await;
}
