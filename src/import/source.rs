//! Where `pixgate import` reads originals from: an S3 bucket and prefix (any S3 endpoint, with
//! its own credentials) or a local directory. Both list keys in byte order, so a run can
//! resume after the last key it finished, and both read with a byte cap.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use bytes::Bytes;

/// One object a source lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key inside the source (for a directory: the path below it, `/`-separated).
    pub key: String,
    pub size: u64,
    /// When the source last modified it (S3 `LastModified`, a file's mtime): the imported
    /// image's `created_at`, so an owner's library keeps its order.
    pub modified: Option<SystemTime>,
}

/// Why one object could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("gone since it was listed")]
    Gone,
    #[error("larger than limits.max_source_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Failed(String),
}

#[async_trait]
pub trait Source: Send + Sync {
    /// What the run is over, e.g. `s3://photos/users/` or `dir:/srv/images`; names its
    /// checkpoint.
    fn describe(&self) -> String;
    /// The address of one object: `s3://BUCKET/KEY` (what legacy URLs name) or
    /// `dir:/abs/path`.
    fn uri(&self, key: &str) -> String;
    /// Up to `max` objects after `after` (all when `None`), in byte order of their keys.
    async fn list(&self, after: Option<&str>, max: usize) -> Result<Vec<Listed>, String>;
    /// The bytes of `key`, at most `cap`.
    async fn read(&self, key: &str, cap: u64) -> Result<Bytes, ReadError>;
    /// `--in-place`: the bucket a reference names (S3 sources only).
    fn bucket(&self) -> Option<&str> {
        None
    }
    /// `--in-place`: the bytes of `key` and the ETag of exactly that version.
    async fn read_pinned(&self, _key: &str, _cap: u64) -> Result<(Bytes, String), ReadError> {
        Err(ReadError::Failed(
            "an in-place import needs an s3:// source".into(),
        ))
    }
}

/// `s3://BUCKET/PREFIX` → (bucket, prefix).
pub fn parse_s3(source: &str) -> Option<(String, String)> {
    let rest = source.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_owned(), prefix.to_owned()))
}

/// A bucket and prefix on an S3 service.
pub struct S3Source {
    client: Client,
    bucket: String,
    prefix: String,
    timeout: Duration,
}

impl S3Source {
    pub fn new(client: Client, bucket: String, prefix: String, timeout: Duration) -> S3Source {
        S3Source {
            client,
            bucket,
            prefix,
            timeout,
        }
    }
}

#[async_trait]
impl Source for S3Source {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    async fn list(&self, after: Option<&str>, max: usize) -> Result<Vec<Listed>, String> {
        let req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .set_start_after(after.map(str::to_owned))
            .max_keys(i32::try_from(max.clamp(1, 1000)).unwrap_or(1000));
        let out = tokio::time::timeout(self.timeout, req.send())
            .await
            .map_err(|_| "listing the source timed out".to_owned())?
            .map_err(|e| format!("listing the source: {}", DisplayErrorContext(&e)))?;
        let mut items: Vec<Listed> = out
            .contents()
            .iter()
            .filter_map(|o| {
                let key = o.key()?;
                // "Directory" placeholder objects hold no image.
                (!key.ends_with('/')).then(|| Listed {
                    key: key.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok()),
                })
            })
            .collect();
        items.sort_by(|a, b| a.key.cmp(&b.key));
        // An empty page with more behind it (only placeholders) must not end the run.
        if items.is_empty()
            && out.is_truncated() == Some(true)
            && let Some(last) = out.contents().last().and_then(|o| o.key())
        {
            return Box::pin(self.list(Some(last), max)).await;
        }
        Ok(items)
    }

    async fn read(&self, key: &str, cap: u64) -> Result<Bytes, ReadError> {
        self.get(key, cap).await.map(|(bytes, _)| bytes)
    }

    fn bucket(&self) -> Option<&str> {
        Some(&self.bucket)
    }

    async fn read_pinned(&self, key: &str, cap: u64) -> Result<(Bytes, String), ReadError> {
        match self.get(key, cap).await? {
            (bytes, Some(etag)) => Ok((bytes, etag)),
            (_, None) => Err(ReadError::Failed(
                "the source answered without an ETag".into(),
            )),
        }
    }
}

impl S3Source {
    /// The bytes of `key` (at most `cap`) and the ETag the answer carried.
    async fn get(&self, key: &str, cap: u64) -> Result<(Bytes, Option<String>), ReadError> {
        let req = self.client.get_object().bucket(&self.bucket).key(key);
        let read = async move {
            let out = req.send().await.map_err(|e| {
                let code = e
                    .as_service_error()
                    .and_then(aws_sdk_s3::error::ProvideErrorMetadata::code);
                if matches!(code, Some("NoSuchKey") | Some("NotFound")) {
                    ReadError::Gone
                } else {
                    ReadError::Failed(DisplayErrorContext(&e).to_string())
                }
            })?;
            let etag = out.e_tag().map(str::to_owned);
            let bytes = crate::storage::read_capped(out, cap)
                .await
                .map_err(|e| match e {
                    crate::storage::StorageError::TooLarge { limit } => {
                        ReadError::TooLarge { limit }
                    }
                    other => ReadError::Failed(other.to_string()),
                })?;
            Ok((bytes, etag))
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| ReadError::Failed("reading the source timed out".into()))?
    }
}

/// The regular files below a directory (symbolic links are not followed: an import never
/// reads outside the directory it was given). Listed once, sorted, at the first call.
pub struct DirSource {
    root: PathBuf,
    files: tokio::sync::OnceCell<Vec<Listed>>,
}

impl DirSource {
    pub fn new(root: &Path) -> Result<DirSource, String> {
        let root = root
            .canonicalize()
            .map_err(|e| format!("{}: {e}", root.display()))?;
        if !root.is_dir() {
            return Err(format!("{} is not a directory", root.display()));
        }
        Ok(DirSource {
            root,
            files: tokio::sync::OnceCell::new(),
        })
    }

    fn walk(root: &Path) -> Result<Vec<Listed>, String> {
        let mut out = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for entry in entries {
                let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
                let kind = entry
                    .file_type()
                    .map_err(|e| format!("{}: {e}", entry.path().display()))?;
                let path = entry.path();
                if kind.is_dir() {
                    dirs.push(path);
                } else if kind.is_file() {
                    let Ok(rel) = path.strip_prefix(root) else {
                        continue;
                    };
                    // Keys are UTF-8 with `/` separators; other names are skipped (and said so
                    // by the summary's count of listed objects never matching).
                    let Some(key) = rel
                        .to_str()
                        .map(|s| s.replace(std::path::MAIN_SEPARATOR, "/"))
                    else {
                        tracing::warn!(path = %path.display(), "skipped: file name is not UTF-8");
                        continue;
                    };
                    let meta = entry.metadata().ok();
                    out.push(Listed {
                        key,
                        size: meta.as_ref().map_or(0, |m| m.len()),
                        modified: meta.and_then(|m| m.modified().ok()),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[async_trait]
impl Source for DirSource {
    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn uri(&self, key: &str) -> String {
        format!("dir:{}/{key}", self.root.display())
    }

    async fn list(&self, after: Option<&str>, max: usize) -> Result<Vec<Listed>, String> {
        let root = self.root.clone();
        let files = self
            .files
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || DirSource::walk(&root))
                    .await
                    .map_err(|e| format!("listing task: {e}"))?
            })
            .await?;
        let start = match after {
            Some(a) => files.partition_point(|l| l.key.as_str() <= a),
            None => 0,
        };
        Ok(files.iter().skip(start).take(max).cloned().collect())
    }

    async fn read(&self, key: &str, cap: u64) -> Result<Bytes, ReadError> {
        // Keys come from this source's own listing; refuse anything that climbs out anyway.
        if key.split('/').any(|s| s == ".." || s.is_empty()) {
            return Err(ReadError::Failed("invalid key".into()));
        }
        let path = self.root.join(key);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let meta = std::fs::symlink_metadata(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ReadError::Gone,
                _ => ReadError::Failed(e.to_string()),
            })?;
            if !meta.is_file() {
                return Err(ReadError::Gone);
            }
            if meta.len() > cap {
                return Err(ReadError::TooLarge { limit: cap });
            }
            // Swapped for a symbolic link (or a FIFO) since the check: refused at open.
            let mut open = std::fs::OpenOptions::new();
            open.read(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                open.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
            }
            let file = open
                .open(&path)
                .map_err(|e| ReadError::Failed(e.to_string()))?;
            if !file.metadata().is_ok_and(|m| m.is_file()) {
                return Err(ReadError::Gone);
            }
            let mut buf = Vec::with_capacity(meta.len() as usize);
            file.take(cap + 1)
                .read_to_end(&mut buf)
                .map_err(|e| ReadError::Failed(e.to_string()))?;
            if buf.len() as u64 > cap {
                return Err(ReadError::TooLarge { limit: cap });
            }
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| ReadError::Failed(format!("read task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_sources_parse() {
        assert_eq!(
            parse_s3("s3://photos/users/"),
            Some(("photos".into(), "users/".into()))
        );
        assert_eq!(
            parse_s3("s3://photos"),
            Some(("photos".into(), String::new()))
        );
        assert_eq!(parse_s3("s3:///x"), None);
        assert_eq!(parse_s3("/srv/images"), None);
    }

    #[tokio::test]
    async fn a_directory_lists_in_order_resumes_and_reads_with_a_cap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("users/b")).unwrap();
        std::fs::create_dir_all(dir.path().join("users/a")).unwrap();
        std::fs::write(dir.path().join("users/b/1.png"), b"12345").unwrap();
        std::fs::write(dir.path().join("users/a/2.png"), b"123").unwrap();
        std::fs::write(dir.path().join("top.jpg"), b"1").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("users/a/link")).unwrap();
        let s = DirSource::new(dir.path()).unwrap();
        let all = s.list(None, 100).await.unwrap();
        let keys: Vec<&str> = all.iter().map(|l| l.key.as_str()).collect();
        assert_eq!(
            keys,
            ["top.jpg", "users/a/2.png", "users/b/1.png"],
            "no symlink"
        );
        let rest = s.list(Some("users/a/2.png"), 100).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].size, 5);
        assert_eq!(&s.read("users/b/1.png", 5).await.unwrap()[..], b"12345");
        assert!(matches!(
            s.read("users/b/1.png", 4).await,
            Err(ReadError::TooLarge { limit: 4 })
        ));
        assert!(matches!(
            s.read("missing.png", 4).await,
            Err(ReadError::Gone)
        ));
        assert!(matches!(s.read("../x", 4).await, Err(ReadError::Failed(_))));
        assert!(matches!(
            s.read("users/a/link", 4096).await,
            Err(ReadError::Gone)
        ));
    }
}
