//! Which event ids were already accepted, for how long. Behind a trait so a
//! store shared across replicas (Redis) can replace the embedded one.

use std::collections::HashMap;
use std::sync::Mutex;

/// Claims of event ids with an expiry (unix milliseconds).
pub trait DedupStore: Send + Sync {
    /// Claims `id` until `expires_ms`: false when it is already claimed and
    /// not expired (a duplicate).
    fn claim(&self, id: &str, now_ms: u64, expires_ms: u64) -> bool;
    /// Gives a claim back: its event could not be stored, so the provider's
    /// retry must be accepted.
    fn release(&self, id: &str);
}

/// The embedded store: a map in memory, made durable by the queue, which
/// writes each claimed id in the same commit as its event (`dedup.log`).
pub struct MemoryDedup {
    ids: Mutex<HashMap<String, u64>>,
}

impl MemoryDedup {
    pub fn new(recovered: HashMap<String, u64>) -> Self {
        Self {
            ids: Mutex::new(recovered),
        }
    }

    pub fn len(&self) -> usize {
        self.ids.lock().expect("dedup lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DedupStore for MemoryDedup {
    fn claim(&self, id: &str, now_ms: u64, expires_ms: u64) -> bool {
        let mut ids = self.ids.lock().expect("dedup lock");
        // Forget expired ids now and then, so the map stays bounded by the TTL.
        if ids.len() > 1024 && ids.len().is_power_of_two() {
            ids.retain(|_, expires| *expires > now_ms);
        }
        match ids.get(id) {
            Some(expires) if *expires > now_ms => false,
            _ => {
                ids.insert(id.to_owned(), expires_ms);
                true
            }
        }
    }

    fn release(&self, id: &str) {
        self.ids.lock().expect("dedup lock").remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_until_expiry_and_released_claims() {
        let store = MemoryDedup::new(HashMap::from([("old".to_owned(), 50)]));
        assert!(store.claim("a", 100, 200));
        assert!(!store.claim("a", 150, 250), "duplicate within the TTL");
        assert!(store.claim("a", 200, 300), "accepted again after expiry");
        assert!(store.claim("old", 100, 200), "recovered id already expired");
        store.release("a");
        assert!(store.claim("a", 210, 310));
    }
}
