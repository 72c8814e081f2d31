//! Filesystem backend (the embedded default): `<root>/<bucket>/<key>`.
//!
//! Writes go to a dot-prefixed temporary file in the target directory, are fsynced, then
//! renamed over the target (atomic on POSIX), and the directory — and every directory the
//! write had to create, up to the bucket root — is fsynced. Dot-prefixed names can never be
//! [`ObjectKey`]s, so temporaries are invisible to `get` and `list`; those a killed process
//! left behind are found by `temporaries` (for `pixgate fsck`). All file I/O runs on the
//! blocking pool. Reads, lists and checks have a deadline (the whole-store walk for temporaries,
//! an operator's job, has none); writes and deletes do not, because a blocking write cannot be
//! cancelled: giving up on it would only let it land after the caller was told it failed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Bucket, ObjectKey, ObjectStore, StorageError, TEMPORARY_PREFIX, Temporary, with_deadline,
};

/// Stores objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    timeout: Duration,
}

impl FsStore {
    /// Creates the root and bucket directories if needed (start-up code).
    pub fn new(root: impl Into<PathBuf>, timeout: Duration) -> std::io::Result<FsStore> {
        let root = root.into();
        for b in [Bucket::Originals, Bucket::Derived, Bucket::Audit] {
            std::fs::create_dir_all(root.join(b.as_str()))?;
        }
        Ok(FsStore { root, timeout })
    }

    fn path(&self, bucket: Bucket, key: &ObjectKey) -> PathBuf {
        // Safe by construction: ObjectKey segments cannot be empty, `.`/`..`, or absolute.
        self.root.join(bucket.as_str()).join(key.as_str())
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StorageError::Backend(format!("blocking task: {e}")))?
    }

    async fn blocking_with_deadline<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        with_deadline(self.timeout, Self::blocking(f)).await
    }
}

fn io_err(e: std::io::Error) -> StorageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound
    } else {
        StorageError::Backend(e.to_string())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn write_atomic(bucket_root: &Path, path: &Path, body: &[u8]) -> Result<(), StorageError> {
    write_new(bucket_root, path, body, false).map(|_| ())
}

/// Writes `body` to a temporary file, then moves it to `path`: by `rename` (replacing), or,
/// `exclusive`, by `link` (fails on an existing name: `Ok(false)`, nothing written).
fn write_new(
    bucket_root: &Path,
    path: &Path,
    body: &[u8],
    exclusive: bool,
) -> Result<bool, StorageError> {
    let dir = path
        .parent()
        .ok_or_else(|| StorageError::Backend("object path has no parent".into()))?;
    let dir_existed = dir.is_dir();
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| StorageError::Backend(e.to_string()))?;
    let tmp = dir.join(format!("{TEMPORARY_PREFIX}{}", hex::encode(suffix)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        if exclusive {
            let linked = std::fs::hard_link(&tmp, path);
            std::fs::remove_file(&tmp)?;
            match linked {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                other => other?,
            }
        } else {
            std::fs::rename(&tmp, path)?;
        }
        // Make the rename itself durable, and the entries of directories created for it.
        sync_dir(dir)?;
        if !dir_existed {
            let mut ancestor = dir.parent();
            while let Some(d) = ancestor.filter(|d| d.starts_with(bucket_root)) {
                sync_dir(d)?;
                ancestor = d.parent();
            }
        }
        Ok(true)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// Opens a file of at most `max` bytes; returns it and its length.
///
/// Only a regular file is ever read. A FIFO in the store (tampering, a corrupted restore) would
/// block `open(2)` until a writer appears — a blocking-pool thread held for the whole storage
/// deadline — so the open is non-blocking and does not follow a final symlink (pixgate never
/// writes one), and the file type is checked on the opened descriptor. A directory is how this
/// backend spells a prefix, so it reads as "not found" like on S3.
fn open_capped(path: &Path, max: u64) -> Result<(std::fs::File, u64), StorageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => StorageError::NotAFile,
            _ => io_err(e),
        })?;
    let meta = f.metadata().map_err(io_err)?;
    if meta.is_dir() {
        return Err(StorageError::NotFound);
    }
    if !meta.is_file() {
        return Err(StorageError::NotAFile);
    }
    if meta.len() > max {
        return Err(StorageError::TooLarge { limit: max });
    }
    Ok((f, meta.len()))
}

/// Reads `f` to its end into `buf`, never past `max` bytes.
fn read_into(f: std::fs::File, mut buf: Vec<u8>, max: u64) -> Result<Bytes, StorageError> {
    // The file may grow between stat and read: never read past the cap.
    f.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    if buf.len() as u64 > max {
        return Err(StorageError::TooLarge { limit: max });
    }
    Ok(Bytes::from(buf))
}

/// The entries of `dir`, or `None` if it does not exist (never created, or removed while a walk
/// ran): an absent directory is an empty prefix, not an error.
fn read_dir_if_present(dir: &Path) -> std::io::Result<Option<std::fs::ReadDir>> {
    match std::fs::read_dir(dir) {
        Ok(e) => Ok(Some(e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let Some(entries) = read_dir_if_present(dir)? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // temporaries
        }
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(base, &path, out)?;
        } else if ft.is_file()
            && let Ok(rel) = path.strip_prefix(base)
        {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// Appends the temporaries under `dir` (a directory of `bucket`, rooted at `base`) to `out`.
/// Symlinks are never followed, and directories pixgate cannot have made (dot names) are not
/// entered: nothing a key cannot name is ever reported.
fn walk_temporaries(
    bucket: Bucket,
    base: &Path,
    dir: &Path,
    out: &mut Vec<Temporary>,
) -> std::io::Result<()> {
    let Some(entries) = read_dir_if_present(dir)? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ft = entry.file_type()?;
        if ft.is_dir() && !name.starts_with('.') {
            walk_temporaries(bucket, base, &entry.path(), out)?;
        } else if ft.is_file() && name.starts_with(TEMPORARY_PREFIX) {
            let modified = match entry.metadata().and_then(|m| m.modified()) {
                Ok(t) => t,
                // Renamed into place (or cleaned up) since the directory was read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let path = entry.path();
            let rel = path.strip_prefix(base).ok().and_then(Path::to_str);
            if let Some(t) = rel.and_then(|r| Temporary::new(bucket, r.to_owned(), modified)) {
                out.push(t);
            }
        }
    }
    Ok(())
}

/// Walks `dir` (whose keys start with `rel`) in key order, appending keys that start with
/// `prefix` and sort after `after`, until `out` holds `max`. Entries are ordered by their key
/// form (`name/` for directories), so the walk yields keys in exactly `ObjectKey` order, and
/// a directory whose whole subtree sorts before `after` is skipped unread.
fn walk_page(
    dir: &Path,
    rel: &str,
    prefix: &str,
    after: Option<&str>,
    max: usize,
    out: &mut Vec<ObjectKey>,
) -> std::io::Result<()> {
    let Some(entries) = read_dir_if_present(dir)? else {
        return Ok(());
    };
    let mut items: Vec<(String, bool, std::path::PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // temporaries
        }
        let ft = entry.file_type()?;
        if ft.is_dir() {
            items.push((format!("{rel}{name}/"), true, entry.path()));
        } else if ft.is_file() {
            items.push((format!("{rel}{name}"), false, entry.path()));
        }
    }
    items.sort();
    for (key, is_dir, path) in items {
        if out.len() >= max {
            break;
        }
        // The entry (or, for a directory, some key below it) can match the prefix.
        if !(key.starts_with(prefix) || (is_dir && prefix.starts_with(&key))) {
            continue;
        }
        if is_dir {
            if after.is_some_and(|a| key.as_str() < a && !a.starts_with(&key)) {
                continue; // everything below sorts before `after`
            }
            walk_page(&path, &key, prefix, after, max, out)?;
        } else if after.is_none_or(|a| key.as_str() > a)
            && let Ok(k) = ObjectKey::new(key)
        {
            out.push(k);
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn put(
        &self,
        bucket: Bucket,
        key: &ObjectKey,
        body: Bytes,
        _content_type: &str,
    ) -> Result<(), StorageError> {
        let path = self.path(bucket, key);
        let bucket_root = self.root.join(bucket.as_str());
        Self::blocking(move || write_atomic(&bucket_root, &path, &body)).await
    }

    async fn put_if_absent(
        &self,
        bucket: Bucket,
        key: &ObjectKey,
        body: Bytes,
        _content_type: &str,
    ) -> Result<bool, StorageError> {
        let path = self.path(bucket, key);
        let bucket_root = self.root.join(bucket.as_str());
        Self::blocking(move || write_new(&bucket_root, &path, &body, true)).await
    }

    async fn get(
        &self,
        bucket: Bucket,
        key: &ObjectKey,
        max_bytes: u64,
    ) -> Result<Bytes, StorageError> {
        let path = self.path(bucket, key);
        with_deadline(self.timeout, async move {
            // The buffer is allocated here, on the async worker, not on a blocking-pool thread:
            // the allocator keeps freed memory with the thread that allocated it, and buffers
            // freed by async workers but owned by dozens of idle blocking threads stayed
            // resident (an export of 200 MB of originals grew RSS by 150 MB; now ~10 MB).
            let (file, len) = Self::blocking(move || open_capped(&path, max_bytes)).await?;
            let buf = Vec::with_capacity(len as usize);
            Self::blocking(move || read_into(file, buf, max_bytes)).await
        })
        .await
    }

    async fn delete(&self, bucket: Bucket, key: &ObjectKey) -> Result<(), StorageError> {
        let path = self.path(bucket, key);
        Self::blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e)),
        })
        .await
    }

    async fn list(&self, bucket: Bucket, prefix: &str) -> Result<Vec<ObjectKey>, StorageError> {
        let base = self.root.join(bucket.as_str());
        let prefix = prefix.to_owned();
        self.blocking_with_deadline(move || {
            // Walk only the deepest directory the prefix names fully.
            let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
            let start = if dir_part.is_empty() {
                base.clone()
            } else {
                base.join(ObjectKey::new(dir_part)?.as_str())
            };
            let mut names = Vec::new();
            walk(&base, &start, &mut names).map_err(io_err)?;
            let mut keys: Vec<ObjectKey> = names
                .into_iter()
                .filter(|n| n.starts_with(&prefix))
                .filter_map(|n| ObjectKey::new(n).ok())
                .collect();
            keys.sort();
            Ok(keys)
        })
        .await
    }

    async fn list_page(
        &self,
        bucket: Bucket,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<ObjectKey>, StorageError> {
        let base = self.root.join(bucket.as_str());
        let prefix = prefix.to_owned();
        let after = start_after.map(str::to_owned);
        self.blocking_with_deadline(move || {
            let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
            let (start, rel) = if dir_part.is_empty() {
                (base.clone(), String::new())
            } else {
                (
                    base.join(ObjectKey::new(dir_part)?.as_str()),
                    format!("{dir_part}/"),
                )
            };
            let mut out = Vec::new();
            walk_page(&start, &rel, &prefix, after.as_deref(), max, &mut out).map_err(io_err)?;
            Ok(out)
        })
        .await
    }

    async fn list_page_dated(
        &self,
        bucket: Bucket,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(ObjectKey, std::time::SystemTime)>, StorageError> {
        let keys = self.list_page(bucket, prefix, start_after, max).await?;
        let base = self.root.join(bucket.as_str());
        self.blocking_with_deadline(move || {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                match std::fs::metadata(base.join(k.as_str())).and_then(|m| m.modified()) {
                    Ok(t) => out.push((k, t)),
                    // Deleted since it was listed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(e)),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn check(&self) -> Result<(), StorageError> {
        let root = self.root.clone();
        self.blocking_with_deadline(move || {
            // Not the audit directory: an unreachable archive spools, it is no outage.
            for b in [Bucket::Originals, Bucket::Derived] {
                let m = std::fs::metadata(root.join(b.as_str())).map_err(io_err)?;
                if !m.is_dir() || m.permissions().readonly() {
                    return Err(StorageError::Backend(format!(
                        "{} is not a writable directory",
                        b.as_str()
                    )));
                }
            }
            Ok(())
        })
        .await
    }

    async fn temporaries(&self) -> Result<Vec<Temporary>, StorageError> {
        let root = self.root.clone();
        // No deadline: the walk reads every directory of the store, so it takes as long as the
        // store is large. Only `pixgate fsck` asks, never a request.
        Self::blocking(move || {
            let mut out = Vec::new();
            for b in [Bucket::Originals, Bucket::Derived, Bucket::Audit] {
                let base = root.join(b.as_str());
                walk_temporaries(b, &base, &base, &mut out).map_err(io_err)?;
            }
            Ok(out)
        })
        .await
    }

    async fn remove_temporary(&self, temporary: &Temporary) -> Result<bool, StorageError> {
        // Safe by construction: a Temporary's path is a key prefix and a `.tmp-{hex}` name.
        let path = self
            .root
            .join(temporary.bucket().as_str())
            .join(temporary.path());
        let found = temporary.modified();
        Self::blocking(move || {
            // Checked again at removal: a temporary written to since it was found belongs to a
            // write that is still running.
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err(e)),
            };
            if !meta.file_type().is_file() || meta.modified().map_err(io_err)? > found {
                return Ok(false);
            }
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(io_err(e)),
            }
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "fs"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path(), Duration::from_secs(5)).unwrap();
        (dir, s)
    }

    fn key(s: &str) -> ObjectKey {
        ObjectKey::new(s).unwrap()
    }

    #[tokio::test]
    async fn put_get_list_delete() {
        let (_d, s) = store();
        let k = key("images/abc/original");
        s.put(Bucket::Originals, &k, Bytes::from_static(b"hello"), "x")
            .await
            .unwrap();
        assert_eq!(
            s.get(Bucket::Originals, &k, 100).await.unwrap(),
            &b"hello"[..]
        );
        // Buckets are separate namespaces.
        assert!(matches!(
            s.get(Bucket::Derived, &k, 100).await,
            Err(StorageError::NotFound)
        ));
        s.put(
            Bucket::Originals,
            &key("images/abc/meta.json"),
            Bytes::new(),
            "x",
        )
        .await
        .unwrap();
        s.put(
            Bucket::Originals,
            &key("images/abd/meta.json"),
            Bytes::new(),
            "x",
        )
        .await
        .unwrap();
        let listed = s.list(Bucket::Originals, "images/abc/").await.unwrap();
        assert_eq!(listed, vec![key("images/abc/meta.json"), k.clone()]);
        assert_eq!(
            s.list(Bucket::Originals, "images/ab").await.unwrap().len(),
            3
        );
        assert!(
            s.list(Bucket::Originals, "nothing/")
                .await
                .unwrap()
                .is_empty()
        );
        s.delete(Bucket::Originals, &k).await.unwrap();
        s.delete(Bucket::Originals, &k).await.unwrap(); // idempotent
        assert!(matches!(
            s.get(Bucket::Originals, &k, 100).await,
            Err(StorageError::NotFound)
        ));
    }

    #[tokio::test]
    async fn reads_are_capped() {
        let (_d, s) = store();
        let k = key("big");
        s.put(Bucket::Originals, &k, Bytes::from(vec![0u8; 1000]), "x")
            .await
            .unwrap();
        assert!(matches!(
            s.get(Bucket::Originals, &k, 999).await,
            Err(StorageError::TooLarge { limit: 999 })
        ));
        assert_eq!(
            s.get(Bucket::Originals, &k, 1000).await.unwrap().len(),
            1000
        );
    }

    #[tokio::test]
    async fn special_files_are_refused_at_once_never_opened_blocking() {
        let (d, s) = store();
        std::fs::create_dir_all(d.path().join("originals/x")).unwrap();
        let fifo = d.path().join("originals/x/fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("originals/x/link")).unwrap();
        let started = std::time::Instant::now();
        for name in ["x/fifo", "x/link"] {
            assert!(
                matches!(
                    s.get(Bucket::Originals, &key(name), 100).await,
                    Err(StorageError::NotAFile)
                ),
                "{name}"
            );
        }
        // No writer ever opens the FIFO: a blocking open would hang here until the deadline.
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[tokio::test]
    async fn overwrite_is_atomic_and_leaves_no_temporaries() {
        let (d, s) = store();
        let k = key("a/b");
        for i in 0..5u8 {
            s.put(Bucket::Originals, &k, Bytes::from(vec![i; 64]), "x")
                .await
                .unwrap();
        }
        assert_eq!(s.get(Bucket::Originals, &k, 64).await.unwrap()[0], 4);
        let names: Vec<_> = std::fs::read_dir(d.path().join("originals/a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["b"]);
    }

    #[tokio::test]
    async fn temporaries_are_found_and_removed_only_while_unchanged() {
        let (d, s) = store();
        s.put(Bucket::Originals, &key("a/b"), Bytes::new(), "x")
            .await
            .unwrap();
        let path = d.path().join("originals/a/.tmp-0123456789abcdef");
        std::fs::write(&path, b"partial").unwrap();
        std::fs::write(d.path().join("derived/.tmp-00"), b"").unwrap();
        // Not a temporary of ours: not a `.tmp-{hex}` name, or not a regular file.
        std::fs::write(d.path().join("originals/a/.tmp-x"), b"").unwrap();
        std::fs::create_dir(d.path().join("originals/.tmp-01")).unwrap();
        let mut found = s.temporaries().await.unwrap();
        found.sort_by_key(|t| t.to_string());
        let names: Vec<String> = found.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            names,
            vec!["derived/.tmp-00", "originals/a/.tmp-0123456789abcdef"]
        );
        let t = &found[1];
        // Written to after it was found: a write still running.
        let later = t.modified() + Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(!s.remove_temporary(t).await.unwrap());
        assert!(path.exists());
        let t = s
            .temporaries()
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.path() == "a/.tmp-0123456789abcdef")
            .unwrap();
        assert!(s.remove_temporary(&t).await.unwrap());
        assert!(!path.exists());
        assert!(!s.remove_temporary(&t).await.unwrap(), "already gone");
        assert_eq!(
            s.get(Bucket::Originals, &key("a/b"), 10).await.unwrap(),
            Bytes::new()
        );
    }

    #[tokio::test]
    async fn directories_are_not_objects() {
        let (_d, s) = store();
        s.put(Bucket::Originals, &key("dir/file"), Bytes::new(), "x")
            .await
            .unwrap();
        assert!(matches!(
            s.get(Bucket::Originals, &key("dir"), 10).await,
            Err(StorageError::NotFound)
        ));
        s.check().await.unwrap();
    }

    #[tokio::test]
    async fn pages_follow_key_order_and_skip_what_is_before() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path(), Duration::from_secs(5)).unwrap();
        let names = [
            "a-c",
            "a/b",
            "a/b.x",
            "a/b0/c",
            "a.b",
            "a0",
            "audit/2026/11/23/i-1.ndjson",
            "audit/2026/11/24/i-2.ndjson",
            "audit/2026/11/24/j-1.ndjson",
            "audit/checkpoints/i.json",
            "b",
            "z/y/x",
        ];
        for n in names {
            let k = key(n);
            s.put(Bucket::Originals, &k, Bytes::from_static(b"x"), "x")
                .await
                .unwrap();
        }
        for prefix in [
            "",
            "a",
            "a/",
            "a/b",
            "audit/",
            "audit/2026/11/24/",
            "audit/2",
            "zz",
        ] {
            let all = s.list(Bucket::Originals, prefix).await.unwrap();
            for page_size in [1, 2, 3, 100] {
                let mut got = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let page = s
                        .list_page(Bucket::Originals, prefix, after.as_deref(), page_size)
                        .await
                        .unwrap();
                    assert!(page.len() <= page_size);
                    let Some(last) = page.last() else { break };
                    after = Some(last.as_str().to_owned());
                    got.extend(page);
                }
                assert_eq!(got, all, "prefix {prefix:?}, pages of {page_size}");
            }
            // A start point between keys.
            let from = "audit/2026/11/23/z";
            let want: Vec<ObjectKey> = all.iter().filter(|k| k.as_str() > from).cloned().collect();
            let got = s
                .list_page(Bucket::Originals, prefix, Some(from), 100)
                .await
                .unwrap();
            assert_eq!(got, want, "prefix {prefix:?} after {from}");
        }
    }
}
