//! Answers that Sluice gives itself, told apart from the provider's by the
//! `x-sluice-error` header and a JSON body.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

/// What a body or a connection fails with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const ERROR_HEADER: http::HeaderName = http::HeaderName::from_static("x-sluice-error");
/// `error.type` in the body of every answer Sluice gives itself.
pub const ERROR_TYPE: &str = "sluice_error";

/// Everything that can stop a request inside the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("rate limit {limit:?} is exhausted")]
    RateLimited {
        limit: String,
        retry_after: Duration,
    },
    #[error("the queue of rate limit {limit:?} is full or the wait would pass the deadline")]
    QueueFull {
        limit: String,
        retry_after: Duration,
    },
    #[error("quota {quota:?} is exhausted until its period ends")]
    QuotaExhausted {
        quota: String,
        retry_after: Duration,
    },
    #[error("the circuit breaker is open after repeated upstream failures")]
    CircuitOpen { retry_after: Duration },
    #[error("retry budget exhausted; last failure: {last}")]
    BudgetExhausted { last: Box<ProxyError> },
    #[error("no response headers from the upstream within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("the request's total timeout of {total:?} passed")]
    DeadlineExceeded {
        total: Duration,
        /// An attempt was waiting for the provider's answer (a hang the
        /// circuit breaker counts), not for the app's upload.
        awaiting_upstream: bool,
    },
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("TLS with the upstream failed: {0}")]
    Tls(String),
    #[error("the upstream closed the connection: {0}")]
    Reset(String),
    #[error("the upstream sent an invalid response: {0}")]
    Protocol(String),
    #[error("credentials unavailable: {0}")]
    Credentials(String),
    #[error("OAuth2 token refresh failed: {0}")]
    TokenRefresh(String),
}

impl ProxyError {
    /// The short code in `x-sluice-error` and the metrics' `outcome` label.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::RateLimited { .. } => "rate-limited",
            ProxyError::QueueFull { .. } => "queue-full",
            ProxyError::QuotaExhausted { .. } => "quota-exhausted",
            ProxyError::CircuitOpen { .. } => "circuit-open",
            ProxyError::BudgetExhausted { .. } => "budget-exhausted",
            ProxyError::UpstreamTimeout(_) => "upstream-timeout",
            ProxyError::DeadlineExceeded { .. } => "total-timeout",
            ProxyError::Connect(_) => "upstream-connect",
            ProxyError::Tls(_) => "upstream-tls",
            ProxyError::Reset(_) => "upstream-reset",
            ProxyError::Protocol(_) => "upstream-protocol",
            ProxyError::Credentials(_) => "credentials-unavailable",
            ProxyError::TokenRefresh(_) => "token-refresh-failed",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::RateLimited { .. }
            | ProxyError::QueueFull { .. }
            | ProxyError::QuotaExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::CircuitOpen { .. }
            | ProxyError::BudgetExhausted { .. }
            | ProxyError::Credentials(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout(_) | ProxyError::DeadlineExceeded { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Connect(_)
            | ProxyError::Tls(_)
            | ProxyError::Reset(_)
            | ProxyError::Protocol(_)
            | ProxyError::TokenRefresh(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::RateLimited { retry_after, .. }
            | ProxyError::QueueFull { retry_after, .. }
            | ProxyError::QuotaExhausted { retry_after, .. }
            | ProxyError::CircuitOpen { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The request never reached the provider: refused here, or no
    /// connection (a reset or a timeout may have reached it).
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::RateLimited { .. }
                | ProxyError::QueueFull { .. }
                | ProxyError::QuotaExhausted { .. }
                | ProxyError::CircuitOpen { .. }
                | ProxyError::Connect(_)
                | ProxyError::Tls(_)
                | ProxyError::Credentials(_)
                | ProxyError::TokenRefresh(_)
        )
    }

    /// Classifies a client error by the most specific cause in its chain.
    pub fn from_client_error(error: &(dyn std::error::Error + 'static), connect: bool) -> Self {
        let chain = describe_chain(error);
        let mut tls = false;
        let mut protocol = false;
        visit_causes(error, &mut |e| {
            if e.downcast_ref::<rustls::Error>().is_some() {
                tls = true;
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                protocol |= h.is_parse() || h.is_parse_status();
            }
            if let Some(h) = e.downcast_ref::<super::http1::Http1Error>() {
                protocol |= h.is_protocol();
            }
        });
        if tls {
            ProxyError::Tls(chain)
        } else if connect {
            ProxyError::Connect(chain)
        } else if protocol {
            ProxyError::Protocol(chain)
        } else {
            // Closed, reset or cut short after the request went out.
            ProxyError::Reset(chain)
        }
    }

    /// The answer the app gets, in any body type a JSON text converts to
    /// (so this module needs no body type of its own).
    pub fn into_response<B: From<bytes::Bytes>>(self) -> Response<B> {
        let status = self.status();
        // An object under `error`, the shape provider SDKs parse (Stripe,
        // OpenAI, EasyPost, ...): a string there makes some of them crash
        // instead of raising their own error type.
        let body = serde_json::json!({
            "error": {
                "type": ERROR_TYPE,
                "code": self.code(),
                "message": self.to_string(),
            }
        });
        let mut response = Response::new(B::from(bytes::Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.code()));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up: Retry-After has no fractions.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// Calls `f` on every cause of `error`, including the errors wrapped inside
/// `io::Error`s (whose `source()` skips them).
fn visit_causes(
    error: &(dyn std::error::Error + 'static),
    f: &mut dyn FnMut(&(dyn std::error::Error + 'static)),
) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut depth = 0;
    while let Some(e) = source {
        f(e);
        if depth < 16
            && let Some(inner) = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
        {
            visit_causes(inner, f);
        }
        source = e.source();
        depth += 1;
    }
}

/// `outer: inner: innermost`, skipping repeats, for messages and logs.
fn describe_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

impl From<BoxError> for ProxyError {
    fn from(error: BoxError) -> Self {
        ProxyError::from_client_error(&*error, false)
    }
}
