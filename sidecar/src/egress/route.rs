//! Which endpoint, limits, quotas, contracts and cache rule a request falls
//! under: a pure function of its method and path, computed once at the edge
//! of the pipeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

use super::replay::Replay;
use crate::config::{IntegrationConfig, PathPattern, RequestMatch};
use crate::metrics::{EndpointLabels, EndpointSeries, Metrics};

/// A compiled [`RequestMatch`].
#[derive(Clone, Debug)]
pub struct Matcher {
    methods: Vec<Method>,
    path: Option<PathPattern>,
}

impl Matcher {
    pub fn compile(spec: &RequestMatch) -> Self {
        Self {
            methods: spec.methods.iter().map(|m| m.get().clone()).collect(),
            path: spec.path.clone(),
        }
    }

    pub fn matches(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self.path.as_ref().is_none_or(|p| p.matches(path))
    }
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
    /// The quotas that count the request (indices in the config's order).
    pub quotas: Vec<usize>,
    /// The response contracts its answer is checked against (indices).
    pub contracts: Vec<usize>,
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

/// Which rules a request matched: the endpoint, the cache rule, and in one
/// set the rate limits, then the quotas, then the contracts. Requests that
/// match the same rules share one [`Route`]; one set keeps the memo's key
/// as small to hash as it was before quotas and contracts.
type Matched = (Option<usize>, Option<usize>, RuleSet);

/// The rules a request matched, a bit per rule in config order: inline up
/// to 64 (the CRD allows at most 32 limits, 16 quotas and 16 contracts), on
/// the heap past that.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RuleSet {
    Inline(u64),
    Spilled(Box<[u64]>),
}

impl RuleSet {
    fn of(matches: impl Iterator<Item = bool>, count: usize) -> Self {
        if count <= 64 {
            return RuleSet::Inline(
                matches
                    .enumerate()
                    .fold(0, |bits, (i, hit)| bits | (u64::from(hit) << i)),
            );
        }
        let mut words = vec![0u64; count.div_ceil(64)];
        for (i, hit) in matches.enumerate() {
            words[i / 64] |= u64::from(hit) << (i % 64);
        }
        RuleSet::Spilled(words.into_boxed_slice())
    }

    /// The matched rules' indices in `rules`, counted from its start.
    fn indices(&self, rules: std::ops::Range<usize>) -> Vec<usize> {
        let start = rules.start;
        rules
            .filter(|&i| self.contains(i))
            .map(|i| i - start)
            .collect()
    }

    fn contains(&self, i: usize) -> bool {
        match self {
            RuleSet::Inline(bits) => bits & (1 << i) != 0,
            RuleSet::Spilled(words) => words[i / 64] & (1 << (i % 64)) != 0,
        }
    }
}

/// At most this many distinct routes are remembered; others are built per request.
const ROUTE_MEMO: usize = 1024;

/// The compiled routing table of one integration.
#[derive(Debug)]
pub struct Router {
    endpoints: Vec<Endpoint>,
    /// Name, matcher and the limiter slot of each rate limit (set by name,
    /// [`Router::with_limit_slots`]).
    limits: Vec<(Arc<str>, Matcher, usize)>,
    quotas: Vec<Matcher>,
    contracts: Vec<Matcher>,
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
    pub fn new(config: &IntegrationConfig, metrics: &Metrics) -> Self {
        let mut router = Self {
            endpoints: config
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    name: Arc::from(e.name.as_str()),
                    matcher: Matcher::compile(&e.matches),
                    timeout: e.timeout.map(|d| d.get()),
                    total_timeout: e.total_timeout.map(|d| d.get()),
                })
                .collect(),
            limits: config
                .rate_limits
                .iter()
                .map(|l| {
                    (
                        Arc::from(l.name.as_str()),
                        Matcher::compile(&l.matches),
                        usize::MAX,
                    )
                })
                .collect(),
            quotas: config
                .quotas
                .iter()
                .map(|q| Matcher::compile(&q.matches))
                .collect(),
            contracts: config
                .contracts
                .iter()
                .map(|c| Matcher::compile(&c.matches))
                .collect(),
            cache: config
                .cache
                .rules
                .iter()
                .map(|c| (Matcher::compile(&c.matches), c.ttl.get()))
                .collect(),
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
        router
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

    /// Points each rate limit at the limiter slot its name has (the rate
    /// limiter's `reconfigure` gives every configured name one).
    pub fn with_limit_slots(mut self, slots: &HashMap<Arc<str>, usize>) -> Self {
        for (name, _, slot) in &mut self.limits {
            *slot = slots[name];
        }
        self
    }

    /// Endpoint: the first matching endpoint, else the first matching limit's name.
    pub fn route(&self, method: &Method, path: &str) -> Arc<Route> {
        let cacheable = method == Method::GET || method == Method::HEAD;
        let rules = self
            .limits
            .iter()
            .map(|(_, m, _)| m)
            .chain(&self.quotas)
            .chain(&self.contracts);
        let matched: Matched = (
            self.endpoints
                .iter()
                .position(|e| e.matcher.matches(method, path)),
            cacheable
                .then(|| self.cache.iter().position(|(m, _)| m.matches(method, path)))
                .flatten(),
            RuleSet::of(
                rules.map(|m| m.matches(method, path)),
                self.limits.len() + self.quotas.len() + self.contracts.len(),
            ),
        );
        if let Some(route) = self.memo.read().expect("route memo").get(&matched) {
            return route.clone();
        }
        let route = Arc::new(self.build(&matched));
        let mut memo = self.memo.write().expect("route memo");
        if memo.len() < ROUTE_MEMO {
            memo.insert(matched, route.clone());
        }
        route
    }

    fn build(&self, (endpoint, cache, rules): &Matched) -> Route {
        let endpoint = endpoint.map(|i| &self.endpoints[i]);
        let matched: Vec<&(Arc<str>, Matcher, usize)> = self
            .limits
            .iter()
            .enumerate()
            .filter(|(i, _)| rules.contains(*i))
            .map(|(_, l)| l)
            .collect();
        let quotas_start = self.limits.len();
        let contracts_start = quotas_start + self.quotas.len();
        let name = match (endpoint, matched.first()) {
            (Some(e), _) => e.name.clone(),
            (None, Some((limit, _, _))) => limit.clone(),
            (None, None) => self.default_endpoint.clone(),
        };
        Route {
            series: self.series[&name].clone(),
            endpoint: name,
            limits: matched.iter().map(|(_, _, slot)| *slot).collect(),
            quotas: rules.indices(quotas_start..contracts_start),
            contracts: rules.indices(contracts_start..contracts_start + self.contracts.len()),
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

    /// Past 64 limits the matched set spills to the heap; routing is the same.
    #[test]
    fn many_limits_route_by_name() {
        let mut config: IntegrationConfig = serde_yaml_ng::from_str(
            "name: many\nlisten: 127.0.0.1:0\nupstream: {baseUrl: 'https://x.example'}\n",
        )
        .unwrap();
        for i in 0..70 {
            let path = if i == 3 || i == 65 {
                "/v1/hot"
            } else {
                "/v1/cold"
            };
            config.rate_limits.push(
                serde_yaml_ng::from_str(&format!(
                    "{{name: l{i}, match: {{path: '{path}'}}, requests: 10, per: 1s, burst: 10}}"
                ))
                .unwrap(),
            );
        }
        let slots: HashMap<Arc<str>, usize> = (0..70)
            .map(|i| (Arc::from(format!("l{i}").as_str()), 1000 + i))
            .collect();
        let router = Router::new(&config, &Metrics::new()).with_limit_slots(&slots);
        let hot = router.route(&Method::GET, "/v1/hot");
        assert_eq!(hot.limits, vec![1003, 1065]);
        assert_eq!(&*hot.endpoint, "l3");
        let again = router.route(&Method::POST, "/v1/hot");
        assert_eq!(again.limits, hot.limits);
        assert_eq!(router.route(&Method::GET, "/v1/cold").limits.len(), 68);
    }

    /// Limits, quotas and contracts share one matched set: each kind's
    /// indices come back counted from its own start.
    #[test]
    fn limits_quotas_and_contracts_keep_their_own_indices() {
        let config: IntegrationConfig = serde_yaml_ng::from_str(
            "name: kinds
listen: 127.0.0.1:0
upstream: {baseUrl: 'https://x.example'}
rateLimits:
- {name: all, requests: 10, per: 1s, burst: 10}
- {name: orders, match: {path: '/v1/orders/*'}, requests: 10, per: 1s, burst: 10}
quotas:
- {name: shipments, match: {path: '/v1/shipments/*'}, limit: 10, per: 24h}
- {name: orders, match: {path: '/v1/orders/*'}, limit: 10, per: 24h}
contracts:
- {name: order, match: {path: '/v1/orders/*'}, schema: {type: object}}
- {name: any, schema: {type: object}}
",
        )
        .unwrap();
        let slots: HashMap<Arc<str>, usize> =
            [(Arc::from("all"), 7), (Arc::from("orders"), 9)].into();
        let router = Router::new(&config, &Metrics::new()).with_limit_slots(&slots);
        let order = router.route(&Method::GET, "/v1/orders/1");
        assert_eq!(
            (
                order.limits.clone(),
                order.quotas.clone(),
                order.contracts.clone()
            ),
            (vec![7, 9], vec![1], vec![0, 1])
        );
        let shipment = router.route(&Method::GET, "/v1/shipments/1");
        assert_eq!(
            (
                shipment.limits.clone(),
                shipment.quotas.clone(),
                shipment.contracts.clone()
            ),
            (vec![7], vec![0], vec![1])
        );
    }

    #[test]
    fn methods_and_priorities() {
        let m = Matcher::compile(&RequestMatch {
            methods: vec!["GET".parse().unwrap()],
            path: None,
        });
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
