//! Getting one result: memory (a flight that just ended) → derived store → a computation shared
//! by every identical request in flight, charged to its payer before it starts.

use std::sync::Arc;

use bytes::Bytes;

use super::{Outcome, RenderError, Renderer, Target};
use crate::cache::{self, CachedResult, Insertion, Joined, derived};
use crate::limits::{Charge, ChargeObserver, Kind, Limiter, Payer};
use crate::options::OutputFormat;

/// How often a waiter whose leader gave up tries again before answering `503`.
const MAX_ROUNDS: usize = 8;

/// Who pays for a computation, if one is needed. Derived-store hits and requests that wait
/// for an identical computation in flight are never charged.
pub enum Bill<'a> {
    /// Not charged (eager renders: the upload paid, the operator chose the presets).
    Free,
    /// One `transforms` unit to the payer. The unit is given back if the work never starts
    /// (queue full, original unavailable); once the CPU work begins it is spent, whatever the
    /// result. The observer, if any, is told the quota state as soon as the charge is made.
    To(&'a Limiter, Payer, Option<&'a dyn ChargeObserver>),
}

impl Renderer {
    /// The result of `target`, from the derived store or computed once for all concurrent
    /// identical requests. The caller has checked memory (hits need authorising first).
    pub async fn resolve(self: &Arc<Self>, target: Target, bill: Bill<'_>) -> Outcome {
        let mut bill = Some(bill);
        for _ in 0..MAX_ROUNDS {
            let lead = match self.flights.join(&target.key) {
                Joined::Leader(lead) => lead,
                Joined::Follower(wait) => {
                    if let Some(outcome) = wait.wait().await {
                        self.metrics.singleflight_coalesced.inc();
                        return outcome;
                    }
                    // The leader gave up for a reason of its own: try again, perhaps leading.
                    continue;
                }
            };
            // A flight for this key may have finished between the caller's memory check and now.
            if let Some(hit) = self.cache.get(&target.key) {
                self.count_memory_hit();
                lead.finish(Ok(hit.clone()));
                return Ok(hit);
            }
            let object = derived::object_key(&target.image, &target.digest, target.format)?;
            if let Some(outcome) = self.derived_hit(&target, &object).await {
                lead.finish(outcome.clone());
                return outcome;
            }
            let charge = match bill.take() {
                Some(Bill::Free) => None,
                Some(Bill::To(limiter, payer, observer)) => {
                    let charge = limiter.charge_to(Kind::Transforms, &payer).await?;
                    if let (Some(o), Some(s)) = (observer, charge.status()) {
                        o.charged(s);
                    }
                    Some(charge)
                }
                None => return Err(RenderError::Internal("a request led twice".into())),
            };
            // Being overloaded is not this request's own failure: waiters get the same answer
            // instead of each retrying (and each reading the derived store again).
            let (admission, avif) = match self.admit(target.format, target.avif_fallback).await {
                Ok(a) => a,
                Err(e) => {
                    lead.finish(Err(e.clone()));
                    return Err(e);
                }
            };
            let wait = lead.subscribe();
            let this = self.clone();
            tokio::spawn(async move {
                let outcome = this.compute(target, object, charge, admission, avif).await;
                lead.finish(outcome);
            });
            return wait.wait().await.unwrap_or_else(|| {
                Err(RenderError::Internal(
                    "a computation ended without a result".into(),
                ))
            });
        }
        Err(RenderError::Overloaded)
    }

    fn count_memory_hit(&self) {
        self.metrics
            .cache_requests
            .with_label_values(&["memory", "hit"])
            .inc();
    }

    /// A derived-store hit, put in memory; `None` on a miss (or with the derived store off).
    async fn derived_hit(
        &self,
        target: &Target,
        object: &crate::storage::ObjectKey,
    ) -> Option<Outcome> {
        if !self.settings.derived {
            return None;
        }
        let bytes = self.derived.get(object, target.format).await?;
        self.derived.touch(
            target.image.clone(),
            object.clone(),
            bytes.clone(),
            target.format.mime(),
        );
        let result = Arc::new(result_of(target, bytes));
        Some(if self.remember(target, &result) {
            Ok(result)
        } else {
            Err(RenderError::NotFound)
        })
    }

    /// A CPU-queue place, reserved before the original is fetched: at most workers + queue_len
    /// originals are held at once, and a full queue refuses at once. AVIF encodes are slow: at
    /// most `transform.avif_workers` at once; an AVIF job first waits for one of those (a few
    /// for a while: `transform.avif_queue_len`, `transform.avif_queue_wait_ms`; a page of AVIF
    /// `<img>` tags loads in turn instead of getting 503s) and only then takes its CPU-queue
    /// place, so AVIF waiters never crowd other formats out of the CPU queue. Negotiated
    /// requests do not get here while the encoders are busy: they fall back (`negotiate`); one
    /// that finds them busy here all the same (taken since it was negotiated) never waits:
    /// [`RenderError::AvifBusy`] sends it back to negotiate without AVIF.
    async fn admit(
        &self,
        format: OutputFormat,
        may_fall_back: bool,
    ) -> Result<
        (
            crate::workers::QueuePlace,
            Option<tokio::sync::OwnedSemaphorePermit>,
        ),
        RenderError,
    > {
        let avif = if format != OutputFormat::Avif {
            None
        } else if may_fall_back {
            Some(self.avif.try_enter().ok_or(RenderError::AvifBusy)?)
        } else {
            Some(self.avif.enter().await?)
        };
        Ok((self.workers.admit()?, avif))
    }

    /// Fetches the original (unless given), computes on the CPU pool, fills both caches.
    async fn compute(
        &self,
        mut target: Target,
        object: crate::storage::ObjectKey,
        charge: Option<Charge>,
        admission: crate::workers::QueuePlace,
        avif: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Outcome {
        // Dropping `charge` on an early return gives the quota unit back. Room for the
        // original is reserved before it is fetched and held until the job is done with it.
        let (original, _held) = match target.original.take() {
            Some(bytes) => (bytes, None),
            None => {
                let held = self.workers.hold_input(target.original_bytes).await?;
                (self.catalog.original(&target.image).await?, Some(held))
            }
        };
        let engine = self.engine.clone();
        let spec = target.spec.clone();
        let (format, quality) = (target.format, target.quality);
        let timer = self.metrics.transform_duration.clone();
        // A header that does not probe fails at once on the worker; it reserves nothing.
        // (Planned from the header: an animation's estimate depends on its result size.)
        let memory = engine.memory_estimate(&original, &spec, format);
        let encoded = self
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
        if !self.remember(&target, &result) {
            // Deleted while computing: never served, never stored.
            return Err(RenderError::NotFound);
        }
        if self.settings.derived {
            self.derived.schedule(
                target.image.clone(),
                object,
                result.bytes.clone(),
                format.mime(),
            );
        }
        Ok(result)
    }

    /// Puts a result in memory, counting evictions; `false` if the image was deleted meanwhile
    /// (then the result must not be served either: its delete may already have purged the CDN).
    fn remember(&self, target: &Target, result: &Arc<CachedResult>) -> bool {
        let m = &self.metrics;
        let kept = match self
            .cache
            .insert(target.key.clone(), result.clone(), target.checked)
        {
            Insertion::Admitted { evicted } => {
                m.cache_evictions.inc_by(evicted as u64);
                true
            }
            Insertion::TooLarge => {
                m.cache_oversize.inc();
                true
            }
            Insertion::Deleted => false,
        };
        m.cache_memory_bytes.set(self.cache.bytes() as i64);
        kept
    }
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
