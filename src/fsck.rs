//! `pixgate fsck [--repair]`: finds what interrupted writes left in the store, and removes it.
//!
//! Owns the cross-object consistency rules of the storage layout (`docs/architecture.md`,
//! "Storage layout") as seen after the fact. It sits beside [`crate::catalog`] on the store
//! layer: it works on an [`ObjectStore`] alone and knows no HTTP, so the CLI can run it against
//! the same buckets as live servers. What it looks for, each a [`Kind`] whose name keys the JSON
//! summary:
//!
//! - `original_without_meta`: `images/{id}/original` without `meta.json`. An upload killed after
//!   its original, or the cleanup of a failed upload killed half-way (it removes the metadata
//!   first). Never visible through the API; the original, the image's derived prefix and
//!   anything else under `images/{id}/` are removed (an index entry it may have is
//!   `dangling_index_entry`, found later in the same run).
//! - `interrupted_delete`: `images/{id}/deleting`, the marker a delete writes first
//!   (`Catalog::delete`). The delete was killed; the image is already invisible through the API
//!   (its metadata says `deleting`, or the marker is all that was written). Finished in the
//!   server's own order: original, derived prefix, the owner's index entry, anything else under
//!   the prefix (the marker too), the metadata last.
//! - `meta_without_original`: a delete stopped after removing the original (one killed after
//!   its marker went, or a metadata update that raced a delete on another instance). Finished
//!   the same way, from the derived prefix on.
//! - `dangling_index_entry`: `users/{hash}/images/{inverted time}-{id}` without the image's
//!   `meta.json`; removed.
//! - `derived_of_deleted_image`: objects under `derived/{id}/` without the image's `meta.json`;
//!   removed.
//! - `orphan_api_key_lookup`: `apikeys/{sha256}.json` whose owner's key record
//!   (`users/{hash}/apikeys/{key id}.json`, named by the lookup record's `owner` and `id`) is gone:
//!   a key created while its owner's keys were being revoked or erased, whose creation died
//!   before its own re-check removed the lookup record. It authenticates nothing already (a
//!   lookup checks the owner's record, and removes it when used); removed.
//! - `orphan_api_key_marker`: a `{key id}.used` last-use marker without its key record; removed.
//! - `temporary_file`: a temporary of a write killed mid-way (fs backend only: an S3 PUT is
//!   atomic); removed.
//!
//! Safety, because live servers may be writing while fsck runs:
//!
//! - Only objects last modified at least `min_age` (default 15 minutes) before the run began can
//!   be findings. A younger would-be finding may be a write in progress (an upload writes its
//!   original, index entry and metadata within a second or so): it is counted in
//!   `skipped_recent` and never touched.
//! - Every repair checks its condition again right before it deletes (the listing it came from
//!   may be a page old) and deletes in the order the server's own deletes use, so an
//!   interrupted repair leaves only what the next run finds. fsck never writes an object.
//! - An object that exists but cannot be read (over its read cap, not a regular file) counts as
//!   existing: damage is never taken for absence. Records fsck must parse (metadata, lookup
//!   records) that do not parse are reported as errors and left as they are.
//! - A `meta_without_original` may be a `DELETE` running right now (its metadata is old while
//!   its original is just gone). Finishing it is harmless: both sides only delete, and deleting
//!   a missing object succeeds.
//! - Listings are read one page (1000 keys) at a time, each under the store's own deadline; a
//!   failed listing ends its phase with an error rather than judging objects on half a listing.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::auth::api_keys::{self, ApiKeyRecord};
use crate::catalog;
use crate::catalog::CatalogError;
use crate::id::ImageId;
use crate::storage::foreign::Foreign;
use crate::storage::{Bucket, ObjectKey, ObjectStore, StorageError};

/// Default grace period: far beyond the seconds an upload or delete takes, short enough that
/// a nightly run sees yesterday's leftovers.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(15 * 60);
/// Keys per listing page.
const PAGE: usize = 1000;
/// Objects between two progress calls.
const PROGRESS_EVERY: u64 = 250;
/// Example keys kept per kind.
const EXAMPLES: usize = 5;
/// Error messages kept; the rest are only counted.
const MAX_ERRORS: usize = 100;

/// What fsck looks for. The names are stable: they key the JSON summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OriginalWithoutMeta,
    InterruptedDelete,
    MetaWithoutOriginal,
    DanglingIndexEntry,
    DerivedOfDeletedImage,
    OrphanApiKeyLookup,
    OrphanApiKeyMarker,
    TemporaryFile,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::OriginalWithoutMeta,
        Kind::InterruptedDelete,
        Kind::MetaWithoutOriginal,
        Kind::DanglingIndexEntry,
        Kind::DerivedOfDeletedImage,
        Kind::OrphanApiKeyLookup,
        Kind::OrphanApiKeyMarker,
        Kind::TemporaryFile,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::OriginalWithoutMeta => "original_without_meta",
            Kind::InterruptedDelete => "interrupted_delete",
            Kind::MetaWithoutOriginal => "meta_without_original",
            Kind::DanglingIndexEntry => "dangling_index_entry",
            Kind::DerivedOfDeletedImage => "derived_of_deleted_image",
            Kind::OrphanApiKeyLookup => "orphan_api_key_lookup",
            Kind::OrphanApiKeyMarker => "orphan_api_key_marker",
            Kind::TemporaryFile => "temporary_file",
        }
    }
}

/// How to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsckOptions {
    /// Remove what is found (otherwise only report).
    pub repair: bool,
    /// Grace period: objects modified more recently are never findings. Zero is only safe with
    /// no server running against the store.
    pub min_age: Duration,
}

impl Default for FsckOptions {
    fn default() -> FsckOptions {
        FsckOptions {
            repair: false,
            min_age: DEFAULT_MIN_AGE,
        }
    }
}

/// What a run found and did (serialised as the JSON summary).
#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub repair: bool,
    pub min_age_secs: u64,
    /// Objects (and temporaries) looked at.
    pub scanned: u64,
    /// Per kind name, every kind present: findings old enough to repair.
    pub findings: BTreeMap<&'static str, u64>,
    /// Per kind name: findings removed. Fewer than found: the re-check before the delete no
    /// longer saw the condition (left alone), or the repair failed (see `errors`).
    pub repaired: BTreeMap<&'static str, u64>,
    /// Would-be findings younger than `min_age` (perhaps writes in progress): not touched.
    pub skipped_recent: u64,
    /// The first few keys found, per kind name.
    pub examples: BTreeMap<&'static str, Vec<String>>,
    /// The first errors (object and cause); the run goes on past them.
    pub errors: Vec<String>,
    /// Errors beyond those kept in `errors`.
    pub errors_omitted: u64,
}

impl FsckReport {
    fn empty(opts: &FsckOptions) -> FsckReport {
        let zeros: BTreeMap<&'static str, u64> = Kind::ALL.iter().map(|k| (k.name(), 0)).collect();
        FsckReport {
            repair: opts.repair,
            min_age_secs: opts.min_age.as_secs(),
            findings: zeros.clone(),
            repaired: zeros,
            ..FsckReport::default()
        }
    }

    /// Findings of `kind`.
    pub fn found(&self, kind: Kind) -> u64 {
        self.findings.get(kind.name()).copied().unwrap_or(0)
    }

    /// Findings of `kind` removed.
    pub fn repaired_of(&self, kind: Kind) -> u64 {
        self.repaired.get(kind.name()).copied().unwrap_or(0)
    }

    /// Findings still in the store (all of them without `--repair`).
    pub fn unrepaired(&self) -> u64 {
        Kind::ALL
            .iter()
            .map(|&k| self.found(k).saturating_sub(self.repaired_of(k)))
            .sum()
    }

    /// Nothing left to repair and nothing failed (recent objects aside).
    pub fn is_clean(&self) -> bool {
        self.unrepaired() == 0 && self.errors.is_empty() && self.errors_omitted == 0
    }
}

/// Checks the whole store and, with `opts.repair`, removes what it finds (see the module docs).
///
/// `progress(phase, scanned)` is called when a phase starts (`images`, `derived`, `users`,
/// `apikeys`, `temporaries`), every few hundred objects, and once at the end (`done`). Fails
/// only if the store is unreachable at the start; later failures are collected in the report.
pub async fn fsck(
    store: &dyn ObjectStore,
    foreign: Option<&dyn Foreign>,
    opts: &FsckOptions,
    progress: &mut (dyn FnMut(&str, u64) + Send),
) -> Result<FsckReport, CatalogError> {
    store.check().await?;
    let mut run = Run {
        store,
        foreign,
        repair: opts.repair,
        // Fixed at the start: whatever is written during a long run stays younger than this.
        cutoff: SystemTime::now()
            .checked_sub(opts.min_age)
            .unwrap_or(UNIX_EPOCH),
        report: FsckReport::empty(opts),
        progress,
        phase: "",
    };
    // Images first: their repairs remove derived objects and index entries the later phases
    // would otherwise count again, and leave index entries of metadata-less uploads for `users`.
    run.images().await;
    run.derived().await;
    run.users().await;
    run.lookups().await;
    run.temporaries().await;
    (run.progress)("done", run.report.scanned);
    Ok(run.report)
}

/// The objects of one image seen in the listing of `images/`.
struct ImageObjects {
    id: ImageId,
    original: Option<SystemTime>,
    meta: Option<SystemTime>,
    /// The marker a delete writes first.
    deleting: Option<SystemTime>,
}

/// What a key under `users/` is, as far as fsck cares.
enum UserObject {
    /// An owner-index entry of this image.
    IndexEntry(ImageId),
    /// An API key record, `{key id}.json`.
    KeyRecord,
    /// A last-use marker; holds the key of its key record.
    KeyMarker(ObjectKey),
}

/// `images/{id}/{leaf}`.
fn image_object(key: &str) -> Option<(ImageId, &str)> {
    let (id, leaf) = key.strip_prefix("images/")?.split_once('/')?;
    Some((ImageId::parse(id)?, leaf))
}

/// `derived/{id}/…`.
fn derived_image(key: &str) -> Option<ImageId> {
    let (id, _) = key.strip_prefix("derived/")?.split_once('/')?;
    ImageId::parse(id)
}

/// The user-prefix layouts of `catalog` (index entries) and `auth::api_keys` (key records and
/// markers); anything else is not fsck's to judge.
fn user_object(key: &str) -> Option<UserObject> {
    let (user, rest) = key.strip_prefix("users/")?.split_once('/')?;
    if user.len() != 64 || !user.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    if let Some(leaf) = rest.strip_prefix("images/") {
        // `{INVERT - created secs:010}-{id}` (`catalog::index_key`).
        let (inverted, id) = leaf.split_once('-')?;
        if inverted.len() != 10 || !inverted.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return ImageId::parse(id).map(UserObject::IndexEntry);
    }
    let leaf = rest.strip_prefix("apikeys/")?;
    if leaf.contains('/') {
        return None;
    }
    if leaf.ends_with(".json") {
        return Some(UserObject::KeyRecord);
    }
    let stem = key.strip_suffix(".used")?;
    ObjectKey::new(format!("{stem}.json"))
        .ok()
        .map(UserObject::KeyMarker)
}

/// Whether `key` exists, asked by reading it (at most `cap` bytes). An object that exists but
/// cannot be read (over the cap, not a regular file) exists: what depends on it stays.
async fn present(
    store: &dyn ObjectStore,
    bucket: Bucket,
    key: &ObjectKey,
    cap: u64,
) -> Result<bool, StorageError> {
    match store.get(bucket, key, cap).await {
        Ok(_) | Err(StorageError::TooLarge { .. }) | Err(StorageError::NotAFile) => Ok(true),
        Err(StorageError::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `key` is listed: the question `catalog::Catalog::original_exists` asks (originals
/// are too large to read for it). A key sorts before every other key it is a prefix of.
async fn listed(
    store: &dyn ObjectStore,
    bucket: Bucket,
    key: &ObjectKey,
) -> Result<bool, StorageError> {
    Ok(store
        .list_page(bucket, key.as_str(), None, 1)
        .await?
        .first()
        == Some(key))
}

async fn meta_present(store: &dyn ObjectStore, id: &ImageId) -> Result<bool, CatalogError> {
    let meta = catalog::key(id, "meta.json")?;
    Ok(present(store, Bucket::Originals, &meta, catalog::MAX_META_BYTES).await?)
}

/// Deletes every object under `prefix` but `keep`, a page at a time.
async fn delete_prefix(
    store: &dyn ObjectStore,
    bucket: Bucket,
    prefix: &str,
    keep: Option<&ObjectKey>,
) -> Result<(), StorageError> {
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_page(bucket, prefix, after.as_deref(), PAGE)
            .await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.as_str().to_owned());
        for k in &page {
            if keep != Some(k) {
                store.delete(bucket, k).await?;
            }
        }
    }
}

/// Removes what an upload killed before its metadata left; `false` if the metadata exists now.
async fn remove_unfinished_upload(
    store: &dyn ObjectStore,
    id: &ImageId,
) -> Result<bool, CatalogError> {
    if meta_present(store, id).await? {
        return Ok(false);
    }
    let meta = catalog::key(id, "meta.json")?;
    store
        .delete(Bucket::Originals, &catalog::key(id, "original")?)
        .await?;
    delete_prefix(store, Bucket::Derived, &catalog::derived_prefix(id), None).await?;
    // Never the metadata, should it appear after all: that would break a complete image.
    delete_prefix(
        store,
        Bucket::Originals,
        &format!("images/{id}/"),
        Some(&meta),
    )
    .await?;
    Ok(true)
}

/// Where [`finish_delete`] picks up `Catalog::delete`'s order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A marked delete (`interrupted_delete`): from the original on.
    Original,
    /// The original is gone (`meta_without_original`): from the derived prefix on.
    Derived,
}

/// Finishes a delete in `Catalog::delete`'s order (the marker after the original, the metadata
/// last, so a repair that stops half-way is found again). `false` if the condition no longer
/// holds: the marker is gone (`Step::Original`), or the original is back or the metadata gone
/// (`Step::Derived`).
async fn finish_delete(
    store: &dyn ObjectStore,
    foreign: Option<&dyn Foreign>,
    id: &ImageId,
    from: Step,
) -> Result<bool, CatalogError> {
    // Unparseable metadata is an error for the operator, not a leftover: kept as it is.
    let meta = match catalog::read_meta_any(store, id).await {
        Ok(m) => Some(m),
        // A marker without metadata: a delete killed right after its first write, of an
        // upload that never finished, or one whose metadata already went.
        Err(CatalogError::NotFound) if from == Step::Original => None,
        Err(CatalogError::NotFound) => return Ok(false),
        Err(e) => return Err(e),
    };
    let original = catalog::key(id, "original")?;
    match from {
        Step::Original => {
            let marker = catalog::key(id, catalog::DELETING_MARKER)?;
            if !listed(store, Bucket::Originals, &marker).await? {
                return Ok(false);
            }
            match &meta {
                // The delete may have been killed before its tombstone (an imported image's
                // source entry must not lead a later import back to it), or before an owned
                // in-place original was deleted: the same step as the delete's.
                Some(m) => catalog::release_original(store, foreign, id, m).await?,
                None => store.delete(Bucket::Originals, &original).await?,
            }
        }
        Step::Derived => {
            if listed(store, Bucket::Originals, &original).await? {
                return Ok(false);
            }
        }
    }
    delete_prefix(store, Bucket::Derived, &catalog::derived_prefix(id), None).await?;
    // Without metadata the index entry cannot be named: it is a `dangling_index_entry`,
    // found in the users phase of the same run.
    if let Some(meta) = &meta {
        store
            .delete(Bucket::Originals, &catalog::index_key(meta, id)?)
            .await?;
    }
    // As the delete does: out of every collection, the shares' index copies gone.
    crate::access::account::detach_image(store, id.as_str())
        .await
        .map_err(|e| match e {
            crate::access::AccessError::Storage(s) => CatalogError::Storage(s),
            other => CatalogError::Internal(format!("detaching access records: {other}")),
        })?;
    let meta_key = catalog::key(id, "meta.json")?;
    delete_prefix(
        store,
        Bucket::Originals,
        &format!("images/{id}/"),
        Some(&meta_key),
    )
    .await?;
    store.delete(Bucket::Originals, &meta_key).await?;
    Ok(true)
}

/// Deletes `target` unless `witness` (in the originals bucket) exists by now.
async fn remove_orphan(
    store: &dyn ObjectStore,
    bucket: Bucket,
    target: &ObjectKey,
    witness: &ObjectKey,
    cap: u64,
) -> Result<bool, CatalogError> {
    if present(store, Bucket::Originals, witness, cap).await? {
        return Ok(false);
    }
    store.delete(bucket, target).await?;
    Ok(true)
}

/// One run's state. Two lifetimes: the callback's trait object keeps the caller's.
struct Run<'a, 'p> {
    store: &'a dyn ObjectStore,
    /// Owned in-place originals of interrupted deletes are deleted through it.
    foreign: Option<&'a dyn Foreign>,
    repair: bool,
    /// Objects modified at or after this are recent.
    cutoff: SystemTime,
    report: FsckReport,
    progress: &'a mut (dyn FnMut(&str, u64) + Send + 'p),
    phase: &'static str,
}

impl Run<'_, '_> {
    fn begin(&mut self, phase: &'static str) {
        self.phase = phase;
        (self.progress)(phase, self.report.scanned);
    }

    fn tick(&mut self) {
        self.report.scanned += 1;
        if self.report.scanned.is_multiple_of(PROGRESS_EVERY) {
            (self.progress)(self.phase, self.report.scanned);
        }
    }

    /// Counts a would-be finding: `true` if it is old enough to be one (and to be repaired).
    fn orphan(&mut self, kind: Kind, modified: SystemTime, example: &str) -> bool {
        if modified >= self.cutoff {
            self.report.skipped_recent += 1;
            return false;
        }
        *self.report.findings.entry(kind.name()).or_default() += 1;
        let examples = self.report.examples.entry(kind.name()).or_default();
        if examples.len() < EXAMPLES {
            examples.push(example.to_owned());
        }
        true
    }

    fn error(&mut self, what: &str, e: impl std::fmt::Display) {
        if self.report.errors.len() < MAX_ERRORS {
            self.report.errors.push(format!("{what}: {e}"));
        } else {
            self.report.errors_omitted += 1;
        }
    }

    fn outcome(&mut self, kind: Kind, what: &str, result: Result<bool, CatalogError>) {
        match result {
            Ok(true) => {
                *self.report.repaired.entry(kind.name()).or_default() += 1;
                // Deletions by an operator job leave a trace beside the summary.
                tracing::info!(kind = kind.name(), object = %what, "fsck removed");
            }
            Ok(false) => {}
            Err(e) => self.error(what, e),
        }
    }

    /// The next page of `prefix` after `after` (advanced past it): `Ok(None)` at the end,
    /// `Err` when the listing failed (recorded; the phase stops — judged on half a listing, a
    /// complete image could look like an orphan).
    async fn next_page(
        &mut self,
        bucket: Bucket,
        prefix: &str,
        after: &mut Option<String>,
    ) -> Result<Option<Vec<(ObjectKey, SystemTime)>>, ()> {
        match self
            .store
            .list_page_dated(bucket, prefix, after.as_deref(), PAGE)
            .await
        {
            Ok(page) => {
                let Some((last, _)) = page.last() else {
                    return Ok(None);
                };
                *after = Some(last.as_str().to_owned());
                Ok(Some(page))
            }
            Err(e) => {
                self.error(&format!("listing {prefix}"), e);
                Err(())
            }
        }
    }

    /// `images/`: originals without metadata, metadata without originals.
    async fn images(&mut self) {
        self.begin("images");
        let mut after: Option<String> = None;
        // An image's objects are adjacent in key order, possibly across a page boundary: one
        // image is pending until a key of another shows up.
        let mut pending: Option<ImageObjects> = None;
        loop {
            let Ok(page) = self
                .next_page(Bucket::Originals, "images/", &mut after)
                .await
            else {
                return;
            };
            let Some(page) = page else {
                break;
            };
            for (key, modified) in page {
                self.tick();
                let Some((id, leaf)) = image_object(key.as_str()) else {
                    continue;
                };
                if let Some(done) = pending.take_if(|p| p.id != id) {
                    self.check_image(done).await;
                }
                let p = pending.get_or_insert(ImageObjects {
                    id,
                    original: None,
                    meta: None,
                    deleting: None,
                });
                match leaf {
                    "original" => p.original = Some(modified),
                    "meta.json" => p.meta = Some(modified),
                    catalog::DELETING_MARKER => p.deleting = Some(modified),
                    _ => {}
                }
            }
        }
        if let Some(done) = pending {
            self.check_image(done).await;
        }
    }

    async fn check_image(&mut self, image: ImageObjects) {
        let id = image.id;
        if let Some(marked) = image.deleting {
            let kind = Kind::InterruptedDelete;
            let marker = format!("images/{id}/{}", catalog::DELETING_MARKER);
            if self.orphan(kind, marked, &marker) && self.repair {
                let r = finish_delete(self.store, self.foreign, &id, Step::Original).await;
                self.outcome(kind, &format!("images/{id}/"), r);
            }
            return;
        }
        match (image.original, image.meta) {
            (Some(modified), None) => {
                let kind = Kind::OriginalWithoutMeta;
                if self.orphan(kind, modified, &format!("images/{id}/original")) && self.repair {
                    let r = remove_unfinished_upload(self.store, &id).await;
                    self.outcome(kind, &format!("images/{id}/"), r);
                }
            }
            // Aged by the metadata: an original deleted a moment ago still leaves it old, see
            // the module docs for why finishing a running delete is harmless.
            (None, Some(modified)) => {
                let kind = Kind::MetaWithoutOriginal;
                if self.orphan(kind, modified, &format!("images/{id}/meta.json")) && self.repair {
                    let r = finish_delete(self.store, self.foreign, &id, Step::Derived).await;
                    self.outcome(kind, &format!("images/{id}/"), r);
                }
            }
            _ => {}
        }
    }

    /// `derived/`: results of images that no longer exist.
    async fn derived(&mut self) {
        self.begin("derived");
        let mut after: Option<String> = None;
        loop {
            // The end of the listing, or a failed page (recorded by `next_page`).
            let Ok(Some(page)) = self
                .next_page(Bucket::Derived, "derived/", &mut after)
                .await
            else {
                return;
            };
            // An image's results are adjacent: one metadata check per image and page.
            let mut groups: Vec<(ImageId, Vec<(ObjectKey, SystemTime)>)> = Vec::new();
            for (key, modified) in page {
                self.tick();
                let Some(id) = derived_image(key.as_str()) else {
                    continue;
                };
                match groups.last_mut() {
                    Some((last, objects)) if *last == id => objects.push((key, modified)),
                    _ => groups.push((id, vec![(key, modified)])),
                }
            }
            for (id, objects) in groups {
                self.check_derived(&id, objects).await;
            }
        }
    }

    async fn check_derived(&mut self, id: &ImageId, objects: Vec<(ObjectKey, SystemTime)>) {
        match meta_present(self.store, id).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                self.error(&catalog::derived_prefix(id), e);
                return;
            }
        }
        let kind = Kind::DerivedOfDeletedImage;
        let mut old = Vec::new();
        for (key, modified) in objects {
            if self.orphan(kind, modified, key.as_str()) {
                old.push(key);
            }
        }
        if !self.repair || old.is_empty() {
            return;
        }
        // Re-checked once for the image's objects of this page, right before deleting them.
        match meta_present(self.store, id).await {
            Ok(false) => {}
            Ok(true) => return,
            Err(e) => {
                self.error(&catalog::derived_prefix(id), e);
                return;
            }
        }
        for key in old {
            let r = self.store.delete(Bucket::Derived, &key).await;
            self.outcome(
                kind,
                key.as_str(),
                r.map(|()| true).map_err(CatalogError::from),
            );
        }
    }

    /// `users/`: index entries of images that no longer exist, markers of keys that no longer
    /// exist.
    async fn users(&mut self) {
        self.begin("users");
        let mut after: Option<String> = None;
        // A marker sorts right after its key's record (`.json` < `.used`): most need no read.
        let mut last_record: Option<ObjectKey> = None;
        loop {
            // The end of the listing, or a failed page (recorded by `next_page`).
            let Ok(Some(page)) = self
                .next_page(Bucket::Originals, "users/", &mut after)
                .await
            else {
                return;
            };
            for (key, modified) in page {
                self.tick();
                match user_object(key.as_str()) {
                    Some(UserObject::IndexEntry(id)) => {
                        self.check_index_entry(&key, &id, modified).await;
                    }
                    Some(UserObject::KeyRecord) => last_record = Some(key),
                    Some(UserObject::KeyMarker(record))
                        if last_record.as_ref() != Some(&record) =>
                    {
                        self.check_marker(&key, &record, modified).await;
                    }
                    Some(UserObject::KeyMarker(_)) => {}
                    None => {}
                }
            }
        }
    }

    async fn check_index_entry(&mut self, key: &ObjectKey, id: &ImageId, modified: SystemTime) {
        match meta_present(self.store, id).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                self.error(key.as_str(), e);
                return;
            }
        }
        let kind = Kind::DanglingIndexEntry;
        if self.orphan(kind, modified, key.as_str()) && self.repair {
            let r = match catalog::key(id, "meta.json") {
                Ok(meta) => {
                    remove_orphan(
                        self.store,
                        Bucket::Originals,
                        key,
                        &meta,
                        catalog::MAX_META_BYTES,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            self.outcome(kind, key.as_str(), r);
        }
    }

    async fn check_marker(&mut self, key: &ObjectKey, record: &ObjectKey, modified: SystemTime) {
        let cap = api_keys::MAX_RECORD_BYTES;
        match present(self.store, Bucket::Originals, record, cap).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                self.error(key.as_str(), e);
                return;
            }
        }
        let kind = Kind::OrphanApiKeyMarker;
        if self.orphan(kind, modified, key.as_str()) && self.repair {
            let r = remove_orphan(self.store, Bucket::Originals, key, record, cap).await;
            self.outcome(kind, key.as_str(), r);
        }
    }

    /// `apikeys/`: lookup records whose owner's key record is gone.
    async fn lookups(&mut self) {
        self.begin("apikeys");
        let mut after: Option<String> = None;
        loop {
            // The end of the listing, or a failed page (recorded by `next_page`).
            let Ok(Some(page)) = self
                .next_page(Bucket::Originals, "apikeys/", &mut after)
                .await
            else {
                return;
            };
            for (key, modified) in page {
                self.tick();
                if key.as_str().ends_with(".json") {
                    self.check_lookup(&key, modified).await;
                }
            }
        }
    }

    async fn check_lookup(&mut self, key: &ObjectKey, modified: SystemTime) {
        let cap = api_keys::MAX_RECORD_BYTES;
        let bytes = match self.store.get(Bucket::Originals, key, cap).await {
            Ok(b) => b,
            // Revoked since the listing.
            Err(StorageError::NotFound) => return,
            Err(e) => {
                self.error(key.as_str(), e);
                return;
            }
        };
        // The lookup record is the whole key record: its `owner` and `id` name the owner's.
        let record = serde_json::from_slice::<ApiKeyRecord>(&bytes)
            .map_err(|e| CatalogError::Corrupt(format!("API key lookup record: {e}")))
            .and_then(|r| {
                api_keys::owner_record_key(&r).map_err(|e| CatalogError::Corrupt(e.to_string()))
            });
        let record = match record {
            Ok(k) => k,
            Err(e) => {
                self.error(key.as_str(), e);
                return;
            }
        };
        match present(self.store, Bucket::Originals, &record, cap).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                self.error(key.as_str(), e);
                return;
            }
        }
        let kind = Kind::OrphanApiKeyLookup;
        if self.orphan(kind, modified, key.as_str()) && self.repair {
            let r = remove_orphan(self.store, Bucket::Originals, key, &record, cap).await;
            self.outcome(kind, key.as_str(), r);
        }
    }

    /// Temporaries of interrupted fs writes.
    async fn temporaries(&mut self) {
        self.begin("temporaries");
        let found = match self.store.temporaries().await {
            Ok(t) => t,
            Err(e) => {
                self.error("listing temporaries", e);
                return;
            }
        };
        let kind = Kind::TemporaryFile;
        for t in found {
            self.tick();
            let name = t.to_string();
            if self.orphan(kind, t.modified(), &name) && self.repair {
                // The store re-checks at removal that it is unchanged since it was found.
                let r = self.store.remove_temporary(&t).await;
                self.outcome(kind, &name, r.map_err(CatalogError::from));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use bytes::Bytes;

    use super::*;
    use crate::auth::{ApiKeys, Principal, Role, Scopes};
    use crate::catalog::{Catalog, ImageMeta};
    use crate::id::user_segment;
    use crate::image::ImageFormat;

    fn meta(id: &ImageId, owner: &str) -> ImageMeta {
        ImageMeta {
            id: id.to_string(),
            owner: owner.into(),
            format: ImageFormat::Png,
            width: 1,
            height: 1,
            bytes: 3,
            sha256: "x".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            title: None,
            alt_text: None,
            tags: Vec::new(),
            deleting: false,
            info: None,
            source: None,
            reference: None,
        }
    }

    fn key(s: &str) -> ObjectKey {
        ObjectKey::new(s).unwrap()
    }

    async fn put(store: &dyn ObjectStore, bucket: Bucket, k: &str) {
        store
            .put(bucket, &key(k), Bytes::from_static(b"x"), "x")
            .await
            .unwrap();
    }

    /// Every file under `dir` (temporaries too), relative to it, sorted.
    fn files(dir: &Path) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(base, &path, out);
                } else {
                    let rel = path.strip_prefix(base).unwrap();
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    /// Sets the modification time of every file under `dir`.
    fn backdate(dir: &Path, to: SystemTime) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                backdate(&path, to);
            } else {
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(to)
                    .unwrap();
            }
        }
    }

    async fn run(store: &dyn ObjectStore, repair: bool) -> FsckReport {
        let mut phases: Vec<String> = Vec::new();
        let opts = FsckOptions {
            repair,
            ..FsckOptions::default()
        };
        let report = fsck(store, None, &opts, &mut |phase: &str, _scanned: u64| {
            if phases.last().is_none_or(|p| p != phase) {
                phases.push(phase.to_owned());
            }
        })
        .await
        .unwrap();
        assert_eq!(
            phases,
            [
                "images",
                "derived",
                "users",
                "apikeys",
                "temporaries",
                "done"
            ]
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        report
    }

    #[tokio::test]
    async fn finds_and_repairs_every_kind_and_leaves_healthy_and_recent_objects_alone() {
        let (dir, store) = crate::storage::temp_store();
        let s: &dyn ObjectStore = store.as_ref();
        let images = Catalog::new(store.clone(), 1024);
        let keys = ApiKeys::new(store.clone(), Duration::from_secs(30), 10);
        let alice = user_segment("alice");

        // A complete image with a derived result, and a live API key with its last-use marker.
        let healthy = ImageId::generate().unwrap();
        images
            .create(&meta(&healthy, "alice"), Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let healthy_derived = format!("derived/{healthy}/{}.webp", "0a".repeat(16));
        put(s, Bucket::Derived, &healthy_derived).await;
        let owner = Principal::jwt("alice", Role::Editor, None);
        let (_raw, live_key) = keys.create(&owner, "ci", Scopes::READ, &[]).await.unwrap();
        let live_marker = format!("users/{alice}/apikeys/{}.used", live_key.id);
        put(s, Bucket::Originals, &live_marker).await;

        // original_without_meta: an upload killed after its original.
        let unfinished = ImageId::generate().unwrap();
        let unfinished_original = format!("images/{unfinished}/original");
        put(s, Bucket::Originals, &unfinished_original).await;

        // meta_without_original: a delete killed after the original.
        let half_deleted = ImageId::generate().unwrap();
        let half_meta = meta(&half_deleted, "alice");
        images
            .create(&half_meta, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let half_derived = format!("derived/{half_deleted}/{}.png", "0b".repeat(16));
        put(s, Bucket::Derived, &half_derived).await;
        s.delete(
            Bucket::Originals,
            &key(&format!("images/{half_deleted}/original")),
        )
        .await
        .unwrap();
        let half_index = catalog::index_key(&half_meta, &half_deleted).unwrap();

        // interrupted_delete: a delete killed right after marking the image (marker, metadata
        // rewritten with `deleting`): invisible at once, finished by the repair.
        // It was imported: the repair leaves its source entry a tombstone, as the delete would.
        let marked = ImageId::generate().unwrap();
        let marked_uri = "s3://legacy/users/alice/a.jpg";
        let marked_meta = ImageMeta {
            source: Some(marked_uri.to_owned()),
            ..meta(&marked, "alice")
        };
        images
            .put_source_entry(marked_uri, &marked, &marked_meta.created_at)
            .await
            .unwrap();
        images
            .create(&marked_meta, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let marked_derived = format!("derived/{marked}/{}.png", "0d".repeat(16));
        put(s, Bucket::Derived, &marked_derived).await;
        let marker = format!("images/{marked}/deleting");
        put(s, Bucket::Originals, &marker).await;
        let flagged = ImageMeta {
            deleting: true,
            ..marked_meta.clone()
        };
        s.put(
            Bucket::Originals,
            &key(&format!("images/{marked}/meta.json")),
            Bytes::from(serde_json::to_vec(&flagged).unwrap()),
            "application/json",
        )
        .await
        .unwrap();
        assert!(matches!(
            images.meta(&marked).await,
            Err(CatalogError::NotFound)
        ));
        let marked_index = catalog::index_key(&marked_meta, &marked).unwrap();

        // dangling_index_entry and derived_of_deleted_image: an image long gone.
        let gone = ImageId::generate().unwrap();
        let dangling = format!("users/{alice}/images/8232774399-{gone}");
        put(s, Bucket::Originals, &dangling).await;
        let orphan_derived = format!("derived/{gone}/{}.webp", "0c".repeat(16));
        put(s, Bucket::Derived, &orphan_derived).await;

        // orphan_api_key_lookup: a key created while its owner's keys were being revoked (the
        // creation's own check removes the lookup record, unless its process dies first).
        let bob = Principal::jwt("bob", Role::Editor, None);
        let (_raw, revoked) = keys.create(&bob, "ci", Scopes::READ, &[]).await.unwrap();
        let bob_record = format!("users/{}/apikeys/{}.json", user_segment("bob"), revoked.id);
        s.delete(Bucket::Originals, &key(&bob_record))
            .await
            .unwrap();
        let lookup = format!("apikeys/{}.json", revoked.hash);

        // orphan_api_key_marker: a use recorded after its key was revoked.
        let orphan_marker = format!("users/{alice}/apikeys/key_0123456789abcdef01234567.used");
        put(s, Bucket::Originals, &orphan_marker).await;

        // temporary_file: a write killed mid-way, beside a complete image's objects.
        let temporary = format!("originals/images/{healthy}/.tmp-0123456789abcdef");
        std::fs::write(dir.path().join(&temporary), b"partial").unwrap();

        // All of it an hour old: only the rules, not the grace period, protect healthy objects.
        backdate(dir.path(), SystemTime::now() - Duration::from_secs(3600));
        // Written just now: perhaps an upload in progress.
        let fresh = ImageId::generate().unwrap();
        put(s, Bucket::Originals, &format!("images/{fresh}/original")).await;

        let before = files(dir.path());

        let r = run(s, false).await;
        for kind in Kind::ALL {
            assert_eq!(r.found(kind), 1, "{}: {r:?}", kind.name());
            assert_eq!(r.repaired_of(kind), 0, "{}", kind.name());
        }
        assert_eq!(r.skipped_recent, 1, "{r:?}");
        assert_eq!(r.unrepaired(), 8);
        assert!(!r.is_clean());
        let example = |kind: Kind| r.examples[kind.name()].clone();
        assert_eq!(
            example(Kind::OriginalWithoutMeta),
            std::slice::from_ref(&unfinished_original)
        );
        assert_eq!(
            example(Kind::InterruptedDelete),
            std::slice::from_ref(&marker)
        );
        assert_eq!(
            example(Kind::MetaWithoutOriginal),
            [format!("images/{half_deleted}/meta.json")]
        );
        assert_eq!(
            example(Kind::DanglingIndexEntry),
            std::slice::from_ref(&dangling)
        );
        assert_eq!(
            example(Kind::DerivedOfDeletedImage),
            std::slice::from_ref(&orphan_derived)
        );
        assert_eq!(
            example(Kind::OrphanApiKeyLookup),
            std::slice::from_ref(&lookup)
        );
        assert_eq!(
            example(Kind::OrphanApiKeyMarker),
            std::slice::from_ref(&orphan_marker)
        );
        assert_eq!(
            example(Kind::TemporaryFile),
            std::slice::from_ref(&temporary)
        );
        assert_eq!(
            files(dir.path()),
            before,
            "without --repair nothing changes"
        );
        let summary = serde_json::to_value(&r).unwrap();
        assert_eq!(summary["findings"]["orphan_api_key_marker"], 1);
        assert_eq!(summary["repaired"]["temporary_file"], 0);

        let r = run(s, true).await;
        for kind in Kind::ALL {
            assert_eq!(r.found(kind), 1, "{}: {r:?}", kind.name());
            assert_eq!(r.repaired_of(kind), 1, "{}: {r:?}", kind.name());
        }
        let entry = images.source_entry(marked_uri).await.unwrap().unwrap();
        assert!(entry.deleted && entry.id.is_none(), "{entry:?}");
        assert_eq!(r.skipped_recent, 1, "{r:?}");
        assert!(r.is_clean(), "{r:?}");
        // Exactly the orphans are gone (and the half-deleted image's index entry and derived
        // result with its metadata); the complete image, the live key, the fresh upload stay.
        let removed: Vec<String> = [
            format!("originals/{unfinished_original}"),
            format!("originals/images/{marked}/original"),
            format!("originals/images/{marked}/meta.json"),
            format!("originals/{marker}"),
            format!("originals/{marked_index}"),
            format!("derived/{marked_derived}"),
            format!("originals/images/{half_deleted}/meta.json"),
            format!("originals/{half_index}"),
            format!("derived/{half_derived}"),
            format!("originals/{dangling}"),
            format!("derived/{orphan_derived}"),
            format!("originals/{lookup}"),
            format!("originals/{orphan_marker}"),
            temporary.clone(),
        ]
        .into();
        for f in &removed {
            assert!(before.contains(f), "{f} was there");
        }
        let kept: Vec<String> = before
            .iter()
            .filter(|f| !removed.contains(f))
            .cloned()
            .collect();
        assert_eq!(files(dir.path()), kept);
        assert!(kept.contains(&format!("originals/{live_marker}")));
        assert!(kept.contains(&format!("derived/{healthy_derived}")));
        let listed = images.list("alice", None, 10).await.unwrap();
        assert_eq!(listed.items, vec![meta(&healthy, "alice")]);

        let r = run(s, true).await;
        for kind in Kind::ALL {
            assert_eq!(r.found(kind), 0, "{}: {r:?}", kind.name());
        }
        assert_eq!(r.skipped_recent, 1, "the fresh upload, still untouched");
        assert!(r.is_clean());
        assert_eq!(files(dir.path()), kept);
    }

    #[tokio::test]
    async fn a_grace_period_covers_every_kind() {
        let (dir, store) = crate::storage::temp_store();
        let s: &dyn ObjectStore = store.as_ref();
        let id = ImageId::generate().unwrap();
        put(s, Bucket::Originals, &format!("images/{id}/original")).await;
        put(s, Bucket::Originals, &format!("images/{id}/meta.json")).await;
        put(s, Bucket::Derived, &format!("derived/{id}/x.webp")).await;
        s.delete(Bucket::Originals, &key(&format!("images/{id}/meta.json")))
            .await
            .unwrap();
        let alice = user_segment("alice");
        put(
            s,
            Bucket::Originals,
            &format!("users/{alice}/images/8232774399-{id}"),
        )
        .await;
        put(
            s,
            Bucket::Originals,
            &format!("users/{alice}/apikeys/key_0123456789abcdef01234567.used"),
        )
        .await;
        std::fs::write(dir.path().join("derived/.tmp-00"), b"").unwrap();
        let marked = ImageId::generate().unwrap();
        put(s, Bucket::Originals, &format!("images/{marked}/deleting")).await;
        let before = files(dir.path());
        let r = run(s, true).await;
        assert_eq!(r.skipped_recent, 6, "{r:?}");
        assert_eq!(r.unrepaired(), 0);
        assert_eq!(files(dir.path()), before);
        // With the grace period waived (no server running), the same store is repaired.
        let opts = FsckOptions {
            repair: true,
            min_age: Duration::ZERO,
        };
        let r = fsck(s, None, &opts, &mut |_: &str, _: u64| {})
            .await
            .unwrap();
        assert_eq!(r.skipped_recent, 0, "{r:?}");
        // Five, not six: the derived result goes with the original it belongs to.
        assert_eq!(r.found(Kind::DerivedOfDeletedImage), 0, "{r:?}");
        assert_eq!(r.findings.values().sum::<u64>(), 5, "{r:?}");
        assert!(r.is_clean(), "{r:?}");
        assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    }

    #[test]
    fn only_pixgate_layouts_are_judged() {
        let id = "0123456789abcdef0123456789abcdef";
        let user = "a".repeat(64);
        assert!(image_object(&format!("images/{id}/original")).is_some());
        assert!(image_object("images/not-an-id/original").is_none());
        assert!(derived_image(&format!("derived/{id}/x.webp")).is_some());
        assert!(derived_image(&format!("derived/{id}")).is_none());
        assert!(matches!(
            user_object(&format!("users/{user}/images/8232774399-{id}")),
            Some(UserObject::IndexEntry(_))
        ));
        let record = format!("users/{user}/apikeys/key_1.json");
        assert!(matches!(
            user_object(&format!("users/{user}/apikeys/key_1.used")),
            Some(UserObject::KeyMarker(k)) if k.as_str() == record
        ));
        for other in [
            format!("users/{user}/images/823-{id}"),
            format!("users/{user}/images/8232774399-{id}/x"),
            "users/short/apikeys/key_1.used".to_owned(),
            format!("users/{user}/apikeys/x/key_1.used"),
            format!("users/{user}/other/key_1.used"),
        ] {
            assert!(user_object(&other).is_none(), "{other}");
        }
    }
}
