//! The Stripe Python SDK through the sidecar to stripe-mock (Stripe's own
//! API mock, from its OpenAPI spec): requests Sluice rewrites and signs with
//! its key still satisfy the real API's shapes, and the SDK's own
//! idempotency key is kept, never replaced; and response contracts read
//! stripe-mock's real answers: a schema they keep is never violated, one
//! they break is counted where it says.

mod support;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use support::*;
use tokio::time::Instant;

struct StripeMock(Child);

impl Drop for StripeMock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stripe_sdk_works_through_sluice_against_stripe_mock() {
    // Phase 1: stripe-mock on loopback, and a sidecar with the key.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _mock = StripeMock(
        Command::new(tool("stripe-mock"))
            .args(["-http-addr", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("stripe-mock starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "stripe-mock did not listen within 20s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = std::env::temp_dir().join(format!("sluice-stripe-mock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, "sk_test_4eC39HqLyjWDarjtT1zdp7dc").unwrap();
    let mut config: sluice_sidecar::config::IntegrationConfig = serde_yaml_ng::from_str(&format!(
        "name: stripe\nlisten: 127.0.0.1:0\nupstream: {{baseUrl: 'http://127.0.0.1:{port}'}}\nauth: {{type: bearer, secret: {{path: '{}'}}}}\nretry: {{idempotency: {{header: Idempotency-Key, methods: [POST]}}}}\n",
        key.display()
    ))
    .unwrap();
    for contract in [
        // What Stripe's customers answer.
        "{name: customer, match: {methods: [GET], path: '/v1/customers/*'}, schema: {type: object, required: [id, object, livemode], properties: {id: {type: string}, object: {const: customer}, livemode: {type: boolean}, email: {type: [string, 'null'], format: email}}}}",
        // A test key's objects are never live: this one cannot hold.
        "{name: live-only, match: {methods: [GET], path: '/v1/customers/*'}, schema: {type: object, properties: {livemode: {const: true}}}}",
    ] {
        config
            .contracts
            .push(serde_yaml_ng::from_str(contract).unwrap());
    }
    let sidecar = start(vec![config]).await;
    let url = format!("http://{}", sidecar.egress_addr("stripe").unwrap());

    // Phase 2: the SDK's calls.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sdks/stripe_calls.py");
    let out =
        tokio::task::spawn_blocking(move || Command::new(python()).arg(script).arg(url).output())
            .await
            .unwrap()
            .expect("the Stripe script runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // Phase 3: what came back.
    assert!(
        report["created"].as_str().unwrap().starts_with("cus_"),
        "{report}"
    );
    assert!(
        report["fetched"].as_str().unwrap().starts_with("cus_"),
        "{report}"
    );
    assert!(report["listed"].as_u64().is_some(), "{report}");
    // stripe-python sends its own key (a UUID) on every POST, retries or
    // not; Sluice keeps it (its own would be 32 hex digits), and Stripe
    // echoes it back.
    let key = report["idempotency_key"].as_str().unwrap_or_default();
    assert_eq!(key.len(), 36, "the SDK's own key, not replaced: {report}");
    assert_eq!(key.matches('-').count(), 4, "{report}");

    // Phase 4: the retrieved customer, checked against both contracts.
    let until = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = admin(&sidecar, "/metrics").await.text();
        if metric(&text, "sluice_contract_checked_total{") == 2.0 {
            break text;
        }
        assert!(Instant::now() < until, "the checks did not finish: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        metric(
            &text,
            "sluice_contract_violations_total{integration=\"stripe\",contract=\"customer\""
        ),
        0.0,
        "stripe-mock keeps Stripe's shape: {text}"
    );
    assert_eq!(
        metric(
            &text,
            "sluice_contract_violations_total{integration=\"stripe\",contract=\"live-only\",kind=\"unknown_enum\",pointer=\"/properties/livemode/const\"}"
        ),
        1.0,
        "{text}"
    );
    sidecar.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
