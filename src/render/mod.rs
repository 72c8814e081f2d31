//! Results through the cache layers: memory → derived store → single-flight computation; eager
//! preset renders after uploads; and the purge of an image from every layer.
//!
//! The transform route ([`crate::http`]) decides *whether* a request may have a result
//! (signature or credential, expiry, ownership, conditional requests); the [`Renderer`] decides
//! *which* one ([`Renderer::negotiate`] → a [`Variant`]: quality, format, cache key) and gets it
//! at the lowest cost:
//!
//! ```text
//! resolve(target) ── Flights::join(key) ── follower ──► wait for the leader's result
//!                           │ leader
//!                           ├─ memory hit (a flight that just ended) ──► done
//!                           ├─ derived hit ──► memory ──► done          (no quota, no CPU)
//!                           └─ charge the payer → admit to the CPU queue → spawn {
//!                                 original → engine on the CPU pool → memory → derived write
//!                              } ──► publish to every waiter
//! ```
//!
//! The computation runs in its own task once admitted: a cancelled leader (client gone,
//! deadline) neither wedges nor fails its followers, and the result still lands in the caches
//! for the retry. A leader that fails *before* that for a reason of its own (its payer's
//! quota, a full queue) abandons the flight; each waiter then tries again, one of them
//! leading. Cache hits never wait for a CPU worker, so an overloaded server still serves them.
//!
//! Files: `resolve.rs` (the diagram above), `eager.rs` (presets rendered after uploads),
//! `info.rs` (facts and placeholders of images uploaded before they were computed at upload),
//! `purge.rs` (deleting an image everywhere), `setup.rs` (the engine and the fingerprint of
//! byte-changing configuration), `config.rs` (`[transform]`, `[encode]`, `[watermark]`).

pub mod config;
mod eager;
mod info;
mod purge;
mod resolve;
mod setup;

pub use config::{EncodeConfig, NegotiableFormat, TransformConfig, WatermarkConfig};
pub use eager::EagerQueue;
pub use resolve::Bill;
pub use setup::engine;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::cache::{self, CachedResult, DerivedStore, Flights, MemoryCache};
use crate::catalog::CatalogError;
use crate::catalog::{Catalog, ImageMeta};
use crate::cdn::CdnPurger;
use crate::config::Config;
use crate::id::ImageId;
use crate::image::ImageError;
use crate::image::{Engine, ImageFormat};
use crate::limits::Refusal;
use crate::metrics::Metrics;
use crate::options::{OutputFormat, ParseLimits, TransformSpec};
use crate::storage::StorageError;
use crate::workers::WorkerError;
use crate::workers::{Gate, Workers};

/// Version of the rendering pipeline; part of every cache key and ETag, so a change in how
/// results are produced never serves stale bytes under an old validator.
pub const PIPELINE_VERSION: &str = "v5";

pub type Outcome = Result<Arc<CachedResult>, RenderError>;

/// Why a result could not be had. Shared by every waiter of a computation (so `Clone`);
/// mapped to HTTP in `http::error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenderError {
    /// The image does not exist, or was deleted while its result was computed.
    #[error("not found")]
    NotFound,
    /// No CPU-queue place or AVIF encoder, or a waiter's leaders kept giving up: try later.
    #[error("server overloaded")]
    Overloaded,
    /// A negotiated AVIF found every encoder busy when it came to be computed (it was free
    /// when the request was negotiated): the caller negotiates again without AVIF instead of
    /// waiting in the queue meant for explicit `f:avif` ([`Variant::avif_fallback`]).
    #[error("every AVIF encoder is busy")]
    AvifBusy,
    /// The payer's quota is spent (or the limiter is busy).
    #[error(transparent)]
    Refused(Refusal),
    #[error(transparent)]
    Catalog(CatalogError),
    #[error(transparent)]
    Image(ImageError),
    #[error(transparent)]
    Storage(StorageError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<CatalogError> for RenderError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound => RenderError::NotFound,
            other => RenderError::Catalog(other),
        }
    }
}

impl From<WorkerError> for RenderError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Overloaded => RenderError::Overloaded,
            WorkerError::Failed(m) => RenderError::Internal(m),
        }
    }
}

impl From<Refusal> for RenderError {
    fn from(r: Refusal) -> Self {
        RenderError::Refused(r)
    }
}

impl From<ImageError> for RenderError {
    fn from(e: ImageError) -> Self {
        RenderError::Image(e)
    }
}

impl From<StorageError> for RenderError {
    fn from(e: StorageError) -> Self {
        RenderError::Storage(e)
    }
}

/// Everything that produces results: caches, single-flight, the engine and its CPU pool.
pub struct Renderer {
    pub cache: MemoryCache,
    /// Results in the derived bucket (`cache.derived`).
    pub derived: Arc<DerivedStore>,
    pub engine: Arc<Engine>,
    /// The CPU pool (also validates uploads).
    pub workers: Workers,
    /// Computations in flight, by cache key.
    flights: Flights<Outcome>,
    /// Info computations in flight (images uploaded before info existed), by image id.
    info_flights: Flights<info::InfoOutcome>,
    /// Uploads waiting for their eager preset renders.
    eager: EagerQueue,
    /// `transform.avif_workers` AVIF encodes in flight, `transform.avif_queue_len` waiting.
    avif: Gate,
    /// Hash of the configuration that changes rendered bytes (encoder settings, JPEG decoder,
    /// watermark image): part of every cache key and ETag, so a configuration change never
    /// serves or validates old bytes under the same key.
    fingerprint: String,
    catalog: Catalog,
    cdn: Arc<CdnPurger>,
    metrics: Metrics,
    settings: Settings,
    /// When this process started: the earliest `Last-Modified` it sends.
    started: SystemTime,
}

/// What rendering takes from configuration, resolved at start.
struct Settings {
    default_quality: u8,
    /// `transform.auto_formats`, in order of preference.
    auto_formats: Vec<OutputFormat>,
    /// `transform.animated_formats`, in order of preference; empty with `transform.animate`
    /// off.
    animated_formats: Vec<OutputFormat>,
    /// `presets.eager`, and what parsing them needs.
    eager_presets: Vec<String>,
    parse_limits: ParseLimits,
    /// `cache.derived`.
    derived: bool,
    /// After a delete, the CDN purge is repeated this much later: every request that could
    /// have read the image has ended and every instance has re-checked its memory.
    straggle: Duration,
}

/// Which format a result is in, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatChoice {
    /// Asked for (`f:` in the URL or a preset).
    Fixed(OutputFormat),
    /// Negotiated from `Accept` among `transform.auto_formats`.
    Negotiated(OutputFormat),
    /// Negotiated, and the client accepts none of them: the source's fallback, known once
    /// the metadata is read ([`fallback_format`]).
    Fallback,
}

impl FormatChoice {
    /// The format part of the cache key.
    fn token(self) -> String {
        match self {
            FormatChoice::Fixed(f) => f.extension().to_owned(),
            FormatChoice::Negotiated(f) => format!("auto-{}", f.extension()),
            FormatChoice::Fallback => "auto-source".to_owned(),
        }
    }

    /// The output format for a source of format `source`.
    pub fn output(self, source: ImageFormat) -> OutputFormat {
        match self {
            FormatChoice::Fixed(f) | FormatChoice::Negotiated(f) => f,
            FormatChoice::Fallback => fallback_format(source),
        }
    }

    pub fn negotiated(self) -> bool {
        !matches!(self, FormatChoice::Fixed(_))
    }
}

/// One result of an image, named: the transform, quality and format choice, and the cache key
/// they make. Requests and eager presets build theirs the same way ([`Renderer::variant`]).
#[derive(Debug, Clone)]
pub struct Variant {
    pub image: ImageId,
    pub spec: TransformSpec,
    pub quality: u8,
    pub choice: FormatChoice,
    /// For a negotiated format: what an animated source gets instead (the first of
    /// `transform.animated_formats` the client accepts, GIF always), unless `da:1`.
    pub animated: Option<OutputFormat>,
    /// `{pipeline}-{fingerprint}|{image}|{canonical spec}|q{quality}|{format token}`, the token
    /// ending in `~{animated format}` when there is one.
    /// Its digest (ETag, derived object name) is taken only past the memory cache, in
    /// [`Renderer::target`]: a hit needs neither.
    pub key: String,
    /// A negotiated AVIF whose client accepts another of `auto_formats`: if every AVIF encoder
    /// is busy when it is to be computed, it fails with [`RenderError::AvifBusy`] at once (and
    /// is negotiated again without AVIF) instead of waiting.
    pub avif_fallback: bool,
}

/// A variant of an image known to exist: what a computation needs.
#[derive(Clone)]
pub struct Target {
    pub image: ImageId,
    pub owner: String,
    pub key: String,
    pub digest: String,
    pub spec: TransformSpec,
    pub format: OutputFormat,
    pub quality: u8,
    pub last_modified: SystemTime,
    /// When the image was last seen to exist (the metadata read): memory entries are re-checked
    /// a bound after this, not after the (possibly much later) insert.
    pub checked: Instant,
    /// The original, when the caller already holds it (eager renders).
    pub original: Option<Bytes>,
    /// The stored original's size (what fetching it holds in memory).
    pub original_bytes: u64,
    /// See [`Variant::avif_fallback`].
    pub avif_fallback: bool,
}

/// Output format when the client did not ask for one and accepts none of `auto_formats`.
pub fn fallback_format(source: ImageFormat) -> OutputFormat {
    match source {
        ImageFormat::Jpeg => OutputFormat::Jpeg,
        // PNG keeps alpha and palette-style sharpness for PNG, GIF and (possibly alpha) WebP.
        // TIFF is mostly photographs (scans, cameras).
        ImageFormat::Tiff => OutputFormat::Jpeg,
        ImageFormat::Png
        | ImageFormat::Gif
        | ImageFormat::Webp
        | ImageFormat::Bmp
        | ImageFormat::Ico
        // JPEG XL may carry alpha (and lossless JPEG XL is often graphics).
        | ImageFormat::Jxl
        | ImageFormat::Avif
        // Camera photos, but HEIC may carry alpha (and a depth map, not rendered).
        | ImageFormat::Heic
        // Drawings: sharp edges and transparency.
        | ImageFormat::Svg => OutputFormat::Png,
    }
}

/// Whether an image may be animated: its upload info says so; images uploaded before that
/// info existed are taken at their format's word (GIF and WebP can animate; a still one
/// rendered in an animated format is a one-frame result, still correct).
fn may_animate(meta: &ImageMeta) -> bool {
    match &meta.info {
        Some(info) => info.animated,
        None => matches!(meta.format, ImageFormat::Gif | ImageFormat::Webp),
    }
}

impl Renderer {
    /// Builds the renderer from a validated configuration and its engine ([`engine`]).
    pub fn build(
        config: &Config,
        engine: Engine,
        catalog: Catalog,
        derived: Arc<DerivedStore>,
        cdn: Arc<CdnPurger>,
        metrics: Metrics,
    ) -> Renderer {
        let t = &config.transform;
        let c = &config.cache;
        Renderer {
            cache: MemoryCache::new(c.memory_bytes, c.max_item_bytes),
            derived,
            fingerprint: setup::fingerprint(&engine),
            engine: Arc::new(engine),
            workers: Workers::new(
                t.worker_count(),
                t.queue(),
                t.memory_budget_mb.saturating_mul(1 << 20),
                crate::workers::PoolMetrics {
                    depth: metrics.queue_depth.clone(),
                    wait: metrics.queue_wait.clone(),
                    originals_bytes: metrics.originals_bytes.clone(),
                    originals_waits: metrics.originals_waits.clone(),
                },
            ),
            flights: Flights::new(),
            info_flights: Flights::new(),
            eager: EagerQueue::new(usize::try_from(c.eager_queue).unwrap_or(usize::MAX)),
            avif: Gate::new(
                usize::try_from(t.avif_workers).unwrap_or(usize::MAX),
                usize::try_from(t.avif_queue_len).unwrap_or(usize::MAX),
                Duration::from_millis(t.avif_queue_wait_ms),
            ),
            catalog,
            cdn,
            metrics,
            settings: Settings {
                default_quality: t.quality(),
                auto_formats: t.negotiable(),
                animated_formats: if t.animate {
                    t.animated_formats.iter().map(|f| f.output()).collect()
                } else {
                    Vec::new()
                },
                eager_presets: config.presets.eager.clone(),
                parse_limits: config.parse_limits(),
                derived: c.derived,
                straggle: Duration::from_secs(
                    config.server.request_timeout_secs + config.auth.revocation_cache_secs,
                ),
            },
            started: SystemTime::now(),
        }
    }

    /// The variant `spec` names in format `choice` (and `animated` for animated sources).
    pub fn variant(
        &self,
        image: &ImageId,
        spec: &TransformSpec,
        choice: FormatChoice,
        animated: Option<OutputFormat>,
    ) -> Variant {
        let quality = self.quality(spec);
        let animated = animated.filter(|_| choice.negotiated() && !spec.disable_animation);
        let mut token = choice.token();
        if let Some(a) = animated {
            token = format!("{token}~{}", a.extension());
        }
        let key = self.cache_key(image, spec, quality, &token);
        Variant {
            image: image.clone(),
            spec: spec.clone(),
            quality,
            choice,
            animated,
            key,
            avif_fallback: false,
        }
    }

    /// The animated format a client gets: the first of `transform.animated_formats` it
    /// accepts, GIF counting as accepted by every client (it is the format they all show).
    fn animated_pick(&self, accepts: &impl Fn(OutputFormat) -> bool) -> Option<OutputFormat> {
        self.settings
            .animated_formats
            .iter()
            .copied()
            .find(|f| *f == OutputFormat::Gif || accepts(*f))
    }

    /// The variant a request gets: its own format, or the first of `transform.auto_formats`
    /// the client `accepts`. AVIF encoders are few (`transform.avif_workers`): when none is
    /// free and the AVIF result is not cached, the request gets the next format it accepts
    /// instead of waiting (an explicit `f:avif` waits in a bounded queue instead). An encoder
    /// free now may be taken before this request computes: the variant then says it may fall
    /// back ([`Variant::avif_fallback`]) and the caller negotiates again without AVIF.
    pub fn negotiate(
        &self,
        image: &ImageId,
        spec: &TransformSpec,
        accepts: impl Fn(OutputFormat) -> bool,
    ) -> Variant {
        if let Some(f) = spec.format {
            return self.variant(image, spec, FormatChoice::Fixed(f), None);
        }
        let animated = self.animated_pick(&accepts);
        let accepted: Vec<OutputFormat> = self
            .settings
            .auto_formats
            .iter()
            .copied()
            .filter(|f| accepts(*f))
            .collect();
        let mut pick = accepted.first().copied();
        if pick == Some(OutputFormat::Avif) && self.avif.busy() {
            let token = FormatChoice::Negotiated(OutputFormat::Avif).token();
            let avif_key = self.cache_key(image, spec, self.quality(spec), &token);
            if self.cache.get(&avif_key).is_none() {
                pick = accepted.get(1).copied();
            }
        }
        let mut variant = self.variant(
            image,
            spec,
            pick.map_or(FormatChoice::Fallback, FormatChoice::Negotiated),
            animated,
        );
        variant.avif_fallback = pick == Some(OutputFormat::Avif) && accepted.len() > 1;
        variant
    }

    /// Whether responses for `variant` depend on `Accept` (`Vary: Accept`).
    pub fn varies(&self, variant: &Variant) -> bool {
        variant.choice.negotiated() && !self.settings.auto_formats.is_empty()
    }

    /// The computation of `variant` for an image whose metadata was read at `checked`.
    pub fn target(&self, variant: Variant, meta: &ImageMeta, checked: Instant) -> Target {
        let format = match variant.animated {
            Some(f) if may_animate(meta) => f,
            _ => variant.choice.output(meta.format),
        };
        Target {
            format,
            image: variant.image,
            owner: meta.owner.clone(),
            digest: cache::digest(&variant.key),
            key: variant.key,
            quality: variant.spec.quality_for(format, variant.quality),
            spec: variant.spec,
            last_modified: self.last_modified(meta),
            checked,
            original: None,
            original_bytes: meta.bytes,
            avif_fallback: variant.avif_fallback && format == OutputFormat::Avif,
        }
    }

    /// `Last-Modified` of an image's results: its upload time (originals never change), but
    /// never before this process started — a deploy may change how results render (the ETag
    /// changes with it), and an `If-Modified-Since` from before must then not get `304`.
    pub fn last_modified(&self, meta: &ImageMeta) -> SystemTime {
        humantime::parse_rfc3339(&meta.created_at).map_or(self.started, |t| t.max(self.started))
    }

    /// The URL's quality, or `transform.default_quality`.
    fn quality(&self, spec: &TransformSpec) -> u8 {
        spec.quality.unwrap_or(self.settings.default_quality)
    }

    /// The cache key of a result.
    /// `fq` enters the key whole (the output format of a source-dependent choice is known only
    /// with the metadata, after the memory-cache lookup); keys without `fq` are unchanged.
    fn cache_key(&self, image: &ImageId, spec: &TransformSpec, quality: u8, token: &str) -> String {
        let fq = spec.format_quality_token();
        let fq = if fq.is_empty() {
            String::new()
        } else {
            format!("|fq:{fq}")
        };
        format!(
            "{PIPELINE_VERSION}-{}|{image}|{}|q{quality}{fq}|{token}",
            self.fingerprint,
            spec.canonical()
        )
    }
}
