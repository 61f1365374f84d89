//! Response contracts over real sockets: a carrier's shipment API drifts
//! (a new status value, a field gone, a field of another type); the app
//! gets every body byte for byte, and the counters say exactly what broke.

mod support;

use std::time::Duration;

use support::*;

const SCHEMA: &str = r#"
name: shipment
match: {methods: [GET], path: '/v1/shipments/*'}
schema:
  type: object
  required: [id, status, weight]
  properties:
    id: {type: string}
    status: {enum: [CREATED, IN_TRANSIT, DELIVERED]}
    weight: {type: number}
"#;

/// The answers of a carrier that changed without notice, by shipment id.
fn shipment(id: &str) -> &'static str {
    match id {
        "ok" => r#"{"id": "ok", "status": "DELIVERED", "weight": 1.5}"#,
        "returned" => r#"{"id": "returned", "status": "RETURNED_TO_SENDER", "weight": 2}"#,
        "unweighed" => r#"{"id": "unweighed", "status": "CREATED"}"#,
        "stringly" => r#"{"id": "stringly", "status": "IN_TRANSIT", "weight": "3kg"}"#,
        _ => r#"{"error": "not found"}"#,
    }
}

async fn carrier() -> TestUpstream {
    TestUpstream::plain(handler(|seen, _| async move {
        let id = seen.uri.rsplit('/').next().unwrap_or("").to_owned();
        let mut response = respond(
            if shipment(&id).contains("error") {
                404
            } else {
                200
            },
            shipment(&id),
        );
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }))
    .await
}

fn violations(text: &str, kind: &str, pointer: &str) -> f64 {
    metric(
        text,
        &format!(
            "sluice_contract_violations_total{{integration=\"carrier\",contract=\"shipment\",kind=\"{kind}\",pointer=\"{pointer}\"}}"
        ),
    )
}

#[tokio::test]
async fn drift_is_counted_by_kind_and_location_and_the_app_gets_every_byte() {
    let upstream = carrier().await;
    let mut config = integration("carrier", &upstream);
    config
        .contracts
        .push(serde_yaml_ng::from_str(SCHEMA).unwrap());
    let sidecar = start(vec![config]).await;
    let app = App::new(sidecar.egress_addr("carrier").unwrap());

    // Phase 1: the app's answers are the provider's, unchanged; each 2xx
    // is checked after the app has it (one at a time here, so none finds
    // the checks busy).
    let mut checked = 0.0;
    let mut text = String::new();
    for id in ["ok", "returned", "unweighed", "stringly", "missing"] {
        let answer = app.get(&format!("/v1/shipments/{id}")).await;
        assert_eq!(answer.text(), shipment(id), "{id}");
        assert!(answer.header("x-sluice-error").is_none());
        if answer.status == 200 {
            checked += 1.0;
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            text = admin(&sidecar, "/metrics").await.text();
            if metric(&text, "sluice_contract_checked_total{") == checked {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{id} was not checked: {text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // Phase 2: the counters say exactly what broke.
    assert_eq!(checked, 4.0);
    assert_eq!(
        violations(&text, "unknown_enum", "/properties/status/enum"),
        1.0
    );
    assert_eq!(violations(&text, "missing_required", "/required"), 1.0);
    assert_eq!(violations(&text, "type", "/properties/weight/type"), 1.0);
    assert_eq!(
        metric(&text, "sluice_contract_violations_total{"),
        3.0,
        "nothing else: {text}"
    );
    assert!(!text.contains("RETURNED_TO_SENDER"), "no value in a label");
    sidecar.shutdown().await;
}
