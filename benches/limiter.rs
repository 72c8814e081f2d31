//! Limiter latency: what quotas and rate limits add to a request, on loopback Redis and
//! in-process, measured in one run beside a bare Redis `PING` (the floor any Redis call pays).
//!
//!     cargo bench --bench limiter
//!
//! Starts its own `redis-server` on an ephemeral port. For each decision the server makes it
//! reports p50/p99/max per call, sequentially (one request at a time) and with 32 concurrent
//! callers on a 2-worker runtime (the server's shape on this machine). Per request, pixgate
//! makes: signed URL → one `ip` decision; bearer call → one failed-auth check plus one
//! `requests` decision; a computed transform or an upload → one more quota decision.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pixgate::config::Config;
use pixgate::kv::Pool as RedisPool;
use pixgate::limits::{Kind, Limiter};
use pixgate::metrics::Metrics;

const SEQUENTIAL: usize = 20_000;
const CONCURRENCY: usize = 32;
const PER_TASK: usize = 1_000;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Redis, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Redis(child), port)
}

fn limiter(redis_url: &str) -> Limiter {
    let mut c = Config::default();
    c.redis.url = redis_url.to_owned();
    c.redis.key_prefix = "bench".into();
    // Limits that never bind: every call does the full work of an admitted decision.
    c.limits.uploads_per_hour = 1_000_000_000;
    c.limits.transforms_per_hour = 1_000_000_000;
    c.limits.requests_per_minute = 1_000_000_000;
    c.limits.ip_requests_per_minute = 1_000_000_000;
    let pool = RedisPool::from_config(&c.redis).expect("pool");
    Limiter::new(&c.limits, &c.redis, pool, &Metrics::new().expect("metrics"))
}

#[derive(Clone, Copy)]
enum Op {
    Ping,
    Ip,
    UserRequest,
    AuthGuard,
    TransformCharge,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Ping => "redis PING (floor)",
            Op::Ip => "ip rate (signed URL)",
            Op::UserRequest => "user rate (bearer)",
            Op::AuthGuard => "failed-auth check (bearer)",
            Op::TransformCharge => "transform quota (compute)",
        }
    }
}

async fn run(l: &Limiter, pool: Option<&RedisPool>, op: Op, i: usize) {
    match op {
        Op::Ping => {
            let pool = pool.expect("pool");
            let mut conn = pool.get().await.expect("conn");
            let _: String = deadpool_redis::redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .expect("ping");
        }
        Op::Ip => {
            let ip = std::net::IpAddr::from([10, 0, (i / 256 % 256) as u8, (i % 256) as u8]);
            l.ip_request(ip).await.expect("ip");
        }
        Op::UserRequest => {
            l.user_request(&format!("user-{}", i % 1000), Some("free"))
                .await
                .expect("user");
        }
        Op::AuthGuard => {
            let ip = std::net::IpAddr::from([10, 1, (i / 256 % 256) as u8, (i % 256) as u8]);
            l.guard_auth(ip).await.expect("guard");
        }
        Op::TransformCharge => {
            l.charge(Kind::Transforms, &format!("user-{}", i % 1000), None, false)
                .await
                .expect("charge")
                .commit();
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e6
}

fn report(backend: &str, op: Op, mode: &str, mut samples: Vec<Duration>, wall: Duration) {
    samples.sort();
    println!(
        "{:<8} {:<28} {:<11} {:>8.1} {:>8.1} {:>9.1} {:>10.0}",
        backend,
        op.name(),
        mode,
        pct(&samples, 0.50),
        pct(&samples, 0.99),
        pct(&samples, 1.0),
        samples.len() as f64 / wall.as_secs_f64(),
    );
}

async fn measure(backend: &str, l: Arc<Limiter>, pool: Option<RedisPool>, op: Op) {
    // Warm-up: connections, script loading.
    for i in 0..500 {
        run(&l, pool.as_ref(), op, i).await;
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    let wall = Instant::now();
    for i in 0..SEQUENTIAL {
        let t = Instant::now();
        run(&l, pool.as_ref(), op, i).await;
        samples.push(t.elapsed());
    }
    report(backend, op, "sequential", samples, wall.elapsed());

    let wall = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..CONCURRENCY {
        let l = l.clone();
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let t = Instant::now();
                run(&l, pool.as_ref(), op, task * PER_TASK + i).await;
                samples.push(t.elapsed());
            }
            samples
        });
    }
    let mut all = Vec::new();
    while let Some(s) = tasks.join_next().await {
        all.extend(s.expect("task"));
    }
    report(backend, op, "32 callers", all, wall.elapsed());
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (_redis, port) = start_redis();
        let url = format!("redis://127.0.0.1:{port}/0");
        let remote = Arc::new(limiter(&url));
        remote.warm_up().await;
        let pool = RedisPool::from_config(&pixgate::config::RedisConfig {
            url: url.clone(),
            ..Default::default()
        })
        .expect("pool");
        let local = Arc::new(limiter(""));
        println!(
            "{:<8} {:<28} {:<11} {:>8} {:>8} {:>9} {:>10}",
            "backend", "decision", "mode", "p50 µs", "p99 µs", "max µs", "calls/s"
        );
        measure("redis", remote.clone(), pool.clone(), Op::Ping).await;
        for op in [Op::Ip, Op::UserRequest, Op::AuthGuard, Op::TransformCharge] {
            measure("redis", remote.clone(), None, op).await;
            measure("local", local.clone(), None, op).await;
        }
        println!(
            "\nfallback decisions during the run: {} (must be 0: every redis row was decided in redis)",
            remote.fallback_count()
        );
    });
}
