//! Application state: everything a request needs, built once from a validated [`Config`].

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{ApiKeys, Authenticator, JwtVerifier, Revocations};
use crate::cache::{DerivedLimits, DerivedStore, Flights, MemoryCache};
use crate::catalog::Catalog;
use crate::cdn::CdnPurger;
use crate::config::Config;
use crate::image::{Bitmap, Engine, ImageLimits};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::options::{OutputFormat, ParseLimits};
use crate::render::{EagerQueue, Outcome};
use crate::signature::Signer;
use crate::storage::{Backend, FsStore, ObjectStore, S3Store};
use crate::workers::Workers;

/// Shared, immutable-after-start state.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn ObjectStore>,
    /// The store's readiness check, bounded in time and single-flight (`/readyz`).
    pub health: crate::storage::HealthProbe,
    pub catalog: Catalog,
    pub signer: Signer,
    /// Bearer credentials → principals (JWTs, API keys, revocations).
    pub auth: Authenticator,
    pub cache: MemoryCache,
    /// Results in the derived bucket (`cache.derived`).
    pub derived: Arc<DerivedStore>,
    /// Computations in flight, by cache key (single-flight).
    pub flights: Flights<Outcome>,
    /// Uploads waiting for their eager preset renders.
    pub eager: EagerQueue,
    /// The CDN purge hook (a no-op unless `cdn.purge_url` is set).
    pub cdn: Arc<CdnPurger>,
    /// The audit trail (log stream and archive writer).
    pub audit: Arc<crate::audit::Auditor>,
    /// Account erasures in progress, by user: a repeated `DELETE /v1/me` joins the running one.
    pub erasures: Flights<Result<(), crate::error::Error>>,
    /// Exports streaming, by user: one at a time per account (each reads the whole archive
    /// range and every original).
    pub exports: Flights<()>,
    pub workers: Workers,
    pub metrics: Metrics,
    /// Quotas and rate limits (Redis, or in-process).
    pub limiter: Limiter,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub image_limits: ImageLimits,
    pub parse_limits: ParseLimits,
    pub engine: Arc<Engine>,
    /// `transform.auto_formats`, validated.
    pub auto_formats: Vec<OutputFormat>,
    /// `transform.avif_workers`: AVIF encodes in flight.
    pub avif_permits: Arc<tokio::sync::Semaphore>,
    /// Hash of the configuration that changes rendered bytes (encoder settings, JPEG decoder,
    /// watermark image): part of every cache key and ETag, so a configuration change never
    /// serves or validates old bytes under the same key.
    pub render_fingerprint: String,
    /// When this process started: the earliest `Last-Modified` it sends (see
    /// [`crate::render::last_modified`]).
    pub started: std::time::SystemTime,
}

impl App {
    /// Builds the state. Start-up code: errors are reported and the process exits.
    pub async fn build(config: Config) -> Result<App, String> {
        let store = store(&config).await?;
        let signer = Signer::from_hex(
            &config.signing.keys,
            &config.signing.salts,
            config.signing.signature_size as usize,
        )?;
        let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
        let redis = crate::limits::redis_pool(&config.redis)?;
        let revocation_ttl = Duration::from_secs(config.auth.revocation_cache_secs);
        let auth = Authenticator {
            jwt: JwtVerifier::from_config(&config.auth).await?,
            api_keys: ApiKeys::new(
                store.clone(),
                revocation_ttl,
                usize::try_from(config.auth.max_api_keys_per_user).unwrap_or(usize::MAX),
            ),
            revocations: Revocations::new(store.clone(), revocation_ttl),
            leeway_secs: config.auth.leeway_secs,
        };
        let trusted_proxies = config.server.trusted_networks();
        let l = &config.limits;
        let image_limits = ImageLimits {
            max_source_pixels: l.max_source_pixels,
            max_source_dimension: l.max_source_dimension as u32,
            max_result_pixels: l.max_result_pixels,
            max_result_dimension: l.max_result_dimension as u32,
            max_frames: l.max_frames,
        };
        let parse_limits = config.parse_limits();
        let engine = Arc::new(engine(&config, image_limits)?);
        let render_fingerprint = render_fingerprint(&engine);
        let auto_formats = config.transform.negotiable();
        let limiter = Limiter::new(&config.limits, &config.redis, redis, &metrics);
        limiter.warm_up().await;
        let catalog = Catalog::new(store.clone(), l.max_source_bytes);
        let c = &config.cache;
        let derived = Arc::new(DerivedStore::new(
            store.clone(),
            catalog.clone(),
            DerivedLimits {
                max_bytes: c.derived_max_bytes,
                reads: usize::try_from(c.derived_read_concurrency).unwrap_or(1),
                concurrency: usize::try_from(c.derived_write_concurrency).unwrap_or(1),
                queue: usize::try_from(c.derived_write_queue).unwrap_or(0),
                ttl: c.derived_ttl(),
            },
            metrics.clone(),
        ));
        let audit = Arc::new(
            crate::audit::Auditor::start(
                store.clone(),
                crate::audit::Settings::from_config(&config.audit, &config.storage.fs_root),
                usize::try_from(config.audit.queue).unwrap_or(usize::MAX),
                metrics.clone(),
            )
            .await?,
        );
        let cdn = Arc::new(CdnPurger::new(&config.cdn, metrics.clone())?.audited(audit.clone()));
        Ok(App {
            limiter,
            catalog,
            derived,
            flights: Flights::new(),
            eager: EagerQueue::new(usize::try_from(c.eager_queue).unwrap_or(0)),
            cdn,
            audit,
            erasures: Flights::new(),
            exports: Flights::new(),
            health: crate::storage::HealthProbe::new(store.clone()),
            store,
            signer,
            auth,
            cache: MemoryCache::new(config.cache.memory_bytes, config.cache.max_item_bytes),
            workers: Workers::new(
                config.transform.worker_count(),
                config.transform.queue_len as usize,
                config.transform.memory_budget_mb.saturating_mul(1 << 20),
                metrics.queue_depth.clone(),
                metrics.queue_wait.clone(),
            ),
            metrics,
            trusted_proxies,
            image_limits,
            parse_limits,
            engine,
            render_fingerprint,
            auto_formats,
            started: std::time::SystemTime::now(),
            avif_permits: Arc::new(tokio::sync::Semaphore::new(
                config.transform.avif_workers as usize,
            )),
            config,
        })
    }
}

/// The object store as configured (also used by the CLI's archive jobs).
pub async fn store(config: &Config) -> Result<Arc<dyn ObjectStore>, String> {
    let timeout = Duration::from_secs(config.storage.timeout_secs);
    Ok(match config.storage.backend {
        Backend::S3 => Arc::new(S3Store::new(&config.storage).await),
        Backend::Fs => Arc::new(
            FsStore::new(&config.storage.fs_root, timeout)
                .map_err(|e| format!("storage.fs_root {}: {e}", config.storage.fs_root))?,
        ),
    })
}

/// The image engine as configured.
fn engine(config: &Config, limits: ImageLimits) -> Result<Engine, String> {
    let watermark = if config.watermark.path.is_empty() {
        None
    } else {
        Some(load_watermark(&config.watermark.path, &limits)?)
    };
    Ok(Engine {
        limits,
        encode: config.encode.settings(),
        jpeg_decoder: config.transform.jpeg_decoder,
        watermark,
    })
}

fn render_fingerprint(engine: &Engine) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{:?}|{:?}", engine.encode, engine.jpeg_decoder).as_bytes());
    if let Some(wm) = &engine.watermark {
        h.update(format!("{}x{}x{}", wm.width, wm.height, wm.channels).as_bytes());
        h.update(&wm.data);
    }
    hex::encode(&h.finalize()[..6])
}

/// Largest watermark image accepted (pixels): it is composited onto every `wm:` result.
const MAX_WATERMARK_PIXELS: u64 = 4_000_000;

fn load_watermark(path: &str, limits: &ImageLimits) -> Result<Bitmap, String> {
    let err = |m: String| format!("watermark.path: {path}: {m}");
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let probe = crate::image::probe(&bytes).map_err(|e| err(e.to_string()))?;
    let wm_limits = ImageLimits {
        max_source_pixels: MAX_WATERMARK_PIXELS.min(limits.max_source_pixels),
        ..*limits
    };
    wm_limits
        .check_source(probe.width, probe.height)
        .map_err(|e| err(e.to_string()))?;
    let bitmap = crate::image::decode(&bytes, &probe).map_err(|e| err(e.to_string()))?;
    Ok(crate::image::to_rgba(bitmap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::JpegDecoder;

    #[test]
    fn render_fingerprint_follows_the_byte_changing_config() {
        let limits = ImageLimits {
            max_source_pixels: 1_000,
            max_source_dimension: 1_000,
            max_result_pixels: 1_000,
            max_result_dimension: 100,
            max_frames: 1,
        };
        let base = Engine::new(limits);
        let same = Engine::new(limits);
        assert_eq!(render_fingerprint(&base), render_fingerprint(&same));
        let mut encode = base.clone();
        encode.encode.webp_method = 4;
        let mut decoder = base.clone();
        decoder.jpeg_decoder = JpegDecoder::Zune;
        let mut marked = base.clone();
        marked.watermark = Some(Bitmap {
            width: 1,
            height: 1,
            channels: 4,
            data: vec![1, 2, 3, 4],
        });
        let mut other_mark = marked.clone();
        if let Some(w) = other_mark.watermark.as_mut() {
            w.data[0] = 9;
        }
        let prints: Vec<String> = [&base, &encode, &decoder, &marked, &other_mark]
            .iter()
            .map(|e| render_fingerprint(e))
            .collect();
        for (i, a) in prints.iter().enumerate() {
            for b in &prints[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Limits do not change bytes of results that pass them: not part of the print.
        let mut roomier = base.clone();
        roomier.limits.max_result_pixels = 2_000;
        assert_eq!(render_fingerprint(&base), render_fingerprint(&roomier));
    }
}
