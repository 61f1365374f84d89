//! Answers that Sluice gives itself, told apart from the provider's by the
//! `x-sluice-error` header and a JSON body.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use super::body::{BoxError, ProxyBody};

pub const ERROR_HEADER: &str = "x-sluice-error";

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
    #[error("the circuit breaker is open after repeated upstream failures")]
    CircuitOpen { retry_after: Duration },
    #[error("retry budget exhausted; last failure: {last}")]
    BudgetExhausted { last: Box<ProxyError> },
    #[error("no response headers from the upstream within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("the request's total timeout of {0:?} passed")]
    DeadlineExceeded(Duration),
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
            ProxyError::CircuitOpen { .. } => "circuit-open",
            ProxyError::BudgetExhausted { .. } => "budget-exhausted",
            ProxyError::UpstreamTimeout(_) => "upstream-timeout",
            ProxyError::DeadlineExceeded(_) => "total-timeout",
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
            ProxyError::RateLimited { .. } | ProxyError::QueueFull { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::CircuitOpen { .. }
            | ProxyError::BudgetExhausted { .. }
            | ProxyError::Credentials(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout(_) | ProxyError::DeadlineExceeded(_) => {
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
            | ProxyError::CircuitOpen { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Classifies a client error by walking its source chain.
    pub fn from_client_error(error: &(dyn std::error::Error + 'static), connect: bool) -> Self {
        let chain = describe_chain(error);
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if e.downcast_ref::<rustls::Error>().is_some() {
                return ProxyError::Tls(chain);
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
                {
                    return ProxyError::Tls(chain);
                }
                if !connect
                    && matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::UnexpectedEof
                    )
                {
                    return ProxyError::Reset(chain);
                }
            }
            if let Some(hyper_error) = e.downcast_ref::<hyper::Error>() {
                if hyper_error.is_incomplete_message() || hyper_error.is_closed() {
                    return ProxyError::Reset(chain);
                }
                if hyper_error.is_parse() || hyper_error.is_parse_status() {
                    return ProxyError::Protocol(chain);
                }
            }
            source = e.source();
        }
        if connect {
            ProxyError::Connect(chain)
        } else {
            ProxyError::Reset(chain)
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
        });
        let mut response = Response::new(ProxyBody::full(body.to_string()));
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
