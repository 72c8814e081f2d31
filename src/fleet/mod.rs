//! The fleet bus: what one instance deletes or revokes, every live instance forgets before the
//! response is sent.
//!
//! Over Redis pub/sub (one Redis or a Cluster, where a message published on any node reaches
//! the subscribers of every node):
//!
//! - every instance subscribes at start to `{prefix}:fleet:events` and to its own
//!   acknowledgement channel `{prefix}:fleet:ack:{instance}`, and (while subscribed) renews its
//!   entry in the registry `{prefix}:{fleet}:members` (a sorted set scored by Redis's clock)
//!   every `fleet.heartbeat_secs`; an entry three heartbeats old is dropped;
//! - a sender reads the live members, publishes the event, and waits (at most
//!   `fleet.ack_timeout_ms`) until each of the others has acknowledged it; a receiver applies
//!   the event to its memory (idempotent: purges and forgets) and then acknowledges;
//! - on every (re)subscription an instance *resyncs*: messages sent while it was not
//!   listening are lost, so it forgets every cached credential and re-checks every cached
//!   image before its next hit.
//!
//! When the bus is down (no Redis, or this instance cannot subscribe), deletes and revocations
//! still succeed and the per-instance re-check (`auth.revocation_cache_secs`) is the bound;
//! the response says so ([`Propagation::header_value`]). That re-check also stays on while the
//! bus is up, as a backstop.

pub mod config;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, Script};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::kv;
use crate::kv::RedisConfig;
use crate::metrics::Metrics;
pub use config::FleetConfig;

/// What an instance tells the others to forget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// Every result of the image, in memory, is gone (and refused if a computation finishes).
    ImageDeleted { image: String },
    /// Every result owned by the user, their cached API keys and token revocation state.
    AccountErased { user: String },
    /// The user's cached API keys (one of them was revoked).
    ApiKeyRevoked { owner: String },
    /// The user's tokens issued at or before `not_before` are void; their API keys too.
    TokensRevoked { user: String, not_before: u64 },
    /// A client address or network is blocked (applied to the in-memory list).
    Blocked { block: crate::auth::blocks::Block },
    /// A block is lifted.
    Unblocked { id: String },
    /// Shares, memberships or collections changed (granted or revoked): the instances forget
    /// what they cached of them.
    AccessChanged { changes: Vec<crate::access::Change> },
}

impl Event {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ImageDeleted { .. } => "image_deleted",
            Event::AccountErased { .. } => "account_erased",
            Event::ApiKeyRevoked { .. } => "api_key_revoked",
            Event::TokensRevoked { .. } => "tokens_revoked",
            Event::Blocked { .. } => "blocked",
            Event::Unblocked { .. } => "unblocked",
            Event::AccessChanged { .. } => "access_changed",
        }
    }
}

/// What applying events means on an instance (implemented by the application state).
pub trait Apply: Send + Sync {
    fn apply(&self, event: &Event);
    /// Forget everything an event could have been about (events may have been missed).
    fn resync(&self);
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    id: String,
    from: String,
    #[serde(flatten)]
    event: Event,
}

/// How far an event got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Propagation {
    /// False when the bus was down here: nothing was sent.
    pub sent: bool,
    /// Other live instances when the event was sent.
    pub expected: usize,
    pub acked: usize,
    /// Live instances that did not acknowledge in time.
    pub missing: Vec<String>,
    pub elapsed: Duration,
}

impl Propagation {
    /// Whether every live instance has applied the event.
    pub fn complete(&self) -> bool {
        self.sent && self.missing.is_empty()
    }

    /// The `Pixgate-Fleet` response header: `acked=2/2, ms=3` when every live instance
    /// acknowledged; otherwise `, bound=S` is appended (S: the seconds an instance that did not
    /// may keep serving from memory), and `bus=down, bound=S` when nothing could be sent.
    pub fn header_value(&self, bound_secs: u64) -> String {
        if !self.sent {
            return format!("bus=down, bound={bound_secs}");
        }
        let mut v = format!(
            "acked={}/{}, ms={}",
            self.acked,
            self.expected,
            self.elapsed.as_millis()
        );
        if !self.missing.is_empty() {
            v.push_str(&format!(", bound={bound_secs}"));
        }
        v
    }
}

/// Registry upkeep. KEYS[1]: the members' sorted set. ARGV: instance (`''`: only read),
/// registration TTL (ms), `join` | `leave` | `read`. Returns the live members.
const MEMBERS_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ARGV[3] == 'join' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
elseif ARGV[3] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// Acknowledgements collected for one event this instance sent.
struct Waiter {
    expected: HashSet<String>,
    acked: Mutex<HashSet<String>>,
    done: tokio::sync::Notify,
}

/// Longest wait for a subscription or a registry call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between subscription attempts while no node answers.
const RETRY_EVERY: Duration = Duration::from_millis(500);

pub struct Fleet {
    id: String,
    pool: kv::Pool,
    subscriber_urls: Vec<String>,
    events_channel: String,
    ack_channel: String,
    ack_prefix: String,
    members_key: String,
    members_script: Script,
    settings: FleetConfig,
    bus_up: AtomicBool,
    waiters: Mutex<HashMap<String, Arc<Waiter>>>,
    applier: OnceLock<Arc<dyn Apply>>,
    metrics: Metrics,
}

impl Fleet {
    /// The bus over the configured Redis (`None` without one: a single instance).
    pub fn new(
        redis: &RedisConfig,
        pool: Option<kv::Pool>,
        settings: &FleetConfig,
        metrics: Metrics,
    ) -> Option<Arc<Fleet>> {
        let pool = pool?;
        let prefix = &redis.key_prefix;
        let id = instance_id();
        Some(Arc::new(Fleet {
            events_channel: format!("{prefix}:fleet:events"),
            ack_channel: format!("{prefix}:fleet:ack:{id}"),
            ack_prefix: format!("{prefix}:fleet:ack:"),
            members_key: format!("{prefix}:{{fleet}}:members"),
            members_script: Script::new(MEMBERS_SCRIPT),
            subscriber_urls: kv::subscriber_urls(redis),
            id,
            pool,
            settings: settings.clone(),
            bus_up: AtomicBool::new(false),
            waiters: Mutex::new(HashMap::new()),
            applier: OnceLock::new(),
            metrics,
        }))
    }

    /// This instance's name in the registry: host name (the pod's, in Kubernetes) and a
    /// random suffix.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn is_up(&self) -> bool {
        self.bus_up.load(Ordering::Acquire)
    }

    /// Starts the subscriber (and heartbeat) task, applying events through `applier`.
    pub fn start(self: &Arc<Self>, applier: Arc<dyn Apply>) {
        if self.applier.set(applier).is_err() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move { this.run().await });
    }

    /// Waits until this instance is subscribed and registered, at most `timeout`.
    pub async fn wait_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_up() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Leaves the registry (graceful shutdown: nobody waits for this instance any more).
    pub async fn leave(&self) {
        let _ = self.members("leave").await;
    }

    /// Sends `event` and waits until every other live instance acknowledged it, or
    /// `fleet.ack_timeout_ms`.
    pub async fn broadcast(&self, event: &Event) -> Propagation {
        let started = Instant::now();
        let unsent = || Propagation {
            sent: false,
            expected: 0,
            acked: 0,
            missing: Vec::new(),
            elapsed: started.elapsed(),
        };
        if !self.is_up() {
            return unsent();
        }
        let live = match self.members("read").await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, kind = event.kind(), "fleet: registry unreadable; event not sent");
                return unsent();
            }
        };
        let expected: HashSet<String> = live.into_iter().filter(|m| *m != self.id).collect();
        let envelope = Envelope {
            id: unique_hex(16),
            from: self.id.clone(),
            event: event.clone(),
        };
        let waiter = Arc::new(Waiter {
            expected: expected.clone(),
            acked: Mutex::new(HashSet::new()),
            done: tokio::sync::Notify::new(),
        });
        self.lock_waiters()
            .insert(envelope.id.clone(), waiter.clone());
        let sent = self.publish(&self.events_channel, &envelope).await;
        if let Err(e) = &sent {
            tracing::warn!(error = %e, kind = event.kind(), "fleet: event not published");
        } else if !expected.is_empty() {
            let wait = Duration::from_millis(self.settings.ack_timeout_ms);
            let _ = tokio::time::timeout(wait, waiter.done.notified()).await;
        }
        self.lock_waiters().remove(&envelope.id);
        if sent.is_err() {
            return unsent();
        }
        let acked = waiter
            .acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut missing: Vec<String> = expected.difference(&acked).cloned().collect();
        missing.sort();
        let p = Propagation {
            sent: true,
            expected: expected.len(),
            acked: expected.len() - missing.len(),
            missing,
            elapsed: started.elapsed(),
        };
        self.count_sent(event, &p);
        p
    }

    fn count_sent(&self, event: &Event, p: &Propagation) {
        let m = &self.metrics;
        m.fleet_events
            .with_label_values(&[event.kind(), "sent"])
            .inc();
        m.fleet_unacknowledged.inc_by(p.missing.len() as u64);
        // Timeouts too: the histogram's tail is where a slow or lost instance shows.
        m.fleet_ack.observe(p.elapsed.as_secs_f64());
        if !p.missing.is_empty() {
            tracing::warn!(kind = event.kind(), missing = ?p.missing, waited_ms = p.elapsed.as_millis() as u64,
                "fleet: instances did not acknowledge in time; they forget within auth.revocation_cache_secs");
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Waiter>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn publish<T: Serialize>(&self, channel: &str, message: &T) -> Result<(), String> {
        let body = serde_json::to_string(message).map_err(|e| e.to_string())?;
        let call = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(body)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err("PUBLISH timed out".into()),
        }
    }

    /// Runs the registry script (`join`, `leave` or `read`); the live members.
    async fn members(&self, op: &str) -> Result<Vec<String>, String> {
        let call = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            self.members_script
                .key(&self.members_key)
                .arg(&self.id)
                .arg(self.settings.registration_ttl_ms())
                .arg(op)
                .invoke_async::<Vec<String>>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err("registry call timed out".into()),
        }
    }

    /// Subscribes (to each node in turn until one answers), listens until the subscription
    /// breaks, and starts over; forever.
    async fn run(self: Arc<Self>) {
        let mut next = 0usize;
        loop {
            let url = &self.subscriber_urls[next % self.subscriber_urls.len().max(1)];
            next = next.wrapping_add(1);
            match self.subscribe(url).await {
                Ok(pubsub) => self.listen(pubsub).await,
                Err(e) => tracing::debug!(error = %e, "fleet: cannot subscribe"),
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    async fn subscribe(&self, url: &str) -> Result<redis::aio::PubSub, String> {
        let call = async {
            let client = redis::Client::open(url).map_err(|e| e.to_string())?;
            let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            pubsub
                .subscribe(&[&self.events_channel, &self.ack_channel])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(pubsub)
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| "subscription timed out".to_owned())?
    }

    /// Applies messages and renews the registration until the subscription breaks.
    async fn listen(&self, pubsub: redis::aio::PubSub) {
        let (mut sink, mut stream) = pubsub.split();
        // Messages sent while this instance was not listening are lost: start from nothing.
        if let Some(a) = self.applier.get() {
            a.resync();
        }
        match self.members("join").await {
            Ok(live) => self.metrics.fleet_instances.set(live.len() as i64),
            Err(e) => tracing::warn!(error = %e, "fleet: cannot register"),
        }
        self.set_up(true);
        tracing::info!(instance = %self.id, "fleet: subscribed to the event bus");
        let period = Duration::from_secs(self.settings.heartbeat_secs);
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) => self.on_message(&m).await,
                    None => break,
                },
                _ = beat.tick() => {
                    // A subscription that no longer answers is a broken one. (In subscribed
                    // mode Redis answers `PING` with an array, not `PONG`.)
                    let ping = tokio::time::timeout(CALL_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        break;
                    }
                    match self.members("join").await {
                        Ok(live) => self.metrics.fleet_instances.set(live.len() as i64),
                        Err(e) => tracing::warn!(error = %e, "fleet: heartbeat failed"),
                    }
                }
            }
        }
        self.set_up(false);
        self.metrics.fleet_instances.set(0);
        tracing::warn!(
            "fleet: event bus lost; deletes and revocations from other instances apply here within auth.revocation_cache_secs until it is back"
        );
        let _ = self.members("leave").await;
    }

    fn set_up(&self, up: bool) {
        self.bus_up.store(up, Ordering::Release);
        self.metrics.fleet_bus_up.set(i64::from(up));
    }

    async fn on_message(&self, msg: &redis::Msg) {
        let Ok(payload) = msg.get_payload::<String>() else {
            return;
        };
        let channel = msg.get_channel_name();
        if channel == self.ack_channel {
            self.on_ack(&payload);
            return;
        }
        let Ok(envelope) = serde_json::from_str::<Envelope>(&payload) else {
            tracing::warn!("fleet: unreadable event ignored");
            return;
        };
        if envelope.from == self.id {
            return;
        }
        if let Some(a) = self.applier.get() {
            a.apply(&envelope.event);
        }
        self.metrics
            .fleet_events
            .with_label_values(&[envelope.event.kind(), "applied"])
            .inc();
        let ack = Ack {
            event: envelope.id,
            from: self.id.clone(),
        };
        let channel = format!("{}{}", self.ack_prefix, envelope.from);
        if let Err(e) = self.publish(&channel, &ack).await {
            tracing::warn!(error = %e, "fleet: acknowledgement not sent");
        }
    }

    fn on_ack(&self, payload: &str) {
        let Ok(ack) = serde_json::from_str::<Ack>(payload) else {
            return;
        };
        let Some(w) = self.lock_waiters().get(&ack.event).cloned() else {
            return;
        };
        let mut acked = w.acked.lock().unwrap_or_else(|p| p.into_inner());
        acked.insert(ack.from);
        if w.expected.is_subset(&acked) {
            w.done.notify_one();
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Ack {
    event: String,
    from: String,
}

/// `{host}-{8 hex}`: the host name (a pod's name in Kubernetes) says which instance, the
/// suffix tells restarts apart.
fn instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(63)
        .collect();
    let host = if host.is_empty() { "pixgate" } else { &host };
    format!("{host}-{}", unique_hex(4))
}

/// `n` random bytes in hex (the clock's nanoseconds if the OS cannot give randomness).
fn unique_hex(n: usize) -> String {
    crate::id::random_hex(n).unwrap_or_else(|_| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("{:x}", t.as_nanos())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_their_kind() {
        let e = Envelope {
            id: "1".into(),
            from: "a".into(),
            event: Event::TokensRevoked {
                user: "u".into(),
                not_before: 7,
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""kind":"tokens_revoked""#), "{json}");
        let back: Envelope = serde_json::from_str(&json).unwrap();
        assert_eq!(back.event, e.event);
        assert_eq!(back.event.kind(), "tokens_revoked");
    }

    #[test]
    fn the_header_states_the_bound_that_applies() {
        let mut p = Propagation {
            sent: true,
            expected: 2,
            acked: 2,
            missing: vec![],
            elapsed: Duration::from_millis(3),
        };
        assert!(p.complete());
        assert_eq!(p.header_value(30), "acked=2/2, ms=3");
        p.acked = 1;
        p.missing = vec!["b-1".into()];
        assert!(!p.complete());
        assert_eq!(p.header_value(30), "acked=1/2, ms=3, bound=30");
        p.sent = false;
        assert_eq!(p.header_value(30), "bus=down, bound=30");
    }

    #[test]
    fn instance_ids_are_unique_and_tame() {
        let a = instance_id();
        assert_ne!(a, instance_id());
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        );
    }
}
