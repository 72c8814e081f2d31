//! Results through the cache layers: memory → derived store → single-flight computation; eager
//! preset renders after uploads; and the purge of an image from every layer.
//!
//! The transform route ([`crate::http`]) decides *whether* a request may have a result
//! (signature or credential, expiry, ownership, conditional requests) and *which* one (the
//! cache key); this module gets it at the lowest cost:
//!
//! ```text
//! resolve(target) ── Flights::join(key) ── follower ──► wait for the leader's result
//!                           │ leader
//!                           ├─ memory hit (a flight that just ended) ──► done
//!                           ├─ derived hit ──► memory ──► done          (no quota, no CPU)
//!                           └─ charge quota → admit to the CPU queue → spawn {
//!                                 original → engine on the CPU pool → memory → derived write
//!                              } ──► publish to every waiter
//! ```
//!
//! The computation runs in its own task once admitted: a cancelled leader (client gone,
//! deadline) neither wedges nor fails its followers, and the result still lands in the caches
//! for the retry. A leader that fails *before* that for a reason of its own (its caller's
//! quota, a full queue) abandons the flight; each waiter then tries again, one of them
//! leading. Cache hits never wait for a CPU worker, so an overloaded server still serves them.

pub mod config;
pub use config::{EncodeConfig, NegotiableFormat, TransformConfig, WatermarkConfig};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::app::App;
use crate::cache::{self, Admission, CachedResult, Joined, derived};
use crate::catalog::ImageMeta;
use crate::error::Error;
use crate::id::ImageId;
use crate::image::ImageFormat;
use crate::limits::Charge;
use crate::options::{OutputFormat, TransformSpec, parse_path};

/// Version of the rendering pipeline; part of every cache key and ETag, so a change in how
/// results are produced never serves stale bytes under an old validator.
pub const PIPELINE_VERSION: &str = "v2";

/// How often a waiter whose leader gave up tries again before answering `503`.
const MAX_ROUNDS: usize = 8;

/// The result a request needs.
#[derive(Clone)]
pub struct Target {
    pub image: ImageId,
    pub owner: String,
    /// The cache key ([`cache_key`]).
    pub key: String,
    /// [`cache::digest`] of the key: the ETag and the derived object's name.
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
}

pub type Outcome = Result<Arc<CachedResult>, Error>;

/// The cache key of a result: `{pipeline}-{render fingerprint}|{image}|{canonical spec}|q{quality}|{format token}`.
pub fn cache_key(
    app: &App,
    image: &ImageId,
    spec: &TransformSpec,
    quality: u8,
    token: &str,
) -> String {
    format!(
        "{PIPELINE_VERSION}-{}|{image}|{}|q{quality}|{token}",
        app.render_fingerprint,
        spec.canonical()
    )
}

/// Output format when the client did not ask for one and accepts none of `auto_formats`.
pub fn fallback_format(source: ImageFormat) -> OutputFormat {
    match source {
        ImageFormat::Jpeg => OutputFormat::Jpeg,
        // PNG keeps alpha and palette-style sharpness for PNG, GIF and (possibly alpha) WebP.
        ImageFormat::Png | ImageFormat::Gif | ImageFormat::Webp => OutputFormat::Png,
    }
}

/// `Last-Modified` of an image's results: its upload time (originals never change), but never
/// before this process started — a deploy may change how results render (the ETag changes with
/// it), and an `If-Modified-Since` from before must then not get `304`.
pub fn last_modified(app: &App, meta: &ImageMeta) -> SystemTime {
    humantime::parse_rfc3339(&meta.created_at).map_or(app.started, |t| t.max(app.started))
}

/// Puts a result in memory, counting evictions; `false` if the image was deleted meanwhile
/// (then the result must not be served either: its delete may already have purged the CDN).
fn remember(app: &App, target: &Target, result: &Arc<CachedResult>) -> bool {
    let m = &app.metrics;
    let kept = match app
        .cache
        .insert(target.key.clone(), result.clone(), target.checked)
    {
        Admission::Admitted { evicted } => {
            m.cache_evictions.inc_by(evicted as u64);
            true
        }
        Admission::TooLarge => {
            m.cache_oversize.inc();
            true
        }
        Admission::Deleted => false,
    };
    m.cache_memory_bytes.set(app.cache.bytes() as i64);
    kept
}

/// The result of `target`, from the derived store or computed once for all concurrent
/// identical requests. The caller has checked memory (hits need authorising first).
///
/// `charge` is called only by a leader about to compute: it prices the computation (quota)
/// and may refuse it.
pub async fn resolve<C, F>(app: &Arc<App>, target: Target, charge: C) -> Outcome
where
    C: FnOnce() -> F,
    F: Future<Output = Result<Option<Charge>, Error>>,
{
    let mut charge = Some(charge);
    for _ in 0..MAX_ROUNDS {
        let lead = match app.flights.join(&target.key) {
            Joined::Leader(lead) => lead,
            Joined::Follower(wait) => {
                if let Some(outcome) = wait.wait().await {
                    app.metrics.singleflight_coalesced.inc();
                    return outcome;
                }
                // The leader gave up for a reason of its own: try again, perhaps leading.
                continue;
            }
        };
        // A flight for this key may have finished between the caller's memory check and now.
        if let Some(hit) = app.cache.get(&target.key) {
            app.metrics
                .cache_requests
                .with_label_values(&["memory", "hit"])
                .inc();
            lead.finish(Ok(hit.clone()));
            return Ok(hit);
        }
        let object = derived::object_key(&target.image, &target.digest, target.format)?;
        if app.config.cache.derived
            && let Some(bytes) = app.derived.get(&object, target.format).await
        {
            app.derived.touch(
                target.image.clone(),
                object.clone(),
                bytes.clone(),
                target.format.mime(),
            );
            let result = Arc::new(result_of(&target, bytes));
            let outcome = if remember(app, &target, &result) {
                Ok(result)
            } else {
                Err(Error::NotFound)
            };
            lead.finish(outcome.clone());
            return outcome;
        }
        let charge = match charge.take() {
            Some(c) => c().await?,
            None => return Err(Error::Internal("a request led twice".into())),
        };
        // The CPU-queue place is reserved before the original is fetched: at most
        // workers + queue_len originals are held at once, and a full queue refuses at once.
        // AVIF encodes are slow: at most `transform.avif_workers` at once, no waiting either.
        // Being overloaded is not this request's own failure: waiters get the same answer
        // instead of each retrying (and each reading the derived store again).
        let admitted = app.workers.admit().and_then(|admission| {
            let avif = if target.format == OutputFormat::Avif {
                let permit = app.avif_permits.clone().try_acquire_owned();
                Some(permit.map_err(|_| Error::Overloaded)?)
            } else {
                None
            };
            Ok((admission, avif))
        });
        let (admission, avif) = match admitted {
            Ok(a) => a,
            Err(e) => {
                lead.finish(Err(e.clone()));
                return Err(e);
            }
        };
        let wait = lead.subscribe();
        let task_app = app.clone();
        tokio::spawn(async move {
            let outcome = compute(&task_app, target, object, charge, admission, avif).await;
            lead.finish(outcome);
        });
        return wait.wait().await.unwrap_or_else(|| {
            Err(Error::Internal(
                "a computation ended without a result".into(),
            ))
        });
    }
    Err(Error::Overloaded)
}

fn result_of(target: &Target, bytes: Bytes) -> CachedResult {
    CachedResult {
        bytes,
        format: target.format,
        etag: cache::etag(&target.digest),
        image: target.image.to_string(),
        owner: target.owner.clone(),
        last_modified: target.last_modified,
    }
}

/// Fetches the original (unless given), computes on the CPU pool, fills both caches.
async fn compute(
    app: &Arc<App>,
    mut target: Target,
    object: crate::storage::ObjectKey,
    charge: Option<Charge>,
    admission: crate::workers::Admission,
    avif: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Outcome {
    // Dropping `charge` on an early return gives the quota unit back.
    let original = match target.original.take() {
        Some(bytes) => bytes,
        None => app.catalog.original(&target.image).await?,
    };
    let engine = app.engine.clone();
    let spec = target.spec.clone();
    let (format, quality) = (target.format, target.quality);
    let timer = app.metrics.transform_duration.clone();
    // A header that does not probe fails at once on the worker; it reserves nothing.
    let memory = crate::image::probe(&original).map_or(0, |p| crate::image::memory_cost(&p));
    let encoded = app
        .workers
        .run_admitted(admission, memory, move || {
            // The work starts: the quota unit is spent from here on.
            if let Some(c) = charge {
                c.commit();
            }
            // Timed on the worker: queueing for a worker is not computation.
            let _timer = timer.start_timer();
            let _avif = avif;
            engine.transform(&original, &spec, format, quality)
        })
        .await??;
    let result = Arc::new(result_of(&target, Bytes::from(encoded.bytes)));
    if !remember(app, &target, &result) {
        // Deleted while computing: never served, never stored.
        return Err(Error::NotFound);
    }
    if app.config.cache.derived {
        app.derived.schedule(
            target.image.clone(),
            object,
            result.bytes.clone(),
            format.mime(),
        );
    }
    Ok(result)
}

/// The results `presets.eager` names for an image: each preset, in its fixed format or — when
/// the format is negotiated — in every `transform.auto_formats` format and the fallback.
fn eager_targets(
    app: &App,
    meta: &ImageMeta,
    original: Option<&Bytes>,
) -> Result<Vec<Target>, Error> {
    let mut targets = Vec::new();
    for name in &app.config.presets.eager {
        let parsed = parse_path(&format!("/pr:{name}/plain/{}", meta.id), &app.parse_limits)?;
        let spec = parsed.spec;
        let quality = spec.quality.unwrap_or(app.config.transform.quality());
        let formats: Vec<(String, OutputFormat)> = match spec.format {
            Some(f) => vec![(f.extension().to_owned(), f)],
            None => app
                .auto_formats
                .iter()
                .map(|f| (format!("auto-{}", f.extension()), *f))
                .chain([("auto-source".to_owned(), fallback_format(meta.format))])
                .collect(),
        };
        for (token, format) in formats {
            let key = cache_key(app, &parsed.image, &spec, quality, &token);
            targets.push(Target {
                digest: cache::digest(&key),
                key,
                image: parsed.image.clone(),
                owner: meta.owner.clone(),
                spec: spec.clone(),
                format,
                quality,
                last_modified: last_modified(app, meta),
                checked: Instant::now(),
                original: original.cloned(),
            });
        }
    }
    Ok(targets)
}

/// Uploads waiting for their eager renders, and the one-at-a-time permit that keeps eager work
/// from taking more than one CPU worker away from requests.
pub struct EagerQueue {
    backlog: crate::workers::Backlog,
    running: tokio::sync::Semaphore,
}

impl EagerQueue {
    pub fn new(max_pending: usize) -> EagerQueue {
        EagerQueue {
            backlog: crate::workers::Backlog::new(max_pending),
            running: tokio::sync::Semaphore::new(1),
        }
    }
}

/// Renders `presets.eager` for a new image in the background: started after the upload's
/// durable write, never delaying its `201`. Not charged to a quota (the upload paid; the
/// operator chose the presets). A busy CPU queue is retried with backoff, then skipped.
/// Waiting uploads hold only their metadata; the original is read when their turn comes, so
/// the queue costs no image memory.
pub fn spawn_eager(app: &Arc<App>, meta: &ImageMeta) {
    let targets = match eager_targets(app, meta, None) {
        Ok(t) if t.is_empty() => return,
        Ok(t) => t,
        Err(e) => {
            tracing::error!(image = %meta.id, error = %e, "eager presets do not parse");
            return;
        }
    };
    let q = &app.eager;
    let Some(slot) = q.backlog.try_enter() else {
        app.metrics
            .eager_renders
            .with_label_values(&["skipped"])
            .inc_by(targets.len() as u64);
        tracing::warn!(image = %meta.id, "eager render queue full; presets will render on first view");
        return;
    };
    let app = app.clone();
    let image = meta.id.clone();
    tokio::spawn(async move {
        let _slot = slot;
        if let Ok(_running) = app.eager.running.acquire().await {
            let original = match targets.first() {
                Some(t) => app.catalog.original(&t.image).await,
                None => Err(Error::NotFound),
            };
            match original {
                Ok(bytes) => {
                    for mut target in targets {
                        target.original = Some(bytes.clone());
                        let result = eager_one(&app, target).await;
                        app.metrics.eager_renders.with_label_values(&[result]).inc();
                    }
                }
                Err(e) => {
                    tracing::warn!(image = %image, error = %e, "eager renders skipped: original unavailable");
                    app.metrics
                        .eager_renders
                        .with_label_values(&["error"])
                        .inc_by(targets.len() as u64);
                }
            }
        }
    });
}

async fn eager_one(app: &Arc<App>, target: Target) -> &'static str {
    if app.cache.get(&target.key).is_some() {
        return "ok";
    }
    for attempt in 0..5u32 {
        match resolve(app, target.clone(), || async { Ok(None) }).await {
            Ok(_) => return "ok",
            Err(Error::Overloaded) => {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            Err(e) => {
                tracing::warn!(image = %target.image, error = %e, "eager render failed");
                return "error";
            }
        }
    }
    tracing::warn!(image = %target.image, "eager render skipped: the CPU queue stayed full");
    "skipped"
}

/// Deletes an image everywhere: memory (tombstoned first, so a computation finishing meanwhile
/// cannot re-insert or be served), the original, the derived prefix, the index and the
/// metadata, memory again, then the CDN purge hook — all in a task of its own, so a cancelled
/// request stops none of it half-way. The hook runs twice: at once, and again once every
/// request that could have read the image before the delete has ended and every other
/// instance has re-checked its memory (`server.request_timeout_secs` +
/// `auth.revocation_cache_secs`), so an edge refetch served from such a straggler does not
/// keep the image at the CDN.
pub async fn delete_image(app: &Arc<App>, meta: &ImageMeta) -> Result<(), Error> {
    let app = app.clone();
    let record = meta.clone();
    tokio::spawn(async move {
        app.cache.purge_image(&record.id);
        if let Err(e) = app.catalog.delete(&record).await {
            // Unless the image is known to be gone (or marked `deleting`), lift the tombstone:
            // a tombstone refuses every result of the image on this instance, so keeping it
            // after a delete that failed before its commit point — or when the store cannot
            // even say (an outage) — would answer 404 for a live image indefinitely. Worst case
            // of lifting it for a marked image: a result computed meanwhile is served from
            // memory until the hit's next existence check (`auth.revocation_cache_secs`).
            if let Some(id) = ImageId::parse(&record.id)
                && !matches!(app.catalog.meta(&id).await, Err(Error::NotFound))
            {
                app.cache.untombstone(&record.id);
            }
            return Err(e);
        }
        app.cache.purge_image(&record.id);
        app.metrics.cache_memory_bytes.set(app.cache.bytes() as i64);
        app.cdn.purge(&record.id);
        let straggle =
            app.config.server.request_timeout_secs + app.config.auth.revocation_cache_secs;
        app.cdn
            .purge_after(&record.id, Duration::from_secs(straggle));
        Ok(())
    })
    .await
    .map_err(|e| Error::Internal(format!("delete task failed: {e}")))?
}
