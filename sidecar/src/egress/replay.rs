//! The request head an attempt gives back, so the retry step can send it
//! again without copying it up front.
//!
//! A request goes down the pipeline by value, and most attempts succeed: a
//! copy made before every attempt "in case" (a header map cloned and
//! dropped, measured at ~1.8k instructions per request) is nearly always
//! wasted. Instead the retry step says it wants the head back, and the step
//! that ends up holding it — the client while it sends, the credential step
//! while it waits for a token — holds it in a [`Loan`], which puts it in the
//! request's [`Replay`] slot when the attempt ends, however it ends:
//! answered, failed, or dropped by the attempt timeout.
//!
//! The head comes back as the app's request plus what the steps below the
//! retry step added to it (the credential, the idempotency key); the target
//! is put back to the app's, since the client rewrites it per attempt.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use http::Uri;
use http::request::Parts;

/// One request's slot for its head, between attempts.
#[derive(Debug, Default)]
pub struct Replay {
    wanted: AtomicBool,
    head: Mutex<Option<Parts>>,
}

impl Replay {
    /// Whether the attempt about to start should give its head back.
    pub fn want(&self, wanted: bool) {
        self.wanted.store(wanted, Ordering::Relaxed);
    }

    /// The head the last attempt gave back, if it got far enough to hold it.
    pub fn take(&self) -> Option<Parts> {
        self.head.lock().expect("replay lock poisoned").take()
    }

    /// Whether the last attempt gave its head back (it stays in the slot).
    pub fn is_filled(&self) -> bool {
        self.head.lock().expect("replay lock poisoned").is_some()
    }

    /// Holds `head` for the length of an attempt; see [`Loan`].
    pub fn lend(&self, head: Parts) -> Loan<'_> {
        let target = self
            .wanted
            .load(Ordering::Relaxed)
            .then(|| head.uri.clone());
        Loan {
            head: Some(head),
            target,
            slot: self,
        }
    }
}

/// A request head in use by an attempt; when dropped it goes back to its
/// [`Replay`] slot if the retry step wants it (with the app's target), and
/// is freed otherwise.
pub struct Loan<'a> {
    /// `None` only once reclaimed.
    head: Option<Parts>,
    /// The app's target, kept only when the head will be given back.
    target: Option<Uri>,
    slot: &'a Replay,
}

impl Loan<'_> {
    /// Whether the head will be given back: if so, anything taken out of it
    /// must be copied, not moved.
    pub fn is_kept(&self) -> bool {
        self.target.is_some()
    }

    /// The head, to pass further down the pipeline, which lends it again.
    pub fn reclaim(mut self) -> Parts {
        self.head
            .take()
            .expect("a loan holds its head until reclaimed")
    }
}

impl Deref for Loan<'_> {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        self.head
            .as_ref()
            .expect("a loan holds its head until reclaimed")
    }
}

impl DerefMut for Loan<'_> {
    fn deref_mut(&mut self) -> &mut Parts {
        self.head
            .as_mut()
            .expect("a loan holds its head until reclaimed")
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if let Some(target) = self.target.take()
            && let Some(head) = self.head.as_mut()
        {
            head.uri = target;
            // One move of the head, straight into the slot.
            *self.slot.head.lock().expect("replay lock poisoned") = self.head.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn head(target: &str) -> Parts {
        let mut request = Request::new(());
        *request.uri_mut() = target.parse().unwrap();
        request.headers_mut().insert("x-app", "1".parse().unwrap());
        request.into_parts().0
    }

    #[test]
    fn a_wanted_head_comes_back_with_the_apps_target_and_what_was_added() {
        let replay = Replay::default();
        replay.want(true);
        let mut loan = replay.lend(head("/v1/charges?x=1"));
        assert!(loan.is_kept());
        loan.uri = "/base/v1/charges?x=1".parse().unwrap();
        loan.headers
            .insert("authorization", "Bearer k".parse().unwrap());
        assert!(!replay.is_filled(), "not before the attempt ends");
        drop(loan);
        assert!(replay.is_filled(), "and it stays there until taken");
        let back = replay.take().expect("given back");
        assert_eq!(back.uri, "/v1/charges?x=1");
        assert_eq!(back.headers["x-app"], "1");
        assert_eq!(back.headers["authorization"], "Bearer k");
        assert!(replay.take().is_none(), "taken once");
        assert!(!replay.is_filled());
    }

    #[test]
    fn an_unwanted_or_reclaimed_head_is_not_kept() {
        let replay = Replay::default();
        drop(replay.lend(head("/a")));
        assert!(replay.take().is_none());
        replay.want(true);
        let passed_on = replay.lend(head("/b")).reclaim();
        assert!(replay.take().is_none());
        // The step it was passed to lends it again; that loan gives it back.
        drop(replay.lend(passed_on));
        assert_eq!(replay.take().unwrap().uri, "/b");
    }

    #[test]
    fn a_dropped_attempt_still_gives_its_head_back() {
        let replay = Replay::default();
        replay.want(true);
        let loan = replay.lend(head("/slow"));
        let attempt = async move {
            let _held = loan;
            std::future::pending::<()>().await;
        };
        // As the attempt timeout does: the future is dropped mid-attempt.
        drop(Box::pin(attempt));
        assert_eq!(replay.take().unwrap().uri, "/slow");
    }
}
