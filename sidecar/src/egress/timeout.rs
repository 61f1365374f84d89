//! The attempt timeout: from sending an attempt to its response headers,
//! never past the request's total deadline. Both come from the route, so an
//! endpoint can override them.
//!
//! The total deadline has no timer of its own: every place a request can
//! wait checks it — the rate limiter's queue, the wait between retries,
//! reading a body to buffer it for retries, and this timer — so one timer
//! entry per attempt is all a request costs.

use std::future::Future;

use futures_util::FutureExt;
use http::Request;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::route::RequestContext;
use super::step::{Next, PipelineResult, Step};

/// Pipeline step: bounds one attempt.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttemptTimeoutStep;

impl Step for AttemptTimeoutStep {
    /// A combinator, not an `async fn`: that would keep the request (an
    /// argument) beside the attempt that took it, in a state boxed per request.
    fn call<S: Next>(
        &self,
        request: Request<ProxyBody>,
        ctx: &RequestContext,
        next: &S,
    ) -> impl Future<Output = PipelineResult> + Send {
        let limit = ctx.route.attempt_timeout;
        let (deadline, total) = (ctx.deadline, ctx.route.total_timeout);
        let until = (tokio::time::Instant::now() + limit).min(deadline);
        tokio::time::timeout_at(until, next.call(request, ctx)).map(move |outcome| match outcome {
            Ok(result) => result,
            Err(_) if until == deadline => Err(ProxyError::DeadlineExceeded {
                total,
                awaiting_upstream: true,
            }),
            Err(_) => Err(ProxyError::UpstreamTimeout(limit)),
        })
    }
}
