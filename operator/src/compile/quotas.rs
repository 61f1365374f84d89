//! `spec.quotas` → the sidecar's quotas, defaults filled in.

use sluice_contract::config::{DEFAULT_COST_SEPARATOR, QuotaConfig, QuotaCost, defaults};

use super::routes::request_match;
use crate::resource::{QuotaCostSpec, QuotaSpec};

pub(super) fn compile(specs: &[QuotaSpec]) -> Vec<QuotaConfig> {
    specs
        .iter()
        .map(|q| QuotaConfig {
            name: q.name.clone(),
            matches: request_match(&q.matches),
            limit: q.limit,
            per: q.per,
            cost: q.cost.as_ref().map_or(QuotaCost::One, cost),
            warn_at: {
                let mut at = q.warn_at.clone().unwrap_or_else(defaults::warn_at);
                at.sort_unstable();
                at.dedup();
                at
            },
            when_exhausted: q.when_exhausted.unwrap_or_default(),
        })
        .collect()
}

/// The rules table has checked that exactly one is set and that a header
/// name is one.
fn cost(c: &QuotaCostSpec) -> QuotaCost {
    match (&c.query_product, &c.header) {
        (Some(params), _) => QuotaCost::QueryProduct {
            params: params.clone(),
            separator: c
                .separator
                .clone()
                .unwrap_or_else(|| DEFAULT_COST_SEPARATOR.into()),
        },
        (None, Some(h)) => QuotaCost::Header(
            http::HeaderName::from_bytes(h.as_bytes()).expect("checked by the header-name rule"),
        ),
        (None, None) => unreachable!("checked by the exactly-one rule"),
    }
}
