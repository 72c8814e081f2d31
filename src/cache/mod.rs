//! The result caches, in the order a transform consults them:
//!
//! 1. [`memory`] — a byte-bounded LRU in this process (hits need no I/O at all);
//! 2. [`derived`] — results kept in the derived bucket, shared by every instance and surviving
//!    restarts (a hit costs one storage read, no decode);
//! 3. [`flight`] — single-flight: concurrent identical misses wait for one computation.
//!
//! All three are keyed by the transform cache key,
//! `{pipeline version}-{render fingerprint}|{image id}|{canonical spec}|q{quality}|{format token}`
//! (built by `render::Renderer::variant`). Image ids are never reused and originals never change, so a
//! key names exactly one result for ever; the ETag and the derived object name are both its
//! [`digest`].
//!
//! Purging an image (delete, account erasure) removes its memory entries and tombstones the
//! id, deletes its derived prefix, and calls the CDN purge hook ([`crate::cdn`]).

pub mod config;
pub mod derived;
pub mod flight;
pub mod memory;

use sha2::{Digest as _, Sha256};

pub use config::CacheConfig;
pub use derived::{DerivedLimits, DerivedStore, sweep as derived_sweep};
pub use flight::{Flights, Joined};
pub use memory::{CachedResult, Insertion, MemoryCache};

/// The first 128 bits of SHA-256 over a cache key, as 32 hex digits.
pub fn digest(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

/// The strong ETag of the result whose key has `digest` ([`digest`]).
pub fn etag(digest: &str) -> String {
    format!("\"{digest}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_strong_and_key_dependent() {
        let a = etag(&digest("v1|x|rt:fit|q80|webp"));
        let b = etag(&digest("v1|x|rt:fit|q81|webp"));
        assert_ne!(a, b);
        assert!(a.starts_with('"') && !a.starts_with("W/"));
        assert_eq!(a, format!("\"{}\"", digest("v1|x|rt:fit|q80|webp")));
        assert_eq!(digest("k").len(), 32);
    }
}
