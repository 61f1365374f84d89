//! The Stripe Python SDK through the sidecar to stripe-mock (Stripe's own
//! API mock, from its OpenAPI spec): requests Sluice rewrites and signs with
//! its key still satisfy the real API's shapes, and the SDK's own
//! idempotency key is kept, never replaced; and response contracts read
//! stripe-mock's real answers: a schema they keep is never violated, one
//! they break is counted where it says; and polling reads stripe-mock's
//! `/v1/events` (query checked against Stripe's spec, the key injected).

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
    let signing = dir.join("signing");
    std::fs::write(&signing, "whsec_stripe_mock").unwrap();
    let app = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    config.webhooks.push(
        serde_yaml_ng::from_str(&format!(
            "{{name: events, path: /webhooks/stripe, forwardTo: '{}/hooks', idPointer: /id, verify: {{scheme: Stripe, secrets: [{{secret: {{path: '{}'}}}}]}},
              polling: {{path: /v1/events, query: {{limit: '3', 'types[]': charge.succeeded}}, interval: 1s, items: /data, id: /id, created: /created, cursor: {{param: starting_after}}, hasMore: /has_more}}}}",
            app.url(),
            signing.display()
        ))
        .unwrap(),
    );
    let sidecar = sluice_sidecar::Sidecar::start(sluice_sidecar::config::SidecarConfig::new(
        vec![config],
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        dir.join("state"),
    ))
    .await
    .expect("sidecar starts");
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

    // Phase 5: polling stripe-mock's events: the query passes Stripe's own
    // validation (an unknown parameter would be 400, no key 401), the
    // listing's id and time are read (its one event, from 2009, is older
    // than polling and so not delivered) and its id is the watermark.
    let polls = |text: &str, result: &str| {
        metric(
            text,
            &format!(
                "sluice_webhook_polls_total{{integration=\"stripe\",webhook=\"events\",result=\"{result}\"}}"
            ),
        )
    };
    let until = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = admin(&sidecar, "/metrics").await.text();
        if polls(&text, "complete") >= 2.0 {
            break text;
        }
        assert!(Instant::now() < until, "two polls did not complete: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(polls(&text, "failed"), 0.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "sluice_webhook_polled_total{integration=\"stripe\",webhook=\"events\",result=\"unreadable\"}"
        ),
        0.0,
        "{text}"
    );
    let mark: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state/polls/stripe.events.json")).unwrap())
            .unwrap();
    assert!(
        mark["watermark"].as_str().unwrap().starts_with("evt_"),
        "{mark}"
    );
    assert_eq!(
        app.count(),
        0,
        "an event older than polling is not delivered"
    );
    sidecar.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
