use super::*;

fn configs(yaml: &str) -> Vec<QuotaConfig> {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn request(uri: &str) -> Request<ProxyBody> {
    Request::get(uri).body(ProxyBody::full("")).unwrap()
}

#[tokio::test]
async fn a_refusal_by_one_quota_gives_back_what_the_others_took() {
    let metrics = Metrics::new();
    let quotas = Quotas::new(
        &Arc::from("maps"),
        &configs(
            "[{name: daily, limit: 100, per: 24h},
              {name: elements, limit: 12, per: calendarMonth,
               cost: {queryProduct: [origins, destinations]}}]",
        ),
        None,
        None,
        &metrics,
        None,
    )
    .unwrap();
    let matrix = request("/maps/api/distancematrix/json?origins=a|b|c&destinations=1|2|3|4");
    let charges = quotas
        .charge(quotas.costs(&[0, 1], &matrix).unwrap())
        .await
        .unwrap();
    quotas.spent(&charges);
    let refused = quotas
        .charge(quotas.costs(&[0, 1], &matrix).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ProxyError::QuotaExhausted { quota, retry_after }
            if quota == "elements" && *retry_after >= Duration::from_secs(1)),
        "{refused:?}"
    );
    assert_eq!(refused.code(), "quota-exhausted");
    let text = metrics.encode(sluice_contract::exposition::Exposition::Text);
    for line in [
        r#"sluice_quota_used{integration="maps",quota="daily"} 1"#,
        r#"sluice_quota_used{integration="maps",quota="elements"} 12"#,
        r#"sluice_quota_spent_total{integration="maps",quota="elements"} 12"#,
        r#"sluice_quota_rejected_total{integration="maps",quota="elements"} 1"#,
        r#"sluice_quota_limit{integration="maps",quota="elements"} 12"#,
        r#"sluice_quota_warn_ratio{integration="maps",quota="daily",percent="80"} 0.8"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test]
async fn an_unreadable_cost_is_a_bad_request_naming_the_header() {
    let quotas = Quotas::new(
        &Arc::from("ai"),
        &configs("[{name: tokens, limit: 1000, per: 24h, cost: {header: X-Units}}]"),
        None,
        None,
        &Metrics::new(),
        None,
    )
    .unwrap();
    let mut bad = request("/v1/complete");
    bad.headers_mut().insert("x-units", "many".parse().unwrap());
    let error = quotas.costs(&[0], &bad).unwrap_err();
    assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
    assert!(error.to_string().contains("x-units"), "{error}");
    let mut fine = request("/v1/complete");
    fine.headers_mut().insert("x-units", "400".parse().unwrap());
    quotas
        .charge(quotas.costs(&[0], &fine).unwrap())
        .await
        .unwrap();
    quotas
        .charge(quotas.costs(&[0], &fine).unwrap())
        .await
        .unwrap();
    assert!(
        quotas
            .charge(quotas.costs(&[0], &fine).unwrap())
            .await
            .is_err(),
        "1200 of 1000"
    );
}
