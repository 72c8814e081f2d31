//! The shared store's client: one Redis (`redis.url`) or a Redis Cluster
//! (`redis.cluster_urls`), behind one pool type and one connection type, so the limiter and
//! the fleet bus are written once for both.
//!
//! Cluster mode is deadpool-redis's pool of the redis crate's async cluster connections: slot
//! routing, `MOVED`/`ASK` redirects and re-discovery of the topology after a failover are the
//! crate's. Every caller addresses keys of one hash tag per command or script, so each maps to
//! one slot. `rediss://` (TLS, rustls with the platform's roots) and `user:password@` (ACL)
//! work in both modes.

use std::time::Duration;

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::{Cmd, Pipeline, RedisFuture, Value};

pub mod config;

pub use config::RedisConfig;

/// Connections of the fleet bus's pool (`Pool::for_fleet`).
const FLEET_POOL_SIZE: usize = 4;

/// A pool of connections to the configured Redis.
#[derive(Clone)]
pub enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// One pooled connection (returned to the pool on drop).
pub enum Conn {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Pool {
    /// The pool for the configured Redis (`None` when neither `url` nor `cluster_urls` is
    /// set). Connecting is lazy: nothing is dialled here.
    pub fn from_config(config: &RedisConfig) -> Result<Option<Pool>, String> {
        // Shorter than the call deadline, so a busy pool is told apart from a slow Redis.
        let wait = Duration::from_millis(config.timeout_ms.div_ceil(2));
        let size = usize::try_from(config.pool_size).unwrap_or(usize::MAX);
        Pool::build(config, size, wait)
    }

    /// A small pool of its own for the fleet bus (publishing, acknowledging, the registry):
    /// bus traffic never waits behind limiter decisions, nor they behind it, and a busy
    /// instance still acknowledges (its wait is the bus's, not `redis.timeout_ms`).
    pub fn for_fleet(config: &RedisConfig) -> Result<Option<Pool>, String> {
        Pool::build(config, FLEET_POOL_SIZE, Duration::from_secs(1))
    }

    fn build(config: &RedisConfig, size: usize, wait: Duration) -> Result<Option<Pool>, String> {
        // Each call has its own `redis.timeout_ms` deadline; connecting may take longer (TLS, a
        // remote Redis) and is done by the health probe when a call cannot wait for it.
        let connect = Duration::from_millis(config.timeout_ms.max(1000));
        let pool = deadpool_redis::PoolConfig {
            max_size: size,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(wait),
                create: Some(connect),
                recycle: Some(connect),
            },
            ..Default::default()
        };
        let runtime = Some(deadpool_redis::Runtime::Tokio1);
        if !config.cluster_urls.is_empty() {
            let mut cfg = deadpool_redis::cluster::Config::from_urls(config.cluster_urls.clone());
            cfg.pool = Some(pool);
            return cfg
                .create_pool(runtime)
                .map(|p| Some(Pool::Cluster(p)))
                .map_err(|e| format!("redis.cluster_urls: {e}"));
        }
        if config.url.is_empty() {
            return Ok(None);
        }
        let mut cfg = deadpool_redis::Config::from_url(config.url.clone());
        cfg.pool = Some(pool);
        cfg.create_pool(runtime)
            .map(|p| Some(Pool::Single(p)))
            .map_err(|e| format!("redis.url: {e}"))
    }

    /// A connection from the pool (waiting at most the pool's wait timeout for a free one).
    pub async fn get(&self) -> Result<Conn, deadpool_redis::PoolError> {
        Ok(match self {
            Pool::Single(p) => Conn::Single(p.get().await?),
            Pool::Cluster(p) => Conn::Cluster(p.get().await?),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Pool::Cluster(_))
    }
}

/// The Redis Cluster slot of `key`: CRC16/XMODEM of its hash tag (the part between the first
/// `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
pub fn slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let tagged = b.iter().position(|c| *c == b'{').and_then(|open| {
        let rest = &b[open + 1..];
        let close = rest.iter().position(|c| *c == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let mut crc: u16 = 0;
    for byte in tagged.unwrap_or(b) {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// The slot ranges served by masters (`CLUSTER SLOTS`), so a health probe can touch each
/// master: a probe of one key would pass while another master is down.
pub async fn master_ranges(conn: &mut Conn) -> Result<Vec<(u16, u16)>, String> {
    let reply: Vec<Value> = deadpool_redis::redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let mut out = Vec::new();
    for entry in &reply {
        if let Value::Array(fields) = entry
            && let (Some(start), Some(end)) =
                (fields.first().and_then(int), fields.get(1).and_then(int))
        {
            out.push((start, end));
        }
    }
    if out.is_empty() {
        return Err("CLUSTER SLOTS: no slot ranges".into());
    }
    Ok(out)
}

/// A key `{prefix}:{probe-N}:health` whose slot lies in `range`.
pub fn probe_key_in(prefix: &str, range: (u16, u16)) -> Option<String> {
    (0..1_000_000u32)
        .map(|n| format!("probe-{n}"))
        .find(|tag| (range.0..=range.1).contains(&slot(tag)))
        .map(|tag| format!("{prefix}:{{{tag}}}:health"))
}

/// The nodes a subscriber may connect to, in order of preference: the one URL, or each
/// cluster seed. On a Redis Cluster a message published on any node reaches the subscribers
/// of every node, so one connection to any live node hears the whole fleet.
pub fn subscriber_urls(config: &RedisConfig) -> Vec<String> {
    if config.cluster_urls.is_empty() {
        (!config.url.is_empty())
            .then(|| config.url.clone())
            .into_iter()
            .collect()
    } else {
        config.cluster_urls.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Values from `CLUSTER KEYSLOT` of Redis 7.0.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("pixgate:{u:abc}:uploads"), slot("u:abc"));
        // An empty tag is no tag.
        assert_eq!(slot("a{}b"), slot("a{}b"));
        assert_ne!(slot("a{}b"), slot(""));
        let k = probe_key_in("p", (100, 200)).unwrap();
        assert!((100..=200).contains(&slot(&k)), "{k}");
        assert!(probe_key_in("p", (16383, 16383)).is_some());
    }

    #[test]
    fn pools_follow_the_configured_mode() {
        let none = RedisConfig::default();
        assert!(Pool::from_config(&none).unwrap().is_none());
        assert!(subscriber_urls(&none).is_empty());
        let single = RedisConfig {
            url: "redis://127.0.0.1:1/0".into(),
            ..RedisConfig::default()
        };
        assert!(!Pool::from_config(&single).unwrap().unwrap().is_cluster());
        assert_eq!(subscriber_urls(&single), vec!["redis://127.0.0.1:1/0"]);
        let cluster = RedisConfig {
            cluster_urls: vec!["rediss://127.0.0.1:1".into(), "rediss://u:p@h:2".into()],
            ..RedisConfig::default()
        };
        assert!(Pool::from_config(&cluster).unwrap().unwrap().is_cluster());
        assert_eq!(subscriber_urls(&cluster).len(), 2);
    }
}
