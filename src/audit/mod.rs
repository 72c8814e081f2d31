//! The audit trail: one event per API or transform request, to two sinks.
//!
//! - **Log stream**: each event is written at once, as one JSON line, on the tracing target
//!   `audit` (ship it to a log store of its own; `log.level` keeps `audit=info` unless it
//!   names `audit` itself).
//! - **Archive**: a single writer task (`writer`) batches events into hash-chained NDJSON
//!   objects (`chain`) under `audit/YYYY/MM/DD/{instance}-{seq}.ndjson` in the audit bucket,
//!   every `audit.batch_events` events or `audit.flush_seconds` seconds and on shutdown. Each
//!   sealed batch is written to the local spool directory first and removed from it once the
//!   archive has it, so an unreachable archive delays events, never loses them.
//!
//! [`Auditor::emit`] never blocks and never fails a request: it serialises the event (values
//! are JSON-escaped, so filenames, user agents and ids cannot forge lines or fields) and hands
//! it to the writer through a bounded queue (`audit.queue`). An event misses the archive only
//! when that queue is full, the spool is over `audit.spool_max_bytes`, the local disk fails,
//! or the process is killed (SIGKILL) with a batch open: each is counted
//! (`pixgate_audit_dropped_total`, except the kill) and logged, and the log stream has the
//! events. Events never carry tokens, API key secrets or image bytes.
//!
//! `query` reads the archive back (`GET /v1/admin/audit`, a user's export); `archive`
//! verifies it (`pixgate audit verify`, through `chain`) and enforces retention
//! (`pixgate sweep`).

pub mod archive;
pub mod chain;
pub mod config;
pub use config::AuditConfig;
pub mod query;
mod writer;

/// Why the archive could not be read, verified or swept, or a query was refused. Mapped to
/// HTTP in `http::error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("invalid field: {0}")]
    InvalidField(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("internal error: {0}")]
    Internal(String),
}

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::storage::{ObjectStore, StorageError};

/// The event schema (bumped on any incompatible change; readers check it).
pub const SCHEMA: &str = "pixgate.audit/1";
/// User agents are cut to this many characters.
const MAX_USER_AGENT: usize = 256;
/// Free-text values (ids taken from a URL) are cut to this many characters.
const MAX_VALUE: usize = 256;

/// Who acted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The authenticated user; `None` for signed-URL holders and anonymous callers.
    pub user: Option<String>,
    pub role: Option<String>,
    /// `jwt`, `api_key`, `signed_url` or `anonymous`; `system` for pixgate's own background
    /// actions (a failed CDN purge).
    pub auth: String,
    pub api_key_id: Option<String>,
    /// For `system` actions an operator started (`pixgate import`): who ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

/// What was acted on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub image: Option<String>,
    /// The image's owner, when known.
    pub owner: Option<String>,
    /// The account acted on (export, erasure, token revocation, admin on behalf).
    pub user: Option<String>,
    /// The API key created or revoked (its public id).
    #[serde(default)]
    pub api_key: Option<String>,
}

/// One audit event (schema [`SCHEMA`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub schema: String,
    /// 128 random bits, hex.
    pub id: String,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub request_id: String,
    pub actor: Actor,
    /// `image.upload`, `image.read`, … or, for refusals, `auth.failure`, `access.denied`,
    /// `quota.exceeded`, `rate.limited` (the route's own action is then in `attempted`).
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempted: Option<String>,
    pub resource: Resource,
    /// `success` or `failure`.
    pub outcome: String,
    pub status: u16,
    /// The stable error code of a failure.
    pub error: Option<String>,
    pub client_ip: String,
    pub user_agent: Option<String>,
    pub bytes_in: u64,
    /// Response body bytes; `None` for streamed bodies (their size is not known up front).
    pub bytes_out: Option<u64>,
    /// Fleet instances that did not confirm a delete or revocation before the response
    /// (`*`: the fleet bus was down); they forget it within `auth.revocation_cache_secs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unacknowledged: Vec<String>,
}

impl Event {
    /// A new event with a fresh id and the current time.
    pub fn new(request_id: &str, action: &str, actor: Actor) -> Event {
        Event {
            schema: SCHEMA.to_owned(),
            id: event_id(),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            request_id: request_id.to_owned(),
            actor,
            action: action.to_owned(),
            attempted: None,
            resource: Resource::default(),
            outcome: "success".to_owned(),
            status: 200,
            error: None,
            client_ip: String::new(),
            user_agent: None,
            bytes_in: 0,
            bytes_out: None,
            unacknowledged: Vec::new(),
        }
    }
}

/// A unique event id: 64 random bits drawn once per process, then a counter (no system
/// call per event; ids need to be unique, not secret).
fn event_id() -> String {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        // On the (theoretical) failure of the OS RNG the start time stands in.
        if getrandom::fill(&mut b).is_err() {
            let t = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            b = t.to_le_bytes();
        }
        u64::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix:016x}{n:016x}")
}

/// Cuts a free-text value to `MAX_VALUE` characters (on a character boundary).
pub fn clip(s: &str) -> String {
    s.chars().take(MAX_VALUE).collect()
}

/// A user agent as recorded: at most `MAX_USER_AGENT` characters.
pub fn clip_user_agent(s: &str) -> String {
    s.chars().take(MAX_USER_AGENT).collect()
}

/// The writer's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_events: usize,
    pub flush_every: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// Instance name used for new chains (empty: random).
    pub instance: String,
}

impl Settings {
    /// From the validated `[audit]` section; `fs_root` places the default spool.
    pub fn from_config(a: &AuditConfig, fs_root: &str) -> Settings {
        Settings {
            batch_events: usize::try_from(a.batch_events).unwrap_or(usize::MAX),
            flush_every: Duration::from_secs(a.flush_seconds),
            spool_dir: a.spool_dir(fs_root),
            spool_max_bytes: a.spool_max_bytes,
            instance: a.instance.clone(),
        }
    }
}

enum Command {
    Event(String),
    /// Seal the open batch and try the spool; answer when done.
    Flush(oneshot::Sender<()>),
}

/// The emitting side of the audit trail (cheap to share).
pub struct Auditor {
    tx: mpsc::Sender<Command>,
    metrics: Metrics,
    /// When a dropped event was last logged (seconds since start): at most one line a second.
    drop_logged: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Auditor {
    /// Starts the writer task (must run inside the runtime). Recovers the chain state and
    /// any spooled batches of an earlier run from the spool directory.
    pub async fn start(
        store: Arc<dyn ObjectStore>,
        settings: Settings,
        queue: usize,
        metrics: Metrics,
    ) -> Result<Auditor, String> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let writer = writer::Writer::open(store, settings, metrics.clone()).await?;
        let handle = tokio::spawn(writer.run(rx));
        Ok(Auditor {
            tx,
            metrics,
            drop_logged: std::sync::atomic::AtomicU64::new(u64::MAX),
            started: std::time::Instant::now(),
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Records `event`: the log stream now, the archive through the writer. Never blocks.
    pub fn emit(&self, event: &Event) {
        let line = match serde_json::to_string(event) {
            Ok(l) => l,
            Err(e) => {
                // Cannot happen for this plain struct; counted if it ever does.
                self.metrics.audit_dropped.inc();
                tracing::error!(error = %e, "audit event not serialisable");
                return;
            }
        };
        tracing::info!(target: "audit", event = %line, "audit");
        self.metrics
            .audit_events
            .with_label_values(&[event.outcome.as_str()])
            .inc();
        if let Err(e) = self.tx.try_send(Command::Event(line)) {
            self.metrics.audit_dropped.inc();
            // One line a second at most: a flood that fills the queue must not also flood
            // the log (the counter has the number).
            let now = self.started.elapsed().as_secs();
            let last = self
                .drop_logged
                .swap(now, std::sync::atomic::Ordering::Relaxed);
            if last != now {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "writer stopped",
                };
                tracing::error!(id = %event.id, why, dropped_total = self.metrics.audit_dropped.get(), "audit events not queued for the archive (they are in the audit log stream)");
            }
        }
    }

    /// Seals the open batch and waits until it is archived or spooled.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Command::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Flushes and stops the writer (shutdown). Events emitted afterwards are counted as
    /// dropped and stay in the log stream only.
    pub async fn shutdown(&self, deadline: Duration) {
        let _ = tokio::time::timeout(deadline, self.flush()).await;
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            h.abort();
        }
    }
}
