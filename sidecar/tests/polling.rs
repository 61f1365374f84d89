//! Polling for missed webhooks over real sockets: a provider serving a
//! Stripe-shaped events list (newest first, `starting_after`, `has_more`,
//! a bearer key), webhooks signed by Stripe's own library, a real app
//! receiving deliveries, and a restart on the same state directory.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use sluice_sidecar::config::{
    AuthConfig, IntegrationConfig, SecretFile, SidecarConfig, WebhookConfig,
};
use support::*;
use tokio::time::Instant;

const KEY: &str = "sk_test_poll";
const SIGNING: &str = "whsec_poll_test";

/// The provider's events, newest first, as it writes each one.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(String, String)>>>);

impl Events {
    /// Adds an event created now; returns its JSON as the provider lists it.
    fn add(&self, id: &str) -> String {
        let json = Self::event(id);
        self.list(id, &json);
        json
    }

    fn list(&self, id: &str, json: &str) {
        self.0
            .lock()
            .unwrap()
            .insert(0, (id.to_owned(), json.to_owned()));
    }

    /// An event created now, as the provider writes it.
    fn event(id: &str) -> String {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // Spaced and ordered as a provider might: the app must get it so.
        format!(
            r#"{{"id": "{id}", "object": "event", "type": "charge.succeeded", "created": {created}, "data": {{"object": {{"id": "ch_{id}"}}}}}}"#
        )
    }

    /// `GET /v1/events?limit=&starting_after=` as Stripe pages it.
    fn handler(&self) -> Handler {
        let events = self.clone();
        handler(move |seen, _| {
            let events = events.clone();
            async move {
                if seen
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    != Some(&format!("Bearer {KEY}"))
                {
                    return respond(401, r#"{"error":{"message":"no key"}}"#);
                }
                let query: Vec<(String, String)> = seen
                    .uri
                    .split_once('?')
                    .map(|(_, q)| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                    .unwrap_or_default();
                let param = |name: &str| {
                    query
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                let limit: usize = param("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
                let all = events.0.lock().unwrap().clone();
                let start = match param("starting_after") {
                    Some(after) => all
                        .iter()
                        .position(|(id, _)| *id == after)
                        .map_or(all.len(), |i| i + 1),
                    None => 0,
                };
                let page: Vec<&str> = all[start..]
                    .iter()
                    .take(limit)
                    .map(|(_, json)| json.as_str())
                    .collect();
                let more = start + page.len() < all.len();
                let body = format!(
                    r#"{{"object":"list","url":"/v1/events","has_more":{more},"data":[{}]}}"#,
                    page.join(",")
                );
                let mut response = http::Response::new(Full::new(Bytes::from(body)));
                response
                    .headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                response
            }
        })
    }
}

fn webhook(app: &TestUpstream, secrets: &SecretDir) -> WebhookConfig {
    serde_yaml_ng::from_str(&format!(
        "{{name: events, path: /webhooks/stripe, forwardTo: '{}/hooks', verify: {{scheme: Stripe, secrets: [{{secret: {{path: {}}}}}]}}, idPointer: /id,
          polling: {{path: /v1/events, query: {{limit: '2'}}, interval: 1s, items: /data, id: /id, created: /created, cursor: {{param: starting_after, from: lastId}}, hasMore: /has_more, lookback: 1h}}}}",
        app.url(),
        secrets.write("signing", SIGNING).display()
    ))
    .unwrap()
}

fn stripe(provider: &TestUpstream, app: &TestUpstream, secrets: &SecretDir) -> IntegrationConfig {
    let mut config = integration("stripe", provider);
    config.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new(secrets.write("key", KEY)),
        previous: None,
    });
    // 2 a second, one at a time: the poll's pages queue behind it.
    config.rate_limits = vec![limit(
        "events",
        2,
        sluice_sidecar::config::Duration::from_secs(1),
        1,
    )];
    config.webhooks = vec![webhook(app, secrets)];
    config
}

/// A sidecar's config: loopback listeners, `state` as its state directory.
fn config_in(state: &Path, integrations: Vec<IntegrationConfig>) -> SidecarConfig {
    let mut config = SidecarConfig::new(
        integrations,
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        state.to_owned(),
    );
    config.drain_timeout = sluice_sidecar::config::Duration::from_secs(2);
    config
}

async fn start_in(state: &Path, integrations: Vec<IntegrationConfig>) -> sluice_sidecar::Sidecar {
    sluice_sidecar::Sidecar::start(config_in(state, integrations))
        .await
        .expect("sidecar starts")
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn polls_complete(sidecar: &sluice_sidecar::Sidecar) -> f64 {
    metric(
        &admin(sidecar, "/metrics").await.text(),
        r#"sluice_webhook_polls_total{integration="stripe",webhook="events",result="complete"}"#,
    )
}

async fn next_complete_poll(sidecar: &sluice_sidecar::Sidecar) {
    let before = polls_complete(sidecar).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while polls_complete(sidecar).await < before + 1.0 {
        assert!(Instant::now() < deadline, "no complete poll within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids_delivered(app: &TestUpstream) -> Vec<(String, String)> {
    app.requests()
        .iter()
        .map(|s| {
            (
                s.headers["x-sluice-event-id"].to_str().unwrap().to_owned(),
                s.headers["x-sluice-source"].to_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn post_signed(sidecar: &sluice_sidecar::Sidecar, body: &str) -> Answer {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let headers = sign_webhooks(&[serde_json::json!({
        "scheme": "Stripe", "secret": SIGNING, "body": body, "timestamp": now
    })])
    .remove(0);
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    App::new(sidecar.ingress_addr().unwrap())
        .send(
            "POST",
            "/webhooks/stripe",
            &pairs,
            Bytes::from(body.to_owned()),
        )
        .await
}

#[tokio::test]
async fn polling_recovers_missed_events_once_and_resumes_after_a_restart() {
    // Phase 1: an empty events list; the first poll marks where polling starts.
    let events = Events::default();
    let provider = TestUpstream::plain(events.handler()).await;
    let app = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let secrets = SecretDir::new("polling");
    let state = secrets.0.join("state");
    let sidecar = start_in(&state, vec![stripe(&provider, &app, &secrets)]).await;
    next_complete_poll(&sidecar).await;
    assert!(
        state.join("polls/stripe.events.json").exists(),
        "the mark is kept"
    );

    // Phase 2: six events none of which came as a webhook, three pages of two.
    let listed: Vec<String> = (1..=6).map(|i| events.add(&format!("evt_{i}"))).collect();
    let asked_from = provider.count();
    until("all six delivered", Duration::from_secs(10), || {
        app.count() >= 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let delivered = app.requests();
    assert_eq!(delivered.len(), 6, "each exactly once");
    for seen in &delivered {
        let id = seen.headers["x-sluice-event-id"].to_str().unwrap();
        assert_eq!(seen.headers["x-sluice-source"], "poll");
        assert_eq!(seen.headers["x-sluice-verified"], "polled");
        assert_eq!(seen.headers["content-type"], "application/json");
        let original = listed
            .iter()
            .find(|json| json.contains(&format!("\"{id}\"")))
            .unwrap();
        assert_eq!(
            seen.body,
            original.as_bytes(),
            "the listed event, byte for byte"
        );
    }
    let pages: Vec<String> = provider.requests()[asked_from..]
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    for page in [
        "/v1/events?limit=2",
        "/v1/events?limit=2&starting_after=evt_5",
        "/v1/events?limit=2&starting_after=evt_3",
    ] {
        assert!(
            pages.iter().any(|p| p == page),
            "{page} was asked for: {pages:?}"
        );
    }
    // Phase 3: the poll goes through the integration's limit (2/s, burst 1).
    let times: Vec<Instant> = provider.requests().iter().map(|s| s.at).collect();
    for (i, start) in times.iter().enumerate() {
        let in_a_second = times[i..]
            .iter()
            .filter(|t| **t < *start + Duration::from_millis(950))
            .count();
        assert!(in_a_second <= 2, "{in_a_second} listings within a second");
    }
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"sluice_webhook_polled_total{integration="stripe",webhook="events",result="recovered"}"#
        ),
        6.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            r#"sluice_egress_requests_total{integration="stripe""#
        ) >= 3.0,
        "the listings are egress requests too"
    );

    // Phase 4: a webhook first, then listed: 200, delivered once, known to the poll.
    let seventh = Events::event("evt_7");
    let answer = post_signed(&sidecar, &seventh).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    until("evt_7 delivered", Duration::from_secs(5), || {
        app.count() >= 7
    })
    .await;
    events.list("evt_7", &seventh);
    next_complete_poll(&sidecar).await;
    next_complete_poll(&sidecar).await;
    // Phase 5: listed first, then the webhook: 200 (a duplicate) and no second delivery.
    let eighth = events.add("evt_8");
    until("evt_8 delivered", Duration::from_secs(5), || {
        app.count() >= 8
    })
    .await;
    let answer = post_signed(&sidecar, &eighth).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("duplicate"), "{}", answer.text());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let delivered = ids_delivered(&app);
    assert_eq!(delivered.len(), 8, "{delivered:?}");
    assert!(
        delivered.contains(&("evt_7".into(), "webhook".into())),
        "{delivered:?}"
    );
    assert!(
        delivered.contains(&("evt_8".into(), "poll".into())),
        "{delivered:?}"
    );
    let metrics = admin(&sidecar, "/metrics").await.text();
    assert!(
        metric(
            &metrics,
            r#"sluice_webhook_polled_total{integration="stripe",webhook="events",result="known"}"#
        ) >= 1.0,
        "evt_7 was known when listed: {metrics}"
    );
    sidecar.shutdown().await;

    // Phase 6: a restart carries on from the mark: one page, nothing delivered again.
    let asked_from = provider.count();
    let sidecar = start_in(&state, vec![stripe(&provider, &app, &secrets)]).await;
    next_complete_poll(&sidecar).await;
    let after_restart: Vec<String> = provider.requests()[asked_from..]
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert!(
        after_restart.iter().all(|uri| uri == "/v1/events?limit=2"),
        "only the first page, up to the watermark: {after_restart:?}"
    );
    events.add("evt_9");
    until("evt_9 delivered", Duration::from_secs(5), || {
        app.count() >= 9
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.count(), 9, "{:?}", ids_delivered(&app));
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_failing_listing_is_counted_and_tried_again() {
    let events = Events::default();
    let provider = TestUpstream::plain(events.handler()).await;
    let app = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let secrets = SecretDir::new("polling-fail");
    let mut config = stripe(&provider, &app, &secrets);
    // The wrong key: the provider answers 401, the poll fails and says so.
    config.auth = Some(AuthConfig::Bearer {
        secret: SecretFile::new(secrets.write("key", "sk_wrong")),
        previous: None,
    });
    let sidecar = start_in(&secrets.0.join("state"), vec![config.clone()]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let metrics = admin(&sidecar, "/metrics").await.text();
        let failed = metric(
            &metrics,
            r#"sluice_webhook_polls_total{integration="stripe",webhook="events",result="failed"}"#,
        );
        if failed >= 2.0 || Instant::now() > deadline {
            break failed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(failed >= 2.0, "failed polls are counted and tried again");
    // The key is fixed (the Secret volume changes): the next poll completes.
    secrets.write("key", KEY);
    next_complete_poll(&sidecar).await;
    sidecar.shutdown().await;
}

async fn start_shared(
    state: &Path,
    integrations: Vec<IntegrationConfig>,
    redis: &support::redis_server::RedisServer,
    identity: &str,
) -> sluice_sidecar::Sidecar {
    let config = config_in(state, integrations);
    let settings = sluice_sidecar::shared::Settings::new(
        &redis.url(),
        None,
        None,
        identity.to_owned(),
        Duration::from_secs(1),
    )
    .unwrap();
    let sidecar = sluice_sidecar::Sidecar::start_with(
        config,
        sluice_sidecar::runtime::StartOptions {
            shared_state: Some(settings),
        },
    )
    .await
    .expect("sidecar starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &admin(&sidecar, "/metrics").await.text(),
        "sluice_shared_state_up{",
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "the shared state is not up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sidecar
}

#[tokio::test]
async fn with_shared_state_one_sidecar_polls_and_the_place_reached_is_shared() {
    // Phase 1: two sidecars on one Redis, an empty list.
    let redis = support::redis_server::RedisServer::start();
    let events = Events::default();
    let provider = TestUpstream::plain(events.handler()).await;
    let app = TestUpstream::plain(handler(|_, _| async { respond(200, "") })).await;
    let secrets = SecretDir::new("polling-shared");
    let config = stripe(&provider, &app, &secrets);
    let a = start_shared(&secrets.0.join("a"), vec![config.clone()], &redis, "pod-a").await;
    let b = start_shared(&secrets.0.join("b"), vec![config.clone()], &redis, "pod-b").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while polls_complete(&a).await + polls_complete(&b).await < 1.0 {
        assert!(Instant::now() < deadline, "no poll within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Phase 2: five missed events, three pages: delivered once in all.
    for i in 1..=5 {
        events.add(&format!("evt_{i}"));
    }
    until("five delivered", Duration::from_secs(10), || {
        app.count() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut ids: Vec<String> = ids_delivered(&app).into_iter().map(|(id, _)| id).collect();
    ids.sort();
    assert_eq!(ids, ["evt_1", "evt_2", "evt_3", "evt_4", "evt_5"]);
    let (polled_a, polled_b) = (polls_complete(&a).await, polls_complete(&b).await);
    assert!(
        (polled_a >= 3.0 && polled_b == 0.0) || (polled_b >= 3.0 && polled_a == 0.0),
        "one sidecar polls, the other waits for its lease: {polled_a} and {polled_b}"
    );
    let watermark = redis.cli(&["HGET", "sluice:{stripe}:poll:events", "watermark"]);
    assert_eq!(watermark.trim(), "evt_5");
    a.shutdown().await;
    b.shutdown().await;

    // Phase 3: a new pod with a fresh state directory carries on from Redis's mark.
    let poller = if polled_a > 0.0 { "pod-a" } else { "pod-b" };
    let asked_from = provider.count();
    let c = start_shared(&secrets.0.join("c"), vec![config], &redis, poller).await;
    next_complete_poll(&c).await;
    let asked: Vec<String> = provider.requests()[asked_from..]
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert!(
        asked.iter().all(|uri| uri == "/v1/events?limit=2"),
        "one page, up to the shared watermark: {asked:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.count(), 5, "nothing delivered twice");
    c.shutdown().await;
}
