//! Two clocks: the per-attempt timeout (request sent to response headers) and
//! the request's total deadline (queueing, every attempt and the backoff
//! between them). Both come from the route, so an endpoint can override them.

use http::Request;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::route::RequestContext;
use super::step::{Next, PipelineResult, Step};

/// Which clock a [`TimeoutLayer`] enforces.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// `upstream.timeout`: one attempt, up to the response headers.
    Attempt,
    /// `upstream.totalTimeout`: the whole request.
    Total,
}

/// Pipeline step: enforces one of the two clocks.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutStep {
    clock: Clock,
}

impl TimeoutStep {
    pub fn attempt() -> Self {
        Self {
            clock: Clock::Attempt,
        }
    }
    pub fn total() -> Self {
        Self {
            clock: Clock::Total,
        }
    }
}

impl Step for TimeoutStep {
    async fn call<S: Next>(
        &self,
        request: Request<ProxyBody>,
        ctx: &RequestContext,
        next: &S,
    ) -> PipelineResult {
        let future = next.call(request, ctx);
        match self.clock {
            Clock::Attempt => {
                let limit = ctx.route.attempt_timeout;
                // Never wait past the total deadline either.
                let until = (tokio::time::Instant::now() + limit).min(ctx.deadline);
                match tokio::time::timeout_at(until, future).await {
                    Ok(result) => result,
                    Err(_) if until == ctx.deadline => {
                        Err(ProxyError::DeadlineExceeded(ctx.route.total_timeout))
                    }
                    Err(_) => Err(ProxyError::UpstreamTimeout(limit)),
                }
            }
            Clock::Total => tokio::time::timeout_at(ctx.deadline, future)
                .await
                .unwrap_or(Err(ProxyError::DeadlineExceeded(ctx.route.total_timeout))),
        }
    }
}
