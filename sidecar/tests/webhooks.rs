//! Webhook ingress over real sockets: webhooks signed by the providers' own
//! libraries (Python, from tests/webhooks/requirements.txt), a real app
//! server receiving deliveries, and a kill -9 of the real sidecar binary.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sluice_sidecar::config::{IngressConfig, IntegrationConfig, SidecarConfig, WebhookConfig};
use support::process::SidecarProcess;
use support::*;
use tokio::time::Instant;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sluice-wh-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn secret(&self, name: &str, value: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, value).unwrap();
        path.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn webhook(yaml: &str) -> WebhookConfig {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn provider(webhooks: Vec<WebhookConfig>) -> IntegrationConfig {
    let mut config: IntegrationConfig = serde_yaml_ng::from_str(
        "name: provider\nlisten: 127.0.0.1:0\nupstream: {baseUrl: 'http://127.0.0.1:9'}\n",
    )
    .unwrap();
    config.webhooks = webhooks;
    config
}

fn sidecar_config(
    state: &Path,
    integrations: Vec<IntegrationConfig>,
    listen: &str,
) -> SidecarConfig {
    SidecarConfig {
        admin: sluice_sidecar::config::AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        },
        drain_timeout: sluice_sidecar::config::Duration::from_secs(2),
        integrations,
        ingress: IngressConfig {
            listen: listen.parse().unwrap(),
            state_dir: state.to_owned(),
            max_queue_bytes: 1 << 30,
            max_body_bytes: 64 * 1024,
            ..IngressConfig::default()
        },
    }
}

async fn start_with(state: &Path, integrations: Vec<IntegrationConfig>) -> sluice_sidecar::Sidecar {
    sluice_sidecar::Sidecar::start(sidecar_config(state, integrations, "127.0.0.1:0"))
        .await
        .expect("sidecar starts")
}

async fn post(
    sidecar: &sluice_sidecar::Sidecar,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> Answer {
    let app = App::new(sidecar.ingress_addr().expect("ingress is listening"));
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    app.send("POST", path, &pairs, Bytes::from(body.to_owned()))
        .await
}

/// Waits (bounded) until the app has received `n` requests.
async fn wait_for(app: &TestUpstream, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while app.count() < n {
        assert!(
            Instant::now() < deadline,
            "the app received {} of {n} webhooks",
            app.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ok_app() -> Handler {
    handler(|_, _| async { respond(200, "") })
}

#[tokio::test]
async fn verifies_every_providers_own_signature_and_delivers_byte_identical() {
    let app = TestUpstream::plain(ok_app()).await;
    let dir = Dir::new("schemes");
    let sw_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let to = format!("{}/hooks", app.url());
    let webhooks = vec![
        webhook(&format!(
            "{{name: stripe, path: /wh/stripe, forwardTo: '{to}', idPointer: /id, verify: {{scheme: Stripe, secrets: [{{secret: {{path: {}}}}}]}}}}",
            dir.secret("stripe", "whsec_stripe_test_secret")
        )),
        webhook(&format!(
            "{{name: std, path: /wh/std, forwardTo: '{to}', verify: {{scheme: StandardWebhooks, secrets: [{{secret: {{path: {}}}}}]}}}}",
            dir.secret("std", sw_secret)
        )),
        webhook(&format!(
            "{{name: slack, path: /wh/slack, forwardTo: '{to}', idPointer: /event_id, verify: {{scheme: Slack, secrets: [{{secret: {{path: {}}}}}]}}}}",
            dir.secret("slack", "8f742231b10e8888abcd99yyyzzz85a5")
        )),
        webhook(&format!(
            "{{name: github, path: /wh/github, forwardTo: '{to}', verify: {{scheme: GitHub, secrets: [{{secret: {{path: {}}}}}]}}}}",
            dir.secret("github", "It's a Secret to Everybody")
        )),
    ];
    let sidecar = start_with(&dir.0.join("state"), vec![provider(webhooks)]).await;
    let t = now_secs();
    let cases = [
        (
            "/wh/stripe",
            serde_json::json!({"scheme": "Stripe", "secret": "whsec_stripe_test_secret", "body": "{\"id\":\"evt_1\",\"type\":\"charge.succeeded\"}", "timestamp": t}),
        ),
        (
            "/wh/std",
            serde_json::json!({"scheme": "StandardWebhooks", "secret": sw_secret, "body": "{\"type\":\"a\"}", "id": "msg_std_1", "timestamp": t}),
        ),
        (
            "/wh/std",
            serde_json::json!({"scheme": "Svix", "secret": sw_secret, "body": "{\"type\":\"b\"}", "id": "msg_svix_1", "timestamp": t}),
        ),
        (
            "/wh/slack",
            serde_json::json!({"scheme": "Slack", "secret": "8f742231b10e8888abcd99yyyzzz85a5", "body": "{\"event_id\":\"Ev1\",\"text\":\"caf\u{e9}\"}", "timestamp": t}),
        ),
        (
            "/wh/github",
            serde_json::json!({"scheme": "GitHub", "secret": "It's a Secret to Everybody", "body": "{\"action\":\"opened\"}", "id": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}),
        ),
    ];
    let signed = sign_webhooks(&cases.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>());
    for ((path, request), headers) in cases.iter().zip(&signed) {
        let answer = post(&sidecar, path, headers, request["body"].as_str().unwrap()).await;
        assert_eq!(answer.status, 200, "{path} {request}: {}", answer.text());
        assert!(answer.text().contains("accepted"), "{}", answer.text());
    }
    wait_for(&app, cases.len(), Duration::from_secs(10)).await;
    let mut delivered = app.requests();
    delivered.sort_by_key(|s| s.headers["x-sluice-event-id"].to_str().unwrap().to_owned());
    let ids: Vec<&str> = delivered
        .iter()
        .map(|s| s.headers["x-sluice-event-id"].to_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "Ev1",
            "evt_1",
            "msg_std_1",
            "msg_svix_1"
        ]
    );
    for seen in &delivered {
        assert_eq!(seen.uri, "/hooks");
        assert_eq!(seen.headers["x-sluice-attempt"], "1");
        assert!(seen.headers.contains_key("x-sluice-verified"));
        let original = cases
            .iter()
            .find(|(_, r)| seen.body == r["body"].as_str().unwrap().as_bytes());
        assert!(
            original.is_some(),
            "body not byte-identical: {:?}",
            seen.body
        );
    }
    let github = delivered
        .iter()
        .find(|s| s.headers.contains_key("x-hub-signature-256"))
        .unwrap();
    assert_eq!(
        github.headers["x-sluice-verified"], "GitHub",
        "original headers kept"
    );
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "sluice_webhook_received_total{integration=\"provider\",webhook=\"std\",result=\"verified\"}"
        ),
        2.0,
        "{metrics}"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn forged_stale_duplicate_and_oversized_webhooks_never_reach_the_app() {
    let app = TestUpstream::plain(ok_app()).await;
    let dir = Dir::new("refused");
    let to = format!("{}/hooks", app.url());
    let hook = webhook(&format!(
        "{{name: std, path: /wh, forwardTo: '{to}', verify: {{scheme: StandardWebhooks, tolerance: 5m, secrets: [{{secret: {{path: {}}}}}]}}}}",
        dir.secret("std", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    ));
    let sidecar = start_with(&dir.0.join("state"), vec![provider(vec![hook])]).await;
    let t = now_secs();
    let body = "{\"type\":\"payment.completed\"}";
    let signed = sign_webhooks(&[
        serde_json::json!({"scheme": "StandardWebhooks", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "body": body, "id": "msg_1", "timestamp": t}),
        serde_json::json!({"scheme": "StandardWebhooks", "secret": "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "body": body, "id": "msg_2", "timestamp": t}),
        serde_json::json!({"scheme": "StandardWebhooks", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "body": body, "id": "msg_3", "timestamp": t - 3600}),
        serde_json::json!({"scheme": "StandardWebhooks", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "body": body, "id": "msg_4", "timestamp": t + 3600}),
    ]);
    // Forged: another secret. Tampered: the body changed. Missing headers.
    let forged = post(&sidecar, "/wh", &signed[1], body).await;
    assert_eq!(
        (forged.status, forged.text().contains("invalid webhook")),
        (400, true)
    );
    let tampered = post(
        &sidecar,
        "/wh",
        &signed[0],
        "{\"type\":\"payment.refunded\"}",
    )
    .await;
    assert_eq!(tampered.status, 400);
    assert_eq!(
        post(&sidecar, "/wh", &[], body).await.status,
        400,
        "never fail open"
    );
    // Replayed an hour later, or from the future.
    assert_eq!(post(&sidecar, "/wh", &signed[2], body).await.status, 400);
    assert_eq!(post(&sidecar, "/wh", &signed[3], body).await.status, 400);
    // Genuine, then its duplicate (a provider retry).
    assert_eq!(post(&sidecar, "/wh", &signed[0], body).await.status, 200);
    let duplicate = post(&sidecar, "/wh", &signed[0], body).await;
    assert_eq!(
        (duplicate.status, duplicate.text().contains("duplicate")),
        (200, true)
    );
    // Too large: 413 before any verification.
    let big = "x".repeat(100 * 1024);
    assert_eq!(post(&sidecar, "/wh", &signed[0], &big).await.status, 413);
    assert_eq!(
        post(&sidecar, "/nowhere", &signed[0], body).await.status,
        404
    );
    let get = App::new(sidecar.ingress_addr().unwrap()).get("/wh").await;
    assert_eq!(get.status, 405);

    wait_for(&app, 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count(), 1, "only the genuine event, once");
    let metrics = admin(&sidecar, "/metrics").await.text();
    for (result, n) in [
        ("invalid_signature", 3.0),
        ("stale", 2.0),
        ("duplicate", 1.0),
        ("verified", 1.0),
        ("too_large", 1.0),
    ] {
        let line = format!(
            "sluice_webhook_received_total{{integration=\"provider\",webhook=\"std\",result=\"{result}\"}}"
        );
        assert_eq!(metric(&metrics, &line), n, "{result}\n{metrics}");
    }
    sidecar.shutdown().await;
}

#[tokio::test]
async fn rotated_secrets_are_accepted_until_not_after() {
    let app = TestUpstream::plain(ok_app()).await;
    let dir = Dir::new("rotation");
    let to = format!("{}/hooks", app.url());
    let hook = webhook(&format!(
        "{{name: gh, path: /wh, forwardTo: '{to}', verify: {{scheme: GitHub, secrets: [{{secret: {{path: {}}}}}, {{secret: {{path: {}}}, notAfter: '2999-01-01T00:00:00Z'}}, {{secret: {{path: {}}}, notAfter: '2001-01-01T00:00:00Z'}}]}}}}",
        dir.secret("new", "new-secret"),
        dir.secret("previous", "previous-secret"),
        dir.secret("expired", "expired-secret"),
    ));
    let sidecar = start_with(&dir.0.join("state"), vec![provider(vec![hook])]).await;
    let signed = sign_webhooks(&[
        serde_json::json!({"scheme": "GitHub", "secret": "new-secret", "body": "{}", "id": "d1"}),
        serde_json::json!({"scheme": "GitHub", "secret": "previous-secret", "body": "{}", "id": "d2"}),
        serde_json::json!({"scheme": "GitHub", "secret": "expired-secret", "body": "{}", "id": "d3"}),
    ]);
    assert_eq!(post(&sidecar, "/wh", &signed[0], "{}").await.status, 200);
    assert_eq!(
        post(&sidecar, "/wh", &signed[1], "{}").await.status,
        200,
        "the previous secret still signs retries"
    );
    assert_eq!(
        post(&sidecar, "/wh", &signed[2], "{}").await.status,
        400,
        "past notAfter"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn retries_delivery_then_dead_letters_and_guards_ordering() {
    // /flaky fails twice then works; /down always fails.
    let app = TestUpstream::plain(handler(|seen, _| async move {
        let attempt: u32 = seen.headers["x-sluice-attempt"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        match seen.uri.as_str() {
            "/flaky" if attempt < 3 => respond(500, ""),
            "/down" => respond(503, ""),
            _ => respond(200, ""),
        }
    }))
    .await;
    let dir = Dir::new("delivery");
    let secret = dir.secret("gh", "s");
    let base = app.url();
    let delivery = "delivery: {ratePerSecond: 100, maxAttempts: 3, deadLetter: true, backoff: {initial: 10ms, max: 50ms, multiplier: 2, jitter: 0.2}}";
    let hooks = vec![
        webhook(&format!(
            "{{name: flaky, path: /flaky, forwardTo: '{base}/flaky', {delivery}, verify: {{scheme: GitHub, secrets: [{{secret: {{path: {secret}}}}}]}}}}"
        )),
        webhook(&format!(
            "{{name: down, path: /down, forwardTo: '{base}/down', {delivery}, verify: {{scheme: GitHub, secrets: [{{secret: {{path: {secret}}}}}]}}}}"
        )),
        webhook(&format!(
            "{{name: ordered, path: /ordered, forwardTo: '{base}/ordered', {delivery}, ordering: {{objectPointer: /data/object/id, timestampPointer: /created, states: {{pointer: /type, order: [payment.pending, payment.completed]}}}}, verify: {{scheme: GitHub, secrets: [{{secret: {{path: {secret}}}}}]}}}}"
        )),
    ];
    let state = dir.0.join("state");
    let sidecar = start_with(&state, vec![provider(hooks)]).await;
    let pay = |created: u64, kind: &str| {
        format!(r#"{{"type":"{kind}","created":{created},"data":{{"object":{{"id":"pay_1"}}}}}}"#)
    };
    let bodies = [
        "{\"n\":1}".to_owned(),
        "{\"n\":2}".to_owned(),
        pay(10, "payment.pending"),
        pay(20, "payment.completed"),
        pay(5, "payment.pending"),
    ];
    let signed = sign_webhooks(&bodies.iter().enumerate().map(|(i, b)| serde_json::json!({"scheme": "GitHub", "secret": "s", "body": b, "id": format!("d{i}")})).collect::<Vec<_>>());
    assert_eq!(
        post(&sidecar, "/flaky", &signed[0], &bodies[0])
            .await
            .status,
        200
    );
    assert_eq!(
        post(&sidecar, "/down", &signed[1], &bodies[1]).await.status,
        200
    );
    for i in 2..5 {
        assert_eq!(
            post(&sidecar, "/ordered", &signed[i], &bodies[i])
                .await
                .status,
            200
        );
    }
    // flaky: 3 attempts; down: 3 attempts; ordered: 2 delivered, the late pending not.
    wait_for(&app, 8, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = app.requests();
    assert_eq!(
        seen.len(),
        8,
        "{:?}",
        seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    let flaky: Vec<_> = seen
        .iter()
        .filter(|s| s.uri == "/flaky")
        .map(|s| s.headers["x-sluice-attempt"].clone())
        .collect();
    assert_eq!(flaky, ["1", "2", "3"]);
    let ordered: Vec<_> = seen
        .iter()
        .filter(|s| s.uri == "/ordered")
        .map(|s| s.body.clone())
        .collect();
    assert_eq!(
        ordered,
        [bodies[2].as_bytes(), bodies[3].as_bytes()],
        "the stale pending after completed is held back"
    );
    let dead = std::fs::read_dir(state.join("webhooks/provider.down/dead"))
        .unwrap()
        .count();
    assert_eq!(dead, 1, "dead-lettered after maxAttempts");
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(metrics.contains("sluice_webhook_deliveries_total{integration=\"provider\",webhook=\"ordered\",result=\"out_of_order\"} 1"), "{metrics}");
    assert!(metrics.contains("sluice_webhook_deliveries_total{integration=\"provider\",webhook=\"down\",result=\"dead_letter\"} 1"), "{metrics}");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn delivery_keeps_to_its_rate() {
    let app = TestUpstream::plain(ok_app()).await;
    let dir = Dir::new("rate");
    let secret = dir.secret("gh", "s");
    let hook = webhook(&format!(
        "{{name: paced, path: /wh, forwardTo: '{}/in', delivery: {{ratePerSecond: 20, maxAttempts: 3, deadLetter: true}}, verify: {{scheme: GitHub, secrets: [{{secret: {{path: {secret}}}}}]}}}}",
        app.url()
    ));
    let sidecar = start_with(&dir.0.join("state"), vec![provider(vec![hook])]).await;
    let bodies: Vec<String> = (0..11).map(|i| format!("{{\"n\":{i}}}")).collect();
    let signed = sign_webhooks(&bodies.iter().enumerate().map(|(i, b)| serde_json::json!({"scheme": "GitHub", "secret": "s", "body": b, "id": format!("r{i}")})).collect::<Vec<_>>());
    for (headers, body) in signed.iter().zip(&bodies) {
        assert_eq!(post(&sidecar, "/wh", headers, body).await.status, 200);
    }
    wait_for(&app, 11, Duration::from_secs(5)).await;
    let seen = app.requests();
    let span = seen.last().unwrap().at - seen.first().unwrap().at;
    assert!(
        span >= Duration::from_millis(450),
        "11 deliveries at 20/s took only {span:?}"
    );
    let received: Vec<&[u8]> = seen.iter().map(|s| &s.body[..]).collect();
    let sent: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
    assert_eq!(received, sent, "in order");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_claims_nothing() {
    // The app is down, so nothing drains; the queue holds the least it may
    // (1 MiB): three of these 300 KiB events.
    let app = TestUpstream::plain(handler(|_, _| async { respond(503, "") })).await;
    let dir = Dir::new("full");
    let secret = dir.secret("gh", "s");
    let hook = webhook(&format!(
        "{{name: q, path: /wh, forwardTo: '{}/in', delivery: {{ratePerSecond: 1, maxAttempts: 100, deadLetter: true, backoff: {{initial: 10s, max: 10s, multiplier: 1, jitter: 0}}}}, verify: {{scheme: GitHub, secrets: [{{secret: {{path: {secret}}}}}]}}}}",
        app.url()
    ));
    let mut config = sidecar_config(
        &dir.0.join("state"),
        vec![provider(vec![hook])],
        "127.0.0.1:0",
    );
    config.ingress.max_queue_bytes = sluice_contract::bounds::MAX_QUEUE_BYTES.min;
    config.ingress.max_body_bytes = 512 << 10;
    let sidecar = sluice_sidecar::Sidecar::start(config).await.unwrap();
    let body = "x".repeat(300 << 10);
    let signed = sign_webhooks(&(0..6).map(|i| serde_json::json!({"scheme": "GitHub", "secret": "s", "body": body, "id": format!("f{i}")})).collect::<Vec<_>>());
    let mut statuses = Vec::new();
    for headers in &signed {
        let answer = post(&sidecar, "/wh", headers, &body).await;
        if answer.status == 503 {
            assert_eq!(answer.header("retry-after"), Some("30"));
        }
        statuses.push(answer.status);
    }
    assert!(statuses.starts_with(&[200, 200]), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    // A refused event was not claimed for dedup: its retry is judged afresh
    // (refused again while full, not answered "duplicate").
    let refused = statuses.iter().position(|s| *s == 503).unwrap();
    let retry = post(&sidecar, "/wh", &signed[refused], &body).await;
    assert_eq!(
        (retry.status, retry.text().contains("duplicate")),
        (503, false),
        "{}",
        retry.text()
    );
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        metric(
            &metrics,
            "sluice_webhook_received_total{integration=\"provider\",webhook=\"q\",result=\"queue_full\"}"
        ) >= 1.0
    );
    assert!(metric(&metrics, "sluice_webhook_queue_depth{") >= refused as f64 - 1.0);
    sidecar.shutdown().await;
}

/// A provider sending as fast as it can while the sidecar is killed with
/// SIGKILL: every event acknowledged with 200 is delivered after a restart.
#[tokio::test]
async fn kill_9_loses_no_acknowledged_event() {
    let delivered = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    let record = delivered.clone();
    let app = TestUpstream::plain(handler(move |seen, _| {
        record.lock().unwrap().insert(
            seen.headers["x-sluice-event-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
        async { respond(200, "") }
    }))
    .await;
    let dir = Dir::new("kill9");
    let secret = dir.secret("gh", "kill-secret");
    let hook = webhook(&format!(
        "{{name: k, path: /wh, forwardTo: '{}/in', delivery: {{ratePerSecond: 2000, maxAttempts: 5, deadLetter: true}}, verify: {{scheme: GitHub, secrets: [{{secret: {{path: {secret}}}}}]}}}}",
        app.url()
    ));
    // Port 0, and the sidecar's own log says which port it got: picking a
    // free port here and handing it over races with every other test
    // binding ports meanwhile.
    let config = sidecar_config(
        &dir.0.join("state"),
        vec![provider(vec![hook])],
        "127.0.0.1:0",
    );
    let config_path = dir.0.join("sidecar.yaml");
    std::fs::write(&config_path, config.to_yaml()).unwrap();
    let spawn = || SidecarProcess::spawn(&config_path, &[]);
    let total = 400;
    let bodies: Vec<String> = (0..total).map(|i| format!("{{\"n\":{i}}}")).collect();
    let signed = Arc::new(sign_webhooks(&bodies.iter().enumerate().map(|(i, b)| serde_json::json!({"scheme": "GitHub", "secret": "kill-secret", "body": b, "id": format!("k{i}")})).collect::<Vec<_>>()));
    let mut child = spawn();
    let addr = child.ingress_addr();
    // Eight senders; kill -9 once about a third has been acknowledged.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        usize,
    >::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (acked, refused, next, signed, bodies) = (
            acked.clone(),
            refused.clone(),
            next.clone(),
            signed.clone(),
            bodies.clone(),
        );
        senders.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<Bytes>>();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= bodies.len() {
                    return;
                }
                let mut request = http::Request::post(format!("http://{addr}/wh"));
                for (k, v) in &signed[i] {
                    request = request.header(k.as_str(), v.as_str());
                }
                let request = request
                    .body(http_body_util::Full::new(Bytes::from(bodies[i].clone())))
                    .unwrap();
                let outcome =
                    match tokio::time::timeout(Duration::from_secs(5), client.request(request))
                        .await
                    {
                        Ok(Ok(response)) if response.status() == 200 => {
                            acked.lock().unwrap().push(format!("k{i}"));
                            continue;
                        }
                        Ok(Ok(response)) => response.status().to_string(),
                        Ok(Err(error)) => format!("{error:?}"),
                        Err(_) => "no answer in 5 s".to_owned(),
                    };
                *refused.lock().unwrap().entry(outcome).or_insert(0) += 1;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < total / 3 {
        assert!(
            Instant::now() < deadline,
            "too few acknowledgements: {} of {total} in 20 s, refused {:?}; the sidecar {}",
            acked.lock().unwrap().len(),
            refused.lock().unwrap(),
            child.state()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill_9();
    for s in senders {
        s.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() < total,
        "the kill came too late to test anything"
    );
    let mut child = spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing = {
            let got = delivered.lock().unwrap();
            acked.iter().filter(|id| !got.contains(*id)).count()
        };
        if missing == 0 {
            break;
        }
        if Instant::now() > deadline {
            child.kill_9();
            let got = delivered.lock().unwrap();
            let lost: Vec<&String> = acked.iter().filter(|id| !got.contains(*id)).collect();
            panic!(
                "{} acknowledged events lost: {:?}",
                lost.len(),
                &lost[..lost.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill_9();
    eprintln!(
        "kill -9: {} of {total} acknowledged before the kill, all delivered after restart ({} delivered in all)",
        acked.len(),
        delivered.lock().unwrap().len()
    );
}

#[tokio::test]
async fn webhooks_come_and_go_with_live_config_and_nothing_accepted_is_lost() {
    let app = TestUpstream::plain(ok_app()).await;
    let dir = Dir::new("live-webhooks");
    let sidecar = start_with(&dir.0.join("state"), vec![provider(vec![])]).await;
    assert!(
        sidecar.ingress_addr().is_none(),
        "no webhooks, no ingress port"
    );

    // A webhook arrives with a config change: the ingress port opens.
    let to = format!("{}/hooks", app.url());
    let hook = |secret: &str, rate: u32| {
        webhook(&format!(
            "{{name: gh, path: /wh, forwardTo: '{to}', verify: {{scheme: GitHub, secrets: [{{secret: {{path: {}}}}}]}}, delivery: {{ratePerSecond: {rate}, maxAttempts: 3, deadLetter: true}}}}",
            dir.secret(secret, &format!("{secret}-value")),
        ))
    };
    sidecar
        .apply(&[provider(vec![hook("first", 50)])])
        .await
        .unwrap();
    assert!(sidecar.ingress_addr().is_some());
    let signed = sign_webhooks(&[
        serde_json::json!({"scheme": "GitHub", "secret": "first-value", "body": "{\"n\":1}", "id": "a1"}),
        serde_json::json!({"scheme": "GitHub", "secret": "second-value", "body": "{\"n\":2}", "id": "a2"}),
        serde_json::json!({"scheme": "GitHub", "secret": "first-value", "body": "{\"n\":3}", "id": "a3"}),
    ]);
    assert_eq!(
        post(&sidecar, "/wh", &signed[0], "{\"n\":1}").await.status,
        200
    );
    wait_for(&app, 1, Duration::from_secs(5)).await;

    // The secret and the delivery rate change: the new secret verifies, the
    // old one no longer does, and delivery carries on from the same queue.
    sidecar
        .apply(&[provider(vec![hook("second", 20)])])
        .await
        .unwrap();
    assert_eq!(
        post(&sidecar, "/wh", &signed[1], "{\"n\":2}").await.status,
        200
    );
    assert_eq!(
        post(&sidecar, "/wh", &signed[2], "{\"n\":3}").await.status,
        400
    );
    wait_for(&app, 2, Duration::from_secs(5)).await;
    let bodies: Vec<Bytes> = app.requests().iter().map(|r| r.body.clone()).collect();
    assert_eq!(bodies, [Bytes::from("{\"n\":1}"), Bytes::from("{\"n\":2}")]);

    // The webhook is removed: its path answers 404.
    sidecar.apply(&[provider(vec![])]).await.unwrap();
    assert_eq!(
        post(&sidecar, "/wh", &signed[1], "{\"n\":2}").await.status,
        404
    );
    sidecar.shutdown().await;
}

/// Unsigned senders that open connections, send most of a large body and
/// stall (the attack that took RSS from 12 to 225 MB): what they hold is
/// bounded, they are answered and closed, and a signed webhook is accepted
/// while they are at it.
#[tokio::test]
async fn stalled_unsigned_bodies_cannot_starve_the_webhook_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestUpstream::plain(ok_app()).await;
    let dir = Dir::new("flood");
    let to = format!("{}/hooks", app.url());
    let hook = webhook(&format!(
        "{{name: std, path: /wh, forwardTo: '{to}', verify: {{scheme: StandardWebhooks, tolerance: 5m, secrets: [{{secret: {{path: {}}}}}]}}}}",
        dir.secret("std", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    ));
    let mut config = sidecar_config(
        &dir.0.join("state"),
        vec![provider(vec![hook])],
        "127.0.0.1:0",
    );
    config.ingress.max_body_bytes = 1 << 20;
    config.ingress.max_unverified_bytes = 4 << 20;
    config.ingress.body_timeout = sluice_sidecar::config::Duration::from_secs(3);
    let sidecar = sluice_sidecar::Sidecar::start(config).await.unwrap();
    let ingress = sidecar.ingress_addr().unwrap();

    // Phase 1: 40 senders, each 1 MiB - 1 declared, 512 KiB sent, then silence.
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..40 {
        let mut socket = tokio::net::TcpStream::connect(ingress).await.unwrap();
        let head = format!(
            "POST /wh HTTP/1.1\r\nhost: hooks\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            (1 << 20) - 1
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        // The sidecar may answer and close before all of it is written.
        let _ = socket.write_all(&vec![b'x'; 512 * 1024]).await;
        senders.push(socket);
    }
    let metrics = admin(&sidecar, "/metrics").await.text();
    let held = metric(&metrics, "sluice_webhook_unverified_bytes");
    assert!(
        held > 0.0 && held <= f64::from(3 << 20),
        "bodies over 64 KiB hold at most 3/4 of the 4 MiB: {held}"
    );

    // Phase 2: a genuine webhook is accepted meanwhile.
    let body = "{\"type\":\"payment.completed\"}";
    let signed = sign_webhooks(&[
        serde_json::json!({"scheme": "StandardWebhooks", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "body": body, "id": "msg_flood", "timestamp": now_secs()}),
    ]);
    assert_eq!(post(&sidecar, "/wh", &signed[0], body).await.status, 200);
    wait_for(&app, 1, Duration::from_secs(5)).await;

    // Phase 3: every sender is answered (503 at once past the bound, 408 at
    // the body timeout) and closed.
    let mut statuses = Vec::new();
    for mut socket in senders {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
            .await
            .expect("the sender's connection was closed")
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&answer);
        statuses.push(text.get(9..12).unwrap_or("none").to_owned());
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let busy = statuses.iter().filter(|s| *s == "503").count();
    let slow = statuses.iter().filter(|s| *s == "408").count();
    assert!(busy >= 30 && slow >= 1 && busy + slow == 40, "{statuses:?}");
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(metric(&metrics, "sluice_webhook_unverified_bytes"), 0.0);
    assert_eq!(
        metric(
            &metrics,
            "sluice_webhook_received_total{integration=\"provider\",webhook=\"std\",result=\"busy\"}"
        ),
        busy as f64,
        "{metrics}"
    );
    sidecar.shutdown().await;
}
