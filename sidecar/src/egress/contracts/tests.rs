use super::*;

const SHIPMENT: &str = r#"{name: shipment, schema: {
  type: object,
  required: [id, status, events],
  properties: {
    id: {type: string},
    status: {enum: [CREATED, IN_TRANSIT, DELIVERED]},
    weight: {type: number},
    events: {type: array, items: {type: object, required: [at], properties: {at: {type: string, format: date-time}}}}
  }}}"#;

fn contracts(metrics: &Metrics) -> Contracts {
    let config: ResponseContractConfig = serde_yaml_ng::from_str(SHIPMENT).unwrap();
    Contracts::new(&Arc::from("carrier"), &[config], metrics)
}

fn count(metrics: &Metrics, kind: &str, pointer: &str) -> String {
    let text = metrics.encode(sluice_contract::exposition::Exposition::Text);
    let prefix = format!(
        "sluice_contract_violations_total{{integration=\"carrier\",contract=\"shipment\",kind=\"{kind}\",pointer=\"{pointer}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or("absent")
        .to_owned()
}

#[test]
fn each_kind_of_drift_is_counted_where_the_schema_says() {
    let metrics = Metrics::new();
    let c = contracts(&metrics);
    let contract = &c.contracts[0];
    contract.check(br#"{"id": "s1", "status": "DELIVERED", "events": []}"#);
    contract.check(
        br#"{"id": "s2", "status": "RETURNED_TO_SENDER", "weight": "12kg",
             "events": [{"at": "2026-12-07T10:00:00Z"}, {"at": "yesterday"}, {}]}"#,
    );
    contract.check(br#"{"status": "RETURNED_TO_SENDER", "events": []}"#);
    contract.check(b"<html>busy</html>");
    assert_eq!(
        count(&metrics, "unknown_enum", "/properties/status/enum"),
        "2"
    );
    assert_eq!(count(&metrics, "type", "/properties/weight/type"), "1");
    assert_eq!(
        count(
            &metrics,
            "format",
            "/properties/events/items/properties/at/format"
        ),
        "1"
    );
    assert_eq!(
        count(
            &metrics,
            "missing_required",
            "/properties/events/items/required"
        ),
        "1",
        "no array index in the location"
    );
    assert_eq!(count(&metrics, "missing_required", "/required"), "1");
    let text = metrics.encode(sluice_contract::exposition::Exposition::Text);
    assert!(
        text.contains(
            r#"sluice_contract_checked_total{integration="carrier",contract="shipment"} 3"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"sluice_contract_skipped_total{integration="carrier",contract="shipment",reason="unparsable"} 1"#));
    // Logged once per (location, value), cut to 64 bytes.
    assert_eq!(contract.logged.lock().unwrap().len(), 1);
    contract.check(
        format!(
            r#"{{"id": "x", "events": [], "status": "{}"}}"#,
            "é".repeat(40)
        )
        .as_bytes(),
    );
    let logged = contract.logged.lock().unwrap();
    assert!(
        logged
            .iter()
            .all(|(_, v)| v.len() <= MAX_LOGGED_VALUE_BYTES)
    );
    assert_eq!(logged.len(), 2);
}

#[test]
fn only_json_answers_of_the_covered_statuses_are_copied() {
    let metrics = Metrics::new();
    let c = contracts(&metrics);
    let answer = |status: u16, media: &str| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, media)
            .body(ProxyBody::full("{}"))
            .unwrap()
    };
    let is_teed = |r: &Response<ProxyBody>| matches!(r.body(), ProxyBody::Boxed(_));
    assert!(is_teed(
        &c.watch(&[0], answer(200, "application/json; charset=utf-8"))
    ));
    assert!(is_teed(
        &c.watch(&[0], answer(201, "application/problem+json"))
    ));
    assert!(!is_teed(&c.watch(&[0], answer(404, "application/json"))));
    assert!(!is_teed(&c.watch(&[0], answer(200, "text/html"))));
    assert!(!is_teed(&c.watch(&[], answer(200, "application/json"))));
}
