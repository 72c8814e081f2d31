//! Application state: everything a request needs, built once from a validated [`Config`].

use std::sync::Arc;
use std::time::Duration;

use crate::auth::JwtVerifier;
use crate::cache::MemoryCache;
use crate::catalog::Catalog;
use crate::config::{Config, parse_cidr};
use crate::image::ImageLimits;
use crate::metrics::Metrics;
use crate::options::ParseLimits;
use crate::signature::Signer;
use crate::storage::{FsStore, ObjectStore, S3Store};
use crate::workers::Workers;

/// Shared, immutable-after-start state.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn ObjectStore>,
    pub catalog: Catalog,
    pub signer: Signer,
    pub jwt: JwtVerifier,
    pub cache: MemoryCache,
    pub workers: Workers,
    pub metrics: Metrics,
    pub redis: Option<deadpool_redis::Pool>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub image_limits: ImageLimits,
    pub parse_limits: ParseLimits,
}

impl App {
    /// Builds the state. Start-up code: errors are reported and the process exits.
    pub async fn build(config: Config) -> Result<App, String> {
        let timeout = Duration::from_secs(config.storage.timeout_secs);
        let store: Arc<dyn ObjectStore> = match config.storage.backend.as_str() {
            "s3" => Arc::new(S3Store::new(&config.storage).await),
            _ => Arc::new(
                FsStore::new(&config.storage.fs_root, timeout)
                    .map_err(|e| format!("storage.fs_root {}: {e}", config.storage.fs_root))?,
            ),
        };
        let signer = Signer::from_hex(
            &config.signing.keys,
            &config.signing.salts,
            config.signing.signature_size as usize,
        )?;
        let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
        let redis = if config.redis.url.is_empty() {
            None
        } else {
            let mut cfg = deadpool_redis::Config::from_url(config.redis.url.clone());
            cfg.pool = Some(deadpool_redis::PoolConfig {
                max_size: config.redis.pool_size as usize,
                timeouts: deadpool_redis::Timeouts {
                    wait: Some(Duration::from_millis(config.redis.timeout_ms)),
                    create: Some(Duration::from_millis(config.redis.timeout_ms)),
                    recycle: Some(Duration::from_millis(config.redis.timeout_ms)),
                },
                ..Default::default()
            });
            Some(
                cfg.create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .map_err(|e| format!("redis.url: {e}"))?,
            )
        };
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .map(|c| parse_cidr(c))
            .collect::<Result<Vec<_>, _>>()?;
        let l = &config.limits;
        let image_limits = ImageLimits {
            max_source_pixels: l.max_source_pixels,
            max_result_pixels: l.max_result_pixels,
            max_result_dimension: l.max_result_dimension as u32,
        };
        let parse_limits = ParseLimits {
            max_dimension: l.max_result_dimension as u32,
        };
        Ok(App {
            catalog: Catalog::new(store.clone(), l.max_source_bytes),
            store,
            signer,
            jwt: JwtVerifier::hs256(&config.auth),
            cache: MemoryCache::new(config.cache.memory_bytes, config.cache.max_item_bytes),
            workers: Workers::new(
                config.workers(),
                config.transform.queue_len as usize,
                metrics.queue_depth.clone(),
            ),
            metrics,
            redis,
            trusted_proxies,
            image_limits,
            parse_limits,
            config,
        })
    }
}
