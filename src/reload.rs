//! Secrets that change without a restart: `SIGHUP` re-reads the configuration (file,
//! environment and `file:` secrets) and swaps in the new signing keys, JWT verification keys
//! and CDN purge headers. Requests in flight keep the value they started with; connections
//! are not touched. Everything else in the configuration needs a restart.

use std::sync::{Arc, RwLock};

/// A value read on every request and replaced, whole, on reload.
pub struct Swap<T>(RwLock<Arc<T>>);

impl<T> Swap<T> {
    pub fn new(value: T) -> Swap<T> {
        Swap(RwLock::new(Arc::new(value)))
    }

    /// The current value (a reference count, no copy; the lock is held only for that).
    pub fn load(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn store(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_the_value_it_loaded() {
        let s = Swap::new(1);
        let before = s.load();
        s.store(2);
        assert_eq!((*before, *s.load()), (1, 2));
    }
}
