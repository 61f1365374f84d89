//! Reading webhook bodies before they are verified. Anyone can connect to
//! the webhook port, so what an unsigned sender can hold is bounded: bytes
//! in memory across all bodies being read (with room kept for small bodies,
//! which real webhooks are), the time a body may take, and the rate it must
//! arrive at. Past a bound the sender gets an answer and a close, not a
//! connection held open.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::metrics::Received;

/// Bodies up to this size are small: they may use the whole budget, and the
/// part large bodies may not take is kept for them.
pub const SMALL_BODY: u64 = 64 * 1024;

/// How a body is read.
#[derive(Clone, Copy, Debug)]
pub struct IntakeLimits {
    /// One body at most (413 past it).
    pub max_body: u64,
    /// All bodies being read or verified, together.
    pub budget: u64,
    /// From the request head to the end of its body.
    pub timeout: Duration,
    /// Bytes a second a body must average once `RATE_GRACE` has passed.
    pub min_rate: u64,
}

/// A body slower than the minimum rate is only cut after this long: a
/// first packet may take a moment.
const RATE_GRACE: Duration = Duration::from_secs(2);

/// Large bodies together may hold this fraction of the budget.
const LARGE_SHARE_PERCENT: u64 = 75;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    #[error("the webhook body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the bytes held for unverified webhook bodies are at their bound")]
    Busy,
    #[error("the webhook body did not arrive in time")]
    TooSlow,
    #[error("the webhook body could not be read")]
    Unreadable,
}

impl IntakeError {
    /// The `result` label of `sluice_webhook_received_total`.
    pub fn result_label(&self) -> Received {
        match self {
            IntakeError::TooLarge(_) => Received::TooLarge,
            IntakeError::Busy => Received::Busy,
            IntakeError::TooSlow => Received::TooSlow,
            IntakeError::Unreadable => Received::Unreadable,
        }
    }
}

#[derive(Default)]
struct Held {
    total: u64,
    large: u64,
    /// `sluice_webhook_unverified_bytes`, kept equal to `total`.
    gauge: Gauge,
}

impl Held {
    fn set(&mut self, total: u64, large: u64) {
        (self.total, self.large) = (total, large);
        self.gauge.set(total as i64);
    }
}

/// The bytes held for unverified bodies, shared by the webhook port.
pub struct Intake {
    limits: IntakeLimits,
    held: Arc<Mutex<Held>>,
}

impl Intake {
    pub fn new(limits: IntakeLimits, gauge: Gauge) -> Self {
        Self {
            limits,
            held: Arc::new(Mutex::new(Held {
                gauge,
                ..Held::default()
            })),
        }
    }

    pub fn limits(&self) -> IntakeLimits {
        self.limits
    }

    /// Bytes held right now (for the gauge).
    pub fn held(&self) -> u64 {
        self.held.lock().expect("intake lock").total
    }

    /// Reads `body` (`declared`: its Content-Length) within the limits. The
    /// bytes stay counted until the returned [`Unverified`] is dropped.
    pub async fn read(
        &self,
        mut body: Incoming,
        declared: Option<u64>,
        started: Instant,
    ) -> Result<Unverified, IntakeError> {
        let limits = self.limits;
        if declared.is_some_and(|n| n > limits.max_body) {
            return Err(IntakeError::TooLarge(limits.max_body));
        }
        let mut reservation = Reservation {
            held: self.held.clone(),
            bytes: 0,
            large: false,
            large_cap: limits.budget * LARGE_SHARE_PERCENT / 100,
            budget: limits.budget,
        };
        // A declared length is reserved whole, up front: the sender cannot
        // make the others wait by sending it slowly.
        if let Some(length) = declared {
            reservation.grow(length)?;
        }
        let mut bytes = BytesMut::with_capacity(declared.unwrap_or(0).min(SMALL_BODY) as usize);
        let deadline = started + limits.timeout;
        let mut check = tokio::time::interval_at(started + RATE_GRACE, Duration::from_millis(500));
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                _ = tokio::time::sleep_until(deadline) => return Err(IntakeError::TooSlow),
                _ = check.tick() => {
                    let elapsed = started.elapsed().as_secs_f64();
                    if (bytes.len() as f64) < limits.min_rate as f64 * elapsed {
                        return Err(IntakeError::TooSlow);
                    }
                    continue;
                }
            };
            let Some(frame) = frame else { break };
            let Ok(data) = frame.map_err(|_| IntakeError::Unreadable)?.into_data() else {
                continue; // trailers: not part of what is signed
            };
            let length = (bytes.len() + data.len()) as u64;
            if length > limits.max_body {
                return Err(IntakeError::TooLarge(limits.max_body));
            }
            if length > reservation.bytes {
                reservation.grow(length - reservation.bytes)?;
            }
            bytes.extend_from_slice(&data);
        }
        Ok(Unverified {
            bytes: bytes.freeze(),
            _reservation: reservation,
        })
    }
}

/// A body read whole, not yet verified; its bytes count against the budget
/// while this lives.
pub struct Unverified {
    pub bytes: Bytes,
    _reservation: Reservation,
}

/// One body's share of the budget, given back on drop.
struct Reservation {
    held: Arc<Mutex<Held>>,
    bytes: u64,
    large: bool,
    large_cap: u64,
    budget: u64,
}

impl Reservation {
    /// Takes `more` bytes; a body that stops being small takes its bytes so
    /// far from the large share too.
    fn grow(&mut self, more: u64) -> Result<(), IntakeError> {
        let mut held = self.held.lock().expect("intake lock");
        let bytes = self.bytes + more;
        let becomes_large = bytes > SMALL_BODY;
        let large_more = match (self.large, becomes_large) {
            (true, _) => more,
            (false, true) => bytes,
            (false, false) => 0,
        };
        if held.total + more > self.budget || held.large + large_more > self.large_cap {
            return Err(IntakeError::Busy);
        }
        let (total, large) = (held.total + more, held.large + large_more);
        held.set(total, large);
        self.bytes = bytes;
        self.large = becomes_large;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("intake lock");
        let large = if self.large { self.bytes } else { 0 };
        let (total, large) = (held.total - self.bytes, held.large - large);
        held.set(total, large);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(held: &Arc<Mutex<Held>>, budget: u64) -> Reservation {
        Reservation {
            held: held.clone(),
            bytes: 0,
            large: false,
            large_cap: budget * LARGE_SHARE_PERCENT / 100,
            budget,
        }
    }

    #[test]
    fn large_bodies_leave_a_quarter_of_the_budget_to_small_ones() {
        let held = Arc::default();
        let budget = 1 << 20;
        let mut large = Vec::new();
        loop {
            let mut r = reservation(&held, budget);
            if r.grow(200 * 1024).is_err() {
                break;
            }
            large.push(r);
        }
        assert_eq!(large.len(), 3, "3 x 200 KiB fit in 768 KiB");
        // Small bodies still fit, up to the whole budget.
        let mut small = Vec::new();
        for _ in 0..6 {
            let mut r = reservation(&held, budget);
            r.grow(SMALL_BODY).unwrap();
            small.push(r);
        }
        assert_eq!(
            reservation(&held, budget).grow(SMALL_BODY),
            Err(IntakeError::Busy),
            "the budget is spent"
        );
        drop(large);
        drop(small);
        let held = held.lock().unwrap();
        assert_eq!((held.total, held.large), (0, 0), "all given back");
    }

    #[test]
    fn a_body_growing_past_small_moves_to_the_large_share() {
        let held = Arc::default();
        let budget = 400 * 1024;
        let mut r = reservation(&held, budget);
        r.grow(SMALL_BODY).unwrap();
        assert_eq!(held.lock().unwrap().large, 0);
        r.grow(1).unwrap();
        assert_eq!(held.lock().unwrap().large, SMALL_BODY + 1);
        assert_eq!(r.grow(budget), Err(IntakeError::Busy));
        assert_eq!(
            held.lock().unwrap().total,
            SMALL_BODY + 1,
            "a refusal takes nothing"
        );
        drop(r);
        assert_eq!(held.lock().unwrap().total, 0);
    }
}
