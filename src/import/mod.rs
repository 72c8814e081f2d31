//! `pixgate import`: registers existing originals (an S3 bucket and prefix, or a directory)
//! as pixgate images without sending them through the HTTP API.
//!
//! Place in the architecture: an operator job beside `fsck` and `sweep`, built on the same
//! [`App`] as the server. Each object goes through the upload's own checks
//! ([`crate::http::images::validate_original`]: magic bytes, `limits.upload_formats`, header
//! limits, a full decode on the CPU pool) and is written by [`Catalog::create`] with the same
//! metadata, owner index entry and placeholders, plus an `image.import` audit event (actor
//! `system`, naming the operator). Quotas are not charged: an import is the operator's act.
//!
//! Exactly once, across kills: before its image is created, an object gets a source-index
//! entry (`sources/{sha256(uri)}.json`, [`crate::catalog::SourceEntry`]) naming the image id it
//! will have; a run that finds the entry and the image skips the object, one that finds only
//! the entry (killed between the two writes) creates the image under that id. Deleting an
//! imported image leaves a tombstone there, so a later run never brings it back (an erased
//! user's images stay erased). The checkpoint (`imports/{sha256(source)}/checkpoint.json`) holds
//! the last key up to which every object is done, the counts, and the failures, so a run
//! killed half-way continues after it; a complete run's rerun scans again from the start and
//! imports only what is new.
//!
//! Bounds: `jobs` objects in flight (each holding at most `limits.max_source_bytes`, decoded
//! under the CPU pool's memory budget), an optional rate cap on the source, the failure list
//! kept in the checkpoint capped at [`MAX_FAILURES_KEPT`] (the counts stay exact).

pub mod config;
pub mod legacy;
pub mod owners;
pub mod source;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::catalog::{CatalogError, ImageMeta, SourceEntry};
use crate::id::ImageId;
use crate::storage::{Bucket, ObjectKey, StorageError};
use owners::Owners;
use source::{Listed, ReadError, Source};

/// Failures the checkpoint lists by key (beyond, only counted).
pub const MAX_FAILURES_KEPT: usize = 10_000;
/// The checkpoint is written after this many finished objects, or this often.
const CHECKPOINT_EVERY: u64 = 200;
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);
const PAGE: usize = 1000;

/// What to import and how.
pub struct Plan {
    pub source: Arc<dyn Source>,
    pub owners: Owners,
    /// Objects in flight at once.
    pub jobs: usize,
    /// At most this many objects started per second.
    pub rate: Option<f64>,
    /// Read and validate, write nothing.
    pub dry_run: bool,
    /// Who ran it (recorded in each `image.import` event).
    pub operator: String,
}

/// One object's fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Imported {
        id: String,
        owner: String,
        bytes: u64,
    },
    /// Dry run: it would be imported.
    WouldImport {
        owner: String,
        bytes: u64,
    },
    /// `already_imported`, or `deleted` (imported once, then deleted through pixgate).
    Skipped {
        reason: String,
    },
    Failed {
        code: String,
        message: String,
    },
}

/// A failure as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub key: String,
    pub code: String,
    pub message: String,
}

/// Totals, over every run of this source since its checkpoint began.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub imported: u64,
    pub skipped: u64,
    pub failed: BTreeMap<String, u64>,
    pub bytes: u64,
}

impl Totals {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    pub fn done(&self) -> u64 {
        self.imported + self.skipped + self.failed_total()
    }
}

/// The resumable state of an import of one source (never written by a dry run).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub source: String,
    /// Every object up to and including this key is done (in this scan).
    pub after: Option<String>,
    /// The last run listed the source to its end.
    pub complete: bool,
    pub runs: u64,
    /// This scan's counts and failures.
    pub totals: Totals,
    pub failures: Vec<Failure>,
}

/// What a run reports at its end.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The `request_id` of this run's audit events.
    pub run_id: String,
    pub source: String,
    pub dry_run: bool,
    /// This run: objects finished, and the counts.
    pub run: Totals,
    /// The whole scan this run belongs to: a scan starts at the source's first key, and the
    /// runs that continue an interrupted one add to it.
    pub scan: Totals,
    pub resumed_after: Option<String>,
    /// This run continued an interrupted one.
    pub resumed: bool,
    /// `image.import` events that could not be queued for the archive (queue or spool full);
    /// they are not in the log stream either (the CLI keeps it off the terminal).
    pub audit_events_dropped: u64,
    pub complete: bool,
    pub duration_secs: f64,
    pub failures: Vec<Failure>,
}

/// Progress, for a terminal line or JSON lines.
pub enum Event<'a> {
    /// An object is done.
    Object { key: &'a str, outcome: &'a Outcome },
    /// The source holds this many objects (counted beside the run, for an ETA).
    Total(u64),
}

fn checkpoint_key(source: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::new(format!("imports/{}/checkpoint.json", sha_hex(source)))
}

fn sha_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The checkpoint of `source`, if a run began one.
pub async fn load_checkpoint(app: &App, source: &str) -> Result<Option<Checkpoint>, String> {
    let key = checkpoint_key(source).map_err(|e| e.to_string())?;
    match app.store.get(Bucket::Originals, &key, 64 << 20).await {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("checkpoint {key}: {e}")),
        Err(StorageError::NotFound) => Ok(None),
        Err(e) => Err(format!("checkpoint {key}: {e}")),
    }
}

async fn save_checkpoint(app: &App, c: &Checkpoint) -> Result<(), String> {
    let key = checkpoint_key(&c.source).map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(c).map_err(|e| e.to_string())?;
    app.store
        .put(
            Bucket::Originals,
            &key,
            Bytes::from(json),
            "application/json",
        )
        .await
        .map_err(|e| format!("checkpoint {key}: {e}"))
}

/// Runs the import to the end of the source, or until `stop` resolves (Ctrl-C): objects in
/// flight finish and the checkpoint is written either way. Errors are for the run as a whole
/// (the source cannot be listed, the checkpoint cannot be written); one object's failure is
/// counted and listed, never fatal.
pub async fn run(
    app: &Arc<App>,
    plan: Plan,
    mut on_event: impl FnMut(Event<'_>),
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary, String> {
    let started = Instant::now();
    let source_name = plan.source.describe();
    let run_id = format!(
        "import-{}",
        crate::id::random_hex(8).map_err(|e| format!("run id: {e}"))?
    );
    let loaded = if plan.dry_run {
        None
    } else {
        load_checkpoint(app, &source_name).await?
    };
    // This run continues one that did not finish (killed before or after its first save: the
    // checkpoint is written before any object starts). Its objects found imported are
    // recorded again, since the killed run's last events may not have reached the spool.
    let resumed = loaded.as_ref().is_some_and(|c| !c.complete);
    let mut checkpoint = loaded.unwrap_or_else(|| Checkpoint {
        source: source_name.clone(),
        ..Checkpoint::default()
    });
    // A complete import's rerun scans again (new objects may sort anywhere); an interrupted
    // one continues after its last finished key.
    let resumed_after = if checkpoint.complete {
        // A new scan: its counts start again (imported objects are skipped by their entries).
        checkpoint.totals = Totals::default();
        checkpoint.failures.clear();
        None
    } else {
        checkpoint.after.clone()
    };
    checkpoint.after = resumed_after.clone();
    checkpoint.complete = false;
    checkpoint.runs += 1;
    if !plan.dry_run {
        save_checkpoint(app, &checkpoint).await?;
    }
    let mut run_totals = Totals::default();
    let mut failures_this_run = Vec::new();

    // Count the source beside the run (listing only), for the progress line's ETA.
    let (total_tx, mut total_rx) = tokio::sync::oneshot::channel();
    let counter = {
        let source = plan.source.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut after: Option<String> = None;
            loop {
                let Ok(page) = source.list(after.as_deref(), PAGE).await else {
                    return;
                };
                let Some(last) = page.last() else { break };
                after = Some(last.key.clone());
                n += page.len() as u64;
            }
            let _ = total_tx.send(n);
        })
    };

    let plan = Arc::new(plan);
    let jobs = plan.jobs.max(1);
    let mut interval = plan.rate.filter(|r| *r > 0.0).map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut page: VecDeque<Listed> = VecDeque::new();
    let mut listed_after = resumed_after.clone();
    let mut listing_done = false;
    let mut inflight: VecDeque<(String, tokio::task::JoinHandle<Outcome>)> = VecDeque::new();
    let mut since_save = 0u64;
    let mut last_save = Instant::now();
    let mut stopping = false;
    tokio::pin!(stop);

    loop {
        // Start objects until `jobs` are in flight.
        while !stopping && inflight.len() < jobs {
            if page.is_empty() && !listing_done {
                let next = plan.source.list(listed_after.as_deref(), PAGE).await?;
                match next.last() {
                    Some(last) => listed_after = Some(last.key.clone()),
                    None => listing_done = true,
                }
                page.extend(next);
            }
            let Some(item) = page.pop_front() else { break };
            if let Some(i) = interval.as_mut() {
                tokio::select! {
                    _ = i.tick() => {}
                    () = &mut stop => { stopping = true; page.push_front(item); break; }
                }
            }
            let (app, plan) = (app.clone(), plan.clone());
            let key = item.key.clone();
            let run_id = run_id.clone();
            inflight.push_back((
                key,
                tokio::spawn(async move { one(&app, &plan, item, resumed, &run_id).await }),
            ));
        }
        let Some((key, handle)) = inflight.pop_front() else {
            break;
        };
        // Ctrl-C stops new starts; what is in flight finishes and is recorded.
        let mut handle = handle;
        let outcome = loop {
            tokio::select! {
                r = &mut handle => break r.unwrap_or_else(|e| Outcome::Failed {
                    code: "internal_error".into(),
                    message: format!("import task: {e}"),
                }),
                () = &mut stop, if !stopping => stopping = true,
            }
        };
        if let Ok(n) = total_rx.try_recv() {
            on_event(Event::Total(n));
        }
        on_event(Event::Object {
            key: &key,
            outcome: &outcome,
        });
        for t in [&mut run_totals, &mut checkpoint.totals] {
            count(t, &outcome);
        }
        if let Outcome::Failed { code, message } = &outcome {
            let f = Failure {
                key: key.clone(),
                code: code.clone(),
                message: message.clone(),
            };
            if checkpoint.failures.len() < MAX_FAILURES_KEPT {
                checkpoint.failures.push(f.clone());
            }
            if failures_this_run.len() < MAX_FAILURES_KEPT {
                failures_this_run.push(f);
            }
        }
        checkpoint.after = Some(key);
        since_save += 1;
        if !plan.dry_run
            && (since_save >= CHECKPOINT_EVERY || last_save.elapsed() >= CHECKPOINT_INTERVAL)
        {
            // The events of everything the checkpoint covers are sealed (spooled) first.
            app.audit.flush().await;
            save_checkpoint(app, &checkpoint).await?;
            since_save = 0;
            last_save = Instant::now();
        }
    }
    counter.abort();
    checkpoint.complete = !stopping && listing_done && page.is_empty();
    if !plan.dry_run {
        app.audit.flush().await;
        save_checkpoint(app, &checkpoint).await?;
    }
    Ok(Summary {
        run_id,
        source: source_name,
        dry_run: plan.dry_run,
        run: run_totals,
        scan: checkpoint.totals.clone(),
        resumed_after,
        resumed,
        audit_events_dropped: app.metrics.audit_dropped.get(),
        complete: checkpoint.complete,
        duration_secs: started.elapsed().as_secs_f64(),
        failures: if plan.dry_run {
            failures_this_run
        } else {
            checkpoint.failures
        },
    })
}

fn count(t: &mut Totals, outcome: &Outcome) {
    match outcome {
        Outcome::Imported { bytes, .. } | Outcome::WouldImport { bytes, .. } => {
            t.imported += 1;
            t.bytes += bytes;
        }
        Outcome::Skipped { .. } => t.skipped += 1,
        Outcome::Failed { code, .. } => *t.failed.entry(code.clone()).or_default() += 1,
    }
}

/// Why one object was not imported: a code of the import's own, or the upload check's error.
pub enum Fail {
    Code(&'static str, String),
    Check(crate::http::error::Error),
}

impl Fail {
    pub fn code(&self) -> &'static str {
        match self {
            Fail::Code(c, _) => c,
            Fail::Check(e) => e.code(),
        }
    }

    fn outcome(self) -> Outcome {
        let code = self.code().to_owned();
        let message = match self {
            Fail::Code(_, m) => m,
            Fail::Check(e) => e.to_string(),
        };
        Outcome::Failed { code, message }
    }
}

fn failed(code: &'static str, message: impl Into<String>) -> Fail {
    Fail::Code(code, message.into())
}

/// What one object is imported with.
pub struct Job<'a> {
    pub source: &'a dyn Source,
    pub owners: &'a Owners,
    pub dry_run: bool,
    pub operator: &'a str,
    /// This run continues a killed one (see [`import_object`]).
    pub resumed: bool,
    /// The `request_id` of its audit event.
    pub run_id: &'a str,
}

async fn one(app: &App, plan: &Plan, item: Listed, resumed: bool, run_id: &str) -> Outcome {
    let job = Job {
        source: plan.source.as_ref(),
        owners: &plan.owners,
        dry_run: plan.dry_run,
        operator: &plan.operator,
        resumed,
        run_id,
    };
    import_object(app, &job, item)
        .await
        .unwrap_or_else(Fail::outcome)
}

/// One object: owner, source index, read, validate, write, audit. `resumed`: this run
/// continues a killed one, whose events after its last checkpoint may have died with it: an
/// object found imported is recorded again (status 200; a fresh import is 201), so the trail
/// may hold an import twice but never miss one.
pub async fn import_object(app: &App, job: &Job<'_>, item: Listed) -> Result<Outcome, Fail> {
    let assigned = match job.owners.assign(&item.key) {
        Ok(a) => a,
        Err(code) => return Err(failed(code, "no owner for this key")),
    };
    let cap = app.config.limits.max_source_bytes;
    if item.size > cap {
        return Err(failed(
            "payload_too_large",
            format!("{} bytes, limit {cap}", item.size),
        ));
    }
    let uri = job.source.uri(&item.key);
    let known = match app.catalog.source_entry(&uri).await {
        Ok(e) => e,
        Err(e) => return Err(failed("storage_error", e.to_string())),
    };
    let id = match &known {
        Some(SourceEntry { deleted: true, .. }) => {
            return Ok(Outcome::Skipped {
                reason: "deleted".into(),
            });
        }
        Some(SourceEntry { id: Some(id), .. }) => match ImageId::parse(id) {
            Some(id) => match app.catalog.meta_for_delete(&id).await {
                Ok(meta) => {
                    if job.resumed && !job.dry_run {
                        audit_import(app, job, &meta, 200);
                    }
                    return Ok(Outcome::Skipped {
                        reason: "already_imported".into(),
                    });
                }
                // Killed between the entry and the image: finish it under that id.
                Err(CatalogError::NotFound) => Some(id),
                Err(e) => return Err(failed("storage_error", e.to_string())),
            },
            None => {
                return Err(failed(
                    "internal_error",
                    "source index entry names a bad id",
                ));
            }
        },
        _ => None,
    };
    let bytes = match job.source.read(&item.key, cap).await {
        Ok(b) => b,
        Err(ReadError::Gone) => return Err(failed("source_gone", "gone since it was listed")),
        Err(ReadError::TooLarge { limit }) => {
            return Err(failed("payload_too_large", format!("limit {limit}")));
        }
        Err(ReadError::Failed(m)) => return Err(failed("source_error", m)),
    };
    let (probe, info, sha256) =
        match crate::http::images::validate_original(app, &bytes, None, || {}).await {
            Ok(v) => v,
            Err(e) => return Err(Fail::Check(e)),
        };
    let (width, height) = probe.oriented_dimensions();
    let len = bytes.len() as u64;
    if job.dry_run {
        return Ok(Outcome::WouldImport {
            owner: assigned.owner,
            bytes: len,
        });
    }
    // A manifest's fields obey the API's own limits.
    let fields = crate::catalog::check_text("title", assigned.title.as_deref().unwrap_or(""))
        .and_then(|()| {
            crate::catalog::check_text("alt_text", assigned.alt_text.as_deref().unwrap_or(""))
        })
        .and_then(|()| crate::catalog::normalise_tags(assigned.tags));
    let tags = match fields {
        Ok(t) => t,
        Err(e) => return Err(failed("invalid_field", e.to_string())),
    };
    let id = match id {
        Some(id) => id,
        None => {
            let Ok(id) = ImageId::generate() else {
                return Err(failed("internal_error", "id generation failed"));
            };
            if let Err(e) = app.catalog.put_source_entry(&uri, &id).await {
                return Err(failed("storage_error", e.to_string()));
            }
            id
        }
    };
    let meta = ImageMeta {
        id: id.to_string(),
        owner: assigned.owner.clone(),
        format: probe.format,
        width,
        height,
        bytes: len,
        sha256,
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        title: assigned.title,
        alt_text: assigned.alt_text,
        tags,
        deleting: false,
        info: Some(info),
        source: Some(uri),
    };
    if let Err(e) = app.catalog.create(&meta, bytes).await {
        return Err(failed("storage_error", e.to_string()));
    }
    audit_import(app, job, &meta, 201);
    Ok(Outcome::Imported {
        id: meta.id,
        owner: meta.owner,
        bytes: len,
    })
}

/// The `image.import` event of `meta`: actor `system`, naming the operator.
fn audit_import(app: &App, job: &Job<'_>, meta: &ImageMeta, status: u16) {
    let mut event = crate::audit::Event::new(
        job.run_id,
        "image.import",
        crate::audit::Actor {
            auth: "system".to_owned(),
            operator: Some(job.operator.to_owned()),
            ..crate::audit::Actor::default()
        },
    );
    event.resource.image = Some(meta.id.clone());
    event.resource.owner = Some(meta.owner.clone());
    event.status = status;
    event.bytes_in = meta.bytes;
    app.audit.emit(&event);
}
