//! Test providers that enforce their own rate limit and say so in each
//! header dialect Sluice reads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Response;
use http_body_util::Full;
use hyper::body::Bytes;
use tokio::time::Instant;

use super::{Handler, handler, respond};

/// How an upstream spells "`remaining` left, the window resets in `reset`".
#[derive(Clone, Copy, Debug)]
pub enum Dialect {
    Structured,
    RateLimitFields,
    XRateLimitEpoch,
}

impl Dialect {
    pub fn headers(
        self,
        quota: u64,
        remaining: u64,
        reset: Duration,
    ) -> Vec<(&'static str, String)> {
        let secs = reset.as_secs_f64().ceil() as u64;
        match self {
            Dialect::Structured => vec![
                ("ratelimit-policy", format!("\"window\";q={quota};w=2")),
                ("ratelimit", format!("\"window\";r={remaining};t={secs}")),
            ],
            Dialect::RateLimitFields => vec![
                ("ratelimit-limit", quota.to_string()),
                ("ratelimit-remaining", remaining.to_string()),
                ("ratelimit-reset", secs.to_string()),
            ],
            Dialect::XRateLimitEpoch => {
                let at = SystemTime::now() + reset;
                let epoch = at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64().ceil();
                vec![
                    ("x-ratelimit-limit", quota.to_string()),
                    ("x-ratelimit-remaining", remaining.to_string()),
                    ("x-ratelimit-reset", format!("{epoch}")),
                ]
            }
        }
    }
}

/// A provider with fixed windows of `WINDOW`: the first allows `FIRST`
/// requests, the later ones plenty; over the quota it answers 429.
struct Windows {
    started: Option<Instant>,
    in_window: Vec<u64>,
}

pub const WINDOW: Duration = Duration::from_secs(2);
pub const FIRST: u64 = 4;
pub const LATER: u64 = 100_000;

pub fn respond_with(status: u16, headers: Vec<(&'static str, String)>) -> Response<Full<Bytes>> {
    let mut response = respond(status, "{}");
    for (name, value) in headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

pub fn windowed_upstream(dialect: Dialect) -> Handler {
    let windows = Arc::new(Mutex::new(Windows {
        started: None,
        in_window: Vec::new(),
    }));
    handler(move |seen, _| {
        let windows = windows.clone();
        async move {
            let mut w = windows.lock().unwrap();
            let started = *w.started.get_or_insert(seen.at);
            let index = ((seen.at - started).as_secs_f64() / WINDOW.as_secs_f64()) as usize;
            if w.in_window.len() <= index {
                w.in_window.resize(index + 1, 0);
            }
            w.in_window[index] += 1;
            let quota = if index == 0 { FIRST } else { LATER };
            let used = w.in_window[index];
            let reset = (started + WINDOW * (index as u32 + 1)).saturating_duration_since(seen.at);
            if used > quota {
                return respond_with(429, dialect.headers(quota, 0, reset));
            }
            respond_with(200, dialect.headers(quota, quota - used, reset))
        }
    })
}
