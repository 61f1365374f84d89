//! Which value of a static credential a request is sent with while keys
//! rotate. Secret files change one at a time and providers switch keys on
//! their own schedule, so for a while the current value may be refused:
//!
//! - a value the current one replaced stays a fallback for the rotation
//!   grace (as does the configured previous key, until its `validUntil`);
//! - a 401 with the first key is sent again with the next (at most
//!   [`MAX_KEYS`] sends);
//! - once a fallback was accepted and the current value refused, the
//!   fallback goes first and the current value is probed at most once per
//!   [`PROBE_EVERY`], so a wrong new key costs one extra call a second, not
//!   one per request. The gauge `sluice_credential_fallback_active` is 1
//!   meanwhile (an alert), and the warning is written once a minute.

use std::sync::Mutex;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use super::credential::{Static, build_header};
use super::error::ProxyError;
use crate::secrets::{Secret, SecretValue};

/// Keys tried for one request at most: the first and two fallbacks.
pub const MAX_KEYS: usize = 3;
/// How often the refused current value is tried first again.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Replaced values kept as fallbacks (the newest ones).
const RETIRED_KEPT: usize = 2;
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A secret value and the header it makes.
#[derive(Clone)]
pub struct Key {
    value: SecretValue,
    pub header: (HeaderName, HeaderValue),
}

/// The keys a request is sent with, in order.
pub enum Plan {
    /// Nothing is rotating: the current key alone.
    Quiet((HeaderName, HeaderValue)),
    /// The first key, then fallbacks after a 401.
    Ordered(Vec<Key>),
}

struct Built {
    key: Key,
    username: Option<SecretValue>,
}

struct Preferred {
    key: Key,
    probed_at: Instant,
}

#[derive(Default)]
struct State {
    current: Option<Built>,
    /// Values `current` replaced, newest first, with when.
    retired: Vec<(Key, Instant)>,
    /// Sent first while the current value is refused.
    preferred: Option<Preferred>,
    warned_at: Option<Instant>,
    unwarned: u64,
}

/// One static credential's values over time.
pub struct KeyRing {
    grace: Duration,
    integration: crate::metrics::Name,
    active: Gauge,
    state: Mutex<State>,
}

impl KeyRing {
    pub fn new(grace: Duration, integration: crate::metrics::Name, active: Gauge) -> Self {
        active.set(0);
        Self {
            grace,
            integration,
            active,
            state: Mutex::default(),
        }
    }

    /// The keys for the next request: the current header is built once per
    /// secret value; `previous` is the configured previous key, while valid.
    pub fn plan(
        &self,
        kind: &Static,
        current: &Secret,
        previous: Option<&Secret>,
        now: Instant,
    ) -> Result<Plan, ProxyError> {
        let value = current.current();
        let username = kind.username();
        let mut state = self.state.lock().expect("key ring lock poisoned");
        let current_key = match &state.current {
            Some(built) if built.key.value == value && built.username == username => {
                built.key.clone()
            }
            _ => {
                let header = build_header(kind, &value, username.as_ref(), current.path())?;
                let key = Key { value, header };
                if let Some(old) = state.current.take()
                    && old.key.value != key.value
                {
                    state.retired.insert(0, (old.key, now));
                    state.retired.truncate(RETIRED_KEPT);
                }
                state.current = Some(Built {
                    key: key.clone(),
                    username,
                });
                key
            }
        };
        let grace = self.grace;
        state
            .retired
            .retain(|(key, at)| now.duration_since(*at) < grace && key.value != current_key.value);
        let previous = match previous {
            Some(secret) if secret.current() != current_key.value => Some(Key {
                value: secret.current(),
                header: build_header(
                    kind,
                    &secret.current(),
                    kind.username().as_ref(),
                    secret.path(),
                )?,
            }),
            _ => None,
        };
        // A preferred key that is no longer a fallback (its grace or
        // validity ended, or it became current) is dropped.
        let still_fallback = |key: &Key, state: &State| {
            key.value != current_key.value
                && (previous.as_ref().is_some_and(|p| p.value == key.value)
                    || state.retired.iter().any(|(r, _)| r.value == key.value))
        };
        if state
            .preferred
            .as_ref()
            .is_some_and(|p| !still_fallback(&p.key, &state))
        {
            state.preferred = None;
            self.active.set(0);
        }
        if state.preferred.is_none() && state.retired.is_empty() && previous.is_none() {
            return Ok(Plan::Quiet(current_key.header));
        }
        let mut keys = Vec::with_capacity(MAX_KEYS);
        match &mut state.preferred {
            Some(preferred) if now.duration_since(preferred.probed_at) < PROBE_EVERY => {
                keys.push(preferred.key.clone());
                keys.push(current_key);
            }
            Some(preferred) => {
                preferred.probed_at = now;
                keys.push(current_key);
                keys.push(preferred.key.clone());
            }
            None => keys.push(current_key),
        }
        let fallbacks = previous
            .into_iter()
            .chain(state.retired.iter().map(|(key, _)| key.clone()));
        for key in fallbacks {
            if keys.len() == MAX_KEYS {
                break;
            }
            if !keys.iter().any(|k| k.value == key.value) {
                keys.push(key);
            }
        }
        Ok(Plan::Ordered(keys))
    }

    /// The provider accepted `key` (answered other than 401).
    pub fn accepted(&self, key: &Key, now: Instant) {
        let mut state = self.state.lock().expect("key ring lock poisoned");
        let is_current = state
            .current
            .as_ref()
            .is_some_and(|c| c.key.value == key.value);
        if is_current {
            if state.preferred.take().is_some() {
                self.active.set(0);
                tracing::info!(integration = %self.integration, "the current key is accepted again; the fallback is no longer sent first");
            }
            return;
        }
        match &state.preferred {
            Some(p) if p.key.value == key.value => {}
            _ => {
                state.preferred = Some(Preferred {
                    key: key.clone(),
                    probed_at: now,
                });
                self.active.set(1);
            }
        }
        let due = state
            .warned_at
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
        if due {
            let suppressed = std::mem::take(&mut state.unwarned);
            state.warned_at = Some(now);
            tracing::warn!(integration = %self.integration, similar_since_last = suppressed, "the current key is refused with 401 and an older one accepted: the older one is sent first and the current one tried once a second; is the new key active at the provider?");
        } else {
            state.unwarned += 1;
        }
    }
}
