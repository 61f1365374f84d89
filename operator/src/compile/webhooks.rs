//! `spec.webhooks` → what the ingress verifies, de-duplicates, orders and delivers.

use sluice_contract::config::{
    DedupConfig, DeliveryConfig, OrderingConfig, PollCursor, PollingConfig, StateOrder,
    VerifyConfig, WebhookConfig, WebhookScheme, WebhookSecret, defaults,
};

use super::Compiler;
use crate::resource::{WebhookPollingSpec, WebhookSpec};

pub(super) fn compile(c: &mut Compiler<'_>, specs: &[WebhookSpec]) -> Vec<WebhookConfig> {
    specs
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let path = format!("spec.webhooks[{i}]");
            let v = &w.verify;
            let base = DeliveryConfig::default();
            let d = w.delivery.as_ref();
            WebhookConfig {
                name: w.name.clone(),
                path: w.path.clone(),
                forward_to: w.forward_to.clone(),
                verify: VerifyConfig {
                    scheme: v.scheme,
                    secrets: v
                        .secrets
                        .iter()
                        .enumerate()
                        .map(|(j, s)| WebhookSecret {
                            secret: c.secret_file(
                                &format!("{path}.verify.secrets[{j}].secretRef"),
                                &s.secret_ref,
                            ),
                            not_after: s.not_after,
                        })
                        .collect(),
                    tolerance: v.tolerance.unwrap_or_else(defaults::webhook_tolerance),
                    header: v.header.clone(),
                    encoding: v.encoding.unwrap_or_default(),
                    prefix: v.prefix.clone(),
                },
                dedup: w
                    .dedup
                    .as_ref()
                    .map(|d| DedupConfig { ttl: d.ttl })
                    .unwrap_or_default(),
                // Stripe's events carry their id in the body.
                id_pointer: w
                    .id_pointer
                    .clone()
                    .or_else(|| (v.scheme == WebhookScheme::Stripe).then(|| "/id".to_owned())),
                ordering: w.ordering.as_ref().map(|o| OrderingConfig {
                    object_pointer: o.object_pointer.clone(),
                    timestamp_pointer: o.timestamp_pointer.clone(),
                    states: o.states.as_ref().map(|s| StateOrder {
                        pointer: s.pointer.clone(),
                        order: s.order.clone(),
                    }),
                }),
                delivery: DeliveryConfig {
                    rate_per_second: d
                        .and_then(|d| d.rate_per_second)
                        .unwrap_or(base.rate_per_second),
                    max_attempts: d.and_then(|d| d.max_attempts).unwrap_or(base.max_attempts),
                    dead_letter: d.and_then(|d| d.dead_letter).unwrap_or(base.dead_letter),
                    timeout: d.and_then(|d| d.timeout).unwrap_or(base.timeout),
                    backoff: base.backoff,
                },
                polling: w.polling.as_ref().map(polling),
            }
        })
        .collect()
}

/// The rules table has checked every field (the cursor's `from` included).
fn polling(p: &WebhookPollingSpec) -> PollingConfig {
    PollingConfig {
        path: p.path.clone(),
        query: p.query.clone().unwrap_or_default(),
        interval: p.interval.unwrap_or_else(defaults::poll_interval),
        items: p.items.clone(),
        id: p.id.clone(),
        created: p.created.clone(),
        cursor: PollCursor {
            param: p.cursor.param.clone(),
            from: p
                .cursor
                .from
                .as_deref()
                .and_then(|f| f.parse().ok())
                .unwrap_or_default(),
        },
        has_more: p.has_more.clone(),
        lookback: p.lookback.unwrap_or_else(defaults::poll_lookback),
    }
}
