//! The in-process store: the limiter of the embedded default, and the fallback while Redis is
//! unreachable. Same algorithms and the same answers as the Redis scripts (`remote.rs`), on the
//! wall clock of this process.
//!
//! Memory is bounded: at most `limits.local_max_keys` users and, separately, as many client
//! addresses, least recently used evicted first (an evicted subject starts again from zero,
//! which only matters under a flood of distinct subjects; the bound is there so that flood
//! cannot exhaust memory, and the two maps are apart so that a flood of addresses cannot evict
//! users' quotas). Per subject, a sliding log holds at most `limit` entries (plus units
//! mirrored from Redis, which Redis also bounded) and a bucketed window at most 62 counters.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::{Algorithm, BUCKETS, Decision, Kind, Mode, Policy, nonce, now_us};

const SHARDS: usize = 16;

enum Entry {
    /// (time µs, token) of each admitted unit, oldest first.
    Log(VecDeque<(u64, String)>),
    /// (sub-window index, count), oldest first.
    Buckets(VecDeque<(u64, u64)>),
}

impl Entry {
    fn new(kind: Kind) -> Entry {
        match kind.algorithm() {
            Algorithm::Log => Entry::Log(VecDeque::new()),
            Algorithm::Buckets => Entry::Buckets(VecDeque::new()),
        }
    }
}

type Shard = Mutex<LruCache<String, Entry>>;

pub struct LocalStore {
    /// Users' subjects (quotas, request rates).
    shards: Vec<Shard>,
    /// Client addresses' subjects (`ip`, `auth_failures`).
    ip_shards: Vec<Shard>,
    plans: Mutex<LruCache<String, (String, Instant)>>,
    hasher: std::collections::hash_map::RandomState,
}

impl LocalStore {
    pub fn new(max_keys: usize) -> LocalStore {
        let per_shard = NonZeroUsize::new((max_keys / SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        LocalStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            ip_shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            plans: Mutex::new(LruCache::new(per_shard)),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, key: &str, kind: Kind) -> &Shard {
        let group = match kind {
            Kind::IpRequests | Kind::AuthFailures => &self.ip_shards,
            Kind::Uploads | Kind::Transforms | Kind::Requests => &self.shards,
        };
        &group[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    pub fn decide(&self, key: &str, policy: Policy, mode: Mode) -> Decision {
        self.decide_at(key, policy, mode, now_us())
    }

    pub(super) fn decide_at(&self, key: &str, policy: Policy, mode: Mode, now: u64) -> Decision {
        let mut shard = self
            .shard(key, policy.kind)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A look, or a take that cannot succeed, creates no entry for an unknown subject.
        if (mode == Mode::Peek || policy.limit == 0) && !shard.contains(key) {
            return Decision {
                allowed: policy.limit > 0,
                used: 0,
                reset_ms: 0,
                retry_ms: 0,
                token: None,
            };
        }
        match shard.get_or_insert_mut(key.to_owned(), || Entry::new(policy.kind)) {
            Entry::Log(log) => log_decide(log, policy, mode, now),
            Entry::Buckets(b) => buckets_decide(b, policy, mode, now / 1000),
        }
    }

    /// Records a unit admitted elsewhere (by Redis), whatever the limit: the mirror that lets
    /// a fallback know what this instance admitted. `token` is Redis's, for refunds.
    pub fn record(&self, key: &str, policy: Policy, token: Option<&str>) {
        self.record_at(key, policy, token, now_us());
    }

    pub(super) fn record_at(&self, key: &str, policy: Policy, token: Option<&str>, now: u64) {
        let unlimited = Policy {
            limit: u64::MAX,
            ..policy
        };
        let mut shard = self
            .shard(key, policy.kind)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match shard.get_or_insert_mut(key.to_owned(), || Entry::new(policy.kind)) {
            Entry::Log(log) => {
                log_decide(log, unlimited, Mode::Take, now);
                if let (Some(t), Some(last)) = (token, log.back_mut()) {
                    last.1 = t.to_owned();
                }
            }
            Entry::Buckets(b) => {
                buckets_decide(b, unlimited, Mode::Take, now / 1000);
            }
        }
    }

    /// Removes the sliding-log unit `token` (a refund; only quotas are refunded).
    pub fn give_back(&self, key: &str, token: &str) {
        let mut shard = self
            .shard(key, Kind::Uploads)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(Entry::Log(log)) = shard.peek_mut(key)
            && let Some(i) = log.iter().position(|(_, t)| t == token)
        {
            log.remove(i);
        }
    }

    /// Forgets everything stored under `keys` (account erasure).
    pub fn forget(&self, keys: &[(String, Kind)], plan_key: &str) {
        for (k, kind) in keys {
            self.shard(k, *kind)
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop(k);
        }
        self.plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop(plan_key);
    }

    pub fn remember_plan(&self, key: &str, plan: &str) {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        // Called on every authenticated request: refresh in place, allocate only on a change.
        match plans.get_mut(key) {
            Some((known, at)) if known == plan => *at = Instant::now(),
            _ => {
                plans.put(key.to_owned(), (plan.to_owned(), Instant::now()));
            }
        }
    }

    /// A remembered plan no older than `max_age`.
    pub fn cached_plan(&self, key: &str, max_age: Duration) -> Option<String> {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans
            .get(key)
            .filter(|(_, at)| at.elapsed() <= max_age)
            .map(|(p, _)| p.clone())
    }
}

/// Sliding log at `now` (µs). A unit admitted at `t` counts while `now - t < window`.
fn log_decide(log: &mut VecDeque<(u64, String)>, policy: Policy, mode: Mode, now: u64) -> Decision {
    let window = policy.window_ms.saturating_mul(1000);
    while log
        .front()
        .is_some_and(|(t, _)| t.saturating_add(window) <= now)
    {
        log.pop_front();
    }
    let mut used = log.len() as u64;
    let allowed = used < policy.limit;
    let mut token = None;
    if mode == Mode::Take && allowed {
        let t = format!("{now}.{}", nonce());
        log.push_back((now, t.clone()));
        token = Some(t);
        used += 1;
    }
    let reset_ms = log
        .front()
        .map_or(0, |(t, _)| (t + window).saturating_sub(now).div_ceil(1000));
    let retry_ms = if allowed {
        0
    } else {
        // The unit whose departure makes room: index `used - limit`, oldest first.
        let idx = usize::try_from(used - policy.limit).unwrap_or(usize::MAX);
        log.get(idx)
            .map_or(0, |(t, _)| (t + window).saturating_sub(now).div_ceil(1000))
    };
    Decision {
        allowed,
        used,
        reset_ms,
        retry_ms,
        token,
    }
}

/// Bucketed sliding window at `now_ms`. Sub-window `b` covers `[b·w, (b+1)·w)` with
/// `w = ceil(window / BUCKETS)` and counts while `b ≥ cur − BUCKETS`: every unit is counted for
/// at least `window` and at most `window + w`.
fn buckets_decide(
    buckets: &mut VecDeque<(u64, u64)>,
    policy: Policy,
    mode: Mode,
    now_ms: u64,
) -> Decision {
    let width = policy.window_ms.div_ceil(BUCKETS).max(1);
    let cur = now_ms / width;
    while buckets.front().is_some_and(|(b, _)| b + BUCKETS < cur) {
        buckets.pop_front();
    }
    let mut used: u64 = buckets.iter().map(|(_, c)| c).sum();
    let allowed = used < policy.limit;
    if mode == Mode::Take && allowed {
        match buckets.back_mut() {
            Some((b, c)) if *b == cur => *c += 1,
            _ => buckets.push_back((cur, 1)),
        }
        used += 1;
    }
    let leaves = |b: u64| ((b + BUCKETS + 1) * width).saturating_sub(now_ms);
    let reset_ms = buckets.front().map_or(0, |(b, _)| leaves(*b));
    let mut retry_ms = 0;
    if !allowed {
        let mut left = used;
        for (b, c) in buckets.iter() {
            left -= c;
            if left < policy.limit {
                retry_ms = leaves(*b);
                break;
            }
        }
    }
    Decision {
        allowed,
        used,
        reset_ms,
        retry_ms,
        token: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{QUOTA_WINDOW_MS, RATE_WINDOW_MS};
    use super::*;

    const S: u64 = 1_000_000;

    fn quota(limit: u64) -> Policy {
        Policy {
            kind: Kind::Uploads,
            limit,
            window_ms: QUOTA_WINDOW_MS,
        }
    }

    fn rate(limit: u64) -> Policy {
        Policy {
            kind: Kind::Requests,
            limit,
            window_ms: RATE_WINDOW_MS,
        }
    }

    #[test]
    fn sliding_log_refuses_the_boundary_burst() {
        let store = LocalStore::new(100);
        let t0 = 1_700_000_000 * S + 3599 * S; // 00:59:59 of some hour
        for i in 0..100 {
            let o = store.decide_at("u", quota(100), Mode::Take, t0 + i);
            assert!(o.allowed, "unit {i}");
        }
        // 01:00:01: a fixed window would have reset; the rolling hour has not.
        let o = store.decide_at("u", quota(100), Mode::Take, t0 + 2 * S);
        assert!(!o.allowed);
        assert_eq!(o.used, 100);
        // Retry exactly when the first unit leaves: 3600 s after it, i.e. 3598 s from now.
        assert_eq!(o.retry_ms, 3_598_000);
        // Just before the hour has passed: still refused; at it: one unit is free.
        assert!(
            !store
                .decide_at("u", quota(100), Mode::Take, t0 + 3600 * S - 1)
                .allowed
        );
        let o = store.decide_at("u", quota(100), Mode::Take, t0 + 3600 * S);
        assert!(o.allowed);
        assert_eq!(o.used, 100);
        assert!(
            !store
                .decide_at("u", quota(100), Mode::Take, t0 + 3600 * S)
                .allowed
        );
    }

    #[test]
    fn refunds_remove_exactly_the_unit() {
        let store = LocalStore::new(100);
        let now = 1_800_000_000 * S;
        let a = store.decide_at("k", quota(2), Mode::Take, now);
        let b = store.decide_at("k", quota(2), Mode::Take, now + 1);
        assert!(a.allowed && b.allowed);
        assert!(!store.decide_at("k", quota(2), Mode::Take, now + 2).allowed);
        store.give_back("k", &b.token.unwrap());
        store.give_back("k", "no-such-token");
        let c = store.decide_at("k", quota(2), Mode::Take, now + 3);
        assert!(c.allowed);
        assert_eq!(c.used, 2);
    }

    #[test]
    fn peek_counts_without_taking() {
        let store = LocalStore::new(100);
        let now = 1_800_000_000 * S;
        let p = store.decide_at("k", quota(5), Mode::Peek, now);
        assert!(p.allowed && p.used == 0);
        for _ in 0..5 {
            store.decide_at("k", quota(5), Mode::Take, now);
        }
        let p = store.decide_at("k", quota(5), Mode::Peek, now + S);
        assert!(!p.allowed);
        assert_eq!(p.used, 5);
        assert_eq!(p.retry_ms, 3_599_000);
    }

    #[test]
    fn buckets_never_admit_more_than_the_limit_in_any_window() {
        let store = LocalStore::new(100);
        let start = 1_800_000_000 * S;
        let mut admitted: Vec<u64> = Vec::new();
        // A request every 50 ms for 5 minutes against 100/min.
        let mut t = start;
        while t < start + 300 * S {
            if store.decide_at("r", rate(100), Mode::Take, t).allowed {
                admitted.push(t);
            }
            t += 50_000;
        }
        for (i, &a) in admitted.iter().enumerate() {
            let in_window = admitted[i..]
                .iter()
                .take_while(|&&b| b < a + 60 * S)
                .count();
            assert!(in_window <= 100, "{in_window} admitted within a minute");
        }
        // And it is not much stricter than the limit: ≥ 100 per minute minus one sub-window.
        assert!(admitted.len() as u64 >= 5 * 98, "{}", admitted.len());
    }

    #[test]
    fn bucket_retry_is_when_room_appears() {
        let store = LocalStore::new(100);
        let start = 1_800_000_000 * S; // a multiple of the 1 s sub-window
        for _ in 0..3 {
            assert!(store.decide_at("r", rate(3), Mode::Take, start).allowed);
        }
        let o = store.decide_at("r", rate(3), Mode::Take, start + S / 2);
        assert!(!o.allowed);
        // The sub-window [start, start+1s) leaves at start + 61 s.
        assert_eq!(o.retry_ms, 60_500);
        assert!(
            !store
                .decide_at("r", rate(3), Mode::Take, start + 61 * S - 1000)
                .allowed
        );
        assert!(
            store
                .decide_at("r", rate(3), Mode::Take, start + 61 * S)
                .allowed
        );
    }

    #[test]
    fn mirrored_units_count_in_a_fallback_and_refund_by_token() {
        let store = LocalStore::new(100);
        let now = 1_800_000_000 * S;
        for i in 0..4 {
            store.record_at("m", quota(3), Some(&format!("redis-{i}")), now + i);
        }
        // Mirrored beyond the limit (Redis admitted them): a fallback decision sees all four.
        let o = store.decide_at("m", quota(5), Mode::Take, now + 10);
        assert!(o.allowed);
        assert_eq!(o.used, 5);
        store.give_back("m", "redis-2");
        let o = store.decide_at("m", quota(5), Mode::Take, now + 11);
        assert!(o.allowed && o.used == 5);
        assert!(!store.decide_at("m", quota(5), Mode::Take, now + 12).allowed);
        // Buckets mirror too.
        for _ in 0..3 {
            store.record_at("b", rate(3), None, now);
        }
        assert!(!store.decide_at("b", rate(3), Mode::Take, now).allowed);
    }

    #[test]
    fn memory_is_bounded_by_subjects() {
        let store = LocalStore::new(SHARDS * 2);
        let now = 1_800_000_000 * S;
        for i in 0..10_000 {
            store.decide_at(&format!("k{i}"), rate(10), Mode::Take, now);
        }
        let held: usize = store.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * 2);
        // A flood of addresses does not evict users' quotas.
        let user = store.decide_at("user", quota(5), Mode::Take, now);
        assert!(user.allowed);
        for i in 0..10_000 {
            let ip = Policy {
                kind: Kind::IpRequests,
                limit: 10,
                window_ms: RATE_WINDOW_MS,
            };
            store.decide_at(&format!("ip{i}"), ip, Mode::Take, now);
        }
        assert_eq!(store.decide_at("user", quota(5), Mode::Peek, now).used, 1);
    }
}
