//! Originals pixgate references in place instead of holding a copy (`pixgate import
//! --in-place`): objects in other buckets of the storage's own S3 service, read with the
//! storage's credentials, never written.
//!
//! Place in the architecture: below the catalog, beside the [`super::ObjectStore`] backends.
//! An in-place image keeps its layout: `images/{id}/original` exists as for any image (so
//! every "does the image still exist" check, the delete order and `fsck` work unchanged), but
//! holds a small *reference stub* ([`stub`]: [`STUB_MAGIC`], then a JSON [`Reference`])
//! instead of the bytes. No accepted original can start with the magic (every original passes
//! the upload's magic-byte check first), so a stub is never mistaken for an image, nor an
//! image for a stub.
//!
//! Reads are pinned to what was validated: the GET carries `If-Match` with the ETag the import
//! read, the answer's ETag and length are compared again, and a mismatch is
//! [`ForeignError::Changed`] — a foreign object replaced after its import is never decoded
//! unvalidated. Deletes touch a foreign object only when the import was told it is pixgate's
//! (`--owned`), and only while its ETag is still the imported one.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{StorageConfig, StorageError, precondition, read_capped, sdk_err, with_deadline};

/// The first bytes of a reference stub. Starts with a byte no supported image format starts
/// with, and is followed by a version.
pub const STUB_MAGIC: &[u8] = b"pixgate-reference/1\n";
/// A stub's content type (it is never served: `Catalog::original` resolves it).
pub const STUB_CONTENT_TYPE: &str = "application/vnd.pixgate.reference+json";
/// A stub is a few hundred bytes; anything longer after the magic is damage.
const MAX_STUB_BYTES: usize = 4096;
/// The longest a stub can be, magic included.
pub const MAX_STUB_LEN: u64 = (STUB_MAGIC.len() + MAX_STUB_BYTES) as u64;

/// A foreign object an image's original is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub bucket: String,
    pub key: String,
    /// The ETag of the version the import validated (quotes included, as S3 returns it).
    pub etag: String,
    pub bytes: u64,
    /// `--owned`: deleting the image deletes the foreign object too (if unchanged).
    #[serde(default)]
    pub owned: bool,
}

/// The stub stored at `images/{id}/original` for `r`.
pub fn stub(r: &Reference) -> Result<Bytes, String> {
    let mut out = STUB_MAGIC.to_vec();
    serde_json::to_writer(&mut out, r).map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}

/// `x-amz-copy-source` for `bucket`/`key`: the key percent-encoded but for `/` and the
/// unreserved characters.
pub fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `None`: `bytes` is an original itself. `Some(Err)`: a damaged stub.
pub fn parse_stub(bytes: &[u8]) -> Option<Result<Reference, String>> {
    let json = bytes.strip_prefix(STUB_MAGIC)?;
    if json.len() > MAX_STUB_BYTES {
        return Some(Err("reference stub too long".to_owned()));
    }
    Some(serde_json::from_slice(json).map_err(|e| format!("reference stub: {e}")))
}

/// Why a foreign original could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForeignError {
    /// The object is no longer there.
    #[error("the referenced original is gone")]
    Gone,
    /// It was replaced since it was imported (another ETag or length).
    #[error("the referenced original changed since it was imported")]
    Changed,
    #[error(transparent)]
    Storage(StorageError),
}

/// Reads and (for owned references) deletes foreign originals. A trait so the catalog's
/// logic is unit-tested without S3; the one real implementation is [`S3Foreign`].
#[async_trait]
pub trait Foreign: Send + Sync + 'static {
    /// The bytes of `r`, at most `cap`, exactly the version it names.
    async fn read(&self, r: &Reference, cap: u64) -> Result<Bytes, ForeignError>;
    /// Deletes `r`'s object if it is still the imported version; `Ok(false)` if it is gone or
    /// changed (then it is left alone: it is no longer what pixgate imported).
    async fn delete_if_unchanged(&self, r: &Reference) -> Result<bool, StorageError>;
}

/// [`Foreign`] on the storage's S3 service, with its credentials and deadline.
pub struct S3Foreign {
    client: Client,
    timeout: Duration,
    /// pixgate's own buckets: never a reference's (a stub naming one is refused).
    own: Vec<String>,
}

impl S3Foreign {
    /// The client of the storage's S3 service (`storage.backend = "s3"` only).
    pub async fn from_config(cfg: &StorageConfig) -> Option<S3Foreign> {
        if cfg.backend != super::Backend::S3 {
            return None;
        }
        let conf = super::client_config(cfg, &cfg.s3_endpoint, &cfg.s3_region, None).await;
        Some(S3Foreign {
            client: Client::from_conf(conf),
            timeout: Duration::from_secs(cfg.timeout_secs),
            own: [&cfg.s3_bucket, &cfg.s3_derived_bucket, &cfg.s3_audit_bucket]
                .into_iter()
                .filter(|b| !b.is_empty())
                .cloned()
                .collect(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn service_code<E: ProvideErrorMetadata, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> Option<&str> {
    e.as_service_error().and_then(ProvideErrorMetadata::code)
}

fn status<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

#[async_trait]
impl Foreign for S3Foreign {
    async fn read(&self, r: &Reference, cap: u64) -> Result<Bytes, ForeignError> {
        if self.own.contains(&r.bucket) {
            return Err(ForeignError::Storage(StorageError::Backend(
                "a reference names one of pixgate's own buckets".into(),
            )));
        }
        let req = self
            .client
            .get_object()
            .bucket(&r.bucket)
            .key(&r.key)
            .if_match(&r.etag);
        let read = async move {
            let out = match req.send().await {
                Ok(out) => out,
                Err(e) => {
                    return Err(match (service_code(&e), status(&e)) {
                        (Some("NoSuchKey" | "NotFound"), _) | (_, Some(404)) => ForeignError::Gone,
                        (Some("PreconditionFailed"), _) | (_, Some(412)) => ForeignError::Changed,
                        _ => ForeignError::Storage(sdk_err(e)),
                    });
                }
            };
            // A service that ignores If-Match is caught here.
            if out.e_tag() != Some(r.etag.as_str()) {
                return Err(ForeignError::Changed);
            }
            let bytes = read_capped(out, cap.min(r.bytes))
                .await
                .map_err(|e| match e {
                    StorageError::TooLarge { .. } => ForeignError::Changed,
                    other => ForeignError::Storage(other),
                })?;
            if bytes.len() as u64 != r.bytes {
                return Err(ForeignError::Changed);
            }
            Ok(bytes)
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .unwrap_or(Err(ForeignError::Storage(StorageError::Timeout)))
    }

    async fn delete_if_unchanged(&self, r: &Reference) -> Result<bool, StorageError> {
        if self.own.contains(&r.bucket) {
            return Ok(false);
        }
        let head = self.client.head_object().bucket(&r.bucket).key(&r.key);
        // Conditional where the service supports it (AWS since 2025); the HEAD covers the rest
        // but for a replacement landing between the two.
        let delete = self
            .client
            .delete_object()
            .bucket(&r.bucket)
            .key(&r.key)
            .if_match(&r.etag);
        with_deadline(self.timeout, async move {
            let current = match head.send().await {
                Ok(out) => out.e_tag().map(str::to_owned),
                Err(e) if matches!(status(&e), Some(404)) => return Ok(false),
                Err(e) => return Err(sdk_err(e)),
            };
            if current.as_deref() != Some(r.etag.as_str()) {
                return Ok(false);
            }
            // A 412 (replaced since the HEAD, where the service checks If-Match) leaves it.
            precondition(delete.send().await)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stub_round_trips_and_no_image_parses_as_one() {
        let r = Reference {
            bucket: "photos".into(),
            key: "users/ann/a.jpg".into(),
            etag: "\"abc\"".into(),
            bytes: 1234,
            owned: true,
        };
        let s = stub(&r).unwrap();
        assert_eq!(parse_stub(&s).unwrap().unwrap(), r);
        for image in [
            &b"\xff\xd8\xff\xe0"[..],
            b"\x89PNG\r\n\x1a\n",
            b"GIF89a",
            b"RIFF\0\0\0\0WEBP",
            b"\0\0\0\x1cftypavif",
        ] {
            assert!(parse_stub(image).is_none());
        }
        assert!(
            parse_stub(b"pixgate-reference/1\n{not json")
                .unwrap()
                .is_err()
        );
        let mut long = STUB_MAGIC.to_vec();
        long.extend(std::iter::repeat_n(b' ', MAX_STUB_BYTES + 1));
        assert!(parse_stub(&long).unwrap().is_err());
    }

    #[test]
    fn copy_sources_are_percent_encoded() {
        assert_eq!(
            copy_source("b", "users/ann/a b+ü.jpg"),
            "b/users/ann/a%20b%2B%C3%BC.jpg"
        );
    }
}
