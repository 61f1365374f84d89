//! The attempt timeout: from sending an attempt to its response headers,
//! never past the request's total deadline. Both come from the route, so an
//! endpoint can override them.
//!
//! The total deadline has no timer of its own: every place a request can
//! wait checks it — the rate limiter's queue, the wait between retries,
//! reading a body to buffer it for retries, and this timer — so one timer
//! entry per attempt is all a request costs.

use http::Request;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::route::RequestContext;
use super::step::{Next, PipelineResult, Step};

/// Pipeline step: bounds one attempt.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttemptTimeoutStep;

impl Step for AttemptTimeoutStep {
    async fn call<S: Next>(
        &self,
        request: Request<ProxyBody>,
        ctx: &RequestContext,
        next: &S,
    ) -> PipelineResult {
        let limit = ctx.route.attempt_timeout;
        let until = (tokio::time::Instant::now() + limit).min(ctx.deadline);
        match tokio::time::timeout_at(until, next.call(request, ctx)).await {
            Ok(result) => result,
            Err(_) if until == ctx.deadline => {
                Err(ProxyError::DeadlineExceeded(ctx.route.total_timeout))
            }
            Err(_) => Err(ProxyError::UpstreamTimeout(limit)),
        }
    }
}
