//! Spend quotas: at most `limit` units of cost per period, for every
//! request a quota matches, however many pods send them.
//!
//! The step sits above the rate limiter and below retry: every attempt
//! that may reach the provider is counted (a provider bills retries too),
//! a request the quota cannot hold is refused before it waits for a rate
//! limit, and an attempt that never reached the provider (refused by a
//! limit, no connection) is given back.
//!
//! Usage is kept by `tally.rs` (the state directory, or the shared state);
//! `cost.rs` reads what a request costs.

mod cost;
mod tally;

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::Either;
use http::Request;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::route::RequestContext;
use super::step::{Next, PipelineResult, Step};
use crate::config::{QuotaConfig, QuotaWindow, WhenExhausted};
use crate::layout;
use crate::metrics::{Metrics, Name, QuotaLabels, QuotaWarnLabels};
use crate::shared::SharedState;
use crate::shared::quotas::SharedQuota;
pub use cost::{CostError, cost_of};
pub use tally::TallyError;
use tally::{Tally, Verdict};

/// How often an idle pod re-reads a shared quota's usage (what the other
/// sidecars spent) for its gauge, and at most how long a window's end goes
/// unnoticed by the gauges.
const REFRESH_EVERY: Duration = Duration::from_secs(15);

struct Quota {
    config: QuotaConfig,
    tally: Arc<Tally>,
    used: Gauge,
    spent: Counter,
    rejected: Counter,
}

/// Every quota of one integration, in config order (the route names them
/// by index).
pub struct Quotas {
    quotas: Vec<Quota>,
}

/// What one request was charged: (quota, cost, window) for each quota.
#[derive(Debug)]
pub struct Charges(Vec<(usize, u64, QuotaWindow)>);

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Quotas {
    /// The quotas of `configs`. Usage is kept on `shared` when given, else
    /// in `state_dir` when given, else in memory. A quota of `previous`
    /// with the same name and period keeps its usage as it is.
    pub fn new(
        integration: &Name,
        configs: &[QuotaConfig],
        state_dir: Option<&Path>,
        shared: Option<&SharedState>,
        metrics: &Metrics,
        previous: Option<&Quotas>,
    ) -> Result<Arc<Self>, TallyError> {
        let now = unix_now();
        let mut quotas = Vec::with_capacity(configs.len());
        for config in configs {
            let labels = QuotaLabels {
                integration: integration.clone(),
                quota: Arc::from(config.name.as_str()),
            };
            let kept = previous.and_then(|p| {
                p.quotas.iter().find(|q| {
                    q.config.name == config.name
                        && q.tally.period() == config.per
                        && q.tally.is_shared() == shared.is_some()
                })
            });
            let tally = match (kept, shared, state_dir) {
                (Some(q), _, _) => q.tally.clone(),
                (None, Some(state), _) => Arc::new(Tally::shared(
                    config.per,
                    config.limit,
                    state.clone(),
                    SharedQuota::new(integration, &config.name),
                    metrics.quota_fallbacks.get_or_create_owned(&labels),
                    now,
                )),
                (None, None, Some(dir)) => Arc::new(Tally::in_file(
                    config.per,
                    config.limit,
                    layout::quota_file(dir, integration, &config.name),
                    now,
                )?),
                (None, None, None) => Arc::new(Tally::in_memory(config.per, config.limit, now)),
            };
            metrics
                .quota_limit
                .get_or_create(&labels)
                .set(i64::try_from(config.limit).unwrap_or(i64::MAX));
            for &percent in &config.warn_at {
                metrics
                    .quota_warn_ratio
                    .get_or_create(&QuotaWarnLabels {
                        integration: integration.clone(),
                        quota: labels.quota.clone(),
                        percent,
                    })
                    .set(f64::from(percent) / 100.0);
            }
            let used = metrics.quota_used.get_or_create_owned(&labels);
            quotas.push(Quota {
                config: config.clone(),
                tally,
                used,
                spent: metrics.quota_spent.get_or_create_owned(&labels),
                rejected: metrics.quota_rejected.get_or_create_owned(&labels),
            });
        }
        let book = Arc::new(Self { quotas });
        if !book.quotas.is_empty() {
            tokio::spawn(keep_gauges_fresh(Arc::downgrade(&book)));
        }
        Ok(book)
    }

    /// What the request costs each quota in `matched`: (quota, cost).
    pub fn costs(
        &self,
        matched: &[usize],
        request: &Request<ProxyBody>,
    ) -> Result<Vec<(usize, u64)>, ProxyError> {
        matched
            .iter()
            .map(|&i| {
                cost_of(
                    &self.quotas[i].config.cost,
                    request.uri().query(),
                    request.headers(),
                )
                .map(|cost| (i, cost))
                .map_err(|e| ProxyError::BadRequest(e.to_string()))
            })
            .collect()
    }

    /// Charges each cost to its quota; refused (and nothing charged) when
    /// one that rejects cannot hold it.
    pub async fn charge(&self, costs: Vec<(usize, u64)>) -> Result<Charges, ProxyError> {
        let now = unix_now();
        let mut charges = Charges(Vec::with_capacity(costs.len()));
        for (i, cost) in costs {
            let quota = &self.quotas[i];
            let reject = quota.config.when_exhausted == WhenExhausted::Reject;
            match quota
                .tally
                .charge(cost, reject.then_some(quota.config.limit), now)
                .await
            {
                Verdict::Charged { used, window } => {
                    quota.used.set(i64::try_from(used).unwrap_or(i64::MAX));
                    charges.0.push((i, cost, window));
                }
                Verdict::Exhausted { used, window } => {
                    quota.used.set(i64::try_from(used).unwrap_or(i64::MAX));
                    quota.rejected.inc();
                    self.refund(&charges).await;
                    return Err(ProxyError::QuotaExhausted {
                        quota: quota.config.name.clone(),
                        retry_after: Duration::from_secs(
                            u64::try_from(window.end - now).unwrap_or(0).max(1),
                        ),
                    });
                }
            }
        }
        Ok(charges)
    }

    /// Gives the charges back: the attempt never reached the provider.
    pub async fn refund(&self, charges: &Charges) {
        let now = unix_now();
        for &(i, cost, window) in &charges.0 {
            let quota = &self.quotas[i];
            let used = quota.tally.refund(cost, window, now).await;
            quota.used.set(i64::try_from(used).unwrap_or(i64::MAX));
        }
    }

    /// The attempt went to the provider: what it cost is spent.
    pub fn spent(&self, charges: &Charges) {
        for &(i, cost, _) in &charges.0 {
            self.quotas[i].spent.inc_by(cost);
        }
    }

    /// Writes every exact usage to the state directory (a clean stop).
    pub fn flush(&self) {
        for quota in &self.quotas {
            quota.tally.flush();
        }
    }
}

/// Resets the gauges when a window ends and, with shared state, shows what
/// the other sidecars spent, until the quotas are dropped.
async fn keep_gauges_fresh(book: Weak<Quotas>) {
    loop {
        let Some(quotas) = book.upgrade() else {
            return;
        };
        let now = unix_now();
        let mut next = REFRESH_EVERY;
        for quota in &quotas.quotas {
            let used = quota.tally.refresh(now).await;
            quota.used.set(i64::try_from(used).unwrap_or(i64::MAX));
            let end = quota.config.per.window_at(now).end;
            next = next.min(Duration::from_secs(
                u64::try_from(end - now).unwrap_or(0).max(1),
            ));
        }
        drop(quotas);
        tokio::time::sleep(next).await;
    }
}

/// Pipeline step: counts each attempt against the quotas its route matched.
#[derive(Clone)]
pub struct QuotaStep {
    quotas: Arc<Quotas>,
}

impl QuotaStep {
    pub fn new(quotas: Arc<Quotas>) -> Self {
        Self { quotas }
    }
}

impl Step for QuotaStep {
    fn call<S: Next>(
        &self,
        request: Request<ProxyBody>,
        ctx: &RequestContext,
        next: &S,
    ) -> impl Future<Output = PipelineResult> + Send {
        if ctx.route.quotas.is_empty() {
            return Either::Left(next.call(request, ctx));
        }
        Either::Right(async move {
            let costs = self.quotas.costs(&ctx.route.quotas, &request)?;
            let charges = self.quotas.charge(costs).await?;
            let result = next.call(request, ctx).await;
            match &result {
                Err(error) if error.never_sent() => self.quotas.refund(&charges).await,
                _ => self.quotas.spent(&charges),
            }
            result
        })
    }
}

#[cfg(test)]
mod tests;
