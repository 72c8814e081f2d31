//! `[cache]`: the memory LRU, the derived bucket, and the cache headers of responses.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::types::{ConfigError, MAX_SECONDS, positive, require};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory LRU budget in bytes of encoded results.
    pub memory_bytes: u64,
    /// Results larger than this are not kept in memory.
    pub max_item_bytes: u64,
    /// `max-age` of transform responses (never beyond a signed URL's `exp`).
    pub max_age_secs: u64,
    /// Keep results in the derived bucket (read on a memory miss, written in the background).
    pub derived: bool,
    /// Results larger than this are not stored in (or read from) the derived bucket.
    pub derived_max_bytes: u64,
    /// Derived-store reads in flight at once (each holds up to `derived_max_bytes`).
    pub derived_read_concurrency: u64,
    /// Background derived-store writes in flight at once.
    pub derived_write_concurrency: u64,
    /// Background derived-store writes waiting beyond those; more are dropped (counted).
    pub derived_write_queue: u64,
    /// Uploads whose eager presets (`presets.eager`) may wait to be rendered; beyond this an
    /// upload's eager renders are skipped (counted), never its `201`.
    pub eager_queue: u64,
    /// `max-age` of a signed URL's `404` (0: `no-store`); every other error is `no-store`.
    pub error_max_age_secs: u64,
    /// `Surrogate-Key` and `Cache-Tag` headers (the image id) on transform responses.
    pub surrogate_keys: bool,
    /// Derived objects unused for this many days expire (`pixgate sweep` or a lifecycle
    /// rule); a derived hit refreshes its object. 0: kept until their image is deleted.
    pub derived_ttl_days: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: 256 * 1024 * 1024,
            max_item_bytes: 8 * 1024 * 1024,
            max_age_secs: 31_536_000,
            derived: true,
            derived_max_bytes: 16 * 1024 * 1024,
            derived_read_concurrency: 16,
            derived_write_concurrency: 4,
            derived_write_queue: 256,
            eager_queue: 32,
            error_max_age_secs: 10,
            surrogate_keys: true,
            derived_ttl_days: 0,
        }
    }
}

impl CacheConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            self.max_item_bytes > self.memory_bytes,
            "cache.max_item_bytes",
            "must not exceed cache.memory_bytes",
        )?;
        positive("cache.derived_max_bytes", self.derived_max_bytes)?;
        positive(
            "cache.derived_read_concurrency",
            self.derived_read_concurrency,
        )?;
        positive(
            "cache.derived_write_concurrency",
            self.derived_write_concurrency,
        )?;
        require(
            self.derived_ttl_days > 36_500,
            "cache.derived_ttl_days",
            "must be at most 36500",
        )?;
        if self.error_max_age_secs > MAX_SECONDS {
            return Err(ConfigError::new(
                "cache.error_max_age_secs",
                format!("must be at most {MAX_SECONDS} seconds"),
            ));
        }
        Ok(())
    }

    /// `derived_ttl_days` as a duration; `None` when derived objects never expire.
    pub fn derived_ttl(&self) -> Option<Duration> {
        (self.derived_ttl_days > 0)
            .then(|| Duration::from_secs(self.derived_ttl_days.saturating_mul(86_400)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_keeps_items_within_the_budget_and_ttls_bounded() {
        assert!(CacheConfig::default().validate().is_ok());
        let big = CacheConfig {
            max_item_bytes: 1 << 40,
            ..CacheConfig::default()
        };
        assert_eq!(big.validate().unwrap_err().key, "cache.max_item_bytes");
        let ttl = CacheConfig {
            derived_ttl_days: 36_501,
            ..CacheConfig::default()
        };
        assert_eq!(ttl.validate().unwrap_err().key, "cache.derived_ttl_days");
        let age = CacheConfig {
            error_max_age_secs: MAX_SECONDS + 1,
            ..CacheConfig::default()
        };
        assert_eq!(age.validate().unwrap_err().key, "cache.error_max_age_secs");
        assert_eq!(CacheConfig::default().derived_ttl(), None);
    }
}
