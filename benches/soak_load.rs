//! Load generator and sampler of `benches/soak.sh`: mixed traffic against a running pixgate
//! for a fixed time, sampling the server's RSS, open file descriptors, threads and the p99
//! latency of the last interval. Prints one CSV row per interval and a verdict at the end:
//! the RSS slope over the last 20 minutes (or the last two thirds of a shorter run), and
//! whether fds or threads grew.
//!
//! Traffic (weights out of 100): 55 memory-cache hits of a set of warmed URLs, 20 misses
//! (distinct sizes of small and large originals, which end in derived writes), 8 metadata
//! reads and listings, 6 uploads, 6 deletes of this run's uploads, 5 hostile requests
//! (garbage and malformed images, extreme shapes, bad and padded signatures, broken tokens).
//!
//! Signing key, salt and JWT secret come from the same `PIXGATE__*` variables as the server.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pixgate::auth::{Role, TokenRequest, mint_hs256};
use pixgate::config::AuthConfig;
use pixgate::signature::Signer;

#[derive(Parser)]
struct Args {
    /// Server base URL (http://127.0.0.1:PORT).
    #[arg(long)]
    base: String,
    /// The server's pid, for RSS, fds and threads.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 300)]
    secs: u64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// A large photo for some of the misses.
    #[arg(long)]
    photo: String,
    /// A small JPEG for uploads.
    #[arg(long)]
    small: String,
    /// Cargo passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Shared {
    client: HttpClient,
    base: String,
    signer: Signer,
    auth: String,
    small: Bytes,
    small_ids: Vec<String>,
    large_id: String,
    hits: Vec<String>,
    uploaded: Mutex<Vec<String>>,
    window: Mutex<Vec<u32>>,
    requests: AtomicU64,
    server_errors: AtomicU64,
    transport_errors: AtomicU64,
    seq: AtomicU64,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (as for the server)"))
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body)).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// `/{signature}{path}`.
fn signed(signer: &Signer, path: &str) -> String {
    format!("/{}{path}", signer.sign(path))
}

fn id_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("id")?
        .as_str()
        .map(str::to_owned)
}

/// xorshift64*, one per client task.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// A PNG header claiming `w`×`h` with a token IDAT (an extreme shape).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(&mut out, b"IEND", &[]);
    out
}

async fn one(s: &Shared, rng: &mut Rng) {
    let n = s.seq.fetch_add(1, Ordering::Relaxed);
    let roll = rng.below(100);
    let auth = s.auth.as_str();
    let (method, path, headers, body): (Method, String, Vec<(&str, &str)>, Bytes) = match roll {
        0..55 => (
            Method::GET,
            s.hits[rng.below(s.hits.len() as u64) as usize].clone(),
            vec![],
            Bytes::new(),
        ),
        55..75 => {
            let large = rng.below(10) == 0;
            let id = if large {
                s.large_id.clone()
            } else {
                s.small_ids[rng.below(s.small_ids.len() as u64) as usize].clone()
            };
            // Sizes × qualities × formats: a URL space no run exhausts, so misses (and the
            // decode buffers they cost) go on for the whole soak.
            let w = 16 + rng.below(if large { 1200 } else { 300 });
            let q = 30 + rng.below(66);
            let f = ["webp", "jpg", "png"][rng.below(3) as usize];
            (
                Method::GET,
                signed(&s.signer, &format!("/rs:fit:{w}:0/q:{q}/plain/{id}@{f}")),
                vec![],
                Bytes::new(),
            )
        }
        75..83 => {
            let path = if roll.is_multiple_of(2) {
                "/v1/images?limit=20".to_owned()
            } else {
                format!("/v1/images/{}", s.small_ids[0])
            };
            (
                Method::GET,
                path,
                vec![("authorization", auth)],
                Bytes::new(),
            )
        }
        83..89 => (
            Method::POST,
            "/v1/images".to_owned(),
            vec![("authorization", auth), ("content-type", "image/jpeg")],
            s.small.clone(),
        ),
        89..95 => {
            let victim = {
                let mut up = s.uploaded.lock().unwrap_or_else(|e| e.into_inner());
                if up.is_empty() {
                    None
                } else {
                    Some(up.remove(0))
                }
            };
            match victim {
                Some(id) => (
                    Method::DELETE,
                    format!("/v1/images/{id}"),
                    vec![("authorization", auth)],
                    Bytes::new(),
                ),
                None => (Method::GET, s.hits[0].clone(), vec![], Bytes::new()),
            }
        }
        _ => hostile(s, rng, n),
    };
    let url = format!("{}{}", s.base, path);
    let t = Instant::now();
    let r = send(&s.client, method.clone(), &url, &headers, body).await;
    let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    s.requests.fetch_add(1, Ordering::Relaxed);
    s.window.lock().unwrap_or_else(|e| e.into_inner()).push(us);
    match r {
        Ok((status, body)) => {
            if status >= 500 {
                s.server_errors.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "{method} {path}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            if method == Method::POST
                && status == 201
                && let Some(id) = id_of(&body)
            {
                s.uploaded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id);
            }
        }
        Err(e) => {
            s.transport_errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("{method} {path}: {e}");
        }
    }
}

fn hostile<'a>(
    s: &'a Shared,
    rng: &mut Rng,
    n: u64,
) -> (Method, String, Vec<(&'static str, &'a str)>, Bytes) {
    let auth = s.auth.as_str();
    let upload = |body: Vec<u8>, ct: &'static str| {
        (
            Method::POST,
            "/v1/images".to_owned(),
            vec![("authorization", auth), ("content-type", ct)],
            Bytes::from(body),
        )
    };
    match rng.below(8) {
        0 => upload((0..4096).map(|i| (i * 7 + n) as u8).collect(), "image/jpeg"),
        1 => upload(s.small[..s.small.len() / 2].to_vec(), "image/jpeg"),
        2 => upload(png_header(50_000_000, 1), "image/png"),
        3 => {
            let mut b = s.small.to_vec();
            let i = (rng.below(b.len() as u64 - 200) + 100) as usize;
            b[i] ^= 0xFF;
            b[i + 1] = 0xFF;
            upload(b, "image/jpeg")
        }
        4 => {
            let good = signed(
                &s.signer,
                &format!("/rs:fit:50:50/plain/{}", s.small_ids[0]),
            );
            let (sig, rest) = good[1..].split_once('/').unwrap_or(("", ""));
            (
                Method::GET,
                format!("/{sig}==/{rest}"),
                vec![],
                Bytes::new(),
            )
        }
        5 => (
            Method::GET,
            format!("/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/rs:fit:{n}:{n}/plain/x"),
            vec![],
            Bytes::new(),
        ),
        6 => (
            Method::GET,
            "/v1/images".to_owned(),
            vec![("authorization", "Bearer eyJhbGciOiJub25lIn0.e30.")],
            Bytes::new(),
        ),
        _ => (
            Method::GET,
            signed(
                &s.signer,
                &format!(
                    "/rs:fill:16383:1/bl:100/plain/{}",
                    s.small_ids[rng.below(s.small_ids.len() as u64) as usize]
                ),
            ),
            vec![],
            Bytes::new(),
        ),
    }
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Least-squares slope of (minutes, MB).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let _ = args.bench;
    let keys = vec![env("PIXGATE__SIGNING__KEYS")];
    let salts = vec![env("PIXGATE__SIGNING__SALTS")];
    let signer = Signer::from_hex(&keys, &salts, 32).expect("signing key");
    let sign = |p: &str| signed(&signer, p);
    let cfg = AuthConfig {
        jwt_hs256_secret: env("PIXGATE__AUTH__JWT_HS256_SECRET"),
        jwt_issuer: env("PIXGATE__AUTH__JWT_ISSUER"),
        jwt_audience: env("PIXGATE__AUTH__JWT_AUDIENCE"),
        ..AuthConfig::default()
    };
    let token = mint_hs256(
        &cfg,
        &TokenRequest {
            sub: "soak".into(),
            role: Role::Editor,
            plan: None,
            ttl_secs: args.secs + 3600,
        },
    )
    .expect("token");
    let auth = format!("Bearer {token}");
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency)
        .build_http();
    let small = Bytes::from(std::fs::read(&args.small).expect("small photo"));
    let large = Bytes::from(std::fs::read(&args.photo).expect("photo"));
    let upload = |body: Bytes, ct: &'static str| {
        let (client, url, auth) = (
            client.clone(),
            format!("{}/v1/images", args.base),
            auth.clone(),
        );
        async move {
            let (status, body) = send(
                &client,
                Method::POST,
                &url,
                &[("authorization", &auth), ("content-type", ct)],
                body,
            )
            .await
            .expect("seed upload");
            assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
            id_of(&body).expect("id")
        }
    };
    let mut small_ids = Vec::new();
    for _ in 0..6 {
        small_ids.push(upload(small.clone(), "image/jpeg").await);
    }
    let large_id = upload(large, "image/jpeg").await;
    // The warmed URLs: three sizes of each small original and one of the large photo.
    let mut hits: Vec<String> = small_ids
        .iter()
        .flat_map(|id| [100, 200, 300].map(|w| sign(&format!("/rs:fit:{w}:0/plain/{id}@webp"))))
        .collect();
    hits.push(sign(&format!("/rs:fit:800:0/plain/{large_id}@jpg")));
    for p in &hits {
        let url = format!("{}{p}", args.base);
        let _ = send(&client, Method::GET, &url, &[], Bytes::new()).await;
    }
    let shared = Arc::new(Shared {
        client: client.clone(),
        base: args.base.clone(),
        signer,
        auth,
        small,
        small_ids,
        large_id,
        hits,
        uploaded: Mutex::new(Vec::new()),
        window: Mutex::new(Vec::new()),
        requests: AtomicU64::new(0),
        server_errors: AtomicU64::new(0),
        transport_errors: AtomicU64::new(0),
        seq: AtomicU64::new(0),
    });
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let mut tasks = Vec::new();
    for c in 0..args.concurrency {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((c as u64 + 1) * 0x1000_0001));
            while Instant::now() < deadline {
                one(&s, &mut rng).await;
            }
        }));
    }
    let start = Instant::now();
    println!("t_s,requests,rps,p50_ms,p99_ms,rss_mb,hwm_mb,fds,threads,5xx");
    let mut last_requests = 0;
    let mut samples: Vec<(f64, f64, u64, u64)> = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(args.interval)).await;
        let mut w = std::mem::take(&mut *shared.window.lock().unwrap_or_else(|e| e.into_inner()));
        w.sort_unstable();
        let q = |p: f64| -> f64 {
            if w.is_empty() {
                0.0
            } else {
                f64::from(w[((w.len() - 1) as f64 * p) as usize]) / 1000.0
            }
        };
        let requests = shared.requests.load(Ordering::Relaxed);
        let t = start.elapsed().as_secs_f64();
        let rss = proc_status(args.pid, "VmRSS:") as f64 / 1024.0;
        let hwm = proc_status(args.pid, "VmHWM:") as f64 / 1024.0;
        let (fd, threads) = (fds(args.pid), proc_status(args.pid, "Threads:"));
        println!(
            "{t:.0},{requests},{:.0},{:.1},{:.1},{rss:.0},{hwm:.0},{fd},{threads},{}",
            (requests - last_requests) as f64 / args.interval as f64,
            q(0.5),
            q(0.99),
            shared.server_errors.load(Ordering::Relaxed)
        );
        last_requests = requests;
        samples.push((t / 60.0, rss, fd, threads));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Verdict: slope over the last 20 minutes, or the last two thirds of a shorter run.
    let total_min = start.elapsed().as_secs_f64() / 60.0;
    let from = if total_min > 30.0 {
        total_min - 20.0
    } else {
        total_min / 3.0
    };
    let tail: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.0 >= from)
        .map(|s| (s.0, s.1))
        .collect();
    let warm: Vec<&(f64, f64, u64, u64)> = samples.iter().filter(|s| s.0 >= from).collect();
    let range = |f: fn(&&(f64, f64, u64, u64)) -> u64| {
        (
            warm.iter().map(f).min().unwrap_or(0),
            warm.iter().map(f).max().unwrap_or(0),
        )
    };
    let (fd_min, fd_max) = range(|s| s.2);
    let (th_min, th_max) = range(|s| s.3);
    let rss_max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    println!(
        "# {:.1} min, {} requests, {} 5xx, {} transport errors; RSS max {rss_max:.0} MB, last {:.0} MB, slope from minute {from:.1}: {:+.2} MB/min; fds {fd_min}..{fd_max}, threads {th_min}..{th_max} (from minute {from:.1})",
        total_min,
        shared.requests.load(Ordering::Relaxed),
        shared.server_errors.load(Ordering::Relaxed),
        shared.transport_errors.load(Ordering::Relaxed),
        samples.last().map_or(0.0, |s| s.1),
        slope(&tail),
    );
}
