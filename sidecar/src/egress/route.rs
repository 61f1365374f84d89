//! Which endpoint, limits and cache rule a request falls under: a pure
//! function of its method and path, computed once at the edge of the pipeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

use super::replay::Replay;
use crate::config::{IntegrationConfig, RequestMatch};
use crate::metrics::{EndpointLabels, EndpointSeries, Metrics};

/// A path pattern: literal segments, `*` for exactly one segment and a final
/// `**` for whatever remains (zero or more segments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("must start with '/'")]
    NoLeadingSlash,
    #[error("'**' may only be the last segment")]
    RestNotLast,
    #[error("'*' must be a whole segment (got {0:?})")]
    PartialWildcard(String),
    #[error("must not contain a query ('?') or fragment ('#')")]
    QueryOrFragment,
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let rest = pattern
            .strip_prefix('/')
            .ok_or(PatternError::NoLeadingSlash)?;
        if pattern.contains(['?', '#']) {
            return Err(PatternError::QueryOrFragment);
        }
        let raw: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, seg) in raw.iter().enumerate() {
            segments.push(match *seg {
                "**" if i + 1 == raw.len() => Segment::Rest,
                "**" => return Err(PatternError::RestNotLast),
                "*" => Segment::One,
                s if s.contains('*') => return Err(PatternError::PartialWildcard(s.to_owned())),
                s => Segment::Literal(s.to_owned()),
            });
        }
        Ok(Self { segments })
    }

    /// `path` is the raw request path without the query, compared byte for byte.
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return true,
                Segment::One => match parts.next() {
                    Some(part) if !part.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(literal) => match parts.next() {
                    Some(part) if part == literal => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

/// A compiled [`RequestMatch`].
#[derive(Clone, Debug)]
pub struct Matcher {
    methods: Vec<Method>,
    path: Option<PathPattern>,
}

impl Matcher {
    pub fn compile(spec: &RequestMatch) -> Result<Self, MatchError> {
        let methods = spec
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| MatchError::Method(m.clone()))
            })
            .collect::<Result<_, _>>()?;
        let path = spec
            .path
            .as_deref()
            .map(PathPattern::parse)
            .transpose()
            .map_err(|e| MatchError::Path(spec.path.clone().unwrap_or_default(), e))?;
        Ok(Self { methods, path })
    }

    pub fn matches(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self.path.as_ref().is_none_or(|p| p.matches(path))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error("{0:?} is not an HTTP method")]
    Method(String),
    #[error("path {0:?}: {1}")]
    Path(String, PatternError),
}

/// The endpoint label for requests no endpoint or limit names.
pub const DEFAULT_ENDPOINT: &str = "default";

/// What the pipeline needs to know about one request's place in the config.
#[derive(Clone, Debug)]
pub struct Route {
    pub endpoint: Arc<str>,
    /// The endpoint's metric series, resolved once per route.
    pub series: Arc<EndpointSeries>,
    /// The limiter slots of the rate limits that apply; all must admit.
    pub limits: Vec<usize>,
    pub cache_ttl: Option<Duration>,
    pub attempt_timeout: Duration,
    pub total_timeout: Duration,
    /// From the response headers to the end of the response body.
    pub body_timeout: Duration,
}

/// A named route with its timeout overrides.
#[derive(Debug)]
struct Endpoint {
    name: Arc<str>,
    matcher: Matcher,
    timeout: Option<Duration>,
    total_timeout: Option<Duration>,
}

/// Which rules a request matched: the endpoint, the limits (a bit each, in
/// config order; at most 32 by the CRD) and the cache rule. Requests that
/// match the same rules share one [`Route`].
type Matched = (Option<usize>, u64, Option<usize>);

/// At most this many distinct routes are remembered; others are built per request.
const ROUTE_MEMO: usize = 1024;

/// The compiled routing table of one integration.
#[derive(Debug)]
pub struct Router {
    endpoints: Vec<Endpoint>,
    /// Name, matcher and the limiter slot of each rate limit.
    limits: Vec<(Arc<str>, Matcher, usize)>,
    cache: Vec<(Matcher, Duration)>,
    attempt_timeout: Duration,
    total_timeout: Duration,
    body_timeout: Duration,
    default_endpoint: Arc<str>,
    series: HashMap<Arc<str>, Arc<EndpointSeries>>,
    /// Looked up once per request: foldhash, not SipHash (~300 instructions
    /// a request). The keys are rule indices, not attacker-chosen bytes.
    memo: std::sync::RwLock<HashMap<Matched, Arc<Route>, foldhash::fast::RandomState>>,
}

impl Router {
    /// Compiles the config's matchers; `metrics` gets a series per endpoint.
    pub fn new(config: &IntegrationConfig, metrics: &Metrics) -> Result<Self, MatchError> {
        let mut router = Self {
            endpoints: config
                .endpoints
                .iter()
                .map(|e| {
                    Ok(Endpoint {
                        name: Arc::from(e.name.as_str()),
                        matcher: Matcher::compile(&e.matches)?,
                        timeout: e.timeout.map(|d| d.get()),
                        total_timeout: e.total_timeout.map(|d| d.get()),
                    })
                })
                .collect::<Result<_, MatchError>>()?,
            limits: config
                .rate_limits
                .iter()
                .enumerate()
                .map(|(slot, l)| {
                    Ok((
                        Arc::from(l.name.as_str()),
                        Matcher::compile(&l.matches)?,
                        slot,
                    ))
                })
                .collect::<Result<_, MatchError>>()?,
            cache: config
                .cache
                .rules
                .iter()
                .map(|c| Ok((Matcher::compile(&c.matches)?, c.ttl.get())))
                .collect::<Result<_, MatchError>>()?,
            attempt_timeout: config.upstream.timeout.get(),
            total_timeout: config.upstream.total_timeout.get(),
            body_timeout: config.upstream.body_timeout.get(),
            default_endpoint: Arc::from(DEFAULT_ENDPOINT),
            series: HashMap::new(),
            memo: Default::default(),
        };
        let integration: Arc<str> = Arc::from(config.name.as_str());
        router.series = router
            .endpoint_names()
            .into_iter()
            .map(|endpoint| {
                let labels = EndpointLabels {
                    integration: integration.clone(),
                    endpoint: endpoint.clone(),
                };
                (endpoint, Arc::new(EndpointSeries::new(metrics, &labels)))
            })
            .collect();
        Ok(router)
    }

    /// Every endpoint label value a request can get.
    pub fn endpoint_names(&self) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = self
            .endpoints
            .iter()
            .map(|e| e.name.clone())
            .chain(self.limits.iter().map(|(name, _, _)| name.clone()))
            .collect();
        names.push(self.default_endpoint.clone());
        names.sort();
        names.dedup();
        names
    }

    /// Points the rate limits at the limiter slots a reconfigured limiter
    /// gave them (`slots[i]` for the config's `rateLimits[i]`).
    pub fn with_limit_slots(mut self, slots: &[usize]) -> Self {
        for (limit, &slot) in self.limits.iter_mut().zip(slots) {
            limit.2 = slot;
        }
        self
    }

    /// Endpoint: the first matching endpoint, else the first matching limit's name.
    pub fn route(&self, method: &Method, path: &str) -> Arc<Route> {
        let cacheable = method == Method::GET || method == Method::HEAD;
        let matched: Matched = (
            self.endpoints
                .iter()
                .position(|e| e.matcher.matches(method, path)),
            self.limits
                .iter()
                .enumerate()
                .filter(|(_, (_, m, _))| m.matches(method, path))
                .fold(0u64, |bits, (i, _)| bits | 1 << i),
            cacheable
                .then(|| self.cache.iter().position(|(m, _)| m.matches(method, path)))
                .flatten(),
        );
        if let Some(route) = self.memo.read().expect("route memo").get(&matched) {
            return route.clone();
        }
        let route = Arc::new(self.build(matched));
        let mut memo = self.memo.write().expect("route memo");
        if memo.len() < ROUTE_MEMO {
            memo.insert(matched, route.clone());
        }
        route
    }

    fn build(&self, (endpoint, limit_bits, cache): Matched) -> Route {
        let endpoint = endpoint.map(|i| &self.endpoints[i]);
        let matched: Vec<&(Arc<str>, Matcher, usize)> = self
            .limits
            .iter()
            .enumerate()
            .filter(|(i, _)| limit_bits & (1 << i) != 0)
            .map(|(_, l)| l)
            .collect();
        let name = match (endpoint, matched.first()) {
            (Some(e), _) => e.name.clone(),
            (None, Some((limit, _, _))) => limit.clone(),
            (None, None) => self.default_endpoint.clone(),
        };
        Route {
            series: self.series[&name].clone(),
            endpoint: name,
            limits: matched.iter().map(|(_, _, slot)| *slot).collect(),
            cache_ttl: cache.map(|i| self.cache[i].1),
            attempt_timeout: endpoint
                .and_then(|e| e.timeout)
                .unwrap_or(self.attempt_timeout),
            total_timeout: endpoint
                .and_then(|e| e.total_timeout)
                .unwrap_or(self.total_timeout),
            body_timeout: self.body_timeout,
        }
    }
}

/// Priority in a rate-limit queue, from the `x-sluice-priority` request header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

pub const PRIORITY_HEADER: HeaderName = HeaderName::from_static("x-sluice-priority");

impl Priority {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, String> {
        let Some(value) = headers.get(PRIORITY_HEADER) else {
            return Ok(Priority::Normal);
        };
        match value.as_bytes() {
            b"high" => Ok(Priority::High),
            b"normal" => Ok(Priority::Normal),
            b"low" => Ok(Priority::Low),
            other => Err(format!(
                "header {PRIORITY_HEADER}: {:?} is not a priority (use high, normal or low)",
                String::from_utf8_lossy(other)
            )),
        }
    }
}

/// Per-request facts every layer may read, passed alongside the request.
#[derive(Debug)]
pub struct RequestContext {
    /// From the app's `x-request-id`, else generated; echoed on the response.
    pub request_id: HeaderValue,
    pub route: Arc<Route>,
    pub priority: Priority,
    pub deadline: Instant,
    /// Where an attempt gives the request head back for the next one.
    pub replay: Replay,
    /// The idempotency key Sluice added (the app sent none): the edge
    /// returns it on the response, whatever the outcome.
    pub added_idempotency_key: std::sync::OnceLock<(HeaderName, HeaderValue)>,
    /// How many more times the request may be sent upstream, counting the
    /// pool's resend after a stale connection: `retry.maxAttempts` bounds
    /// every send, not only the retry loop's.
    pub sends: SendBudget,
}

/// Sends left for one request (1 unless the retry step sets more).
#[derive(Debug)]
pub struct SendBudget(std::sync::atomic::AtomicU32);

impl Default for SendBudget {
    fn default() -> Self {
        Self(1.into())
    }
}

impl SendBudget {
    pub fn set(&self, sends: u32) {
        self.0.store(sends, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn left(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes one send; `false` when none is left.
    pub fn take(&self) -> bool {
        self.0
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |left| left.checked_sub(1),
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_rest_wildcards() {
        let p = PathPattern::parse("/v1/shipments/*/tracking").unwrap();
        assert!(p.matches("/v1/shipments/123/tracking"));
        assert!(!p.matches("/v1/shipments//tracking"));
        assert!(!p.matches("/v1/shipments/123/tracking/x"));
        assert!(!p.matches("/v1/shipments/123"));
        let rest = PathPattern::parse("/v1/**").unwrap();
        assert!(rest.matches("/v1"));
        assert!(rest.matches("/v1/a/b/c"));
        assert!(!rest.matches("/v2/a"));
        let root = PathPattern::parse("/**").unwrap();
        assert!(root.matches("/anything/at/all"));
        let exact = PathPattern::parse("/v1/charges").unwrap();
        assert!(exact.matches("/v1/charges"));
        assert!(!exact.matches("/v1/charges/"));
        assert!(!exact.matches("/v1/Charges"));
    }

    #[test]
    fn encoded_paths_compare_raw() {
        let p = PathPattern::parse("/files/a%2Fb").unwrap();
        assert!(p.matches("/files/a%2Fb"));
        assert!(!p.matches("/files/a/b"));
    }

    #[test]
    fn bad_patterns() {
        assert_eq!(PathPattern::parse("v1"), Err(PatternError::NoLeadingSlash));
        assert_eq!(PathPattern::parse("/**/x"), Err(PatternError::RestNotLast));
        assert!(matches!(
            PathPattern::parse("/v1/ship*"),
            Err(PatternError::PartialWildcard(_))
        ));
        assert_eq!(
            PathPattern::parse("/a?b=1"),
            Err(PatternError::QueryOrFragment)
        );
    }

    #[test]
    fn methods_and_priorities() {
        let m = Matcher::compile(&RequestMatch {
            methods: vec!["get".into()],
            path: None,
        })
        .unwrap();
        assert!(m.matches(&Method::GET, "/x"));
        assert!(!m.matches(&Method::POST, "/x"));
        let mut headers = HeaderMap::new();
        assert_eq!(Priority::from_headers(&headers), Ok(Priority::Normal));
        headers.insert(PRIORITY_HEADER, "high".parse().unwrap());
        assert_eq!(Priority::from_headers(&headers), Ok(Priority::High));
        headers.insert(PRIORITY_HEADER, "urgent".parse().unwrap());
        assert!(
            Priority::from_headers(&headers)
                .unwrap_err()
                .contains(PRIORITY_HEADER.as_str())
        );
    }
}
