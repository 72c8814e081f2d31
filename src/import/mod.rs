//! `pixgate import`: registers existing originals (an S3 bucket and prefix, or a directory)
//! as pixgate images without sending them through the HTTP API.
//!
//! Place in the architecture: an operator job beside `fsck` and `sweep`, built on the same
//! [`App`] as the server, below the HTTP layer. Each object goes through the upload's own
//! checks (handed in as [`Checks`]: `http::images::validate_original`'s magic bytes,
//! `limits.upload_formats`, header limits, a full decode on the CPU pool) and is written by [`Catalog::create`] with the same
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

use tokio::sync::oneshot;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::catalog::{CatalogError, ImageMeta, SourceEntry};
use crate::id::ImageId;
use crate::storage::foreign::Reference;
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
    /// The upload's checks (`http::legacy::UploadChecks`).
    pub checks: Arc<dyn Checks>,
    /// Objects in flight at once.
    pub jobs: usize,
    /// At most this many objects started per second.
    pub rate: Option<f64>,
    /// Read and validate, write nothing.
    pub dry_run: bool,
    pub mode: Mode,
    /// Who ran it (recorded in each `image.import` event).
    pub operator: String,
}

/// Where an imported original's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A copy in pixgate's layout, written by pixgate (a source on another service, or a
    /// directory).
    Copy,
    /// A copy in pixgate's layout made by the S3 service itself (`CopyObject`, pinned to the
    /// ETag of the bytes that were validated): the default when the source is a bucket of the
    /// storage's own service, read with its credentials.
    ServerCopy,
    /// `--in-place`: the source object itself, referenced read-only (pinned to the ETag that
    /// was validated). `owned` (`--owned`): deleting the image deletes the source object too.
    InPlace { owned: bool },
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Copy => "copy",
            Mode::ServerCopy => "server_copy",
            Mode::InPlace { owned: false } => "in_place",
            Mode::InPlace { owned: true } => "in_place_owned",
        }
    }
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
    /// `copy`, `server_copy`, `in_place` or `in_place_owned`.
    pub mode: &'static str,
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

/// A run's bookkeeping: the checkpoint it carries forward, its own counts, when it last saved.
struct Progress {
    run_id: String,
    resumed: bool,
    resumed_after: Option<String>,
    checkpoint: Checkpoint,
    totals: Totals,
    failures: Vec<Failure>,
    since_save: u64,
    last_save: Instant,
}

impl Progress {
    /// Loads (or starts) the checkpoint of `source` and saves it before any object starts, so
    /// a run killed at once is still known as unfinished.
    async fn begin(app: &App, source: &str, dry_run: bool) -> Result<Progress, String> {
        let run_id = format!(
            "import-{}",
            crate::id::random_hex(8).map_err(|e| format!("run id: {e}"))?
        );
        let loaded = if dry_run {
            None
        } else {
            load_checkpoint(app, source).await?
        };
        // This run continues one that did not finish: its objects found imported are recorded
        // again, since the killed run's last events may not have reached the spool.
        let resumed = loaded.as_ref().is_some_and(|c| !c.complete);
        let mut checkpoint = loaded.unwrap_or_else(|| Checkpoint {
            source: source.to_owned(),
            ..Checkpoint::default()
        });
        // A complete import's rerun scans again (new objects may sort anywhere), its counts
        // from zero; an interrupted one continues after its last finished key.
        let resumed_after = if checkpoint.complete {
            checkpoint.totals = Totals::default();
            checkpoint.failures.clear();
            None
        } else {
            checkpoint.after.clone()
        };
        checkpoint.after = resumed_after.clone();
        checkpoint.complete = false;
        checkpoint.runs += 1;
        if !dry_run {
            save_checkpoint(app, &checkpoint).await?;
        }
        Ok(Progress {
            run_id,
            resumed,
            resumed_after,
            checkpoint,
            totals: Totals::default(),
            failures: Vec::new(),
            since_save: 0,
            last_save: Instant::now(),
        })
    }

    /// Counts `key`'s outcome; every key up to it is done.
    fn record(&mut self, key: String, outcome: &Outcome) {
        count(&mut self.totals, outcome);
        count(&mut self.checkpoint.totals, outcome);
        if let Outcome::Failed { code, message } = outcome {
            let f = Failure {
                key: key.clone(),
                code: code.clone(),
                message: message.clone(),
            };
            if self.checkpoint.failures.len() < MAX_FAILURES_KEPT {
                self.checkpoint.failures.push(f.clone());
            }
            if self.failures.len() < MAX_FAILURES_KEPT {
                self.failures.push(f);
            }
        }
        self.checkpoint.after = Some(key);
        self.since_save += 1;
    }

    /// Saves the checkpoint (every [`CHECKPOINT_EVERY`] objects or [`CHECKPOINT_INTERVAL`], or
    /// when `now`), after sealing the audit batch that holds the events it covers.
    async fn save(&mut self, app: &App, now: bool) -> Result<(), String> {
        if now
            || self.since_save >= CHECKPOINT_EVERY
            || self.last_save.elapsed() >= CHECKPOINT_INTERVAL
        {
            app.audit.flush().await;
            save_checkpoint(app, &self.checkpoint).await?;
            self.since_save = 0;
            self.last_save = Instant::now();
        }
        Ok(())
    }
}

/// The source's objects in key order, a page at a time, after a key.
struct Lister {
    page: VecDeque<Listed>,
    after: Option<String>,
    done: bool,
}

impl Lister {
    async fn next(&mut self, source: &dyn Source) -> Result<Option<Listed>, String> {
        if self.page.is_empty() && !self.done {
            let next = source.list(self.after.as_deref(), PAGE).await?;
            match next.last() {
                Some(last) => self.after = Some(last.key.clone()),
                None => self.done = true,
            }
            self.page.extend(next);
        }
        Ok(self.page.pop_front())
    }

    fn exhausted(&self) -> bool {
        self.done && self.page.is_empty()
    }
}

/// Counts the source beside the run (listing only), for the progress line's ETA.
fn count_source(source: Arc<dyn Source>) -> (tokio::task::JoinHandle<()>, oneshot::Receiver<u64>) {
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
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
        let _ = tx.send(n);
    });
    (task, rx)
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
    let mut progress = Progress::begin(app, &source_name, plan.dry_run).await?;
    let (counter, mut total) = count_source(plan.source.clone());
    let plan = Arc::new(plan);
    let mut interval = plan.rate.filter(|r| (0.001..=1e6).contains(r)).map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut lister = Lister {
        page: VecDeque::new(),
        after: progress.resumed_after.clone(),
        done: false,
    };
    let mut inflight: VecDeque<(String, tokio::task::JoinHandle<Outcome>)> = VecDeque::new();
    let mut stopping = false;
    tokio::pin!(stop);
    loop {
        // Start objects until `jobs` are in flight (at the rate cap).
        while !stopping && inflight.len() < plan.jobs.max(1) {
            let Some(item) = lister.next(plan.source.as_ref()).await? else {
                break;
            };
            if let Some(i) = interval.as_mut() {
                tokio::select! {
                    _ = i.tick() => {}
                    () = &mut stop => { stopping = true; lister.page.push_front(item); break; }
                }
            }
            inflight.push_back(spawn_one(app, &plan, item, &progress));
        }
        let Some((key, mut handle)) = inflight.pop_front() else {
            break;
        };
        // Ctrl-C stops new starts; what is in flight finishes and is recorded, in key order.
        let outcome = loop {
            tokio::select! {
                r = &mut handle => break r.unwrap_or_else(|e| Outcome::Failed {
                    code: "internal_error".into(),
                    message: format!("import task: {e}"),
                }),
                () = &mut stop, if !stopping => stopping = true,
            }
        };
        if let Ok(n) = total.try_recv() {
            on_event(Event::Total(n));
        }
        on_event(Event::Object {
            key: &key,
            outcome: &outcome,
        });
        progress.record(key, &outcome);
        if !plan.dry_run {
            progress.save(app, false).await?;
        }
    }
    counter.abort();
    progress.checkpoint.complete = !stopping && lister.exhausted();
    if !plan.dry_run {
        progress.save(app, true).await?;
    }
    let mut summary = progress.summary(app, source_name, plan.dry_run, started);
    summary.mode = plan.mode.as_str();
    Ok(summary)
}

/// One object's import in a task of its own (the runtime's threads share the I/O).
fn spawn_one(
    app: &Arc<App>,
    plan: &Arc<Plan>,
    item: Listed,
    progress: &Progress,
) -> (String, tokio::task::JoinHandle<Outcome>) {
    let (app, plan) = (app.clone(), plan.clone());
    let (resumed, run_id) = (progress.resumed, progress.run_id.clone());
    let key = item.key.clone();
    let task = async move { one(&app, &plan, item, resumed, &run_id).await };
    (key, tokio::spawn(task))
}

impl Progress {
    fn summary(self, app: &App, source: String, dry_run: bool, started: Instant) -> Summary {
        Summary {
            run_id: self.run_id,
            source,
            mode: Mode::Copy.as_str(),
            dry_run,
            run: self.totals,
            scan: self.checkpoint.totals,
            resumed_after: self.resumed_after,
            resumed: self.resumed,
            audit_events_dropped: app.metrics.audit_dropped.get(),
            complete: self.checkpoint.complete,
            duration_secs: started.elapsed().as_secs_f64(),
            failures: if dry_run {
                self.failures
            } else {
                self.checkpoint.failures
            },
        }
    }
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

/// What an original that passed the upload's checks carries on.
pub struct Checked {
    pub probe: crate::image::Probe,
    pub info: crate::image::ImageInfo,
    pub sha256: String,
}

/// The upload's checks (`http::images::validate_original`), handed in by the caller so this
/// module stays below the HTTP layer (`http::legacy::UploadChecks`). A refusal is its stable
/// error code and message.
#[async_trait::async_trait]
pub trait Checks: Send + Sync {
    async fn check(&self, bytes: &Bytes) -> Result<Checked, (&'static str, String)>;
}

/// Why one object was not imported: a code of the import's own, or the upload checks'.
pub enum Fail {
    Code(&'static str, String),
    Check(&'static str, String),
}

impl Fail {
    pub fn code(&self) -> &'static str {
        match self {
            Fail::Code(c, _) | Fail::Check(c, _) => c,
        }
    }

    fn outcome(self) -> Outcome {
        match self {
            Fail::Code(code, message) | Fail::Check(code, message) => Outcome::Failed {
                code: code.to_owned(),
                message,
            },
        }
    }
}

fn failed(code: &'static str, message: impl Into<String>) -> Fail {
    Fail::Code(code, message.into())
}

/// What one object is imported with.
pub struct Job<'a> {
    pub source: &'a dyn Source,
    pub owners: &'a Owners,
    pub checks: &'a dyn Checks,
    pub dry_run: bool,
    pub mode: Mode,
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
        checks: plan.checks.as_ref(),
        dry_run: plan.dry_run,
        mode: plan.mode,
        operator: &plan.operator,
        resumed,
        run_id,
    };
    import_object(app, &job, item)
        .await
        .unwrap_or_else(Fail::outcome)
}

/// What the source index says of an address.
enum Known {
    /// Nothing to do: imported already, or deleted since.
    Done(Outcome),
    /// An entry without its image (a run killed between the two): finish under this id and
    /// creation time (so the owner-index key is the one that run may have written).
    Resume(ImageId, Option<String>),
    New,
}

async fn known(app: &App, job: &Job<'_>, uri: &str) -> Result<Known, Fail> {
    let entry = app
        .catalog
        .source_entry(uri)
        .await
        .map_err(|e| failed("storage_error", e.to_string()))?;
    let skipped = |reason: &str| {
        Known::Done(Outcome::Skipped {
            reason: reason.into(),
        })
    };
    match entry {
        Some(SourceEntry { deleted: true, .. }) => Ok(skipped("deleted")),
        Some(SourceEntry {
            id: Some(id),
            created_at,
            ..
        }) => {
            let id = ImageId::parse(&id)
                .ok_or_else(|| failed("internal_error", "source index entry names a bad id"))?;
            match app.catalog.meta_for_delete(&id).await {
                Ok(meta) => {
                    if job.resumed && !job.dry_run {
                        audit_import(app, job, &meta, 200);
                    }
                    Ok(skipped("already_imported"))
                }
                Err(CatalogError::NotFound) => Ok(Known::Resume(id, created_at)),
                Err(e) => Err(failed("storage_error", e.to_string())),
            }
        }
        _ => Ok(Known::New),
    }
}

/// One object: owner, source index, read, validate, write, audit. `resumed`: this run
/// continues a killed one, whose events after its last checkpoint may have died with it: an
/// object found imported is recorded again (status 200; a fresh import is 201), so the trail
/// may hold an import twice but never miss one.
pub async fn import_object(app: &App, job: &Job<'_>, item: Listed) -> Result<Outcome, Fail> {
    let assigned =
        (job.owners.assign(&item.key)).map_err(|c| failed(c, "no owner for this key"))?;
    let cap = app.config.limits.max_source_bytes;
    if item.size > cap {
        return Err(failed(
            "payload_too_large",
            format!("{} bytes, limit {cap}", item.size),
        ));
    }
    let uri = job.source.uri(&item.key);
    let id = match known(app, job, &uri).await? {
        Known::Done(outcome) => return Ok(outcome),
        Known::Resume(id, created_at) => Some((id, created_at)),
        Known::New => None,
    };
    let (bytes, pinned) = read(job, &item.key, cap).await?;
    let Checked {
        probe,
        info,
        sha256,
    } = job
        .checks
        .check(&bytes)
        .await
        .map_err(|(code, message)| Fail::Check(code, message))?;
    let (width, height) = probe.oriented_dimensions();
    let len = bytes.len() as u64;
    if job.dry_run {
        return Ok(Outcome::WouldImport {
            owner: assigned.owner,
            bytes: len,
        });
    }
    let tags = checked_fields(&assigned)?;
    let Some((id, created_at)) = claim(app, &uri, id, item.modified).await? else {
        return Ok(claimed_elsewhere());
    };
    let meta = ImageMeta {
        id: id.to_string(),
        owner: assigned.owner.clone(),
        format: probe.format,
        width,
        height,
        bytes: len,
        sha256,
        created_at,
        title: assigned.title,
        alt_text: assigned.alt_text,
        tags,
        deleting: false,
        info: Some(info),
        source: Some(uri),
        reference: pinned
            .clone()
            .filter(|_| matches!(job.mode, Mode::InPlace { .. })),
    };
    let copy_from = pinned.filter(|_| job.mode == Mode::ServerCopy);
    if !store_image(app, &meta, bytes, copy_from.as_ref()).await? {
        return Ok(claimed_elsewhere());
    }
    audit_import(app, job, &meta, 201);
    Ok(Outcome::Imported {
        id: meta.id,
        owner: meta.owner,
        bytes: len,
    })
}

/// Another importer (a concurrent run, a lazy import on another instance) holds the object's
/// source entry: its image is, or is about to be, the object's.
fn claimed_elsewhere() -> Outcome {
    Outcome::Skipped {
        reason: CLAIMED_ELSEWHERE.into(),
    }
}

/// [`Outcome::Skipped`]'s reason when another importer claimed the object first.
pub const CLAIMED_ELSEWHERE: &str = "imported_elsewhere";

/// The id and creation time the object's image gets: those of the entry an interrupted run
/// left (`resume`), or new ones, claimed create-only; `None` if another importer claimed it
/// first. A new image was created when its source object was last modified (`modified`), or
/// now if that is unknown, before 1970 or in the future.
async fn claim(
    app: &App,
    uri: &str,
    resume: Option<(ImageId, Option<String>)>,
    modified: Option<SystemTime>,
) -> Result<Option<(ImageId, String)>, Fail> {
    let storage = |e: CatalogError| failed("storage_error", e.to_string());
    let now = || {
        // humantime formats 1970..=now only (it panics before the epoch).
        let t = modified.filter(|m| *m >= std::time::UNIX_EPOCH && *m <= SystemTime::now());
        humantime::format_rfc3339_seconds(t.unwrap_or_else(SystemTime::now)).to_string()
    };
    if let Some((id, created_at)) = resume {
        // Still this id's, and not deleted since `known` looked (a delete finished meanwhile
        // leaves a tombstone: the image must not come back).
        let entry = app.catalog.source_entry(uri).await.map_err(storage)?;
        let current = entry.is_some_and(|e| !e.deleted && e.id.as_deref() == Some(id.as_str()));
        return Ok(current.then(|| (id, created_at.unwrap_or_else(now))));
    }
    // Looked at again right before the claim: the object was read and checked since `known`,
    // and on a service that ignores create-only writes this is what keeps the window short.
    if app
        .catalog
        .source_entry(uri)
        .await
        .map_err(storage)?
        .is_some()
    {
        return Ok(None);
    }
    let id = ImageId::generate().map_err(|_| failed("internal_error", "id generation"))?;
    let created_at = now();
    let mut won = app
        .catalog
        .claim_source(uri, &id, &created_at)
        .await
        .map_err(storage)?;
    if !won {
        // A retried write whose first attempt landed is refused by that attempt: still ours.
        let entry = app.catalog.source_entry(uri).await.map_err(storage)?;
        won = entry.is_some_and(|e| !e.deleted && e.id.as_deref() == Some(id.as_str()));
    }
    Ok(won.then_some((id, created_at)))
}

/// Writes the image (a copy, a server-side copy of `copy_from`, or an in-place stub), then checks its source entry still names
/// it: a service that ignores create-only writes (`ObjectStore::put_if_absent`) lets a
/// concurrent importer overwrite the claim, and the image that lost it is removed again (its
/// records only: never the entry, never a foreign object). `false`: it lost.
async fn store_image(
    app: &App,
    meta: &ImageMeta,
    bytes: Bytes,
    copy_from: Option<&Reference>,
) -> Result<bool, Fail> {
    let storage = |e: CatalogError| failed("storage_error", e.to_string());
    match (copy_from, &meta.reference) {
        (Some(from), _) => app.catalog.create_copied(meta, from).await,
        (None, Some(_)) => app.catalog.create_in_place(meta).await,
        (None, None) => app.catalog.create(meta, bytes).await,
    }
    .map_err(|e| match e {
        // The object changed (or went) between the read that was checked and the copy.
        CatalogError::SourceChanged => failed("source_changed", "changed while it was imported"),
        CatalogError::NotFound => failed("source_gone", "gone since it was listed"),
        other => storage(other),
    })?;
    let uri = meta.source.as_deref().unwrap_or_default();
    let entry = app.catalog.source_entry(uri).await.map_err(storage)?;
    // Another id, or a tombstone (the object's image was deleted meanwhile): not ours to keep.
    let lost = entry.is_none_or(|e| e.deleted || e.id.as_deref() != Some(&meta.id));
    if lost {
        let records_only = ImageMeta {
            source: None,
            reference: None,
            ..meta.clone()
        };
        app.catalog.delete(&records_only).await.map_err(storage)?;
    }
    Ok(!lost)
}

/// The object's bytes, and for an in-place import or a server-side copy the reference pinned
/// to the version read.
async fn read(job: &Job<'_>, key: &str, cap: u64) -> Result<(Bytes, Option<Reference>), Fail> {
    let read_failed = |e| match e {
        ReadError::Gone => failed("source_gone", "gone since it was listed"),
        ReadError::TooLarge { limit } => failed("payload_too_large", format!("limit {limit}")),
        ReadError::Failed(m) => failed("source_error", m),
    };
    let owned = match job.mode {
        Mode::Copy => return Ok((job.source.read(key, cap).await.map_err(read_failed)?, None)),
        Mode::ServerCopy => false,
        Mode::InPlace { owned } => owned,
    };
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(failed(
            "invalid_key",
            "a key with empty, . or .. segments is not referenced or copied by the service",
        ));
    }
    let bucket = job
        .source
        .bucket()
        .ok_or_else(|| failed("source_error", "needs an s3:// source"))?
        .to_owned();
    let (bytes, etag) = job
        .source
        .read_pinned(key, cap)
        .await
        .map_err(read_failed)?;
    let reference = Reference {
        bucket,
        key: key.to_owned(),
        etag,
        bytes: bytes.len() as u64,
        owned,
    };
    Ok((bytes, Some(reference)))
}

/// A manifest's title, alt text and tags, checked against the API's own limits; the tags
/// normalised.
fn checked_fields(a: &owners::Assigned) -> Result<Vec<String>, Fail> {
    crate::catalog::check_text("title", a.title.as_deref().unwrap_or(""))
        .and_then(|()| crate::catalog::check_text("alt_text", a.alt_text.as_deref().unwrap_or("")))
        .and_then(|()| crate::catalog::normalise_tags(a.tags.clone()))
        .map_err(|e| failed("invalid_field", e.to_string()))
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
