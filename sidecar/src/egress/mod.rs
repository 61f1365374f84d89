//! The egress proxy: the app's calls to a provider, governed.
//!
//! [`pipeline`] is the one place the layers are put together; each layer
//! lives in its own module with its own tests.

pub mod auth;
pub mod body;
pub mod cache;
pub mod circuit;
pub mod client;
pub mod error;
pub mod observe;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod server;
pub mod step;
pub mod timeout;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use self::auth::{AuthStep, Credentials, CredentialsError};
use self::body::ProxyBody;
use self::cache::{CacheStep, ResponseCache};
use self::circuit::{CircuitBreaker, CircuitStep};
use self::client::{ClientBuildError, Upstream, UpstreamService};
use self::observe::ObserveLayer;
use self::ratelimit::{RateLimitStep, RateLimiter};
use self::retry::{RetryRules, RetryRulesError, RetryStep};
use self::route::{MatchError, Router};
use self::step::StepLayer;
use self::timeout::TimeoutStep;
use crate::config::IntegrationConfig;
use crate::metrics::{Metrics, Name};
use crate::secrets::SecretStore;

/// The service an egress listener serves: app request in, response out.
pub type EgressService = BoxCloneSyncService<Request<Incoming>, Response<ProxyBody>, Infallible>;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("integration {integration}: {source}")]
    Route {
        integration: String,
        source: MatchError,
    },
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
}

/// Builds the whole egress pipeline of one integration, outermost first:
///
/// ```text
/// observe (route, request id, errors → responses, metrics, log)
///   → total timeout → cache → circuit breaker → retry
///   → rate limit (every attempt) → attempt timeout → credentials → upstream client
/// ```
///
/// The cache sits above the breaker so cached answers still flow while the
/// provider is down; the limiter sits below retry so retries spend rate too.
pub fn pipeline(
    config: &IntegrationConfig,
    secrets: &SecretStore,
    metrics: &Metrics,
) -> Result<EgressService, PipelineError> {
    let name: Name = Arc::from(config.name.as_str());
    let integration = || config.name.clone();
    let router = Router::new(config).map_err(|source| PipelineError::Route {
        integration: integration(),
        source,
    })?;
    let upstream =
        Upstream::parse(&config.upstream.base_url).map_err(|source| PipelineError::Client {
            integration: integration(),
            source,
        })?;
    let client = client::build_client(
        config.upstream.ca_bundle.as_deref(),
        config.upstream.timeout.get(),
    )
    .map_err(|source| PipelineError::Client {
        integration: integration(),
        source,
    })?;
    let credentials = config
        .auth
        .as_ref()
        .map(|auth| {
            Credentials::new(
                auth,
                secrets,
                &name,
                client.clone(),
                config.upstream.timeout.get(),
                metrics.clone(),
            )
        })
        .transpose()
        .map_err(|source| PipelineError::Credentials {
            integration: integration(),
            source,
        })?;
    let retry = RetryRules::new(
        &config.retry,
        config.upstream.max_buffered_body_bytes,
        name.clone(),
        metrics.clone(),
    )
    .map_err(|source| PipelineError::Retry {
        integration: integration(),
        source,
    })?;
    let breaker = config
        .circuit_breaker
        .clone()
        .map(|c| CircuitBreaker::new(c, name.clone(), metrics));

    let service = ServiceBuilder::new()
        .layer(ObserveLayer::new(
            Arc::new(router),
            name.clone(),
            metrics.clone(),
        ))
        .layer(StepLayer(TimeoutStep::total()))
        .layer(StepLayer(CacheStep::new(ResponseCache::new(
            &config.cache,
            name.clone(),
            metrics.clone(),
        ))))
        .layer(StepLayer(CircuitStep::new(breaker)))
        .layer(StepLayer(RetryStep::new(retry)))
        .layer(StepLayer(RateLimitStep::new(RateLimiter::new(
            name.clone(),
            &config.rate_limits,
            metrics.clone(),
        ))))
        .layer(StepLayer(TimeoutStep::attempt()))
        .layer(StepLayer(AuthStep::new(
            credentials,
            name.clone(),
            metrics.clone(),
        )))
        .service(UpstreamService::new(
            client,
            upstream,
            name,
            metrics.clone(),
        ));
    Ok(BoxCloneSyncService::new(service))
}
