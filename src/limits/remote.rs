//! The Redis store: one Lua script per decision, so a decision is atomic across every pixgate
//! instance sharing the Redis, timed by Redis's clock (`TIME`), never by the instances' clocks.
//!
//! Keys carry a hash tag per subject (`{u:…}` for a user, `{ip:…}` for an address) and a script
//! touches only keys of one subject, so each maps to one Redis Cluster slot (`redis.cluster_urls`:
//! the cluster client routes each call to the slot's master, see [`crate::kv`]). Scripts are
//! sent by SHA (`EVALSHA`) and re-loaded after a `NOSCRIPT` (a restarted Redis). Every call has
//! the `redis.timeout_ms` deadline; a failure marks the store down, after which decisions go to
//! the local store until the background probe sees the script run again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

use super::{Algorithm, BUCKETS, Decision, Mode, PLAN_HINT_TTL_SECS, Policy, nonce, set_flag};
use crate::metrics::Metrics;

/// Sliding log. KEYS[1]: sorted set of units (score: µs). ARGV: limit, window (ms),
/// mode (`take` | `peek`), nonce. Returns {allowed, used, reset ms, retry ms, member}.
const LOG_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
local allowed = 0
local member = ''
if used < limit then
  allowed = 1
  if ARGV[3] == 'take' then
    member = t[1] .. '.' .. t[2] .. '.' .. ARGV[4]
    redis.call('ZADD', KEYS[1], now, member)
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    used = used + 1
  end
end
local reset = 0
if used > 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  reset = math.ceil((tonumber(oldest[2]) + window - now) / 1000)
end
local retry = 0
if allowed == 0 then
  local idx = used - limit
  local e = redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')
  if e[2] then
    retry = math.ceil((tonumber(e[2]) + window - now) / 1000)
  end
end
return {allowed, used, reset, retry, member}
";

/// Bucketed sliding window. KEYS[1]: hash of sub-window index → count; KEYS[2] (optional):
/// the user's remembered plan. ARGV: limit, window (ms), sub-windows, mode, plan, plan TTL (s).
/// Returns {allowed, used, reset ms, retry ms, ''}.
const BUCKETS_SCRIPT: &str = r"
if KEYS[2] and ARGV[5] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[5] then
  redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[6])
end
local limit = tonumber(ARGV[1])
if limit == 0 then
  return {1, 0, 0, 0, ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local width = math.max(1, math.ceil(window / n))
local cur = math.floor(now / width)
local raw = redis.call('HGETALL', KEYS[1])
local live = {}
local used = 0
for i = 1, #raw, 2 do
  local b = tonumber(raw[i])
  if b + n < cur then
    redis.call('HDEL', KEYS[1], raw[i])
  else
    local c = tonumber(raw[i + 1])
    used = used + c
    live[#live + 1] = {b, c}
  end
end
table.sort(live, function(x, y) return x[1] < y[1] end)
local allowed = 0
if used < limit then
  allowed = 1
  if ARGV[4] == 'take' then
    redis.call('HINCRBY', KEYS[1], string.format('%d', cur), 1)
    redis.call('PEXPIRE', KEYS[1], window + 2 * width)
    used = used + 1
    if #live == 0 or live[#live][1] ~= cur then
      live[#live + 1] = {cur, 1}
    end
  end
end
local reset = 0
if #live > 0 then
  reset = (live[1][1] + n + 1) * width - now
end
local retry = 0
if allowed == 0 then
  local left = used
  for i = 1, #live do
    left = left - live[i][2]
    if left < limit then
      retry = (live[i][1] + n + 1) * width - now
      break
    end
  end
end
return {allowed, used, reset, retry, ''}
";

/// Probe period while Redis is down.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Why a Redis call gave no answer.
#[derive(Debug)]
pub enum RemoteError {
    /// Every pooled connection was in use: this instance is busy, Redis may be fine. That one
    /// decision falls back; Redis is not marked down.
    Busy,
    /// Redis failed, refused, or answered too late: marked down until the probe succeeds.
    Failed(String),
}

pub struct RemoteStore {
    pool: crate::kv::Pool,
    /// A key of its own for the health probe, which runs the real script (a `PING` would pass
    /// while scripts fail: no permission, cluster redirects, out of memory).
    probe_key: String,
    /// `redis.key_prefix` (probe keys per master on a cluster).
    prefix: String,
    timeout: Duration,
    log_script: Script,
    buckets_script: Script,
    down: AtomicBool,
    metrics: Metrics,
}

type Reply = (i64, i64, i64, i64, String);

impl RemoteStore {
    pub fn new(
        pool: crate::kv::Pool,
        timeout: Duration,
        prefix: &str,
        metrics: Metrics,
    ) -> RemoteStore {
        RemoteStore {
            pool,
            probe_key: format!("{prefix}:{{probe}}:health"),
            prefix: prefix.to_owned(),
            timeout,
            log_script: Script::new(LOG_SCRIPT),
            buckets_script: Script::new(BUCKETS_SCRIPT),
            down: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Acquire)
    }

    /// Switches decisions to the local store and starts the probe that switches them back.
    pub fn mark_down(self: &Arc<Self>, error: &str) {
        if !set_flag(&self.down, true) {
            return;
        }
        tracing::warn!(
            error,
            "redis unavailable: limits fall back to the in-process limiter"
        );
        self.metrics.limiter_degraded.set(1);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = Arc::clone(self);
        handle.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                // A busy pool says nothing about Redis: probe again next period.
                if store.probe(Duration::from_secs(1)).await.is_ok() {
                    set_flag(&store.down, false);
                    store.metrics.limiter_degraded.set(0);
                    tracing::info!("redis is back: limits are decided in redis again");
                    return;
                }
            }
        });
    }

    /// Runs both scripts, taking a unit each, on the probe keys: Redis answers and scripts can
    /// write (a `PING` or a read-only script passes while writes fail: out of memory, an ACL).
    /// On a Redis Cluster, on a key of every master's slot range: a probe of one slot would
    /// pass while another master is down.
    pub async fn probe(&self, timeout: Duration) -> Result<(), RemoteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut conn = self.conn(deadline).await?;
        let keys = if self.pool.is_cluster() {
            let ranges = tokio::time::timeout_at(deadline, crate::kv::master_ranges(&mut conn))
                .await
                .map_err(|_| RemoteError::Failed("CLUSTER SLOTS timed out".into()))?
                .map_err(RemoteError::Failed)?;
            ranges
                .into_iter()
                .filter_map(|r| crate::kv::probe_key_in(&self.prefix, r))
                .collect()
        } else {
            vec![self.probe_key.clone()]
        };
        for key in &keys {
            self.probe_key_once(&mut conn, key, deadline).await?;
        }
        Ok(())
    }

    async fn probe_key_once(
        &self,
        conn: &mut crate::kv::Conn,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), RemoteError> {
        let call = async {
            self.log_script
                .key(key)
                .arg(1_000_000)
                .arg(1000)
                .arg("take")
                .arg(nonce())
                .invoke_async::<Reply>(&mut *conn)
                .await?;
            self.buckets_script
                .key(format!("{key}:b"))
                .arg(1_000_000)
                .arg(1000)
                .arg(BUCKETS)
                .arg("take")
                .arg("")
                .arg(0)
                .invoke_async::<Reply>(&mut *conn)
                .await
        };
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RemoteError::Failed(e.to_string())),
            Err(_) => Err(RemoteError::Failed("probe timed out".to_owned())),
        }
    }

    /// A pooled connection before `deadline`.
    async fn conn(&self, deadline: tokio::time::Instant) -> Result<crate::kv::Conn, RemoteError> {
        match tokio::time::timeout_at(deadline, self.pool.get()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(deadpool_redis::PoolError::Timeout(deadpool_redis::TimeoutType::Wait))) => {
                Err(RemoteError::Busy)
            }
            Ok(Err(e)) => Err(RemoteError::Failed(e.to_string())),
            Err(_) => Err(RemoteError::Failed(format!(
                "no connection within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Deletes `keys` (one subject's, so one slot on Redis Cluster) under the deadline.
    pub async fn delete(&self, keys: &[String]) -> Result<(), RemoteError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut conn = self.conn(deadline).await?;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(keys);
        let call = cmd.query_async::<i64>(&mut conn);
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RemoteError::Failed(e.to_string())),
            Err(_) => Err(RemoteError::Failed("DEL timed out".to_owned())),
        }
    }

    /// Runs one decision script under the deadline.
    pub async fn decide(
        &self,
        key: &str,
        policy: Policy,
        mode: Mode,
        hint: Option<(&str, &str)>,
    ) -> Result<Decision, RemoteError> {
        let mode_arg = match mode {
            Mode::Take => "take",
            Mode::Peek => "peek",
        };
        let _timer = self.metrics.redis_duration.start_timer();
        // One deadline for the whole decision: connection and script.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut conn = self.conn(deadline).await?;
        let call = async {
            let reply: Reply = match policy.kind.algorithm() {
                Algorithm::Log => {
                    self.log_script
                        .key(key)
                        .arg(policy.limit)
                        .arg(policy.window_ms)
                        .arg(mode_arg)
                        .arg(nonce())
                        .invoke_async(&mut conn)
                        .await
                }
                Algorithm::Buckets => {
                    let mut inv = self.buckets_script.key(key);
                    let (plan_key, plan) = hint.unwrap_or(("", ""));
                    if !plan_key.is_empty() {
                        inv.key(plan_key);
                    }
                    inv.arg(policy.limit)
                        .arg(policy.window_ms)
                        .arg(BUCKETS)
                        .arg(mode_arg)
                        .arg(plan)
                        .arg(PLAN_HINT_TTL_SECS)
                        .invoke_async(&mut conn)
                        .await
                }
            }
            .map_err(|e| e.to_string())?;
            Ok::<Reply, String>(reply)
        };
        let (allowed, used, reset, retry, member) = tokio::time::timeout_at(deadline, call)
            .await
            .map_err(|_| {
                RemoteError::Failed(format!("no answer within {} ms", self.timeout.as_millis()))
            })?
            .map_err(RemoteError::Failed)?;
        let non_negative = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Decision {
            allowed: allowed == 1,
            used: non_negative(used),
            reset_ms: non_negative(reset),
            retry_ms: non_negative(retry),
            token: (!member.is_empty()).then_some(member),
        })
    }

    /// Removes a sliding-log unit (a refund). Best effort: a failure leaves the unit counted,
    /// which errs on the safe side.
    pub async fn give_back(&self, key: &str, token: &str) {
        let call = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            redis::cmd("ZREM")
                .arg(key)
                .arg(token)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.timeout.max(Duration::from_secs(1)), call).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not refund a quota unit"),
            Err(_) => tracing::warn!("could not refund a quota unit: timed out"),
        }
    }

    /// The plan remembered for a user, if any.
    pub async fn get_plan(&self, key: &str) -> Result<Option<String>, RemoteError> {
        let _timer = self.metrics.redis_duration.start_timer();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut conn = self.conn(deadline).await?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let call = cmd.query_async::<Option<String>>(&mut conn);
        match tokio::time::timeout_at(deadline, call).await {
            Ok(r) => r.map_err(|e| RemoteError::Failed(e.to_string())),
            Err(_) => Err(RemoteError::Failed(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}
