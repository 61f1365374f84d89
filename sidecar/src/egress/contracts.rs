//! Response contracts: matched JSON responses are checked against the
//! contract's JSON Schema on a copy of the body, after the app has it, so
//! a provider's drift (an enum value added without notice, a field gone or
//! of another type) is counted by kind and schema location instead of
//! failing silently in the app. The app's response is never changed or
//! delayed: the body streams through ([`TeeBody`]) and the check runs on
//! a blocking thread once it has ended.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::future::Either;
use http::{Request, Response, header};
use jsonschema::error::ValidationErrorKind;
use prometheus_client::metrics::counter::Counter;

use super::body::ProxyBody;
use super::route::RequestContext;
use super::step::{Next, PipelineResult, Step};
use super::tee::{Copied, TeeBody};
use crate::config::ResponseContractConfig;
use crate::metrics::{
    ContractLabels, ContractSkip, ContractSkipLabels, Metrics, Name, Violation, ViolationLabels,
};

/// At most this many violations of one response are counted: a list of a
/// thousand bad items is one drift, not a thousand CPU-costly counts.
const MAX_VIOLATIONS_PER_RESPONSE: usize = 64;
/// An unknown enum value is logged once per (location, value); at most this
/// many pairs are remembered per contract.
const MAX_LOGGED_VALUES: usize = 1024;
/// A logged value is cut to this many bytes.
const MAX_LOGGED_VALUE_BYTES: usize = 64;
/// Checks running at once for one integration; a response that finds them
/// all busy is skipped (`busy`), so a burst of large answers never takes
/// more CPU from the app than this.
const MAX_CONCURRENT_CHECKS: usize = 2;

struct Contract {
    config: ResponseContractConfig,
    validator: jsonschema::Validator,
    integration: Name,
    name: Name,
    checked: Counter,
    metrics: Metrics,
    logged: Mutex<HashSet<(String, String)>>,
}

/// Every response contract of one integration, in config order.
pub struct Contracts {
    contracts: Vec<Arc<Contract>>,
    checks: Arc<tokio::sync::Semaphore>,
}

impl Contracts {
    pub fn new(integration: &Name, configs: &[ResponseContractConfig], metrics: &Metrics) -> Self {
        let contracts = configs
            .iter()
            .map(|config| {
                let name: Name = Arc::from(config.name.as_str());
                let labels = ContractLabels {
                    integration: integration.clone(),
                    contract: name.clone(),
                };
                for &reason in ContractSkip::ALL {
                    metrics
                        .contract_skipped
                        .get_or_create_owned(&ContractSkipLabels {
                            integration: integration.clone(),
                            contract: name.clone(),
                            reason,
                        });
                }
                Arc::new(Contract {
                    validator: config.schema.validator(),
                    config: config.clone(),
                    integration: integration.clone(),
                    name,
                    checked: metrics.contract_checked.get_or_create_owned(&labels),
                    metrics: metrics.clone(),
                    logged: Mutex::default(),
                })
            })
            .collect();
        Self {
            contracts,
            checks: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CHECKS)),
        }
    }

    /// The response, its body copied for the contracts in `matched` that
    /// cover it (status, a JSON body, the sample).
    pub fn watch(&self, matched: &[usize], response: Response<ProxyBody>) -> Response<ProxyBody> {
        let status = response.status().as_u16();
        if !is_json(response.headers()) {
            return response;
        }
        let chosen: Vec<Arc<Contract>> = matched
            .iter()
            .map(|&i| &self.contracts[i])
            .filter(|c| c.config.covers(status) && fastrand::f64() < c.config.sample)
            .cloned()
            .collect();
        let Some(limit) = chosen.iter().map(|c| c.config.max_body_bytes).max() else {
            return response;
        };
        let (parts, body) = response.into_parts();
        let checks = self.checks.clone();
        let tee = TeeBody::new(
            body,
            limit,
            Box::new(move |copied| match copied {
                Copied::Whole(bytes) => {
                    let Ok(permit) = checks.try_acquire_owned() else {
                        chosen.iter().for_each(|c| c.skip(ContractSkip::Busy));
                        return;
                    };
                    // Off the response's path: the app already has it.
                    tokio::task::spawn_blocking(move || {
                        for contract in &chosen {
                            contract.check(&bytes);
                        }
                        drop(permit);
                    });
                }
                Copied::TooLarge => chosen.iter().for_each(|c| c.skip(ContractSkip::TooLarge)),
                Copied::Incomplete => chosen.iter().for_each(|c| c.skip(ContractSkip::Incomplete)),
            }),
        );
        Response::from_parts(parts, ProxyBody::boxed(tee))
    }
}

/// `application/json` or any `+json` media type.
fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|media| media.trim().to_ascii_lowercase())
        .is_some_and(|media| media == "application/json" || media.ends_with("+json"))
}

impl Contract {
    fn skip(&self, reason: ContractSkip) {
        self.metrics
            .contract_skipped
            .get_or_create(&ContractSkipLabels {
                integration: self.integration.clone(),
                contract: self.name.clone(),
                reason,
            })
            .inc();
    }

    /// Checks one whole body and counts what it broke.
    fn check(&self, body: &[u8]) {
        if body.len() as u64 > self.config.max_body_bytes {
            self.skip(ContractSkip::TooLarge);
            return;
        }
        let Ok(instance) = serde_json::from_slice::<serde_json::Value>(body) else {
            self.skip(ContractSkip::Unparsable);
            return;
        };
        for error in self
            .validator
            .iter_errors(&instance)
            .take(MAX_VIOLATIONS_PER_RESPONSE)
        {
            let kind = violation(error.kind());
            let pointer = error.schema_path().to_string();
            if kind == Violation::UnknownEnum {
                self.log_unknown_value(&pointer, error.instance());
            }
            self.metrics
                .contract_violations
                .get_or_create(&ViolationLabels {
                    integration: self.integration.clone(),
                    contract: self.name.clone(),
                    kind,
                    pointer: Arc::from(pointer.as_str()),
                })
                .inc();
        }
        // Last: whoever sees the check counted sees what it found.
        self.checked.inc();
    }

    fn log_unknown_value(&self, pointer: &str, value: &serde_json::Value) {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut cut = MAX_LOGGED_VALUE_BYTES.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let value = &text[..cut];
        let mut logged = self.logged.lock().expect("contract log lock");
        if logged.len() >= MAX_LOGGED_VALUES
            || !logged.insert((pointer.to_owned(), value.to_owned()))
        {
            return;
        }
        drop(logged);
        tracing::warn!(integration = %self.integration, contract = %self.name, pointer, value, "the provider answered a value its contract's enum does not list");
    }
}

fn violation(kind: &ValidationErrorKind) -> Violation {
    match kind {
        ValidationErrorKind::Enum { .. } | ValidationErrorKind::Constant { .. } => {
            Violation::UnknownEnum
        }
        ValidationErrorKind::Required { .. } => Violation::MissingRequired,
        ValidationErrorKind::Type { .. } => Violation::Type,
        ValidationErrorKind::AdditionalProperties { .. }
        | ValidationErrorKind::UnevaluatedProperties { .. } => Violation::AdditionalProperty,
        ValidationErrorKind::Format { .. } => Violation::Format,
        _ => Violation::Constraint,
    }
}

/// Pipeline step: copies matched responses for their contracts.
#[derive(Clone)]
pub struct ContractStep {
    contracts: Arc<Contracts>,
}

impl ContractStep {
    pub fn new(contracts: Arc<Contracts>) -> Self {
        Self { contracts }
    }
}

impl Step for ContractStep {
    fn call<S: Next>(
        &self,
        request: Request<ProxyBody>,
        ctx: &RequestContext,
        next: &S,
    ) -> impl Future<Output = PipelineResult> + Send {
        if ctx.route.contracts.is_empty() {
            return Either::Left(next.call(request, ctx));
        }
        Either::Right(async move {
            let response = next.call(request, ctx).await?;
            Ok(self.contracts.watch(&ctx.route.contracts, response))
        })
    }
}

#[cfg(test)]
mod tests;
