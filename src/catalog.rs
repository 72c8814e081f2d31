//! Image records over the object store: originals, their metadata, and each owner's index.
//!
//! Layout in the originals bucket:
//! - `images/{id}/original` — the uploaded bytes, unchanged; or, for an original imported in
//!   place (`pixgate import --in-place`), a reference stub naming the foreign object
//!   ([`crate::storage::foreign`]), which [`Catalog::original`] resolves;
//! - `images/{id}/meta.json` — [`ImageMeta`]; an image exists exactly when this exists;
//! - `users/{user}/images/{inverted created_at}-{id}` — the owner's index (empty objects), so
//!   listing is one prefix listing, newest first, paginated by `start_after`.
//!
//! Derived results live in the derived bucket under [`derived_prefix`] — one prefix per image,
//! so deleting an image's derivatives is one listing.
//!
//! Write order keeps the invariant "a visible image is complete": create writes the original,
//! the index entry, then the metadata (a failure removes what was written); delete removes the
//! original, every derived object, the index entry, and the metadata last, so a delete that
//! fails half-way is retried by the next `DELETE` instead of leaving orphans behind. Mutations
//! of one image are serialised within the process; across instances a `PATCH` that loses a race
//! with a delete notices the missing original and removes its metadata again.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::{ImageId, user_segment};
use crate::image::ImageFormat;
use crate::storage::foreign::{self, Foreign, ForeignError, Reference};
use crate::storage::{Bucket, ObjectKey, ObjectStore, StorageError};

/// Metadata cap: a record is a few hundred bytes (a few KB with full titles and tags).
pub(crate) const MAX_META_BYTES: u64 = 64 * 1024;

/// `images/{id}/deleting`: written first by a delete, removed with the rest of the image.
pub(crate) const DELETING_MARKER: &str = "deleting";
/// How long a failed upload waits for its cleanup before answering (it continues after).
const CLEANUP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why an image record could not be read, written or removed. Mapped to HTTP in
/// `http::error`; `NotFound` is an answer (no such image, or one being deleted).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogError {
    #[error("not found")]
    NotFound,
    #[error("invalid field: {0}")]
    InvalidField(String),
    /// A stored record of the image is damaged (`pixgate fsck`).
    #[error("stored object damaged: {0}")]
    Corrupt(String),
    /// The store failed (unavailable, timed out, an object over its read cap…).
    #[error(transparent)]
    Storage(StorageError),
    #[error("internal error: {0}")]
    Internal(String),
    /// An in-place original (`pixgate import --in-place`) is gone from its bucket.
    #[error("the referenced original is gone")]
    SourceGone,
    /// An in-place original was replaced since it was imported and validated.
    #[error("the referenced original changed since it was imported")]
    SourceChanged,
}

impl From<StorageError> for CatalogError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => CatalogError::NotFound,
            other => CatalogError::Storage(other),
        }
    }
}

/// Metadata field limits (also the GDPR right to rectification's surface).
pub const MAX_TITLE_CHARS: usize = 255;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 50;
/// Metadata reads in flight while listing a page.
const LIST_CONCURRENCY: usize = 16;
/// Largest `info.json` read (a real one is under 2 KiB: the LQIP is at most 1 KiB).
const MAX_INFO_BYTES: u64 = 64 << 10;
/// Lock stripes for per-image mutations.
const STRIPES: usize = 64;
/// Index keys sort newest first: `INVERT - created_secs`, zero-padded.
const INVERT: u64 = 9_999_999_999;

/// What pixgate knows about an original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub id: String,
    pub owner: String,
    pub format: ImageFormat,
    /// Displayed size: EXIF orientation applied.
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    pub sha256: String,
    /// RFC 3339, UTC, seconds.
    pub created_at: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub alt_text: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Set by the first step of a delete: the image is gone for every reader from then on,
    /// even if the delete is killed before its last step (`Catalog::delete`). Never shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
    /// Facts and placeholders, computed at upload. Images uploaded before they existed have
    /// none here: theirs are computed on first request and kept in `info.json` beside
    /// (`Catalog::info`), never by rewriting this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<crate::image::ImageInfo>,
    /// Where `pixgate import` found the original (`s3://BUCKET/KEY`, `dir:/path`); the bytes
    /// are pixgate's own copy. Its source-index entry is turned into a tombstone when the
    /// image is deleted ([`SourceEntry`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `pixgate import --in-place`: the original is this foreign object, not a copy (the
    /// stub at `images/{id}/original` says the same; this copy is what deletes read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// An entry of the source index, `sources/{sha256(uri)}.json`: the image an imported object
/// became (written before the image, so an interrupted import finishes under the same id), or
/// a tombstone once that image was deleted (a later import skips it; a legacy URL gets `404`).
/// A tombstone holds no id and no key: only the hash of the address it was imported from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The image's `created_at`, fixed with its id: an import that finishes an interrupted one
    /// writes the same owner-index key (the index key holds the creation time), not a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// Turns `uri`'s source-index entry into a tombstone (its image is being deleted). `fsck`
/// does the same when it finishes an interrupted delete.
pub(crate) async fn tombstone_source(
    store: &dyn ObjectStore,
    uri: &str,
) -> Result<(), CatalogError> {
    let tombstone = SourceEntry {
        deleted: true,
        ..SourceEntry::default()
    };
    write_source_entry(store, uri, &tombstone).await
}

async fn write_source_entry(
    store: &dyn ObjectStore,
    uri: &str,
    e: &SourceEntry,
) -> Result<(), CatalogError> {
    let json = serde_json::to_vec(e).map_err(|e| CatalogError::Internal(e.to_string()))?;
    store
        .put(
            Bucket::Originals,
            &source_key(uri)?,
            Bytes::from(json),
            JSON,
        )
        .await
        .map_err(CatalogError::from)
}

const JSON: &str = "application/json";

fn imported_entry(id: &ImageId, created_at: &str) -> SourceEntry {
    SourceEntry {
        id: Some(id.to_string()),
        created_at: Some(created_at.to_owned()),
        deleted: false,
    }
}

fn source_key(uri: &str) -> Result<ObjectKey, CatalogError> {
    use sha2::{Digest, Sha256};
    ObjectKey::new(format!(
        "sources/{}.json",
        hex::encode(Sha256::digest(uri.as_bytes()))
    ))
    .map_err(CatalogError::from)
}

/// A metadata change: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaPatch {
    pub title: Option<Option<String>>,
    pub alt_text: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
}

pub(crate) fn check_text(field: &str, v: &str) -> Result<(), CatalogError> {
    if v.chars().count() > MAX_TITLE_CHARS || v.chars().any(char::is_control) {
        return Err(CatalogError::InvalidField(format!(
            "{field}: at most {MAX_TITLE_CHARS} characters, no control characters"
        )));
    }
    Ok(())
}

impl MetaPatch {
    /// Parses a JSON object with `title`, `alt_text` (string or null) and `tags` (list of
    /// strings); any other member is an error naming it.
    pub fn from_json(v: &Value) -> Result<MetaPatch, CatalogError> {
        let obj = v
            .as_object()
            .ok_or_else(|| CatalogError::InvalidField("body: must be a JSON object".into()))?;
        let mut patch = MetaPatch::default();
        for (k, v) in obj {
            let text = |v: &Value| match v {
                Value::Null => Ok(None),
                Value::String(s) => {
                    check_text(k, s)?;
                    Ok(Some(s.clone()))
                }
                _ => Err(CatalogError::InvalidField(format!(
                    "{k}: must be a string or null"
                ))),
            };
            match k.as_str() {
                "title" => patch.title = Some(text(v)?),
                "alt_text" => patch.alt_text = Some(text(v)?),
                "tags" => {
                    let items = v
                        .as_array()
                        .ok_or_else(|| CatalogError::InvalidField("tags: must be a list".into()))?;
                    let tags = items
                        .iter()
                        .map(|t| {
                            t.as_str().map(str::to_owned).ok_or_else(|| {
                                CatalogError::InvalidField("tags: must be strings".into())
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    patch.tags = Some(normalise_tags(tags)?);
                }
                other => {
                    return Err(CatalogError::InvalidField(format!(
                        "`{}` is not a metadata field (title, alt_text, tags)",
                        other.chars().take(40).collect::<String>()
                    )));
                }
            }
        }
        Ok(patch)
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.title.is_none() && self.alt_text.is_none() && self.tags.is_none()
    }

    fn apply(&self, meta: &mut ImageMeta) {
        if let Some(t) = &self.title {
            meta.title.clone_from(t);
        }
        if let Some(a) = &self.alt_text {
            meta.alt_text.clone_from(a);
        }
        if let Some(tags) = &self.tags {
            meta.tags.clone_from(tags);
        }
    }
}

/// Trims tags, drops duplicates (first wins) and checks the limits.
pub fn normalise_tags(tags: Vec<String>) -> Result<Vec<String>, CatalogError> {
    let mut out: Vec<String> = Vec::new();
    for t in tags {
        let t = t.trim();
        if t.is_empty() || t.chars().count() > MAX_TAG_CHARS || t.chars().any(char::is_control) {
            return Err(CatalogError::InvalidField(format!(
                "tags: each 1..={MAX_TAG_CHARS} characters, no control characters"
            )));
        }
        if !out.iter().any(|o| o == t) {
            // Checked as we go: the duplicate scan stays O(MAX_TAGS) per tag.
            if out.len() == MAX_TAGS {
                return Err(CatalogError::InvalidField(format!(
                    "tags: at most {MAX_TAGS}"
                )));
            }
            out.push(t.to_owned());
        }
    }
    Ok(out)
}

/// One page of an owner's images.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<ImageMeta>,
    /// Opaque; pass back as `cursor` for the next page. `None` on the last page.
    pub next_cursor: Option<String>,
}

/// What [`Catalog::create`] writes as an image's original (and its other objects).
enum Original<'a> {
    /// Bytes and their content type.
    Bytes(Bytes, &'a str),
    /// A server-side copy of a pinned object of the same S3 service.
    Copy(&'a Reference),
}

/// Reads and writes image records.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn ObjectStore>,
    /// Reads (and, for owned references, deletes) in-place originals; `None` without S3.
    foreign: Option<Arc<dyn Foreign>>,
    max_source_bytes: u64,
    locks: Arc<Vec<tokio::sync::Mutex<()>>>,
}

pub(crate) fn key(id: &ImageId, leaf: &str) -> Result<ObjectKey, CatalogError> {
    ObjectKey::new(format!("images/{id}/{leaf}")).map_err(CatalogError::from)
}

/// Where an image's derived results live in the derived bucket (one prefix per image).
pub fn derived_prefix(id: &ImageId) -> String {
    format!("derived/{id}/")
}

fn index_prefix(owner: &str) -> String {
    format!("users/{}/images/", user_segment(owner))
}

fn created_secs(meta: &ImageMeta) -> u64 {
    humantime::parse_rfc3339(&meta.created_at)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn index_key(meta: &ImageMeta, id: &ImageId) -> Result<ObjectKey, CatalogError> {
    let inverted = INVERT.saturating_sub(created_secs(meta));
    ObjectKey::new(format!("{}{inverted:010}-{id}", index_prefix(&meta.owner)))
        .map_err(CatalogError::from)
}

/// A cursor is an index leaf: 10 digits, `-`, an image id.
fn valid_cursor(c: &str) -> bool {
    c.len() == 11 + ImageId::LEN
        && c.as_bytes()[10] == b'-'
        && c[..10].bytes().all(|b| b.is_ascii_digit())
        && ImageId::parse(&c[11..]).is_some()
}

impl Catalog {
    pub fn new(store: Arc<dyn ObjectStore>, max_source_bytes: u64) -> Catalog {
        Catalog {
            store,
            foreign: None,
            max_source_bytes,
            locks: Arc::new((0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect()),
        }
    }

    /// With the reader of in-place originals.
    pub fn with_foreign(mut self, foreign: Option<Arc<dyn Foreign>>) -> Catalog {
        self.foreign = foreign;
        self
    }

    fn lock_for(&self, id: &ImageId) -> &tokio::sync::Mutex<()> {
        let stripe = id
            .as_str()
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        &self.locks[stripe % STRIPES]
    }

    /// Stores an original, its index entry and then its metadata; returns only when all are
    /// durable. On failure nothing stays behind.
    pub async fn create(&self, meta: &ImageMeta, original: Bytes) -> Result<(), CatalogError> {
        self.create_from(meta, Original::Bytes(original, meta.format.mime()))
            .await
    }

    /// As [`Catalog::create`], the original copied server-side from `from` (an object of the
    /// storage's own S3 service, pinned to its ETag): `SourceChanged` if it is no longer that
    /// version, `NotFound` if it is gone.
    pub async fn create_copied(
        &self,
        meta: &ImageMeta,
        from: &Reference,
    ) -> Result<(), CatalogError> {
        self.create_from(meta, Original::Copy(from)).await
    }

    /// Whether the original of `id` is a copy that turned out to be a reference stub (a
    /// source object replaced by one between its checks and a server-side copy that ignored
    /// its precondition). Cheap: anything larger than a stub is refused from its length.
    async fn copied_a_stub(&self, key: &ObjectKey) -> Result<bool, CatalogError> {
        match self
            .store
            .get(Bucket::Originals, key, foreign::MAX_STUB_LEN)
            .await
        {
            Ok(b) => Ok(foreign::parse_stub(&b).is_some()),
            Err(StorageError::TooLarge { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// As [`Catalog::create`], for an original referenced in place (`meta.reference`): its
    /// stub takes the original's place.
    pub async fn create_in_place(&self, meta: &ImageMeta) -> Result<(), CatalogError> {
        let r = meta
            .reference
            .as_ref()
            .ok_or_else(|| CatalogError::Internal("in-place image without a reference".into()))?;
        let stub = foreign::stub(r).map_err(CatalogError::Internal)?;
        self.create_from(meta, Original::Bytes(stub, foreign::STUB_CONTENT_TYPE))
            .await
    }

    async fn create_from(
        &self,
        meta: &ImageMeta,
        original: Original<'_>,
    ) -> Result<(), CatalogError> {
        let id = ImageId::parse(&meta.id)
            .ok_or_else(|| CatalogError::Internal("bad image id".into()))?;
        let original_key = key(&id, "original")?;
        let index = index_key(meta, &id)?;
        let meta_key = key(&id, "meta.json")?;
        let json = serde_json::to_vec(meta).map_err(|e| CatalogError::Internal(e.to_string()))?;
        let mut written: Vec<&ObjectKey> = Vec::new();
        let steps: [(&ObjectKey, Original<'_>); 3] = [
            (&original_key, original),
            (
                &index,
                Original::Bytes(Bytes::new(), "application/octet-stream"),
            ),
            (
                &meta_key,
                Original::Bytes(Bytes::from(json), "application/json"),
            ),
        ];
        for (k, body) in steps {
            written.push(k);
            let wrote = match body {
                Original::Bytes(b, ct) => self.store.put(Bucket::Originals, k, b, ct).await,
                Original::Copy(from) => match self
                    .store
                    .copy_in(Bucket::Originals, k, from, meta.format.mime())
                    .await
                {
                    Ok(true) => match self.copied_a_stub(k).await {
                        Ok(false) => Ok(()),
                        Ok(true) => Err(StorageError::Backend(
                            "the copied object is a reference stub".into(),
                        )),
                        Err(e) => Err(StorageError::Backend(e.to_string())),
                    },
                    Ok(false) => return Err(CatalogError::SourceChanged),
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = wrote {
                // The client is told the upload failed, so nothing may stay behind. A timed out
                // S3 PUT may still have landed: remove in reverse order (metadata first, so the
                // image stops existing before its parts go). In a task of its own, waited for
                // at most CLEANUP_WAIT: against a stalled backend the deletes wait out the
                // storage deadline too, and the client should hear of the failure within its
                // own deadline, not another 10 s later; a healthy backend finishes first, so
                // the failed upload is gone when the client hears of it. If the process dies
                // first, `pixgate fsck` finds what is left (an original or index entry without
                // metadata is never visible through the API).
                let store = self.store.clone();
                let keys: Vec<ObjectKey> = written.iter().rev().map(|k| (*k).clone()).collect();
                let image = id.to_string();
                let cleanup = tokio::spawn(async move {
                    for k in keys {
                        if let Err(cleanup) = store.delete(Bucket::Originals, &k).await {
                            tracing::warn!(image = %image, key = %k, error = %cleanup, "could not clean up after a failed upload write");
                        }
                    }
                });
                let _ = tokio::time::timeout(CLEANUP_WAIT, cleanup).await;
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The source-index entry of `uri`, if any.
    pub async fn source_entry(&self, uri: &str) -> Result<Option<SourceEntry>, CatalogError> {
        match self
            .store
            .get(Bucket::Originals, &source_key(uri)?, MAX_META_BYTES)
            .await
        {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| CatalogError::Internal(format!("source index entry: {e}"))),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Records that `uri` becomes image `id`, created at `created_at` (before the image is).
    pub async fn put_source_entry(
        &self,
        uri: &str,
        id: &ImageId,
        created_at: &str,
    ) -> Result<(), CatalogError> {
        write_source_entry(self.store.as_ref(), uri, &imported_entry(id, created_at)).await
    }

    /// As [`Catalog::put_source_entry`], only if `uri` has no entry yet (create-only, see
    /// [`ObjectStore::put_if_absent`]): `false` if another importer (or a delete's tombstone)
    /// holds it.
    pub async fn claim_source(
        &self,
        uri: &str,
        id: &ImageId,
        created_at: &str,
    ) -> Result<bool, CatalogError> {
        let json = serde_json::to_vec(&imported_entry(id, created_at))
            .map_err(|e| CatalogError::Internal(e.to_string()))?;
        let key = source_key(uri)?;
        self.store
            .put_if_absent(Bucket::Originals, &key, Bytes::from(json), JSON)
            .await
            .map_err(CatalogError::from)
    }

    /// The image imported from `uri`; `NotFound` if none was (or it was deleted).
    pub async fn imported(&self, uri: &str) -> Result<ImageMeta, CatalogError> {
        let id = self
            .source_entry(uri)
            .await?
            .filter(|e| !e.deleted)
            .and_then(|e| e.id)
            .and_then(|id| ImageId::parse(&id))
            .ok_or(CatalogError::NotFound)?;
        let meta = self.meta(&id).await?;
        // The entry and the record must agree (an entry is never re-pointed).
        if meta.source.as_deref() != Some(uri) {
            return Err(CatalogError::NotFound);
        }
        Ok(meta)
    }

    /// The metadata of an image; `NotFound` if it does not exist or is being deleted.
    pub async fn meta(&self, id: &ImageId) -> Result<ImageMeta, CatalogError> {
        read_meta(self.store.as_ref(), id).await
    }

    /// The metadata even of an image whose delete was interrupted (`deleting`), so that its
    /// owner's `DELETE` (or an erasure) can finish it; `NotFound` if there is none.
    pub async fn meta_for_delete(&self, id: &ImageId) -> Result<ImageMeta, CatalogError> {
        read_meta_any(self.store.as_ref(), id).await
    }

    /// The original bytes of an image (for one referenced in place, the foreign object's,
    /// exactly the version that was validated).
    pub async fn original(&self, id: &ImageId) -> Result<Bytes, CatalogError> {
        let bytes = self
            .store
            .get(
                Bucket::Originals,
                &key(id, "original")?,
                self.max_source_bytes,
            )
            .await?;
        let Some(reference) = foreign::parse_stub(&bytes) else {
            return Ok(bytes);
        };
        let r = reference.map_err(|e| CatalogError::Corrupt(format!("original of {id}: {e}")))?;
        let foreign = self.foreign.as_ref().ok_or_else(no_foreign)?;
        foreign
            .read(&r, self.max_source_bytes)
            .await
            .map_err(|e| match e {
                ForeignError::Gone => CatalogError::SourceGone,
                ForeignError::Changed => CatalogError::SourceChanged,
                ForeignError::Storage(e) => CatalogError::Storage(e),
            })
    }

    /// Whether the original of `id` still exists. Deletes remove the original first, so a
    /// writer that checks this *after* its own write either sees the delete or is seen by it.
    pub async fn original_exists(&self, id: &ImageId) -> Result<bool, CatalogError> {
        let original = key(id, "original")?;
        Ok(self
            .store
            .list(Bucket::Originals, original.as_str())
            .await?
            .contains(&original))
    }

    /// One page of `owner`'s images, newest first.
    pub async fn list(
        &self,
        owner: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, CatalogError> {
        self.list_page(owner, cursor, limit, false).await
    }

    /// Like [`Catalog::list`], with images whose delete was interrupted (`deleting`): what an
    /// erasure must finish.
    pub async fn list_for_erasure(
        &self,
        owner: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, CatalogError> {
        self.list_page(owner, cursor, limit, true).await
    }

    async fn list_page(
        &self,
        owner: &str,
        cursor: Option<&str>,
        limit: usize,
        include_deleting: bool,
    ) -> Result<Page, CatalogError> {
        let prefix = index_prefix(owner);
        let start_after = match cursor {
            Some(c) if valid_cursor(c) => Some(format!("{prefix}{c}")),
            Some(_) => return Err(CatalogError::InvalidField("cursor: not a cursor".into())),
            None => None,
        };
        let keys = self
            .store
            .list_page(
                Bucket::Originals,
                &prefix,
                start_after.as_deref(),
                limit + 1,
            )
            .await?;
        let more = keys.len() > limit;
        let leaves: Vec<String> = keys
            .iter()
            .take(limit)
            .filter_map(|k| k.as_str().strip_prefix(&prefix).map(String::from))
            .collect();
        let ids: Vec<ImageId> = leaves
            .iter()
            .filter_map(|l| l.get(11..).and_then(ImageId::parse))
            .collect();
        let mut items = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LIST_CONCURRENCY) {
            let mut set = tokio::task::JoinSet::new();
            for (i, id) in chunk.iter().enumerate() {
                let store = self.store.clone();
                let id = id.clone();
                set.spawn(async move {
                    let meta = read_meta_any(store.as_ref(), &id).await;
                    (
                        i,
                        meta.and_then(|m| match m.deleting && !include_deleting {
                            true => Err(CatalogError::NotFound),
                            false => Ok(m),
                        }),
                    )
                });
            }
            let mut got: Vec<(usize, ImageMeta)> = Vec::with_capacity(chunk.len());
            while let Some(joined) = set.join_next().await {
                let (i, r) =
                    joined.map_err(|e| CatalogError::Internal(format!("list task: {e}")))?;
                match r {
                    Ok(m) if m.owner == owner => got.push((i, m)),
                    // Deleted meanwhile (or a stale index entry): not part of the listing.
                    Ok(_) | Err(CatalogError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            got.sort_by_key(|(i, _)| *i);
            items.extend(got.into_iter().map(|(_, m)| m));
        }
        let next_cursor = if more { leaves.last().cloned() } else { None };
        Ok(Page { items, next_cursor })
    }

    /// Info computed after upload (`info.json`), if any. A record that does not parse (written
    /// by a future version, or damaged) counts as absent: it is recomputed.
    pub async fn info(
        &self,
        id: &ImageId,
    ) -> Result<Option<crate::image::ImageInfo>, CatalogError> {
        match self
            .store
            .get(Bucket::Originals, &key(id, "info.json")?, MAX_INFO_BYTES)
            .await
        {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps info computed after upload. Like [`Catalog::update`], undoes its write if the
    /// image was deleted meanwhile (on any instance), so a delete never leaves it behind.
    pub async fn put_info(
        &self,
        id: &ImageId,
        info: &crate::image::ImageInfo,
    ) -> Result<(), CatalogError> {
        let json = serde_json::to_vec(info).map_err(|e| CatalogError::Internal(e.to_string()))?;
        let info_key = key(id, "info.json")?;
        self.store
            .put(
                Bucket::Originals,
                &info_key,
                Bytes::from(json),
                "application/json",
            )
            .await?;
        if !self.original_exists(id).await? {
            self.store.delete(Bucket::Originals, &info_key).await?;
            return Err(CatalogError::NotFound);
        }
        Ok(())
    }

    /// Applies a metadata change and returns the new record.
    pub async fn update(&self, id: &ImageId, patch: &MetaPatch) -> Result<ImageMeta, CatalogError> {
        let _guard = self.lock_for(id).lock().await;
        let mut meta = self.meta(id).await?;
        patch.apply(&mut meta);
        let json = serde_json::to_vec(&meta).map_err(|e| CatalogError::Internal(e.to_string()))?;
        let meta_key = key(id, "meta.json")?;
        self.store
            .put(
                Bucket::Originals,
                &meta_key,
                Bytes::from(json),
                "application/json",
            )
            .await?;
        // A delete on another instance may have run between our read and write: then the
        // original is gone and our write resurrected the metadata. Undo it.
        if !self.original_exists(id).await? {
            self.store.delete(Bucket::Originals, &meta_key).await?;
            return Err(CatalogError::NotFound);
        }
        Ok(meta)
    }

    /// Deletes the image; returns only when all of it is gone. Crash-consistent: first a
    /// `deleting` marker object and the metadata rewritten with `deleting` (from then on every
    /// reader gets `NotFound`, on every instance, whatever happens next), then the original,
    /// every derived object, the index entry, anything else under the image's prefix (the
    /// marker too) and the metadata last. A delete killed half-way is invisible through the
    /// API; its owner's `DELETE`, an erasure, or `pixgate fsck --repair` finishes it.
    pub async fn delete(&self, meta: &ImageMeta) -> Result<(), CatalogError> {
        let id = ImageId::parse(&meta.id)
            .ok_or_else(|| CatalogError::Internal("bad image id".into()))?;
        let _guard = self.lock_for(&id).lock().await;
        if !meta.deleting {
            // The marker first: fsck finds an interrupted delete from a listing alone.
            self.store
                .put(
                    Bucket::Originals,
                    &key(&id, DELETING_MARKER)?,
                    Bytes::from_static(b"1"),
                    "text/plain",
                )
                .await?;
            let marked = ImageMeta {
                deleting: true,
                ..meta.clone()
            };
            let json =
                serde_json::to_vec(&marked).map_err(|e| CatalogError::Internal(e.to_string()))?;
            self.store
                .put(
                    Bucket::Originals,
                    &key(&id, "meta.json")?,
                    Bytes::from(json),
                    "application/json",
                )
                .await?;
        }
        release_original(self.store.as_ref(), self.foreign.as_deref(), &id, meta).await?;
        self.delete_prefix(Bucket::Derived, &derived_prefix(&id))
            .await?;
        self.store
            .delete(Bucket::Originals, &index_key(meta, &id)?)
            .await?;
        // The image leaves every collection, and its shares' index copies go (the shares and
        // back-references themselves are under the prefix).
        crate::access::account::detach_image(self.store.as_ref(), id.as_str())
            .await
            .map_err(|e| match e {
                crate::access::AccessError::Storage(s) => CatalogError::Storage(s),
                other => CatalogError::Internal(format!("detaching access records: {other}")),
            })?;
        // Anything else under the image's prefix, then the metadata last.
        let meta_key = key(&id, "meta.json")?;
        for k in self
            .store
            .list(Bucket::Originals, &format!("images/{id}/"))
            .await?
        {
            if k != meta_key {
                self.store.delete(Bucket::Originals, &k).await?;
            }
        }
        self.store.delete(Bucket::Originals, &meta_key).await?;
        Ok(())
    }

    async fn delete_prefix(&self, bucket: Bucket, prefix: &str) -> Result<(), CatalogError> {
        for k in self.store.list(bucket, prefix).await? {
            self.store.delete(bucket, &k).await?;
        }
        Ok(())
    }
}

fn no_foreign() -> CatalogError {
    CatalogError::Storage(StorageError::Backend(
        "an in-place original needs storage.backend = \"s3\"".into(),
    ))
}

/// A delete's step after its marker, shared with `fsck`: an imported image's source entry
/// becomes a tombstone (never imported again, nor served by its legacy URL); an owned
/// in-place original is deleted from its bucket if still the imported version (a foreign
/// object that is not owned is never touched); then `images/{id}/original` goes.
pub(crate) async fn release_original(
    store: &dyn ObjectStore,
    foreign: Option<&dyn Foreign>,
    id: &ImageId,
    meta: &ImageMeta,
) -> Result<(), CatalogError> {
    if let Some(uri) = &meta.source {
        tombstone_source(store, uri).await?;
    }
    if let Some(r) = meta.reference.as_ref().filter(|r| r.owned) {
        let foreign = foreign.ok_or_else(no_foreign)?;
        if !foreign.delete_if_unchanged(r).await? {
            tracing::warn!(image = %id, "owned in-place original changed or gone: left alone");
        }
    }
    store
        .delete(Bucket::Originals, &key(id, "original")?)
        .await?;
    Ok(())
}

/// The metadata of a live image: `NotFound` also while (or after) a delete marked it.
pub(crate) async fn read_meta(
    store: &dyn ObjectStore,
    id: &ImageId,
) -> Result<ImageMeta, CatalogError> {
    match read_meta_any(store, id).await? {
        m if m.deleting => Err(CatalogError::NotFound),
        m => Ok(m),
    }
}

/// The stored metadata record as it is, `deleting` or not.
pub(crate) async fn read_meta_any(
    store: &dyn ObjectStore,
    id: &ImageId,
) -> Result<ImageMeta, CatalogError> {
    let bytes = match store
        .get(Bucket::Originals, &key(id, "meta.json")?, MAX_META_BYTES)
        .await
    {
        Ok(b) => b,
        Err(StorageError::NotFound) => return Err(CatalogError::NotFound),
        Err(e) => return Err(e.into()),
    };
    // Garbage, empty, truncated or over-long metadata is damage in the store (tampering, a bad
    // restore): a stable `storage_corrupt`, never a panic or a bare `internal`.
    serde_json::from_slice(&bytes)
        .map_err(|e| CatalogError::Corrupt(format!("metadata of {id}: {e}")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::http::error::CodeOf;
    use crate::storage::{FsStore, StorageError};

    fn sample_meta(id: &ImageId) -> ImageMeta {
        ImageMeta {
            id: id.to_string(),
            owner: "u1".into(),
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

    /// An fs store with faults: writes of keys ending in `late_put` land but then report
    /// failure (a timed-out PUT); deletes of keys ending in `failed_delete` fail (a process
    /// killed at that step leaves the same state).
    struct Faulty {
        fs: FsStore,
        late_put: &'static str,
        failed_delete: &'static str,
        /// What a server-side copy finds at its source (the service copies it as it is now).
        copy_source: &'static [u8],
    }

    #[async_trait]
    impl ObjectStore for Faulty {
        async fn put(
            &self,
            bucket: Bucket,
            key: &ObjectKey,
            body: Bytes,
            content_type: &str,
        ) -> Result<(), StorageError> {
            self.fs.put(bucket, key, body, content_type).await?;
            if !self.late_put.is_empty() && key.as_str().ends_with(self.late_put) {
                return Err(StorageError::Timeout);
            }
            Ok(())
        }
        async fn get(&self, b: Bucket, k: &ObjectKey, max: u64) -> Result<Bytes, StorageError> {
            self.fs.get(b, k, max).await
        }
        async fn delete(&self, b: Bucket, k: &ObjectKey) -> Result<(), StorageError> {
            if !self.failed_delete.is_empty() && k.as_str().ends_with(self.failed_delete) {
                return Err(StorageError::Timeout);
            }
            self.fs.delete(b, k).await
        }
        async fn list(&self, b: Bucket, prefix: &str) -> Result<Vec<ObjectKey>, StorageError> {
            self.fs.list(b, prefix).await
        }
        async fn list_page_dated(
            &self,
            b: Bucket,
            prefix: &str,
            start_after: Option<&str>,
            max: usize,
        ) -> Result<Vec<(ObjectKey, std::time::SystemTime)>, StorageError> {
            self.fs.list_page_dated(b, prefix, start_after, max).await
        }
        async fn check(&self) -> Result<(), StorageError> {
            self.fs.check().await
        }
        fn backend(&self) -> &'static str {
            "faulty"
        }
        async fn copy_in(
            &self,
            b: Bucket,
            k: &ObjectKey,
            _from: &Reference,
            ct: &str,
        ) -> Result<bool, StorageError> {
            let body = Bytes::from_static(self.copy_source);
            self.fs.put(b, k, body, ct).await.map(|()| true)
        }
    }

    /// A server-side copy that stored a reference stub (its source swapped for one after the
    /// checks, on a service ignoring the copy precondition) is refused and leaves nothing; a
    /// real original is kept.
    #[tokio::test]
    async fn a_server_side_copy_never_stores_a_stub() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = |copy_source: &'static [u8]| {
            let fs = FsStore::new(dir.path(), Duration::from_secs(5)).unwrap();
            let store = Arc::new(Faulty {
                fs,
                late_put: "",
                failed_delete: "",
                copy_source,
            });
            Catalog::new(store, 1 << 20)
        };
        let from = Reference {
            bucket: "photos".into(),
            key: "a.png".into(),
            etag: "\"v1\"".into(),
            bytes: 3,
            owned: false,
        };
        let stub = foreign::stub(&Reference {
            bucket: "pixgate-originals".into(),
            ..from.clone()
        })
        .unwrap();
        let swapped = catalog(Box::leak(stub.to_vec().into_boxed_slice()));
        let meta = sample_meta(&ImageId::generate().unwrap());
        let id = ImageId::parse(&meta.id).unwrap();
        assert!(swapped.create_copied(&meta, &from).await.is_err());
        assert!(matches!(
            swapped.meta(&id).await,
            Err(CatalogError::NotFound)
        ));
        let original = key(&id, "original").unwrap();
        assert!(
            !swapped.original_exists(&id).await.unwrap(),
            "{original} removed"
        );
        let honest = catalog(b"abc");
        honest.create_copied(&meta, &from).await.unwrap();
        assert_eq!(honest.original(&id).await.unwrap(), &b"abc"[..]);
    }

    #[tokio::test]
    async fn a_failed_metadata_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStore::new(dir.path(), Duration::from_secs(5)).unwrap();
        let store = Arc::new(Faulty {
            fs,
            late_put: "meta.json",
            failed_delete: "",
            copy_source: b"",
        });
        let catalog = Catalog::new(store.clone(), 1024);
        let id = ImageId::generate().unwrap();
        let meta = sample_meta(&id);
        let err = catalog
            .create(&meta, Bytes::from_static(b"abc"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "storage_unavailable");
        // A responsive backend finishes the cleanup before the failure is answered.
        assert!(
            store
                .list(Bucket::Originals, "images/")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(catalog.meta(&id).await.unwrap_err().code(), "not_found");
    }

    #[tokio::test]
    async fn a_delete_stopped_after_its_first_step_is_invisible_and_can_be_finished() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStore::new(dir.path(), Duration::from_secs(5)).unwrap();
        let faulty = Catalog::new(
            Arc::new(Faulty {
                fs,
                late_put: "",
                failed_delete: "/original",
                copy_source: b"",
            }),
            1024,
        );
        let id = ImageId::generate().unwrap();
        let meta = sample_meta(&id);
        faulty
            .create(&meta, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        // The delete marks the image, then stops before the original.
        assert!(faulty.delete(&meta).await.is_err());
        let store = Arc::new(FsStore::new(dir.path(), Duration::from_secs(5)).unwrap());
        let catalog = Catalog::new(store.clone(), 1024);
        assert_eq!(catalog.meta(&id).await.unwrap_err().code(), "not_found");
        assert!(catalog.list("u1", None, 10).await.unwrap().items.is_empty());
        let marked = catalog.meta_for_delete(&id).await.unwrap();
        assert!(marked.deleting);
        let erasable = catalog.list_for_erasure("u1", None, 10).await.unwrap();
        assert_eq!(erasable.items, vec![marked.clone()]);
        // Its record never shows the flag to a client once serialised for a live image.
        assert!(!serde_json::to_string(&meta).unwrap().contains("deleting"));
        // Asking again (the owner's DELETE, an erasure) finishes it.
        catalog.delete(&marked).await.unwrap();
        for b in [Bucket::Originals, Bucket::Derived] {
            let left = store.list(b, "").await.unwrap();
            assert!(left.is_empty(), "{left:?}");
        }
    }

    #[tokio::test]
    async fn create_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::new(dir.path(), Duration::from_secs(5)).unwrap());
        let catalog = Catalog::new(store, 1024);
        let id = ImageId::generate().unwrap();
        let meta = sample_meta(&id);
        assert_eq!(catalog.meta(&id).await.unwrap_err().code(), "not_found");
        catalog
            .create(&meta, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(catalog.meta(&id).await.unwrap(), meta);
        assert_eq!(catalog.original(&id).await.unwrap(), &b"abc"[..]);
    }

    /// Foreign objects in memory: (bucket, key) → (etag, bytes); deletes are recorded.
    #[derive(Default)]
    struct FakeForeign {
        objects: std::sync::Mutex<std::collections::HashMap<(String, String), (String, Bytes)>>,
    }

    impl FakeForeign {
        fn set(&self, key: &str, etag: &str, bytes: &'static [u8]) {
            let k = ("photos".to_owned(), key.to_owned());
            let v = (etag.to_owned(), Bytes::from_static(bytes));
            self.objects.lock().unwrap().insert(k, v);
        }

        fn has(&self, key: &str) -> bool {
            let k = ("photos".to_owned(), key.to_owned());
            self.objects.lock().unwrap().contains_key(&k)
        }
    }

    #[async_trait]
    impl Foreign for FakeForeign {
        async fn read(&self, r: &Reference, cap: u64) -> Result<Bytes, ForeignError> {
            let k = (r.bucket.clone(), r.key.clone());
            match self.objects.lock().unwrap().get(&k) {
                None => Err(ForeignError::Gone),
                Some((etag, b)) if *etag != r.etag || b.len() as u64 > cap => {
                    Err(ForeignError::Changed)
                }
                Some((_, b)) => Ok(b.clone()),
            }
        }

        async fn delete_if_unchanged(&self, r: &Reference) -> Result<bool, StorageError> {
            let k = (r.bucket.clone(), r.key.clone());
            let mut objects = self.objects.lock().unwrap();
            if objects.get(&k).is_some_and(|(etag, _)| *etag == r.etag) {
                objects.remove(&k);
                return Ok(true);
            }
            Ok(false)
        }
    }

    fn in_place_meta(key: &str, owned: bool) -> ImageMeta {
        let id = ImageId::generate().unwrap();
        ImageMeta {
            source: Some(format!("s3://photos/{key}")),
            reference: Some(Reference {
                bucket: "photos".into(),
                key: key.into(),
                etag: "\"v1\"".into(),
                bytes: 3,
                owned,
            }),
            ..sample_meta(&id)
        }
    }

    /// An in-place original is read from its bucket, only as the version imported; deletes
    /// never touch it unless owned (and then only that version); the stub is what the
    /// originals bucket holds.
    #[tokio::test]
    async fn in_place_originals_are_pinned_and_deleted_only_when_owned() {
        let (_dir, store) = crate::storage::temp_store();
        let foreign = Arc::new(FakeForeign::default());
        let catalog = Catalog::new(store.clone(), 1024)
            .with_foreign(Some(foreign.clone() as Arc<dyn Foreign>));
        let ids = |m: &ImageMeta| ImageId::parse(&m.id).unwrap();
        // Not owned: read through, then a delete leaves the foreign object.
        let kept = in_place_meta("a.png", false);
        foreign.set("a.png", "\"v1\"", b"abc");
        catalog.create_in_place(&kept).await.unwrap();
        assert_eq!(catalog.original(&ids(&kept)).await.unwrap(), &b"abc"[..]);
        let stub = store
            .get(
                Bucket::Originals,
                &key(&ids(&kept), "original").unwrap(),
                4096,
            )
            .await
            .unwrap();
        assert!(stub.starts_with(foreign::STUB_MAGIC), "a stub, not a copy");
        catalog.delete(&kept).await.unwrap();
        assert!(foreign.has("a.png"), "never touched without --owned");
        assert!(matches!(
            catalog.meta(&ids(&kept)).await,
            Err(CatalogError::NotFound)
        ));
        // Replaced after import: refused, never read unvalidated; gone: its own error.
        let changed = in_place_meta("b.png", true);
        foreign.set("b.png", "\"v1\"", b"abc");
        catalog.create_in_place(&changed).await.unwrap();
        foreign.set("b.png", "\"v2\"", b"xyz");
        assert!(matches!(
            catalog.original(&ids(&changed)).await,
            Err(CatalogError::SourceChanged)
        ));
        // Owned but changed: the delete finishes and leaves the new version alone.
        catalog.delete(&changed).await.unwrap();
        assert!(foreign.has("b.png"));
        let owned = in_place_meta("c.png", true);
        catalog.create_in_place(&owned).await.unwrap();
        assert!(matches!(
            catalog.original(&ids(&owned)).await,
            Err(CatalogError::SourceGone)
        ));
        foreign.set("c.png", "\"v1\"", b"abc");
        catalog.delete(&owned).await.unwrap();
        assert!(!foreign.has("c.png"), "owned: deleted with the image");
        // Without an S3 service configured, the original cannot be read (a clear error).
        let other = in_place_meta("d.png", false);
        let plain = Catalog::new(store.clone(), 1024);
        plain.create_in_place(&other).await.unwrap();
        assert!(matches!(
            plain.original(&ids(&other)).await,
            Err(CatalogError::Storage(StorageError::Backend(_)))
        ));
    }

    #[tokio::test]
    async fn listing_pages_newest_first_and_delete_removes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(FsStore::new(dir.path(), Duration::from_secs(5)).unwrap());
        let catalog = Catalog::new(store.clone(), 1024);
        let mut ids = Vec::new();
        for i in 0..5 {
            let id = ImageId::generate().unwrap();
            let mut meta = sample_meta(&id);
            meta.created_at = format!("2026-01-01T00:00:0{i}Z");
            catalog
                .create(&meta, Bytes::from_static(b"abc"))
                .await
                .unwrap();
            ids.push(id.to_string());
        }
        let other = ImageId::generate().unwrap();
        let mut theirs = sample_meta(&other);
        theirs.owner = "u2".into();
        catalog
            .create(&theirs, Bytes::from_static(b"x"))
            .await
            .unwrap();

        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = catalog.list("u1", cursor.as_deref(), 2).await.unwrap();
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|m| m.id.clone()));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        ids.reverse();
        assert_eq!(
            seen, ids,
            "newest first, every image once, only the owner's"
        );
        assert_eq!(
            catalog
                .list("u1", Some("../x"), 2)
                .await
                .unwrap_err()
                .code(),
            "invalid_field"
        );

        // Metadata changes, then a delete takes every object of the image with it.
        let id = ImageId::parse(&ids[0]).unwrap();
        let patch =
            MetaPatch::from_json(&serde_json::json!({"title": "t", "tags": [" a ", "a", "b"]}))
                .unwrap();
        let m = catalog.update(&id, &patch).await.unwrap();
        assert_eq!(
            (m.title.as_deref(), m.tags.clone()),
            (Some("t"), vec!["a".to_owned(), "b".to_owned()])
        );
        let derived = ObjectKey::new(format!("{}x.webp", derived_prefix(&id))).unwrap();
        store
            .put(
                Bucket::Derived,
                &derived,
                Bytes::from_static(b"d"),
                "image/webp",
            )
            .await
            .unwrap();
        catalog.delete(&m).await.unwrap();
        assert_eq!(catalog.meta(&id).await.unwrap_err().code(), "not_found");
        for b in [Bucket::Originals, Bucket::Derived] {
            let left = store.list(b, "").await.unwrap();
            assert!(
                left.iter().all(|k| !k.as_str().contains(id.as_str())),
                "{left:?}"
            );
        }
        assert_eq!(catalog.list("u1", None, 10).await.unwrap().items.len(), 4);
        assert_eq!(
            catalog.update(&id, &patch).await.unwrap_err().code(),
            "not_found"
        );
    }

    #[test]
    fn metadata_patches_are_bounded() {
        let ok =
            MetaPatch::from_json(&serde_json::json!({"title": null, "alt_text": "x"})).unwrap();
        assert_eq!(ok.title, Some(None));
        for bad in [
            serde_json::json!({"title": "x".repeat(256)}),
            serde_json::json!({"alt_text": "a\u{0}b"}),
            serde_json::json!({"tags": (0..21).map(|i| i.to_string()).collect::<Vec<_>>()}),
            serde_json::json!({"tags": ["x".repeat(51)]}),
            serde_json::json!({"tags": [""]}),
            serde_json::json!({"tags": "a,b"}),
            serde_json::json!({"owner": "mallory"}),
            serde_json::json!([1]),
        ] {
            assert_eq!(
                MetaPatch::from_json(&bad).unwrap_err().code(),
                "invalid_field",
                "{bad}"
            );
        }
        // A flood of distinct tags is refused as soon as it passes the limit (linear work).
        let flood: Vec<String> = (0..200_000).map(|i| i.to_string()).collect();
        assert_eq!(normalise_tags(flood).unwrap_err().code(), "invalid_field");
        // Duplicates collapse and do not count against the limit.
        assert_eq!(
            normalise_tags(vec!["a".into(); 50]).unwrap(),
            vec!["a".to_owned()]
        );
        // 255 characters (not bytes) are fine.
        MetaPatch::from_json(&serde_json::json!({"title": "é".repeat(255)})).unwrap();
    }
}
