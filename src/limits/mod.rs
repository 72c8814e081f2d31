//! Quotas and rate limits: per-user hourly quotas (uploads, transform computations), per-user
//! and per-IP request rates, and the failed-authentication limiter.
//!
//! Place in the architecture: the HTTP layer asks [`Limiter`] before work that a limit pays
//! for; the limiter answers with a [`Status`] per limit (what the `RateLimit` headers say) or a
//! `429` error. Decisions are made in Redis when `redis.url` (or `redis.cluster_urls`) is set — one Lua script per
//! decision, timed by Redis's own clock (`TIME`), keys hash-tagged per subject so every decision
//! maps to one Redis Cluster slot — and otherwise, or while Redis is unreachable, by the in-process [`local`] store with
//! the same algorithms. Nothing here knows HTTP.
//!
//! Two algorithms, chosen per limit:
//!
//! * **Sliding log** ([`Algorithm::Log`]) for quotas and failed authentications: every
//!   admitted unit is stored with its time and leaves the window exactly `window` later. Exact:
//!   at most `limit` units in any rolling window, no boundary burst, and a refunded unit is
//!   removed by its token. Memory is bounded by the limit (refused requests store nothing).
//! * **Bucketed sliding window** ([`Algorithm::Buckets`]) for request rates, which are
//!   high-volume: the window is cut into [`BUCKETS`] sub-windows and a unit counts until the
//!   sub-window it fell in has left the window entirely. Worst-case error: it never admits more
//!   than `limit` in any rolling window (it errs only on the safe side), and a unit may be
//!   counted up to one sub-window (`window / 60`, one second for a per-minute limit) longer than
//!   `window`. Memory is O(60) per subject whatever the rate.
//!
//! Degradation: a Redis error or a call slower than `redis.timeout_ms` switches decisions to the
//! local store (limits scaled by `limits.fallback_share_percent`, the instance's share of the
//! cluster), counts `pixgate_limiter_fallback_total`, and a background probe switches back as
//! soon as Redis answers again. Never unlimited, never an outage. Every unit Redis admits is
//! mirrored in the local store, so the fallback starts from what this instance admitted in the
//! window rather than from zero.

pub mod config;
mod local;
mod remote;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use crate::kv::config::RedisConfig;
pub use config::{LimitsConfig, PLAN_KEYS, PlanLimits};
pub use local::LocalStore;
pub use remote::{RemoteError, RemoteStore};

use crate::metrics::Metrics;

/// Sub-windows of a bucketed window.
pub const BUCKETS: u64 = 60;
/// Quotas are per rolling hour (`limits.quota_window_secs`).
pub const QUOTA_WINDOW_MS: u64 = 3_600_000;
/// Request rates are per rolling minute.
pub const RATE_WINDOW_MS: u64 = 60_000;
/// Plan name when a principal carries none.
pub const DEFAULT_PLAN: &str = "free";
/// How long a remembered plan (for signed-URL owners) lives in Redis.
const PLAN_HINT_TTL_SECS: u64 = 30 * 86_400;
/// How long this instance trusts a plan it looked up.
const PLAN_HINT_CACHE: Duration = Duration::from_secs(60);
/// Tries of a quota charge against a busy Redis pool (each waits up to half of
/// `redis.timeout_ms` for a connection) before it answers `503 overloaded`.
const QUOTA_BUSY_ATTEMPTS: u32 = 4;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Accepted uploads per user per hour.
    Uploads,
    /// Transform computations (cache misses) per user per hour.
    Transforms,
    /// Authenticated requests per user per minute.
    Requests,
    /// Signed-URL requests per client IP per minute.
    IpRequests,
    /// Failed authentications per client IP per `limits.auth_failure_window_secs`.
    AuthFailures,
}

impl Kind {
    /// The policy name in `RateLimit` headers and the `limiter` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Uploads => "uploads",
            Kind::Transforms => "transforms",
            Kind::Requests => "requests",
            Kind::IpRequests => "ip",
            Kind::AuthFailures => "auth_failures",
        }
    }

    pub fn algorithm(self) -> Algorithm {
        match self {
            Kind::Uploads | Kind::Transforms | Kind::AuthFailures => Algorithm::Log,
            Kind::Requests | Kind::IpRequests => Algorithm::Buckets,
        }
    }

    /// Quotas are what `429 quota_exceeded` refers to; the rest are rate limits.
    pub fn is_quota(self) -> bool {
        matches!(self, Kind::Uploads | Kind::Transforms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Log,
    Buckets,
}

/// A limit: `limit` units per `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub kind: Kind,
    pub limit: u64,
    pub window_ms: u64,
}

/// One limit's state after a decision: what the `RateLimit` headers and `/v1/usage` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub policy: Policy,
    pub allowed: bool,
    /// Units counted in the window (after this decision).
    pub used: u64,
    /// Milliseconds until the oldest counted unit leaves the window (0 when none is counted).
    pub reset_ms: u64,
    /// When refused: milliseconds until this request would be admitted.
    pub retry_ms: u64,
}

impl Status {
    pub fn remaining(&self) -> u64 {
        self.policy.limit.saturating_sub(self.used)
    }

    /// Whole seconds until a refused request may be retried: rounded up, at least 1, so a
    /// client that honours it is never early.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_ms.div_ceil(1000).max(1)
    }

    /// The `t` of the `RateLimit` header: seconds until another unit is available.
    pub fn reset_secs(&self) -> u64 {
        if self.allowed || self.retry_ms == 0 {
            self.reset_ms.div_ceil(1000)
        } else {
            self.retry_after_secs()
        }
    }
}

/// Why the limiter said no (or could not say yes). Mapped to HTTP in `http::error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// A quota (`uploads`, `transforms`) is spent for the window.
    #[error("{} quota exceeded: {} per {} s; retry in {} s", .0.policy.kind.name(), .0.policy.limit, .0.policy.window_ms / 1000, .0.retry_after_secs())]
    Quota(Box<Status>),
    /// A request rate (or the failed-authentication limit) is reached.
    #[error("rate limited: {} {} per {} s; retry in {} s", .0.policy.limit, .0.policy.kind.name(), .0.policy.window_ms / 1000, .0.retry_after_secs())]
    Rate(Box<Status>),
    /// Every Redis connection is in use and a quota cannot be decided locally while Redis is
    /// up: this instance is overloaded.
    #[error("limiter busy")]
    Busy,
    /// The shared store could not be changed (erasing a user's counters).
    #[error("limiter store unavailable: {0}")]
    Unavailable(String),
}

/// What a store answers for one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub used: u64,
    pub reset_ms: u64,
    pub retry_ms: u64,
    /// For sliding-log units: the token that refunds this unit.
    pub token: Option<String>,
}

/// Take one unit if there is room, or only look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Take,
    Peek,
}

/// The resolved limits of one plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub uploads_per_hour: u64,
    pub transforms_per_hour: u64,
    /// 0: not limited.
    pub requests_per_minute: u64,
}

impl Tier {
    fn over(base: Tier, plan: &PlanLimits) -> Tier {
        Tier {
            uploads_per_hour: plan.uploads_per_hour.unwrap_or(base.uploads_per_hour),
            transforms_per_hour: plan.transforms_per_hour.unwrap_or(base.transforms_per_hour),
            requests_per_minute: plan.requests_per_minute.unwrap_or(base.requests_per_minute),
        }
    }

    fn limit(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Uploads => self.uploads_per_hour,
            Kind::Transforms => self.transforms_per_hour,
            _ => self.requests_per_minute,
        }
    }
}

/// Where a decision was made (for `/v1/usage` and readiness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// No Redis configured: the in-process limiter is the limiter.
    Local,
    Redis,
    /// Redis configured but unreachable: the in-process fallback.
    Fallback,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Redis => "redis",
            Backend::Fallback => "fallback",
        }
    }
}

/// A unit of quota taken for work about to be done. Dropped without [`Charge::commit`], it is
/// given back (in the background): work that never started costs nothing.
pub struct Charge {
    status: Option<Status>,
    refund: Option<Refund>,
}

struct Refund {
    store: Store,
    key: String,
    token: String,
}

#[derive(Clone)]
enum Store {
    Local(Arc<LocalStore>),
    /// Decided in Redis and mirrored in the local store.
    Remote(Arc<RemoteStore>, Arc<LocalStore>),
}

impl Charge {
    /// The work started: the unit stays spent whatever happens next.
    pub fn commit(mut self) {
        self.refund = None;
    }

    /// The quota's state after this charge (`None` when bypassed).
    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let Some(Refund { store, key, token }) = self.refund.take() else {
            return;
        };
        match store {
            Store::Local(local) => local.give_back(&key, &token),
            Store::Remote(remote, mirror) => {
                mirror.give_back(&key, &token);
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move { remote.give_back(&key, &token).await });
                }
            }
        }
    }
}

/// Told the payer's quota state when a charge is made on its behalf — by code that does not
/// know where the state goes (the HTTP layer records it for the `RateLimit` headers at once,
/// so a request that later times out still reports what it spent).
pub trait ChargeObserver: Send + Sync {
    fn charged(&self, status: &Status);
}

/// Who pays for a unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payer {
    /// The authenticated caller, at its plan (admins bypass per `limits.admin_bypass`).
    Caller {
        user: String,
        plan: Option<String>,
        admin: bool,
    },
    /// An image's owner (signed URLs carry no credential), at the plan they last
    /// authenticated with.
    Owner(String),
}

/// Settings resolved from `[limits]`.
#[derive(Debug, Clone)]
struct Settings {
    base: Tier,
    plans: Vec<(String, Tier)>,
    ip_requests_per_minute: u64,
    auth_failures: u64,
    auth_window_ms: u64,
    quota_window_ms: u64,
    admin_bypass: bool,
    fallback_percent: u64,
    prefix: String,
}

/// The limiter: policies, the Redis store (if configured) and the in-process store.
pub struct Limiter {
    settings: Settings,
    local: Arc<LocalStore>,
    remote: Option<Arc<RemoteStore>>,
    metrics: Metrics,
}

impl Limiter {
    pub fn new(
        l: &LimitsConfig,
        r: &RedisConfig,
        redis: Option<crate::kv::Pool>,
        metrics: &Metrics,
    ) -> Limiter {
        let base = Tier {
            uploads_per_hour: l.uploads_per_hour,
            transforms_per_hour: l.transforms_per_hour,
            requests_per_minute: l.requests_per_minute,
        };
        let settings = Settings {
            base,
            plans: l
                .plans
                .iter()
                .map(|(name, p)| (name.clone(), Tier::over(base, p)))
                .collect(),
            ip_requests_per_minute: l.ip_requests_per_minute,
            auth_failures: l.auth_failures_per_ip,
            auth_window_ms: l.auth_failure_window_secs.saturating_mul(1000),
            quota_window_ms: l.quota_window_secs.saturating_mul(1000),
            admin_bypass: l.admin_bypass,
            fallback_percent: l.fallback_share_percent,
            prefix: r.key_prefix.clone(),
        };
        let remote = redis.map(|pool| {
            Arc::new(RemoteStore::new(
                pool,
                Duration::from_millis(r.timeout_ms),
                &r.key_prefix,
                metrics.clone(),
            ))
        });
        Limiter {
            settings,
            local: Arc::new(LocalStore::new(
                usize::try_from(l.local_max_keys).unwrap_or(usize::MAX),
            )),
            remote,
            metrics: metrics.clone(),
        }
    }

    /// The limits of `plan` (`None`: the free tier). An unknown plan gets the base limits.
    pub fn tier(&self, plan: Option<&str>) -> Tier {
        let name = plan.unwrap_or(DEFAULT_PLAN);
        self.settings
            .plans
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.settings.base, |(_, t)| *t)
    }

    /// Where decisions are being made right now.
    pub fn backend(&self) -> Backend {
        match &self.remote {
            None => Backend::Local,
            Some(r) if r.is_up() => Backend::Redis,
            Some(_) => Backend::Fallback,
        }
    }

    fn user_key(&self, user: &str, kind: Kind) -> String {
        // The hash tag `{u:…}` keeps every key of one user in one Redis Cluster slot.
        let hash = crate::id::user_segment(user);
        format!(
            "{}:{{u:{}}}:{}",
            self.settings.prefix,
            &hash[..32],
            kind.name()
        )
    }

    /// Forgets a user's limiter state (quota logs, request rate, remembered plan) in Redis
    /// and in this process: account erasure. Other instances' in-process state (used only
    /// while Redis is down) ages out with its windows.
    pub async fn forget(&self, user: &str) -> Result<(), Refusal> {
        let kinds = [Kind::Uploads, Kind::Transforms, Kind::Requests];
        let keys: Vec<(String, Kind)> = kinds
            .iter()
            .map(|k| (self.user_key(user, *k), *k))
            .collect();
        let plan = self.plan_key(user);
        self.local.forget(&keys, &plan);
        if let Some(remote) = &self.remote {
            let mut all: Vec<String> = keys.into_iter().map(|(k, _)| k).collect();
            all.push(plan);
            remote
                .delete(&all)
                .await
                .map_err(|e| Refusal::Unavailable(format!("redis: {e:?}")))?;
        }
        Ok(())
    }

    fn plan_key(&self, user: &str) -> String {
        let hash = crate::id::user_segment(user);
        format!("{}:{{u:{}}}:plan", self.settings.prefix, &hash[..32])
    }

    fn ip_key(&self, ip: std::net::IpAddr, kind: Kind) -> String {
        format!(
            "{}:{{ip:{}}}:{}",
            self.settings.prefix,
            ip_subject(ip),
            kind.name()
        )
    }

    /// One decision: Redis when it is up, else the local store (with the fallback share when
    /// Redis is configured, written back into `policy`: the limit that was enforced is the
    /// limit the headers report). `hint` is a plan to remember for the user.
    ///
    /// A busy pool (every connection in use: this instance is loaded, Redis may be fine) sends
    /// one rate decision to the local store without marking Redis down; a quota is never
    /// decided locally while Redis is up (a local answer would be wrong both ways against the
    /// cluster-wide count), so a quota charge waits for a connection up to
    /// `QUOTA_BUSY_ATTEMPTS` times and then answers `503 overloaded`.
    async fn decide(
        &self,
        key: &str,
        policy: &mut Policy,
        mode: Mode,
        hint: Option<(&str, &str)>,
    ) -> Result<(Decision, Store), Refusal> {
        if let Some((plan_key, plan)) = hint {
            self.local.remember_plan(plan_key, plan);
        }
        if let Some(remote) = &self.remote {
            // A quota charge comes before expensive work (a decode, an upload) and is rare next
            // to rate decisions: it waits for a pooled connection a few times over before a
            // burst makes it `503`; a rate decision falls back at once.
            let quota_take = policy.kind.is_quota() && mode == Mode::Take;
            let attempts = if quota_take { QUOTA_BUSY_ATTEMPTS } else { 1 };
            let mut attempt = 0;
            while remote.is_up() && attempt < attempts {
                attempt += 1;
                match remote.decide(key, *policy, mode, hint).await {
                    Ok(o) => {
                        // Mirrored, so that a fallback knows what this instance admitted.
                        if mode == Mode::Take && o.allowed && policy.limit > 0 {
                            self.local.record(key, *policy, o.token.as_deref());
                        }
                        return Ok((o, Store::Remote(remote.clone(), self.local.clone())));
                    }
                    Err(RemoteError::Busy) if attempt < attempts => {}
                    Err(RemoteError::Busy) if quota_take => return Err(Refusal::Busy),
                    Err(RemoteError::Busy) => {
                        tracing::debug!("redis pool busy: one rate decision falls back");
                    }
                    Err(RemoteError::Failed(e)) => {
                        remote.mark_down(&e);
                        break;
                    }
                }
            }
            self.metrics.limiter_fallback.inc();
            policy.limit = scaled(policy.limit, self.settings.fallback_percent);
        }
        Ok((
            self.local.decide(key, *policy, mode),
            Store::Local(self.local.clone()),
        ))
    }

    fn count(&self, kind: Kind, outcome: &str) {
        self.metrics
            .quota_decisions
            .with_label_values(&[kind.name(), outcome])
            .inc();
    }

    fn status(&self, policy: Policy, o: &Decision) -> Status {
        Status {
            policy,
            allowed: o.allowed,
            used: o.used,
            reset_ms: o.reset_ms,
            retry_ms: o.retry_ms,
        }
    }

    /// The failed-authentication decision for `ip` (`None` when the limiter is off).
    async fn auth_failures(&self, ip: std::net::IpAddr, mode: Mode) -> Option<(Decision, Policy)> {
        if self.settings.auth_failures == 0 {
            return None;
        }
        let mut policy = Policy {
            kind: Kind::AuthFailures,
            limit: self.settings.auth_failures,
            window_ms: self.settings.auth_window_ms,
        };
        let key = self.ip_key(ip, Kind::AuthFailures);
        // Not a quota: never refused for a busy pool.
        let (o, _) = self.decide(&key, &mut policy, mode, None).await.ok()?;
        Some((o, policy))
    }

    /// Before trying a credential from `ip`: `429 rate_limited` once the IP has failed
    /// `limits.auth_failures_per_ip` times within the window. Successes are never counted.
    pub async fn guard_auth(&self, ip: std::net::IpAddr) -> Result<(), Refusal> {
        match self.auth_failures(ip, Mode::Peek).await {
            Some((o, policy)) if !o.allowed => {
                self.count(Kind::AuthFailures, "refused");
                Err(Refusal::Rate(Box::new(self.status(policy, &o))))
            }
            _ => Ok(()),
        }
    }

    /// Records a failed authentication from `ip`.
    pub async fn auth_failed(&self, ip: std::net::IpAddr) {
        if let Some((o, _)) = self.auth_failures(ip, Mode::Take).await
            && !o.allowed
        {
            tracing::warn!(client_ip = %ip, "failed-authentication limit reached");
        }
    }

    /// One authenticated request by `user` (plan `plan`): the per-user request rate. Also
    /// remembers the user's plan, which prices the transforms of their signed URLs.
    pub async fn user_request(
        &self,
        user: &str,
        plan: Option<&str>,
    ) -> Result<Option<Status>, Refusal> {
        let limit = self.tier(plan).requests_per_minute;
        let mut policy = Policy {
            kind: Kind::Requests,
            limit,
            window_ms: RATE_WINDOW_MS,
        };
        let key = self.user_key(user, Kind::Requests);
        let plan_key = self.plan_key(user);
        let plan_name = plan.unwrap_or(DEFAULT_PLAN);
        let (o, _) = self
            .decide(&key, &mut policy, Mode::Take, Some((&plan_key, plan_name)))
            .await?;
        if limit == 0 {
            return Ok(None);
        }
        self.rate_outcome(policy, &o)
    }

    /// One signed-URL request from `ip`: the per-IP request rate.
    pub async fn ip_request(&self, ip: std::net::IpAddr) -> Result<Option<Status>, Refusal> {
        let limit = self.settings.ip_requests_per_minute;
        if limit == 0 {
            return Ok(None);
        }
        let mut policy = Policy {
            kind: Kind::IpRequests,
            limit,
            window_ms: RATE_WINDOW_MS,
        };
        let key = self.ip_key(ip, Kind::IpRequests);
        let (o, _) = self.decide(&key, &mut policy, Mode::Take, None).await?;
        self.rate_outcome(policy, &o)
    }

    fn rate_outcome(&self, policy: Policy, o: &Decision) -> Result<Option<Status>, Refusal> {
        let status = self.status(policy, o);
        if o.allowed {
            self.count(policy.kind, "allowed");
            Ok(Some(status))
        } else {
            self.count(policy.kind, "refused");
            Err(Refusal::Rate(Box::new(status)))
        }
    }

    /// Takes one unit of `kind` (uploads or transforms) from `user`'s hourly quota, or
    /// `429 quota_exceeded`. Admins are not charged when `limits.admin_bypass` is on.
    pub async fn charge(
        &self,
        kind: Kind,
        user: &str,
        plan: Option<&str>,
        admin: bool,
    ) -> Result<Charge, Refusal> {
        if admin && self.settings.admin_bypass {
            self.count(kind, "bypassed");
            return Ok(Charge {
                status: None,
                refund: None,
            });
        }
        let mut policy = Policy {
            kind,
            limit: self.tier(plan).limit(kind),
            window_ms: self.settings.quota_window_ms,
        };
        let key = self.user_key(user, kind);
        let (o, store) = self.decide(&key, &mut policy, Mode::Take, None).await?;
        let status = self.status(policy, &o);
        if !o.allowed {
            self.count(kind, "refused");
            return Err(Refusal::Quota(Box::new(status)));
        }
        self.count(kind, "allowed");
        Ok(Charge {
            status: Some(status),
            refund: o.token.map(|token| Refund { store, key, token }),
        })
    }

    /// The plan `user` last authenticated with (for their signed URLs, which carry no
    /// credential); `None` when unknown, which prices them as the free tier.
    /// Charges one unit of `kind` to `payer`: the caller at its own plan, or an image's owner
    /// at the plan they last authenticated with.
    pub async fn charge_to(&self, kind: Kind, payer: &Payer) -> Result<Charge, Refusal> {
        match payer {
            Payer::Caller { user, plan, admin } => {
                self.charge(kind, user, plan.as_deref(), *admin).await
            }
            Payer::Owner(owner) => {
                let plan = self.plan_of(owner).await;
                self.charge(kind, owner, plan.as_deref(), false).await
            }
        }
    }

    pub async fn plan_of(&self, user: &str) -> Option<String> {
        let key = self.plan_key(user);
        if let Some(p) = self.local.cached_plan(&key, PLAN_HINT_CACHE) {
            return Some(p);
        }
        if let Some(remote) = &self.remote
            && remote.is_up()
        {
            match remote.get_plan(&key).await {
                Ok(Some(p)) => {
                    self.local.remember_plan(&key, &p);
                    return Some(p);
                }
                Ok(None) => return None,
                Err(RemoteError::Busy) => {}
                Err(RemoteError::Failed(e)) => remote.mark_down(&e),
            }
        }
        self.local.cached_plan(&key, Duration::MAX)
    }

    /// `user`'s quotas and request rate, without taking anything.
    pub async fn usage(&self, user: &str, plan: Option<&str>) -> Vec<Status> {
        let tier = self.tier(plan);
        let mut out = Vec::new();
        for (kind, window_ms) in [
            (Kind::Uploads, self.settings.quota_window_ms),
            (Kind::Transforms, self.settings.quota_window_ms),
            (Kind::Requests, RATE_WINDOW_MS),
        ] {
            let limit = tier.limit(kind);
            if limit == 0 {
                continue;
            }
            let mut policy = Policy {
                kind,
                limit,
                window_ms,
            };
            if let Ok((o, _)) = self
                .decide(&self.user_key(user, kind), &mut policy, Mode::Peek, None)
                .await
            {
                out.push(self.status(policy, &o));
            }
        }
        out
    }

    /// Starts the Redis health probe loop if Redis is configured (at start-up: an unreachable
    /// Redis is found before the first request pays a timeout for it).
    pub async fn warm_up(&self) {
        if let Some(remote) = &self.remote
            && let Err(RemoteError::Failed(e)) = remote.probe(Duration::from_secs(1)).await
        {
            remote.mark_down(&e);
        }
    }

    /// Pings Redis (readiness): a failure switches to the fallback like a failed decision.
    pub async fn check(&self) -> Backend {
        if let Some(remote) = &self.remote
            && remote.is_up()
            && let Err(RemoteError::Failed(e)) = remote.probe(Duration::from_millis(500)).await
        {
            remote.mark_down(&e);
        }
        self.backend()
    }

    /// Fallback decisions made so far (tests, `/readyz`).
    pub fn fallback_count(&self) -> u64 {
        self.metrics.limiter_fallback.get()
    }
}

/// The subject an address is limited as: an IPv4 address (IPv4-mapped IPv6 included) as
/// itself, an IPv6 address by its /64 — one subscriber's allocation, which a client can roam
/// freely inside, so per-address keys would give it 2^64 identities.
pub fn ip_subject(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
    }
}

/// `limit × percent / 100`, rounded up, at least 1: a share is never "unlimited" and never
/// "nothing".
fn scaled(limit: u64, percent: u64) -> u64 {
    if limit == 0 {
        return 0;
    }
    (limit.saturating_mul(percent).div_ceil(100)).max(1)
}

/// Microseconds since the Unix epoch as of the first call, advanced by a monotonic clock: the
/// local store's time (Redis uses its own `TIME`). A wall clock stepping back must not reorder
/// a sliding log, which would make a `Retry-After` early.
fn now_us() -> u64 {
    static ANCHOR: std::sync::OnceLock<(Instant, u64)> = std::sync::OnceLock::new();
    let (start, epoch_us) = ANCHOR.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        (Instant::now(), wall)
    });
    epoch_us.saturating_add(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX))
}

/// A random token that keeps sliding-log members of one microsecond apart (across instances
/// too: a collision would merge two units into one). A per-process counter stands in if the OS
/// RNG ever fails.
fn nonce() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    crate::id::random_hex(8).unwrap_or_else(|_| {
        format!(
            "c{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    })
}

/// Marks `down` and reports the switch once.
fn set_flag(flag: &std::sync::atomic::AtomicBool, value: bool) -> bool {
    flag.swap(value, Ordering::AcqRel) != value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(kind: Kind, limit: u64, used: u64, allowed: bool, reset: u64, retry: u64) -> Status {
        Status {
            policy: Policy {
                kind,
                limit,
                window_ms: if kind.is_quota() {
                    QUOTA_WINDOW_MS
                } else {
                    RATE_WINDOW_MS
                },
            },
            allowed,
            used,
            reset_ms: reset,
            retry_ms: retry,
        }
    }

    #[test]
    fn retry_after_is_never_early() {
        let s = status(Kind::Uploads, 100, 100, false, 10, 1_001);
        assert_eq!(s.retry_after_secs(), 2);
        assert_eq!(s.reset_secs(), 2);
        assert_eq!(s.remaining(), 0);
        let s = status(Kind::Uploads, 100, 100, false, 10, 1);
        assert_eq!(s.retry_after_secs(), 1);
    }

    #[test]
    fn addresses_are_limited_as_subscribers() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(ip_subject(ip("192.0.2.7")), "192.0.2.7");
        assert_eq!(ip_subject(ip("::ffff:192.0.2.7")), "192.0.2.7");
        assert_eq!(ip_subject(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(
            ip_subject(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip_subject(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            ip_subject(ip("2001:db8:1:3::1")),
            ip_subject(ip("2001:db8:1:2::1"))
        );
    }

    #[test]
    fn fallback_share_rounds_up_and_never_unlimits() {
        assert_eq!(scaled(100, 100), 100);
        assert_eq!(scaled(100, 25), 25);
        assert_eq!(scaled(5, 30), 2);
        assert_eq!(scaled(1, 1), 1);
        assert_eq!(scaled(0, 50), 0);
    }
}
