//! One step of the egress pipeline, written as an `async fn` that gets the
//! request and the rest of the pipeline (`next`). [`StepLayer`] turns any
//! step into a tower layer, so the per-layer Service boilerplate exists once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::body::ProxyBody;
use super::error::ProxyError;

pub type PipelineResult = Result<Response<ProxyBody>, ProxyError>;

/// The rest of the pipeline, as a step sees it.
pub trait Next:
    Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> Next for S where
    S: Service<
            Request<ProxyBody>,
            Response = Response<ProxyBody>,
            Error = ProxyError,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// A pipeline step. `next` is ready for one call; a step that calls it again
/// (a retry) waits for readiness first (`ServiceExt::ready`).
pub trait Step: Clone + Send + Sync + 'static {
    fn call<S: Next>(
        &self,
        request: Request<ProxyBody>,
        next: S,
    ) -> impl Future<Output = PipelineResult> + Send;
}

#[derive(Clone)]
pub struct StepLayer<T>(pub T);

impl<T: Step, S> Layer<S> for StepLayer<T> {
    type Service = StepService<T, S>;
    fn layer(&self, inner: S) -> Self::Service {
        StepService {
            step: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct StepService<T, S> {
    step: T,
    inner: S,
}

impl<T: Step, S: Next> Service<Request<ProxyBody>> for StepService<T, S> {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = PipelineResult> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        // Hand the step the instance that was polled ready; keep a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let step = self.step.clone();
        Box::pin(async move { step.call(request, inner).await })
    }
}
