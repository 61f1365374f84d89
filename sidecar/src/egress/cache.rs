//! A bounded response cache for matched GET endpoints (e.g. tracking lookups
//! a provider limits to 20 a minute). Keyed by method, path and query, plus
//! the Accept headers; honours `Cache-Control: no-store` both ways.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;

use super::body::ProxyBody;
use super::route::RequestContext;
use super::step::{Next, PipelineResult, Step};
use super::tee::{Copied, TeeBody};
use crate::config::CacheConfig;
use crate::metrics::{Metrics, Name, ResultLabels};

pub const CACHE_HEADER: http::HeaderName = http::HeaderName::from_static("x-sluice-cache");

struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored_at: Instant,
    expires_at: Instant,
}

impl Entry {
    fn size(&self) -> u64 {
        self.body.len() as u64
            + self
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
                .sum::<u64>()
    }
}

struct Store {
    entries: HashMap<String, Entry>,
    /// Insertion order, for eviction; keys may be stale (already replaced).
    order: VecDeque<(String, Instant)>,
    bytes: u64,
}

pub struct ResponseCache {
    store: Mutex<Store>,
    max_entries: usize,
    max_bytes: u64,
    max_entry_bytes: u64,
    integration: Name,
    metrics: Metrics,
}

fn cache_control_has(headers: &HeaderMap, directive: &str) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case(directive))
}

fn max_age(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| {
            let (name, value) = d.trim().split_once('=')?;
            name.eq_ignore_ascii_case("max-age")
                .then(|| value.trim().parse::<u64>().ok())
                .flatten()
        })
        .map(Duration::from_secs)
        .next()
}

impl ResponseCache {
    pub fn new(config: &CacheConfig, integration: Name, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            store: Mutex::new(Store {
                entries: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            }),
            max_entries: config.max_entries as usize,
            max_bytes: config.max_bytes,
            max_entry_bytes: config.max_entry_bytes,
            integration,
            metrics,
        })
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .cache
            .get_or_create(&ResultLabels {
                integration: self.integration.clone(),
                result,
            })
            .inc();
    }

    fn key(request: &Request<ProxyBody>) -> String {
        let header = |name| {
            request
                .headers()
                .get(name)
                .map_or(&b""[..], HeaderValue::as_bytes)
                .escape_ascii()
                .to_string()
        };
        format!(
            "{} {}\n{}\n{}",
            request.method(),
            request.uri().path_and_query().map_or("/", |p| p.as_str()),
            header(header::ACCEPT),
            header(header::ACCEPT_ENCODING)
        )
    }

    fn lookup(&self, key: &str, now: Instant) -> Option<Response<ProxyBody>> {
        let store = self.store.lock().expect("cache lock poisoned");
        let entry = store.entries.get(key).filter(|e| now < e.expires_at)?;
        let mut response = Response::new(ProxyBody::full(entry.body.clone()));
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers.clone();
        let age = now.duration_since(entry.stored_at).as_secs();
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        response
            .headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static("hit"));
        Some(response)
    }

    fn insert(&self, key: String, entry: Entry) {
        let size = entry.size();
        if size > self.max_entry_bytes || size > self.max_bytes {
            return;
        }
        let mut store = self.store.lock().expect("cache lock poisoned");
        let now = entry.stored_at;
        if let Some(old) = store.entries.remove(&key) {
            store.bytes -= old.size();
        }
        // Evict the oldest (expired or not) until the new entry fits.
        while store.entries.len() >= self.max_entries || store.bytes + size > self.max_bytes {
            let Some((old_key, stored_at)) = store.order.pop_front() else {
                break;
            };
            if store
                .entries
                .get(&old_key)
                .is_some_and(|e| e.stored_at == stored_at)
                && let Some(old) = store.entries.remove(&old_key)
            {
                store.bytes -= old.size();
            }
        }
        store.bytes += size;
        store.order.push_back((key.clone(), now));
        store.entries.insert(key, entry);
        // Keep the order queue from growing without bound through replacements.
        if store.order.len() > 2 * store.entries.len() + 64 {
            let entries = &store.entries;
            let kept: VecDeque<_> = store
                .order
                .iter()
                .filter(|(k, t)| entries.get(k).is_some_and(|e| e.stored_at == *t))
                .cloned()
                .collect();
            store.order = kept;
        }
    }

    pub fn len(&self) -> usize {
        self.store
            .lock()
            .expect("cache lock poisoned")
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pipeline step: answers hits, stores cacheable misses on their way back.
#[derive(Clone)]
pub struct CacheStep {
    cache: Arc<ResponseCache>,
}

impl CacheStep {
    pub fn new(cache: Arc<ResponseCache>) -> Self {
        Self { cache }
    }
}

impl Step for CacheStep {
    async fn call<S: Next>(
        &self,
        request: Request<ProxyBody>,
        ctx: &RequestContext,
        next: &S,
    ) -> PipelineResult {
        let cache = &self.cache;
        let Some(ttl) = ctx.route.cache_ttl else {
            return next.call(request, ctx).await;
        };
        if cache_control_has(request.headers(), "no-store") {
            cache.count("bypass");
            return next.call(request, ctx).await;
        }
        let key = ResponseCache::key(&request);
        // `no-cache` asks for a fresh answer, which may then be stored.
        if !cache_control_has(request.headers(), "no-cache")
            && let Some(hit) = cache.lookup(&key, Instant::now())
        {
            cache.count("hit");
            return Ok(hit);
        }
        cache.count("miss");
        let response = next.call(request, ctx).await?;
        let headers = response.headers();
        let storable = response.status() == StatusCode::OK
            && !cache_control_has(headers, "no-store")
            && !cache_control_has(headers, "no-cache")
            && !cache_control_has(headers, "private")
            && !headers.contains_key(header::SET_COOKIE)
            && headers.get(header::VARY).is_none_or(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',').all(|name| {
                        let name = name.trim();
                        name.eq_ignore_ascii_case("accept")
                            || name.eq_ignore_ascii_case("accept-encoding")
                    })
                })
            })
            && response
                .body()
                .size_hint()
                .upper()
                .is_none_or(|n| n <= cache.max_entry_bytes);
        if !storable {
            return Ok(response);
        }
        let ttl = max_age(response.headers()).map_or(ttl, |age| age.min(ttl));
        let (parts, body) = response.into_parts();
        let (status, stored_headers) = (parts.status, parts.headers.clone());
        let store = cache.clone();
        let tee = TeeBody::new(
            body,
            cache.max_entry_bytes,
            Box::new(move |copied| {
                let Copied::Whole(bytes) = copied else {
                    return;
                };
                let now = Instant::now();
                store.insert(
                    key,
                    Entry {
                        status,
                        headers: stored_headers,
                        body: bytes,
                        stored_at: now,
                        expires_at: now + ttl,
                    },
                );
                store.count("store");
            }),
        );
        Ok(Response::from_parts(parts, ProxyBody::boxed(tee)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8], now: Instant, ttl: u64) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body),
            stored_at: now,
            expires_at: now + Duration::from_secs(ttl),
        }
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let config = CacheConfig {
            rules: vec![],
            max_entries: 2,
            max_bytes: 10,
            max_entry_bytes: 8,
        };
        let cache = ResponseCache::new(&config, Arc::from("t"), Metrics::new());
        let now = Instant::now();
        cache.insert("a".into(), entry(b"1111", now, 60));
        cache.insert("b".into(), entry(b"2222", now, 60));
        cache.insert("c".into(), entry(b"3333", now, 60));
        assert_eq!(cache.len(), 2);
        assert!(cache.lookup("a", now).is_none(), "oldest evicted");
        assert!(cache.lookup("c", now).is_some());
        cache.insert("big".into(), entry(b"123456789", now, 60));
        assert!(cache.lookup("big", now).is_none(), "over maxEntryBytes");
        assert!(
            cache.lookup("c", now + Duration::from_secs(61)).is_none(),
            "expired"
        );
    }

    #[test]
    fn directives() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            "public, max-age=30, No-Store".parse().unwrap(),
        );
        assert!(cache_control_has(&h, "no-store"));
        assert_eq!(max_age(&h), Some(Duration::from_secs(30)));
    }
}
