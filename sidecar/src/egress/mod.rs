//! The egress proxy: the app's calls to a provider, governed.
//!
//! [`pipeline`] is the one place the layers are put together; each layer
//! lives in its own module with its own tests.

pub mod auth;
pub mod body;
pub mod cache;
pub mod circuit;
pub mod client;
pub mod contracts;
pub mod credential;
pub mod error;
pub mod http1;
pub mod observe;
pub mod pool;
pub mod provider_limits;
pub mod quota;
pub mod ratelimit;
pub mod replay;
pub mod retry;
pub mod rotation;
pub mod route;
pub mod server;
pub mod step;
pub mod target;
pub mod tee;
pub mod timeout;
pub mod trailers;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use tower::ServiceBuilder;

use self::auth::{AuthStep, Credentials, CredentialsError};
use self::body::ProxyBody;
use self::cache::{CacheStep, ResponseCache};
use self::circuit::{CircuitBreaker, CircuitStep};
use self::client::{ClientBuildError, Upstream, UpstreamClient, UpstreamService};
use self::contracts::{ContractStep, Contracts};
use self::observe::ObserveLayer;
use self::quota::{QuotaStep, Quotas, TallyError};
use self::ratelimit::{RateLimitStep, RateLimiter};
use self::retry::{RetryRules, RetryRulesError, RetryStep};
use self::route::Router;
use self::step::StepLayer;
use self::timeout::AttemptTimeoutStep;
use crate::config::{IntegrationConfig, ProviderLimits};
use crate::metrics::{Metrics, Name};
use crate::secrets::SecretStore;
use crate::shared::SharedState;

/// What an egress listener serves: app request in, response out. Errors
/// are responses by then (with `x-sluice-error`).
pub trait Handle: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<ProxyBody>,
    ) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;
}

/// One integration's whole pipeline, shared by its connections.
pub type EgressService = Arc<dyn Handle>;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("integration {integration}: {source}")]
    Client {
        integration: String,
        source: ClientBuildError,
    },
    #[error("integration {integration}: {source}")]
    Credentials {
        integration: String,
        source: CredentialsError,
    },
    #[error("integration {integration}: {source}")]
    Retry {
        integration: String,
        source: RetryRulesError,
    },
    #[error("integration {integration}: {source}")]
    Quota {
        integration: String,
        source: TallyError,
    },
}

/// The parts of an integration's pipeline that hold state: kept across a
/// config change wherever their own config did not change, so a reload does
/// not reset limiter history, quota usage, open circuits, retry budgets,
/// OAuth2 tokens, cached responses or pooled connections.
#[derive(Clone)]
pub struct PipelineState {
    config: IntegrationConfig,
    limiter: Arc<RateLimiter>,
    quotas: Arc<Quotas>,
    contracts: Arc<Contracts>,
    breaker: Option<Arc<CircuitBreaker>>,
    retry: Arc<RetryRules>,
    cache: Arc<ResponseCache>,
    credentials: Option<Credentials>,
    client: UpstreamClient,
}

impl PipelineState {
    pub fn config(&self) -> &IntegrationConfig {
        &self.config
    }

    /// Writes what the quotas counted to the state directory (a clean stop).
    pub fn flush(&self) {
        self.quotas.flush();
    }
}

/// Builds the whole egress pipeline of one integration, its quotas kept
/// in memory only; see [`build`].
pub fn pipeline(
    config: &IntegrationConfig,
    secrets: &SecretStore,
    metrics: &Metrics,
) -> Result<EgressService, PipelineError> {
    build(config, secrets, metrics, None, None, None).map(|(service, _)| service)
}

/// Builds the whole egress pipeline of one integration, outermost first:
///
/// ```text
/// observe (route, request id, deadline, errors → responses, metrics, log)
///   → cache → response contracts → circuit breaker → retry
///   → quota → rate limit (every attempt) → attempt timeout → credentials → upstream client
/// ```
///
/// The cache sits above the breaker so cached answers still flow while the
/// provider is down; contracts below the cache check each answer the
/// provider gave once (not every hit), after retries chose it; quotas and
/// the limiter sit below retry so retries spend them too, and the quota
/// above the limiter so a request it cannot hold is refused before it
/// queues.
/// The request's total deadline is checked wherever it can wait (see
/// [`timeout`]).
///
/// With `previous` (the same integration's running pipeline) the stateful
/// parts are carried over as [`PipelineState`] explains; nothing of the
/// previous pipeline changes unless the whole build succeeds. With `shared`
/// (`--shared-state`) the `scope: Cluster` limits are decided by it and
/// quotas are counted on it; without, quotas are kept in `state_dir`.
pub fn build(
    config: &IntegrationConfig,
    secrets: &SecretStore,
    metrics: &Metrics,
    previous: Option<&PipelineState>,
    shared: Option<&SharedState>,
    state_dir: Option<&Path>,
) -> Result<(EgressService, PipelineState), PipelineError> {
    let name: Name = Arc::from(config.name.as_str());
    let integration = || config.name.clone();
    let same = |f: &dyn Fn(&IntegrationConfig, &IntegrationConfig) -> bool| {
        previous.is_some_and(|p| f(&p.config, config))
    };
    let router = Router::new(config, metrics);
    let upstream = Upstream::new(&config.upstream.base_url);
    let same_client = same(&|a, b| {
        a.upstream.ca_bundle == b.upstream.ca_bundle && a.upstream.timeout == b.upstream.timeout
    });
    let client = match previous {
        Some(p) if same_client => p.client.clone(),
        _ => UpstreamClient::new(
            config.upstream.ca_bundle.as_deref(),
            config.upstream.timeout.get(),
        )
        .map_err(|source| PipelineError::Client {
            integration: integration(),
            source,
        })?,
    };
    let credentials = match previous {
        Some(p)
            if same_client
                && p.config.auth == config.auth
                && p.config.rotation_grace == config.rotation_grace =>
        {
            p.credentials.clone()
        }
        _ => config
            .auth
            .as_ref()
            .map(|auth| {
                Credentials::new(
                    auth,
                    secrets,
                    &name,
                    client.clone(),
                    config.upstream.timeout.get(),
                    config.rotation_grace.get(),
                    metrics.clone(),
                )
            })
            .transpose()
            .map_err(|source| PipelineError::Credentials {
                integration: integration(),
                source,
            })?,
    };
    let retry = match previous {
        Some(p)
            if same(&|a, b| {
                a.retry == b.retry
                    && a.upstream.max_buffered_body_bytes == b.upstream.max_buffered_body_bytes
            }) =>
        {
            p.retry.clone()
        }
        _ => Arc::new(
            RetryRules::new(
                &config.retry,
                config.upstream.max_buffered_body_bytes,
                name.clone(),
                metrics.clone(),
            )
            .map_err(|source| PipelineError::Retry {
                integration: integration(),
                source,
            })?,
        ),
    };
    let breaker = match previous {
        Some(p) if same(&|a, b| a.circuit_breaker == b.circuit_breaker) => p.breaker.clone(),
        _ => config
            .circuit_breaker
            .clone()
            .map(|c| CircuitBreaker::new(c, name.clone(), metrics)),
    };
    let cache = match previous {
        Some(p) if same(&|a, b| a.cache == b.cache) => p.cache.clone(),
        _ => ResponseCache::new(&config.cache, name.clone(), metrics.clone()),
    };
    let contracts = match previous {
        Some(p) if same(&|a, b| a.contracts == b.contracts) => p.contracts.clone(),
        _ => Arc::new(Contracts::new(&name, &config.contracts, metrics)),
    };
    let quotas = match previous {
        Some(p) if same(&|a, b| a.quotas == b.quotas) => p.quotas.clone(),
        _ => Quotas::new(
            &name,
            &config.quotas,
            state_dir,
            shared,
            metrics,
            previous.map(|p| &*p.quotas),
        )
        .map_err(|source| PipelineError::Quota {
            integration: integration(),
            source,
        })?,
    };
    // Last, as it changes the running limiter: everything above succeeded.
    let (limiter, slots) = match previous {
        Some(p) => (
            p.limiter.clone(),
            p.limiter.reconfigure(&config.rate_limits),
        ),
        None => RateLimiter::new(
            name.clone(),
            &config.rate_limits,
            metrics.clone(),
            shared.cloned(),
        ),
    };
    let router = router.with_limit_slots(&slots);

    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(
            Arc::new(router),
            name.clone(),
            metrics.clone(),
        ))
        .layer(StepLayer::active_if(
            !config.cache.rules.is_empty(),
            CacheStep::new(cache.clone()),
        ))
        .layer(StepLayer::active_if(
            !config.contracts.is_empty(),
            ContractStep::new(contracts.clone()),
        ))
        .layer(StepLayer::active_if(
            breaker.is_some(),
            CircuitStep::new(breaker.clone()),
        ))
        .layer(StepLayer::active_if(
            config.retry.max_attempts > 1 || config.retry.idempotency.is_some(),
            RetryStep::new(retry.clone()),
        ))
        .layer(StepLayer::active_if(
            !config.quotas.is_empty(),
            QuotaStep::new(quotas.clone()),
        ))
        .layer(StepLayer::active_if(
            !config.rate_limits.is_empty(),
            RateLimitStep::new(
                limiter.clone(),
                config.upstream.provider_limits == ProviderLimits::Auto,
            ),
        ))
        .layer(StepLayer::new(AttemptTimeoutStep))
        .layer(StepLayer::active_if(
            credentials.is_some(),
            AuthStep::new(credentials.clone(), name.clone(), metrics.clone()),
        ))
        .service(UpstreamService::new(&client, upstream));
    let state = PipelineState {
        config: config.clone(),
        limiter,
        quotas,
        contracts,
        breaker,
        retry,
        cache,
        credentials,
        client,
    };
    Ok((Arc::new(service), state))
}
