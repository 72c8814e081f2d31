//! `[redis]`: where the shared state lives (one Redis or a Redis Cluster), the deadline of
//! every call, the pool and the key prefix.

use serde::{Deserialize, Serialize};

use crate::config::types::{ConfigError, positive, require, seconds};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// One Redis (or a proxy in front of several). Empty, with no `cluster_urls`: no Redis
    /// (in-process limits, no fleet bus).
    pub url: String,
    /// Seed nodes of a Redis Cluster (any reachable one suffices; list several). Exclusive
    /// with `url`.
    pub cluster_urls: Vec<String>,
    /// Deadline of every limiter call; slower answers fall back to the in-process limiter.
    pub timeout_ms: u64,
    pub pool_size: u64,
    /// Prefix of every key pixgate writes (several deployments can share one Redis).
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            cluster_urls: Vec::new(),
            timeout_ms: 50,
            pool_size: 16,
            key_prefix: "pixgate".into(),
        }
    }
}

fn redis_scheme(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

impl RedisConfig {
    /// Whether a Redis (single or cluster) is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty() || !self.cluster_urls.is_empty()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            !(self.url.is_empty() || redis_scheme(&self.url)),
            "redis.url",
            "must start with redis:// or rediss://",
        )?;
        require(
            !self.cluster_urls.iter().all(|u| redis_scheme(u)),
            "redis.cluster_urls",
            "every seed must start with redis:// or rediss://",
        )?;
        // The cluster client refuses seeds that differ in TLS: say so at load, not at start.
        require(
            self.cluster_urls.iter().any(|u| u.starts_with("rediss://"))
                && !self.cluster_urls.iter().all(|u| u.starts_with("rediss://")),
            "redis.cluster_urls",
            "seeds must all be redis:// or all rediss://",
        )?;
        require(
            !self.url.is_empty() && !self.cluster_urls.is_empty(),
            "redis.cluster_urls",
            "set redis.url (one Redis) or redis.cluster_urls (a Redis Cluster), not both",
        )?;
        seconds("redis.timeout_ms", self.timeout_ms.div_ceil(1000))?;
        positive("redis.pool_size", self.pool_size)?;
        // Braces would change the Redis Cluster hash tag of every key.
        let prefix_ok = !self.key_prefix.is_empty()
            && self.key_prefix.len() <= 64
            && self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        require(
            !prefix_ok,
            "redis.key_prefix",
            "1 to 64 characters of [A-Za-z0-9-_.:]",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_validate_keeps_hash_tags_out_of_the_prefix() {
        assert!(RedisConfig::default().validate().is_ok());
        for prefix in ["a{b}", "", &"x".repeat(65)] {
            let c = RedisConfig {
                key_prefix: prefix.to_owned(),
                ..RedisConfig::default()
            };
            assert_eq!(c.validate().unwrap_err().key, "redis.key_prefix");
        }
        let http = RedisConfig {
            url: "http://x".into(),
            ..RedisConfig::default()
        };
        assert_eq!(http.validate().unwrap_err().key, "redis.url");
        let seeds = |url: &str, seeds: &[&str]| RedisConfig {
            url: url.into(),
            cluster_urls: seeds.iter().map(|s| (*s).to_owned()).collect(),
            ..RedisConfig::default()
        };
        assert!(
            seeds("", &["rediss://a:7000", "rediss://u:p@b:7001"])
                .validate()
                .is_ok()
        );
        assert!(seeds("", &["redis://a:7000"]).enabled());
        assert!(!RedisConfig::default().enabled());
        for bad in [
            seeds("", &["redis://a:7000", "tcp://b:7001"]),
            seeds("", &["redis://a:7000", "rediss://b:7001"]),
            seeds("redis://a:6379", &["redis://a:7000"]),
        ] {
            assert_eq!(bad.validate().unwrap_err().key, "redis.cluster_urls");
        }
    }
}
