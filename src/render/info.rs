//! An image's facts and placeholders ([`crate::image::ImageInfo`]) for `/info` and the image
//! API: from the metadata (uploads since info exists), else from `info.json` beside it, else
//! computed from the original once — one computation for every concurrent request of the same
//! image, on the CPU pool — and kept in `info.json`.
//!
//! Not charged to a quota: it runs at most once per image uploaded before info existed (the
//! result is kept), and the CPU pool's admission bounds how many run at once.

use crate::cache::Joined;
use crate::catalog::ImageMeta;
use crate::id::ImageId;
use crate::image::ImageInfo;

use super::{RenderError, Renderer};

/// How often a waiter whose leader was cancelled tries again.
const MAX_ROUNDS: usize = 8;

pub(super) type InfoOutcome = Result<ImageInfo, RenderError>;

impl Renderer {
    /// `meta` with its info filled in (see the module documentation).
    pub async fn with_info(&self, mut meta: ImageMeta) -> Result<ImageMeta, RenderError> {
        if meta.info.is_some() {
            return Ok(meta);
        }
        let id = ImageId::parse(&meta.id).ok_or(RenderError::NotFound)?;
        if let Some(info) = self.catalog.info(&id).await? {
            meta.info = Some(info);
            return Ok(meta);
        }
        for _ in 0..MAX_ROUNDS {
            match self.info_flights.join(&meta.id) {
                Joined::Leader(lead) => {
                    let outcome = self.compute_info(&id, meta.bytes).await;
                    lead.finish(outcome.clone());
                    meta.info = Some(outcome?);
                    return Ok(meta);
                }
                Joined::Follower(wait) => {
                    if let Some(outcome) = wait.wait().await {
                        meta.info = Some(outcome?);
                        return Ok(meta);
                    }
                }
            }
        }
        Err(RenderError::Overloaded)
    }

    /// A CPU-queue place, then room for the original (`bytes`, its stored size) in the
    /// originals budget, then the fetch: as a transform does (`resolve::compute`).
    async fn compute_info(&self, id: &ImageId, bytes: u64) -> InfoOutcome {
        let place = self.workers.admit()?;
        let _held = self.workers.hold_input(bytes).await?;
        let original = self.catalog.original(id).await?;
        let limits = self.engine.limits;
        let memory = crate::image::probe(&original).map_or(0, |p| crate::image::memory_cost(&p));
        let info = self
            .workers
            .run_admitted(place, memory, move || {
                crate::image::analyze(&original, &limits)
            })
            .await??;
        self.catalog.put_info(id, &info).await?;
        Ok(info)
    }
}
