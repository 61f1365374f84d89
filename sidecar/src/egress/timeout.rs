//! Two clocks: the per-attempt timeout (request sent to response headers) and
//! the request's total deadline (queueing, every attempt and the backoff
//! between them). Both come from the route, so an endpoint can override them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::body::ProxyBody;
use super::error::ProxyError;
use super::route::RequestContext;

/// Which clock a [`TimeoutLayer`] enforces.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// `upstream.timeout`: one attempt, up to the response headers.
    Attempt,
    /// `upstream.totalTimeout`: the whole request.
    Total,
}

#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    clock: Clock,
}

impl TimeoutLayer {
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

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            clock: self.clock,
        }
    }
}

#[derive(Clone)]
pub struct TimeoutService<S> {
    inner: S,
    clock: Clock,
}

impl<S> Service<Request<ProxyBody>> for TimeoutService<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        let ctx = request.extensions().get::<RequestContext>().cloned();
        let future = self.inner.call(request);
        let clock = self.clock;
        Box::pin(async move {
            let Some(ctx) = ctx else {
                return future.await;
            };
            match clock {
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
        })
    }
}
