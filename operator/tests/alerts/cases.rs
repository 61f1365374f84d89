//! One promtool test group per situation: the input series are picked from
//! real scrapes (so names and labels are the exporters'), the values are
//! the situation, and each alert is expected to fire — or, in the group
//! beside it, not to. Severity, priority and constant descriptions come
//! from the rule itself; summaries are written out, as an operator reads them.

use std::collections::BTreeMap;

use super::series::{Scrape, Series};

pub struct Group {
    pub name: &'static str,
    pub input: Vec<(Series, String)>,
    pub tests: Vec<AlertTest>,
}

pub struct AlertTest {
    pub minute: u32,
    pub alert: &'static str,
    /// Empty: the alert must not be firing then.
    pub firing: Vec<Expected>,
}

pub struct Expected {
    /// The labels the rule keeps from its series (its `by` labels).
    pub labels: BTreeMap<String, String>,
    pub summary: String,
}

/// The series the cases draw on: one sidecar's and one operator's scrape.
pub struct Scrapes {
    pub sidecar: Scrape,
    pub operator: Scrape,
}

/// `0+{step}x{minutes}`: a counter growing by `step` a minute.
fn ramp(step: u32, minutes: u32) -> String {
    format!("0+{step}x{minutes}")
}

/// A gauge (or a counter that does not move) at `value` for `minutes`.
fn steady(value: f64, minutes: u32) -> String {
    format!("{value}+0x{minutes}")
}

/// `0` for `quiet` minutes, then `value` for the rest of `minutes`.
fn step_to(value: u32, quiet: u32, minutes: u32) -> String {
    format!("0x{quiet} {value}+0x{}", minutes - quiet - 1)
}

fn keep(series: &Series, keys: &[&str]) -> BTreeMap<String, String> {
    keys.iter()
        .map(|k| (k.to_string(), series.label(k).to_owned()))
        .collect()
}

fn fires(
    minute: u32,
    alert: &'static str,
    labels: BTreeMap<String, String>,
    summary: String,
) -> AlertTest {
    AlertTest {
        minute,
        alert,
        firing: vec![Expected { labels, summary }],
    }
}

fn silent(minute: u32, alert: &'static str) -> AlertTest {
    AlertTest {
        minute,
        alert,
        firing: vec![],
    }
}

const ENDPOINT_KEYS: &[&str] = &["namespace", "integration", "endpoint"];

/// A week in minutes: the usage baseline's reach.
const WEEK: u32 = 7 * 24 * 60;

pub fn groups(s: &Scrapes) -> Vec<Group> {
    let sidecar = &s.sidecar;
    // The scrape has a second integration (OAuth2, for the dashboard's
    // token panel); the cases are about this one.
    let payments = |name: &str, matching: &[(&str, &str)]| {
        let mut all = vec![("integration", "payments")];
        all.extend_from_slice(matching);
        sidecar.pick(name, &all)
    };
    let request = |code: &str, outcome: &str| {
        payments(
            "sluice_egress_requests_total",
            &[
                ("endpoint", "charges"),
                ("code", code),
                ("outcome", outcome),
            ],
        )
    };
    let success = request("200", "success");
    let server_error = request("500", "server_error");
    let throttled = request("429", "client_error");
    let invalid = request("422", "client_error");
    let endpoint = keep(&success, ENDPOINT_KEYS);
    let integration = keep(&success, &["namespace", "integration"]);
    let (ns, name, ep) = (
        success.label("namespace").to_owned(),
        success.label("integration").to_owned(),
        success.label("endpoint").to_owned(),
    );

    let circuit = payments("sluice_circuit_state", &[]);
    let webhook = |metric: &str, result: &str| payments(metric, &[("result", result)]);
    let dead_letter = webhook("sluice_webhook_deliveries_total", "dead_letter");
    let out_of_order = webhook("sluice_webhook_deliveries_total", "out_of_order");
    let forged = webhook("sluice_webhook_received_total", "invalid_signature");
    let webhook_labels = keep(&dead_letter, &["namespace", "integration", "webhook"]);
    let hook = dead_letter.label("webhook").to_owned();
    let depth = payments("sluice_ratelimit_queue_depth", &[]);
    let capacity = payments("sluice_ratelimit_queue_capacity", &[]);
    let limit_labels = keep(&depth, &["namespace", "integration", "limit"]);
    let limit = depth.label("limit").to_owned();
    let queue_full = payments(
        "sluice_ratelimit_rejected_total",
        &[("reason", "queue-full")],
    );
    let budget = payments("sluice_retry_budget_exhausted_total", &[]);
    let provider_remaining = payments("sluice_provider_ratelimit_remaining", &[]);
    let provider_limit = payments("sluice_provider_ratelimit_limit", &[]);
    let fallback_active = payments("sluice_credential_fallback_active", &[]);
    let shared_up = sidecar.pick("sluice_shared_state_up", &[]);
    let shared_fallbacks = payments("sluice_shared_state_fallbacks_total", &[]);
    let retried_429 = payments(
        "sluice_egress_retries_total",
        &[("endpoint", "charges"), ("reason", "429")],
    );
    let attempts = payments("sluice_egress_attempts_total", &[("endpoint", "charges")]);
    let violated = payments("sluice_contract_violations_total", &[]);
    let violation_labels = keep(
        &violated,
        &["namespace", "integration", "contract", "kind", "pointer"],
    );
    let drift = format!(
        "{name}/{}: responses break their contract ({} at {})",
        violated.label("contract"),
        violated.label("kind"),
        violated.label("pointer")
    );
    let recovered = webhook("sluice_webhook_polled_total", "recovered");
    let poll_failed = webhook("sluice_webhook_polls_total", "failed");
    let poll_complete = webhook("sluice_webhook_polls_total", "complete");
    let quota_used = payments("sluice_quota_used", &[]);
    let quota_limit = payments("sluice_quota_limit", &[]);
    let warn_at = |percent: &str| payments("sluice_quota_warn_ratio", &[("percent", percent)]);
    let (warn_50, warn_80) = (warn_at("50"), warn_at("80"));
    let quota_spent = payments("sluice_quota_spent_total", &[]);
    let quota_labels = keep(&quota_used, &["namespace", "integration", "quota"]);
    let quota = quota_used.label("quota").to_owned();
    let warned = |percent: &str| Expected {
        labels: {
            let mut labels = quota_labels.clone();
            labels.insert("percent".into(), percent.into());
            labels
        },
        summary: format!("{name}/{quota}: over {percent} % of the quota is used"),
    };
    let missed = s
        .operator
        .pick("sluice_operator_injections_missed_total", &[]);
    let latency = sidecar.buckets(
        "sluice_egress_request_duration_seconds",
        &[("integration", "payments"), ("endpoint", "charges")],
    );

    let anomaly = |what: &str| {
        format!("{name}: 5 {what}, over 3x the same hour's average of the last 7 days")
    };
    let usage = usage_anomaly(
        [
            "five times the same hour's traffic of the last 7 days",
            "a week of the same traffic",
        ],
        &attempts,
        integration.clone(),
        anomaly("requests/s to the provider"),
    );
    let spend = usage_anomaly(
        [
            "five times the same hour's spend of the last 7 days",
            "a week of the same spend",
        ],
        &quota_spent,
        quota_labels.clone(),
        anomaly(&format!("units/s of quota {quota}")),
    );
    let circuit_summary = format!("{name} in {ns}: the circuit has been open for 5 minutes");
    let failing = |percent: &str| format!("{name}/{ep}: {percent} of requests fail");
    vec![
        Group {
            name: "a provider failing every half-open probe keeps the circuit alert",
            input: vec![
                // Open, half-open (a probe), open again: each minute's scrape.
                (circuit.clone(), "0 1 2 1 2 1 2 1 2 1 2 1 2".into()),
                (server_error.clone(), ramp(10, 12)),
            ],
            tests: vec![
                silent(4, "SluiceIntegrationDown"),
                fires(8, "SluiceIntegrationDown", integration.clone(), circuit_summary),
            ],
        },
        Group {
            name: "a closed circuit",
            input: vec![(circuit, steady(0.0, 12)), (success.clone(), ramp(10, 12))],
            tests: vec![silent(10, "SluiceIntegrationDown")],
        },
        Group {
            name: "the first dead letter",
            input: vec![(dead_letter.clone(), step_to(1, 3, 8)), (out_of_order.clone(), steady(0.0, 8))],
            tests: vec![
                silent(2, "SluiceWebhooksDeadLettered"),
                fires(
                    5,
                    "SluiceWebhooksDeadLettered",
                    webhook_labels.clone(),
                    format!("{name}/{hook}: accepted webhooks were not delivered to the app"),
                ),
                silent(5, "SluiceWebhookOutOfOrderOrForged"),
            ],
        },
        Group {
            name: "half the requests fail",
            input: vec![(success.clone(), ramp(5, 20)), (server_error.clone(), ramp(5, 20))],
            tests: vec![
                fires(15, "SluiceErrorRateHigh", endpoint.clone(), failing("50%")),
                silent(15, "SluiceErrorRateElevated"),
            ],
        },
        Group {
            name: "a tenth of the requests fail",
            input: vec![(success.clone(), ramp(9, 20)), (server_error.clone(), ramp(1, 20))],
            tests: vec![
                fires(15, "SluiceErrorRateElevated", endpoint.clone(), failing("10%")),
                silent(15, "SluiceErrorRateHigh"),
            ],
        },
        Group {
            name: "no request fails",
            input: vec![(success.clone(), ramp(10, 20)), (server_error.clone(), steady(0.0, 20))],
            tests: vec![
                silent(15, "SluiceErrorRateHigh"),
                silent(15, "SluiceErrorRateElevated"),
                silent(15, "SluiceProviderThrottling"),
                silent(15, "SluiceContractDeviation"),
            ],
        },
        Group {
            name: "the rate limit queue at 90 %",
            input: vec![
                (depth.clone(), steady(45.0, 6)),
                (capacity.clone(), steady(50.0, 6)),
            ],
            tests: vec![
                silent(1, "SluiceQueueNearlyFull"),
                fires(
                    4,
                    "SluiceQueueNearlyFull",
                    limit_labels.clone(),
                    format!("{name}/{limit}: the rate limit queue is over 80 % full"),
                ),
            ],
        },
        Group {
            name: "the rate limit queue at 20 %",
            input: vec![(depth, steady(10.0, 6)), (capacity, steady(50.0, 6))],
            tests: vec![silent(4, "SluiceQueueNearlyFull")],
        },
        Group {
            name: "a response breaks its contract for the first time",
            // The series is born at the first violation.
            input: vec![(violated.clone(), "_x5 1+0x10".into())],
            tests: vec![
                silent(3, "SluiceContractDrift"),
                fires(7, "SluiceContractDrift", violation_labels.clone(), drift.clone()),
            ],
        },
        Group {
            name: "a contract broken an hour ago, not since",
            input: vec![(violated.clone(), "3+0x90".into())],
            tests: vec![
                fires(10, "SluiceContractDrift", violation_labels.clone(), drift),
                silent(75, "SluiceContractDrift"),
            ],
        },
        Group {
            name: "polling recovers events whose webhooks never came",
            input: vec![
                (recovered.clone(), step_to(3, 5, 20)),
                (poll_complete.clone(), ramp(1, 20)),
            ],
            tests: vec![
                silent(3, "SluiceWebhooksMissed"),
                fires(
                    8,
                    "SluiceWebhooksMissed",
                    webhook_labels.clone(),
                    format!("{name}/{hook}: events came only by polling; their webhooks never arrived"),
                ),
                silent(8, "SluiceWebhookPollFailing"),
            ],
        },
        Group {
            name: "polling finds every event already received",
            input: vec![
                (recovered.clone(), steady(0.0, 20)),
                (poll_complete.clone(), ramp(1, 20)),
            ],
            tests: vec![silent(10, "SluiceWebhooksMissed")],
        },
        Group {
            name: "every poll fails",
            input: vec![
                (poll_failed.clone(), ramp(1, 40)),
                (poll_complete.clone(), steady(4.0, 40)),
            ],
            tests: vec![
                fires(
                    35,
                    "SluiceWebhookPollFailing",
                    webhook_labels.clone(),
                    format!("{name}/{hook}: no poll of the provider's events completed in 30 minutes"),
                ),
            ],
        },
        Group {
            name: "a poll fails now and then",
            input: vec![
                (poll_failed, step_to(1, 10, 40)),
                (poll_complete, ramp(1, 40)),
            ],
            tests: vec![silent(15, "SluiceWebhookPollFailing")],
        },
        Group {
            name: "85 % of a quota used",
            input: vec![
                (quota_used.clone(), steady(850.0, 5)),
                (quota_limit.clone(), steady(1000.0, 5)),
                (warn_50.clone(), steady(0.5, 5)),
                (warn_80.clone(), steady(0.8, 5)),
            ],
            tests: vec![
                AlertTest {
                    minute: 2,
                    alert: "SluiceQuotaWarning",
                    firing: vec![warned("50"), warned("80")],
                },
                silent(2, "SluiceQuotaExhausted"),
            ],
        },
        Group {
            name: "30 % of a quota used",
            input: vec![
                (quota_used.clone(), steady(300.0, 5)),
                (quota_limit.clone(), steady(1000.0, 5)),
                (warn_50.clone(), steady(0.5, 5)),
                (warn_80.clone(), steady(0.8, 5)),
            ],
            tests: vec![silent(2, "SluiceQuotaWarning")],
        },
        Group {
            name: "a quota used up",
            input: vec![
                (quota_used, steady(1000.0, 5)),
                (quota_limit, steady(1000.0, 5)),
                (warn_50, steady(0.5, 5)),
                (warn_80, steady(0.8, 5)),
            ],
            tests: vec![fires(
                2,
                "SluiceQuotaExhausted",
                quota_labels.clone(),
                format!("{name}/{quota}: the quota is used up (100%)"),
            )],
        },
        Group {
            name: "busy from its first hour: no baseline yet",
            input: vec![(attempts.clone(), "0+300x180".to_owned())],
            tests: vec![silent(150, "SluiceUsageAnomaly")],
        },
        Group {
            name: "the provider says 2 % of its limit is left",
            input: vec![
                (provider_remaining.clone(), steady(100.0, 10)),
                (provider_limit.clone(), steady(5000.0, 10)),
            ],
            tests: vec![
                silent(3, "SluiceProviderLimitLow"),
                fires(
                    7,
                    "SluiceProviderLimitLow",
                    limit_labels.clone(),
                    format!("{name}/{limit}: the provider says 2% of its rate limit is left"),
                ),
            ],
        },
        Group {
            name: "the provider says half of its limit is left",
            input: vec![
                (provider_remaining, steady(2500.0, 10)),
                (provider_limit, steady(5000.0, 10)),
            ],
            tests: vec![silent(7, "SluiceProviderLimitLow")],
        },
        Group {
            name: "the first refused retry and the first client-side 429s",
            input: vec![(budget.clone(), step_to(2, 2, 6)), (queue_full.clone(), step_to(5, 2, 6))],
            tests: vec![
                silent(1, "SluiceRetryBudgetExhausted"),
                fires(
                    4,
                    "SluiceRetryBudgetExhausted",
                    integration.clone(),
                    format!("{name}: retries are being refused for lack of budget"),
                ),
                silent(1, "SluiceRateLimited"),
                fires(
                    4,
                    "SluiceRateLimited",
                    limit_labels.clone(),
                    format!("{name}/{limit}: requests were refused by the client-side rate limit"),
                ),
            ],
        },
        Group {
            name: "no refused retries or client-side 429s",
            input: vec![(budget, steady(0.0, 6)), (queue_full, steady(0.0, 6))],
            tests: vec![
                silent(4, "SluiceRetryBudgetExhausted"),
                silent(4, "SluiceRateLimited"),
            ],
        },
        Group {
            name: "an older key is being sent",
            input: vec![(fallback_active.clone(), steady(1.0, 8))],
            tests: vec![
                silent(3, "SluiceCredentialFallbackActive"),
                fires(
                    6,
                    "SluiceCredentialFallbackActive",
                    integration.clone(),
                    format!("{name}: the provider refuses the current key; an older one is being sent"),
                ),
            ],
        },
        Group {
            name: "the current key works",
            input: vec![(fallback_active, steady(0.0, 8))],
            tests: vec![silent(6, "SluiceCredentialFallbackActive")],
        },
        Group {
            name: "the shared state is down",
            input: vec![
                (shared_up.clone(), steady(0.0, 6)),
                (shared_fallbacks.clone(), ramp(20, 6)),
            ],
            tests: vec![
                fires(
                    3,
                    "SluiceSharedStateDown",
                    keep(&shared_up, &["namespace", "pod", "target"]),
                    format!(
                        "{}: the shared state {} does not answer",
                        shared_up.label("pod"),
                        shared_up.label("target")
                    ),
                ),
                fires(
                    3,
                    "SluiceSharedStateFallback",
                    keep(&shared_fallbacks, &["namespace", "integration", "limit"]),
                    format!(
                        "{name}/{limit}: Cluster-limit admissions were decided on the pod's share, without the shared state"
                    ),
                ),
            ],
        },
        Group {
            name: "the shared state answers",
            input: vec![(shared_up, steady(1.0, 6)), (shared_fallbacks, steady(0.0, 6))],
            tests: vec![
                silent(3, "SluiceSharedStateDown"),
                silent(3, "SluiceSharedStateFallback"),
            ],
        },
        latency_group(&latency, 60, 60, &endpoint, &name, &ep),
        latency_group(&latency, 40, 60, &endpoint, &name, &ep),
        Group {
            name: "the provider refuses a tenth of the requests as malformed",
            input: vec![(success.clone(), ramp(9, 60)), (invalid.clone(), ramp(1, 60))],
            tests: vec![
                silent(10, "SluiceContractDeviation"),
                fires(
                    50,
                    "SluiceContractDeviation",
                    endpoint.clone(),
                    format!("{name}/{ep}: the provider refuses requests as malformed (400/422)"),
                ),
            ],
        },
        Group {
            name: "forged webhooks",
            input: vec![(forged.clone(), step_to(2, 2, 6)), (out_of_order.clone(), steady(0.0, 6))],
            tests: vec![fires(
                4,
                "SluiceWebhookOutOfOrderOrForged",
                webhook_labels.clone(),
                format!("{name}/{hook}: webhooks refused as forged or stale, or out of order"),
            )],
        },
        Group {
            name: "webhooks out of order",
            input: vec![(forged.clone(), steady(0.0, 6)), (out_of_order, step_to(3, 2, 6))],
            tests: vec![fires(
                4,
                "SluiceWebhookOutOfOrderOrForged",
                webhook_labels,
                format!("{name}/{hook}: webhooks refused as forged or stale, or out of order"),
            )],
        },
        Group {
            name: "webhooks all verified and in order",
            input: vec![(forged, steady(0.0, 6)), (dead_letter, steady(0.0, 6))],
            tests: vec![
                silent(4, "SluiceWebhookOutOfOrderOrForged"),
                silent(4, "SluiceWebhooksDeadLettered"),
            ],
        },
        Group {
            name: "the provider answers 429 to half the requests",
            input: vec![(success.clone(), ramp(5, 20)), (throttled, ramp(5, 20))],
            tests: vec![
                silent(3, "SluiceProviderThrottling"),
                fires(
                    12,
                    "SluiceProviderThrottling",
                    endpoint.clone(),
                    format!("{name}/{ep}: the provider answers 429 to 50% of requests"),
                ),
                // The app's requests, not failures of the integration.
                silent(12, "SluiceErrorRateHigh"),
            ],
        },
        Group {
            name: "Sluice absorbs the provider's 429s by retrying them",
            input: vec![
                (success, ramp(6, 20)),
                (attempts, ramp(12, 20)),
                (retried_429, ramp(6, 20)),
            ],
            tests: vec![fires(
                12,
                "SluiceProviderThrottling",
                endpoint,
                format!("{name}/{ep}: the provider answers 429 to 50% of requests"),
            )],
        },
        Group {
            name: "a pod created without its sidecar",
            input: vec![(missed.clone(), step_to(1, 2, 6))],
            tests: vec![
                silent(1, "SluiceSidecarNotInjected"),
                fires(
                    4,
                    "SluiceSidecarNotInjected",
                    missed.labels.clone(),
                    "Pods selected by a ProviderIntegration run without the sidecar; see their NotInjected Events.".into(),
                ),
            ],
        },
        Group {
            name: "every selected pod has its sidecar",
            input: vec![(missed, steady(0.0, 6))],
            tests: vec![silent(4, "SluiceSidecarNotInjected")],
        },
    ]
    .into_iter()
    .chain(usage)
    .chain(spend)
    .collect()
}

/// Requests that took about 10 ms until `slow_from`, then about 1 s: each
/// bucket of the scraped histogram counts them as the sidecar would.
fn latency_group(
    buckets: &[(f64, Series)],
    slow_from: u32,
    minutes: u32,
    endpoint: &BTreeMap<String, String>,
    name: &str,
    ep: &str,
) -> Group {
    let (fast, slow) = (0.010, 0.9);
    let per_minute = 60;
    let input = buckets
        .iter()
        .map(|(le, series)| {
            let fast_part = if *le >= fast { per_minute } else { 0 };
            let slow_part = if *le >= slow { per_minute } else { 0 };
            let until = fast_part * slow_from;
            let values = if slow_from >= minutes {
                ramp(fast_part, minutes)
            } else {
                format!(
                    "0+{fast_part}x{slow_from} {}+{slow_part}x{}",
                    until + slow_part,
                    minutes - slow_from - 1
                )
            };
            (series.clone(), values)
        })
        .collect();
    if slow_from >= minutes {
        Group {
            name: "latency as usual",
            input,
            tests: vec![silent(55, "SluiceLatencyRegression")],
        }
    } else {
        Group {
            name: "p95 latency jumps from 10 ms to 1 s",
            input,
            tests: vec![
                silent(slow_from - 5, "SluiceLatencyRegression"),
                fires(
                    slow_from + 15,
                    "SluiceLatencyRegression",
                    endpoint.clone(),
                    format!("{name}/{ep}: p95 latency is 1.5x its 30-minute baseline"),
                ),
            ],
        }
    }
}

/// A week at 1/s of `series` then 5/s (SluiceUsageAnomaly fires with
/// `labels` and `summary`), and a week at 1/s throughout (silent); `names`
/// name the two groups.
fn usage_anomaly(
    names: [&'static str; 2],
    series: &Series,
    labels: BTreeMap<String, String>,
    summary: String,
) -> [Group; 2] {
    [
        Group {
            name: names[0],
            input: vec![(series.clone(), format!("0+60x{WEEK} {}+300x120", 60 * WEEK))],
            tests: vec![
                silent(WEEK + 20, "SluiceUsageAnomaly"),
                fires(WEEK + 90, "SluiceUsageAnomaly", labels, summary),
            ],
        },
        Group {
            name: names[1],
            input: vec![(series.clone(), format!("0+60x{}", WEEK + 120))],
            tests: vec![silent(WEEK + 90, "SluiceUsageAnomaly")],
        },
    ]
}
