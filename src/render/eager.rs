//! `presets.eager`: results rendered in the background right after an upload, so the first
//! views of a new image are cache hits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Bill, FormatChoice, Renderer, Target};
use crate::catalog::CatalogError;
use crate::catalog::ImageMeta;
use crate::options::parse_path;
use crate::options::{OutputFormat, ParseError};

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

impl Renderer {
    /// Renders `presets.eager` for a new image in the background: started after the upload's
    /// durable write, never delaying its `201`. Not charged to a quota (the upload paid; the
    /// operator chose the presets). A busy CPU queue is retried with backoff, then skipped.
    /// Waiting uploads hold only their metadata; the original is read when their turn comes,
    /// so the queue costs no image memory.
    pub fn spawn_eager(self: &Arc<Self>, meta: &ImageMeta) {
        let targets = match self.eager_targets(meta) {
            Ok(t) if t.is_empty() => return,
            Ok(t) => t,
            Err(e) => {
                tracing::error!(image = %meta.id, error = %e, "eager presets do not parse");
                return;
            }
        };
        let Some(slot) = self.eager.backlog.try_enter() else {
            self.count_eager("skipped", targets.len());
            tracing::warn!(image = %meta.id, "eager render queue full; presets will render on first view");
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Ok(_running) = this.eager.running.acquire().await {
                this.render_all(targets).await;
            }
        });
    }

    /// One upload's eager targets, sharing one read of the original.
    async fn render_all(self: &Arc<Self>, targets: Vec<Target>) {
        let original = match targets.first() {
            Some(t) => self.catalog.original(&t.image).await,
            None => Err(CatalogError::NotFound),
        };
        match original {
            Ok(bytes) => {
                for mut target in targets {
                    target.original = Some(bytes.clone());
                    let result = self.eager_one(target).await;
                    self.count_eager(result, 1);
                }
            }
            Err(e) => {
                if let Some(t) = targets.first() {
                    tracing::warn!(image = %t.image, error = %e, "eager renders skipped: original unavailable");
                }
                self.count_eager("error", targets.len());
            }
        }
    }

    fn count_eager(&self, result: &str, n: usize) {
        self.metrics
            .eager_renders
            .with_label_values(&[result])
            .inc_by(n as u64);
    }

    async fn eager_one(self: &Arc<Self>, target: Target) -> &'static str {
        if self.cache.get(&target.key).is_some() {
            return "ok";
        }
        for attempt in 0..5u32 {
            match self.resolve(target.clone(), Bill::Free).await {
                Ok(_) => return "ok",
                Err(super::RenderError::Overloaded) => {
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

    /// The results `presets.eager` names for an image: each preset, in its fixed format or —
    /// when the format is negotiated — in every `transform.auto_formats` format and the
    /// fallback, keyed exactly as requests for them are.
    fn eager_targets(&self, meta: &ImageMeta) -> Result<Vec<Target>, ParseError> {
        let mut targets = Vec::new();
        for name in &self.settings.eager_presets {
            let parsed = parse_path(
                &format!("/pr:{name}/plain/{}", meta.id),
                &self.settings.parse_limits,
            )?;
            let choices: Vec<FormatChoice> = match parsed.spec.format {
                Some(f) => vec![FormatChoice::Fixed(f)],
                None => self
                    .settings
                    .auto_formats
                    .iter()
                    .map(|f| FormatChoice::Negotiated(*f))
                    .chain([FormatChoice::Fallback])
                    .collect(),
            };
            for choice in choices {
                // The animated pick of the client this choice stands for: one that accepts
                // the chosen format and those after it in `auto_formats` (a browser that takes
                // AVIF takes WebP too); none for the fallback.
                let accepted: &[OutputFormat] = match choice {
                    FormatChoice::Negotiated(f) => {
                        let all = &self.settings.auto_formats;
                        let at = all.iter().position(|x| *x == f).unwrap_or(all.len());
                        &all[at..]
                    }
                    _ => &[],
                };
                let animated = self.animated_pick(&|f| accepted.contains(&f));
                let variant = self.variant(&parsed.image, &parsed.spec, choice, animated);
                targets.push(self.target(variant, meta, Instant::now()));
            }
        }
        Ok(targets)
    }
}
