//! The archive writer: one task owns the chain, batches events, spools, uploads.
//!
//! Every sealed batch goes to the spool directory first (`{YYYY}-{MM}-{DD}.{instance}-{seq}
//! .ndjson`, written to a temporary file, fsynced, renamed), then `chain.json` records the new
//! head, then the spool is drained: each spooled batch is put in the archive, oldest first, and
//! its file removed once the put succeeded. A failed put leaves the file for the next drain
//! (backoff 1 s doubling to 30 s); `pixgate_audit_spooled_events` counts the events waiting.
//! A restart finds the chain state and any spooled batches where the last run left them.
//!
//! All file I/O runs on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::chain::{self, ChainState};
use super::{Command, Settings};
use crate::metrics::Metrics;
use crate::storage::{Bucket, ObjectKey, ObjectStore};

const CHAIN_FILE: &str = "chain.json";
const LOCK_FILE: &str = "lock";
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) struct Writer {
    /// Held for the writer's life: the spool directory's exclusive lock.
    _lock: std::fs::File,
    settings: Settings,
    metrics: Metrics,
    chain: ChainState,
    batch: Vec<String>,
    /// UTC day (`YYYY/MM/DD`) of the open batch's first event.
    batch_day: String,
    spool: Arc<Spool>,
    /// Wakes the uploader; `Some(ack)`: drain now and answer.
    kick: mpsc::Sender<Option<oneshot::Sender<()>>>,
    uploader: Option<Uploader>,
}

/// What is waiting in the spool (shared by the writer, which adds, and the uploader).
struct Spool {
    events: AtomicU64,
    bytes: AtomicU64,
}

/// Puts spooled batches in the archive, in a task of its own: a slow or unreachable archive
/// never stops the writer from taking and spooling events.
struct Uploader {
    store: Arc<dyn ObjectStore>,
    dir: PathBuf,
    metrics: Metrics,
    spool: Arc<Spool>,
    kicks: mpsc::Receiver<Option<oneshot::Sender<()>>>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

fn spool_name(day: &str, instance: &str, seq: u64) -> String {
    format!("{}.{instance}-{seq:010}.ndjson", day.replace('/', "-"))
}

/// The archive key of a spool file name.
fn key_of_spool_name(name: &str) -> Option<String> {
    let (day, rest) = name.split_once('.')?;
    let key = format!("audit/{}/{rest}", day.replace('-', "/"));
    chain::parse_key(&key).map(|_| key)
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

fn write_file_atomic(dir: &Path, name: &str, body: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".tmp-{name}"));
    // Audit records name users and addresses: owner-only, whatever the umask.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(body).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// Spool files, oldest first (by sequence number, then name).
fn spool_files(dir: &Path) -> Result<Vec<(String, u64)>, String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(key) = key_of_spool_name(&name) {
            let seq = chain::parse_key(&key).map_or(0, |(_, _, s)| s);
            out.push((name, seq));
        }
    }
    out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    Ok(out)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("blocking task: {e}"))?
}

fn random_instance() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// Start-up, blocking: creates and locks the spool directory (one writer per spool, and so
/// per chain: a second process on the same directory would fork the chain and overwrite its
/// batches), reads the chain state (or starts a chain named `wanted`, random if empty), and
/// continues it from the newest spooled batch of this instance. Returns the chain, the
/// spooled events and bytes, and the lock.
fn recover_spool(
    dir: &std::path::Path,
    wanted: String,
) -> Result<(ChainState, u64, u64, std::fs::File), String> {
    std::fs::create_dir_all(dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|e| format!("audit spool {}: {e}", dir.display()))?;
    // One writer per spool (and so per chain): a second process on the same directory
    // would fork the chain and overwrite its batches.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| format!("audit spool lock: {e}"))?;
    lock.try_lock().map_err(|_| {
        format!(
            "audit spool {} is in use by another pixgate process (audit.spool_dir must be one per instance)",
            dir.display()
        )
    })?;
    let mut chain = match std::fs::read(dir.join(CHAIN_FILE)) {
        Ok(b) => serde_json::from_slice::<ChainState>(&b)
            .map_err(|e| format!("audit spool {CHAIN_FILE}: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ChainState::new(&if wanted.is_empty() {
                random_instance()
            } else {
                wanted
            })
        }
        Err(e) => return Err(format!("audit spool {CHAIN_FILE}: {e}")),
    };
    let (mut events, mut bytes) = (0u64, 0u64);
    for (name, _) in spool_files(dir)? {
        let body = std::fs::read(dir.join(&name)).map_err(io)?;
        bytes += body.len() as u64;
        if let Some(h) = chain::header(&body) {
            events += h.count;
            if h.instance == chain.instance && h.seq > chain.seq {
                chain.seq = h.seq;
                chain.head = h.head;
            }
        }
    }
    Ok((chain, events, bytes, lock))
}

impl Writer {
    /// Opens the spool directory: the chain continues from `chain.json` or from the newest
    /// spooled batch of this instance, whichever is further; otherwise a new chain starts.
    pub(super) async fn open(
        store: Arc<dyn ObjectStore>,
        settings: Settings,
        metrics: Metrics,
    ) -> Result<Writer, String> {
        let dir = settings.spool_dir.clone();
        let wanted = settings.instance.clone();
        let (chain, spooled, spool_bytes, lock) =
            blocking(move || recover_spool(&dir, wanted)).await?;
        metrics
            .audit_spooled
            .set(i64::try_from(spooled).unwrap_or(i64::MAX));
        tracing::info!(instance = %chain.instance, seq = chain.seq, spooled, "audit archive writer ready");
        let spool = Arc::new(Spool {
            events: AtomicU64::new(spooled),
            bytes: AtomicU64::new(spool_bytes),
        });
        let (kick, kicks) = mpsc::channel(16);
        let uploader = Uploader {
            store,
            dir: settings.spool_dir.clone(),
            metrics: metrics.clone(),
            spool: spool.clone(),
            kicks,
            // Whatever an earlier run left is put at once.
            retry_at: Some(Instant::now()),
            backoff: Duration::from_secs(1),
        };
        Ok(Writer {
            _lock: lock,
            settings,
            metrics,
            chain,
            batch: Vec::new(),
            batch_day: String::new(),
            spool,
            kick,
            uploader: Some(uploader),
        })
    }

    /// Asks the uploader for a drain and waits for it.
    async fn drain_now(&self) {
        let (ack, done) = oneshot::channel();
        if self.kick.send(Some(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let uploader = self.uploader.take().map(|u| tokio::spawn(u.run()));
        let mut tick = tokio::time::interval(self.settings.flush_every.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut opened = Instant::now();
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Event(line)) => {
                        if self.batch.is_empty() {
                            opened = Instant::now();
                            self.batch_day = chain::day(SystemTime::now());
                        }
                        self.batch.push(line);
                        if self.batch.len() >= self.settings.batch_events {
                            self.seal().await;
                        }
                    }
                    Some(Command::Flush(ack)) => {
                        self.seal().await;
                        self.drain_now().await;
                        let _ = ack.send(());
                    }
                    None => {
                        self.seal().await;
                        self.drain_now().await;
                        if let Some(u) = uploader {
                            u.abort();
                        }
                        return;
                    }
                },
                _ = tick.tick() => {
                    if !self.batch.is_empty() && opened.elapsed() >= self.settings.flush_every {
                        self.seal().await;
                    }
                }
            }
        }
    }

    /// Seals the open batch into the spool. If the spool is over its byte bound the batch
    /// is dropped — counted and logged: the events are in the log stream.
    async fn seal(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.batch);
        let count = events.len() as u64;
        let spool_bytes = self.spool.bytes.load(Ordering::Relaxed);
        if spool_bytes > self.settings.spool_max_bytes {
            self.metrics.audit_dropped.inc_by(count);
            tracing::error!(
                count,
                spool_bytes,
                "audit spool full: batch not archived (the events are in the audit log stream)"
            );
            return;
        }
        let mut next = self.chain.clone();
        let body = chain::seal(&mut next, &events);
        let name = spool_name(&self.batch_day, &next.instance, next.seq);
        let dir = self.settings.spool_dir.clone();
        let state = serde_json::to_vec(&next).unwrap_or_default();
        let len = body.len() as u64;
        // Once the batch file exists the chain has advanced, whatever happens to `chain.json`
        // (a restart reads spooled headers too): a failed state write must not make the next
        // batch reuse this sequence number.
        let written = blocking(move || {
            write_file_atomic(&dir, &name, &body)?;
            if let Err(e) = write_file_atomic(&dir, CHAIN_FILE, &state) {
                tracing::error!(error = %e, "audit chain state not saved (the spooled batch carries it)");
            }
            Ok(())
        })
        .await;
        match written {
            Ok(()) => {
                tracing::info!(target: "audit", instance = %next.instance, seq = next.seq, head = %next.head, count, "audit batch sealed");
                self.chain = next;
                self.spool.events.fetch_add(count, Ordering::Relaxed);
                self.spool.bytes.fetch_add(len, Ordering::Relaxed);
                // Full: the uploader is awake already.
                let _ = self.kick.try_send(None);
            }
            Err(e) => {
                // The local disk failed: the chain does not advance and the events are lost
                // to the archive — counted and logged loudly (they are in the log stream).
                self.metrics.audit_dropped.inc_by(count);
                tracing::error!(error = %e, count, "audit spool write failed: batch not archived");
            }
        }
        self.spool.publish(&self.metrics);
    }
}

impl Spool {
    fn publish(&self, metrics: &Metrics) {
        let n = self.events.load(Ordering::Relaxed);
        metrics
            .audit_spooled
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn take(&self, events: u64, bytes: u64) {
        let _ = self
            .events
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(events))
            });
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
    }
}

impl Uploader {
    async fn run(mut self) {
        loop {
            let wait = self.retry_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                kick = self.kicks.recv() => match kick {
                    // A new batch: put it at once, unless the archive is failing (then the
                    // backoff decides, so an outage costs one attempt per period).
                    Some(None) => {
                        if self.retry_at.is_none_or(|at| Instant::now() >= at) {
                            self.drain().await;
                        }
                    }
                    Some(Some(ack)) => {
                        self.drain().await;
                        let _ = ack.send(());
                    }
                    None => return,
                },
                _ = async {
                    match wait {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => self.drain().await,
            }
        }
    }

    /// Puts spooled batches in the archive, oldest first; stops at the first failure.
    /// `now`: ignore the backoff (a flush or a new batch).
    async fn drain(&mut self) {
        let dir = self.dir.clone();
        let files = match blocking({
            let dir = dir.clone();
            move || spool_files(&dir)
        })
        .await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "audit spool unreadable");
                self.backoff_after_failure();
                return;
            }
        };
        for (name, _) in files {
            let path: PathBuf = dir.join(&name);
            let body = match blocking({
                let path = path.clone();
                move || std::fs::read(&path).map_err(io)
            })
            .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, file = %name, "audit spool file unreadable");
                    self.backoff_after_failure();
                    return;
                }
            };
            let Some(key) = key_of_spool_name(&name).and_then(|k| ObjectKey::new(k).ok()) else {
                continue;
            };
            let count = chain::header(&body).map_or(0, |h| h.count);
            let len = body.len() as u64;
            match self
                .store
                .put(
                    Bucket::Audit,
                    &key,
                    Bytes::from(body),
                    "application/x-ndjson",
                )
                .await
            {
                Ok(()) => {
                    if let Err(e) = blocking(move || std::fs::remove_file(&path).map_err(io)).await
                    {
                        // Put again on the next drain: the same bytes under the same key.
                        tracing::error!(error = %e, file = %name, "audit spool file not removed");
                        self.backoff_after_failure();
                        return;
                    }
                    self.spool.take(count, len);
                    self.spool.publish(&self.metrics);
                    self.metrics
                        .audit_batches
                        .with_label_values(&["archived"])
                        .inc();
                }
                Err(e) => {
                    self.metrics
                        .audit_batches
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(error = %e, key = %key, spooled = self.spool.events.load(Ordering::Relaxed), "audit archive unreachable: batch stays spooled");
                    self.backoff_after_failure();
                    return;
                }
            }
        }
        self.spool.publish(&self.metrics);
        self.retry_at = None;
        self.backoff = Duration::from_secs(1);
    }

    fn backoff_after_failure(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_names_map_to_archive_keys() {
        let n = spool_name("2026/11/24", "ab12", 3);
        assert_eq!(n, "2026-11-24.ab12-0000000003.ndjson");
        assert_eq!(
            key_of_spool_name(&n).as_deref(),
            Some("audit/2026/11/24/ab12-0000000003.ndjson")
        );
        assert_eq!(key_of_spool_name("chain.json"), None);
        assert_eq!(key_of_spool_name(".tmp-x"), None);
        assert_eq!(chain::day(SystemTime::UNIX_EPOCH), "1970/01/01");
    }
}
