//! Faults under load (issue 15): storage and Redis stalled with SIGSTOP in the middle of mixed
//! traffic, a full disk under the audit spool, and SIGKILL of pixgate during writes. Each test
//! owns the service it breaks (a private Garage or Redis, its own buckets), so nothing else
//! running in parallel is disturbed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use pixgate::auth::Role;

use crate::harness::*;

/// What one request of the mixed traffic did.
#[derive(Debug, Clone)]
struct Sample {
    phase: &'static str,
    kind: &'static str,
    status: u16,
    code: String,
    ms: u128,
}

/// Shared state of a traffic run.
struct Traffic {
    base: String,
    token: String,
    owner: String,
    /// A warmed signed URL (memory-cache hit).
    hit: String,
    /// An image whose misses are rendered on demand.
    source: String,
    phase: Mutex<&'static str>,
    samples: Mutex<Vec<Sample>>,
    /// Images that answered 201, and what a delete of them answered (if one was sent).
    created: Mutex<Vec<(String, Option<u16>)>>,
    stop: std::sync::atomic::AtomicBool,
}

/// Client-side bound of one request: far above any server deadline, so a hang is recorded as
/// a hang instead of stopping the test.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

impl Traffic {
    fn phase(&self) -> &'static str {
        *self.phase.lock().unwrap()
    }

    async fn timed(
        &self,
        kind: &'static str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Option<Resp> {
        let phase = self.phase();
        let t = Instant::now();
        let url = format!("{}{}", self.base, path);
        let r = tokio::time::timeout(CLIENT_LIMIT, request(method, &url, headers, body)).await;
        let ms = t.elapsed().as_millis();
        let (status, code, resp) = match r {
            Ok(resp) => {
                let code = if resp.status >= 400 {
                    serde_json::from_slice::<serde_json::Value>(&resp.body)
                        .ok()
                        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                (resp.status, code, Some(resp))
            }
            Err(_) => (0, "client timeout".to_owned(), None),
        };
        self.samples.lock().unwrap().push(Sample {
            phase,
            kind,
            status,
            code,
            ms,
        });
        resp
    }

    /// One client looping over one kind of request until stopped.
    async fn client(self: Arc<Self>, kind: &'static str) {
        let auth = bearer(&self.token);
        let mut n = 0u32;
        while !self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            match kind {
                "hit" => {
                    self.timed(kind, Method::GET, &self.hit, &[], Bytes::new())
                        .await;
                }
                "miss" => {
                    let path = signed(&format!(
                        "/rs:fit:{}:{}/plain/{}",
                        20 + n % 200,
                        20 + n % 150,
                        self.source
                    ));
                    self.timed(kind, Method::GET, &path, &[], Bytes::new())
                        .await;
                }
                "upload" => {
                    let r = self
                        .timed(
                            kind,
                            Method::POST,
                            "/v1/images",
                            &[("authorization", &auth), ("content-type", "image/jpeg")],
                            fixture("photo_320x240.jpg"),
                        )
                        .await;
                    if let Some(r) = r.filter(|r| r.status == 201) {
                        let id = r.json()["id"].as_str().unwrap().to_owned();
                        self.created.lock().unwrap().push((id, None));
                    }
                }
                "meta_and_delete" => {
                    let next = {
                        let created = self.created.lock().unwrap();
                        created
                            .iter()
                            .rev()
                            .find(|(_, d)| d.is_none())
                            .map(|(id, _)| id.clone())
                    };
                    match next {
                        Some(id) if n.is_multiple_of(2) => {
                            let r = self
                                .timed(
                                    "delete",
                                    Method::DELETE,
                                    &format!("/v1/images/{id}"),
                                    &[("authorization", &auth)],
                                    Bytes::new(),
                                )
                                .await;
                            let status = r.map_or(0, |r| r.status);
                            let mut created = self.created.lock().unwrap();
                            if let Some(e) = created.iter_mut().find(|(i, _)| *i == id) {
                                e.1 = Some(status);
                            }
                        }
                        _ => {
                            self.timed(
                                "meta",
                                Method::GET,
                                &format!("/v1/images/{}", self.source),
                                &[("authorization", &auth)],
                                Bytes::new(),
                            )
                            .await;
                        }
                    }
                }
                "readyz" => {
                    self.timed(kind, Method::GET, "/readyz", &[], Bytes::new())
                        .await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => unreachable!(),
            }
        }
    }

    fn of(&self, phase: &str) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.phase == phase)
            .cloned()
            .collect()
    }
}

fn summary(samples: &[Sample]) -> String {
    let mut by: std::collections::BTreeMap<(&str, u16, &str), (usize, u128)> = Default::default();
    for s in samples {
        let e = by.entry((s.kind, s.status, s.code.as_str())).or_default();
        e.0 += 1;
        e.1 = e.1.max(s.ms);
    }
    by.iter()
        .map(|((k, st, c), (n, max))| format!("{k} {st} {c}: {n} (max {max} ms)"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every request of `phase` finished within `bound_ms`, and none was a 5xx other than 503.
fn assert_bounded(t: &Traffic, phase: &str, bound_ms: u128) {
    let samples = t.of(phase);
    assert!(
        samples.len() > 10,
        "{phase}: too little traffic:\n{}",
        summary(&samples)
    );
    let report = summary(&samples);
    for s in &samples {
        assert!(s.status != 0, "{phase}: a request hung:\n{report}");
        assert!(
            s.ms <= bound_ms,
            "{phase}: {} took {} ms (bound {bound_ms}):\n{report}",
            s.kind,
            s.ms
        );
        assert!(
            s.status < 500 || s.status == 503,
            "{phase}: {} answered {}:\n{report}",
            s.kind,
            s.status
        );
    }
    eprintln!("--- {phase}\n{report}");
}

/// All requests of `phase` succeeded.
fn assert_all_ok(t: &Traffic, phase: &str) {
    let samples = t.of(phase);
    let report = summary(&samples);
    assert!(samples.len() > 10, "{phase}: too little traffic:\n{report}");
    for s in &samples {
        assert!(
            (200..300).contains(&s.status),
            "{phase}: {} answered {} {}:\n{report}",
            s.kind,
            s.status,
            s.code
        );
    }
    eprintln!("--- {phase}\n{report}");
}

async fn run_phase(t: &Arc<Traffic>, phase: &'static str, d: Duration) {
    *t.phase.lock().unwrap() = phase;
    tokio::time::sleep(d).await;
}

/// SIGSTOP Garage, then Redis, during mixed traffic (hits, misses, uploads, metadata reads,
/// deletes, readiness): every request ends within `server.request_timeout_secs` (503 where it
/// needed the stalled service), hits keep being served, readiness answers within its own
/// deadline, and after SIGCONT everything succeeds again; every `201` image is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_storage_and_redis_fail_fast_and_recover() {
    let garage = PrivateGarage::start();
    let redis = PrivateRedis::start();
    let redis_url = redis.url();
    let request_timeout_secs = 6u64;
    let s = Server::start_with(
        Backend::S3,
        &[
            ("PIXGATE__STORAGE__S3_ENDPOINT", garage.endpoint.as_str()),
            ("PIXGATE__REDIS__URL", redis_url.as_str()),
            ("PIXGATE__SERVER__REQUEST_TIMEOUT_SECS", "6"),
            ("PIXGATE__STORAGE__TIMEOUT_SECS", "2"),
            ("PIXGATE__SERVER__READINESS_TIMEOUT_MS", "500"),
            ("PIXGATE__TRANSFORM__WORKERS", "2"),
            ("PIXGATE__LIMITS__UPLOADS_PER_HOUR", "100000"),
            ("PIXGATE__LIMITS__TRANSFORMS_PER_HOUR", "100000"),
        ],
    );
    let owner = crate::identity::unique("faults");
    let source = upload_fixture(&s, &owner, "photo_320x240.jpg", "image/jpeg").await;
    let hit = signed(&format!("/rs:fit:64:64/plain/{source}"));
    assert_eq!(get(&s.url(&hit), &[]).await.status, 200);
    let t = Arc::new(Traffic {
        base: s.base.clone(),
        token: token(&owner, Role::Editor),
        owner: owner.clone(),
        hit,
        source,
        phase: Mutex::new("before"),
        samples: Mutex::new(Vec::new()),
        created: Mutex::new(Vec::new()),
        stop: std::sync::atomic::AtomicBool::new(false),
    });
    let clients: Vec<_> = [
        "hit",
        "miss",
        "upload",
        "upload",
        "meta_and_delete",
        "readyz",
    ]
    .into_iter()
    .map(|k| tokio::spawn(t.clone().client(k)))
    .collect();

    run_phase(&t, "before", Duration::from_secs(3)).await;
    signal(garage.pid(), libc::SIGSTOP);
    run_phase(&t, "storage stalled", Duration::from_secs(8)).await;
    // Probes while stalled: metrics and hits from this task too.
    let m = tokio::time::timeout(Duration::from_secs(2), metrics(&s)).await;
    assert!(m.is_ok(), "/metrics hung while storage was stalled");
    signal(garage.pid(), libc::SIGCONT);
    // Requests that started during the stall finish within their deadline; then recovery.
    run_phase(
        &t,
        "storage recovering",
        Duration::from_secs(request_timeout_secs + 2),
    )
    .await;
    run_phase(&t, "storage recovered", Duration::from_secs(4)).await;
    signal(redis.pid(), libc::SIGSTOP);
    run_phase(&t, "redis stalled", Duration::from_secs(6)).await;
    signal(redis.pid(), libc::SIGCONT);
    run_phase(&t, "redis recovering", Duration::from_secs(2)).await;
    run_phase(&t, "after", Duration::from_secs(4)).await;
    t.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let bound = u128::from(request_timeout_secs) * 1000 + 1500;
    for phase in [
        "before",
        "storage stalled",
        "storage recovering",
        "storage recovered",
        "redis stalled",
        "redis recovering",
        "after",
    ] {
        assert_bounded(&t, phase, bound);
    }
    let stalled = t.of("storage stalled");
    // Hits never needed storage: served throughout, fast.
    let hits: Vec<_> = stalled.iter().filter(|s| s.kind == "hit").collect();
    assert!(
        hits.len() > 20 && hits.iter().all(|s| s.status == 200 && s.ms < 1000),
        "{}",
        summary(&stalled)
    );
    // Readiness says "unready" within its own deadline, far inside a probe's 1 s.
    let ready: Vec<_> = stalled.iter().filter(|s| s.kind == "readyz").collect();
    assert!(
        ready.iter().any(|s| s.status == 503),
        "{}",
        summary(&stalled)
    );
    assert!(ready.iter().all(|s| s.ms < 1000), "{}", summary(&stalled));
    // What needed storage failed as 503 within a few storage deadlines (a miss may try the
    // derived object and then the original), well inside the request's.
    for s in stalled
        .iter()
        .filter(|s| s.status == 503 && s.kind != "readyz")
    {
        assert!(
            s.ms < 2 * 2000 + 1500,
            "{} took {} ms to fail",
            s.kind,
            s.ms
        );
    }
    // Full recovery: every request of the last storage phase and after Redis resumed is 2xx.
    assert_all_ok(&t, "storage recovered");
    assert_all_ok(&t, "after");
    // Redis stalled: limits fall back to the in-process limiter after `redis.timeout_ms`, so
    // requests keep succeeding.
    let redis_stalled = t.of("redis stalled");
    let ok = redis_stalled
        .iter()
        .filter(|s| (200..300).contains(&s.status))
        .count();
    assert!(
        ok * 10 >= redis_stalled.len() * 9,
        "{}",
        summary(&redis_stalled)
    );

    // Every 201 is whole: metadata and a render, unless its delete answered 204. A delete
    // that failed with 503 (storage stopped mid-delete: its first write may land once the
    // store resumes) left the image whole or gone, never half; asking again finishes it.
    let created = t.created.lock().unwrap().clone();
    assert!(created.len() > 5, "too few uploads succeeded");
    let auth = bearer(&t.token);
    let state = |id: String| {
        let (s, auth) = (&s, auth.clone());
        async move {
            let meta = get(
                &s.url(&format!("/v1/images/{id}")),
                &[("authorization", &auth)],
            )
            .await;
            let render = get(&s.url(&signed(&format!("/rs:fit:33:33/plain/{id}"))), &[]).await;
            (meta.status, render.status)
        }
    };
    for (id, delete) in created {
        let st = state(id.clone()).await;
        match delete {
            None => assert_eq!(st, (200, 200), "{id} answered 201"),
            Some(204) => assert_eq!(st, (404, 404), "{id} deleted"),
            Some(503) => {
                assert!(
                    st == (200, 200) || st == (404, 404),
                    "{id}: failed delete left {st:?}"
                );
                let again = request(
                    Method::DELETE,
                    &s.url(&format!("/v1/images/{id}")),
                    &[("authorization", &auth)],
                    Bytes::new(),
                )
                .await;
                assert!(
                    matches!(again.status, 204 | 404),
                    "{id}: DELETE again: {}",
                    again.status
                );
                assert_eq!(
                    state(id.clone()).await,
                    (404, 404),
                    "{id} after DELETE again"
                );
            }
            Some(other) => panic!("delete of {id} answered {other}"),
        }
    }
    let _ = t.owner.len();
}

/// The audit spool on a disk that fills up: the service keeps answering, the batches that did
/// not fit are counted in `pixgate_audit_dropped_total` and logged, and once there is room
/// again events reach the archive.
#[tokio::test]
async fn audit_spool_on_a_full_disk_counts_drops_and_serves_on() {
    // A 256 KiB tmpfs in a mount namespace of the server's own (`unshare`, no root needed
    // where user namespaces are allowed); the test reaches it through /proc/{pid}/root.
    let spool = "/tmp/pixgate-full-spool";
    let wrapper = [
        "unshare",
        "--mount",
        "--map-root-user",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mkdir -p \"$0\" && mount -t tmpfs -o size=256k tmpfs \"$0\" && exec \"$@\"",
        spool,
    ];
    let s = Server::start_wrapped(
        Backend::Fs,
        &[
            ("PIXGATE__AUDIT__SPOOL_DIR", spool),
            ("PIXGATE__AUDIT__FLUSH_SECONDS", "1"),
        ],
        &wrapper,
    );
    let owner = crate::identity::unique("fullspool");
    let id = upload_fixture(&s, &owner, "photo_320x240.jpg", "image/jpeg").await;
    let auth = bearer(&token(&owner, Role::Editor));
    // The archive takes batches while there is room.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "pixgate_audit_dropped_total", ""), 0.0);

    // Fill the disk.
    let mount = format!("/proc/{}/root{spool}", s.pid());
    let filler = format!("{mount}/filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // Audited requests keep being served while their batches cannot be spooled.
    for _ in 0..20 {
        let r = get(
            &s.url(&format!("/v1/images/{id}")),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(r.status, 200);
        let r = request(
            Method::PATCH,
            &s.url(&format!("/v1/images/{id}")),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Bytes::from_static(br#"{"title":"full disk"}"#),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    }
    let mut dropped = 0.0;
    for _ in 0..50 {
        dropped = metric(&metrics(&s).await, "pixgate_audit_dropped_total", "");
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dropped > 0.0,
        "no drop counted on a full spool disk:\n{}",
        s.log()
    );
    assert!(
        s.log_with(&["audit spool write failed: batch not archived"])
            .contains("audit spool write failed: batch not archived"),
        "no log line for the dropped batch:\n{}",
        s.log()
    );
    assert_eq!(get(&s.url("/healthz"), &[]).await.status, 200);

    // Room again: new events are spooled and archived, the drop counter stops.
    std::fs::remove_file(&filler).unwrap();
    for _ in 0..5 {
        let r = get(
            &s.url(&format!("/v1/images/{id}")),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let m = metrics(&s).await;
    assert_eq!(
        metric(&m, "pixgate_audit_dropped_total", ""),
        dropped,
        "still dropping after space returned"
    );
    assert_eq!(metric(&m, "pixgate_audit_spooled_events", ""), 0.0);
}

/// What the crash test's clients saw.
#[derive(Default)]
struct Seen {
    /// Uploads that answered 201.
    created: Vec<String>,
    /// Deletes by image: the status, or 0 when the connection died first.
    deletes: Vec<(String, u16)>,
    /// The erasure's status (0: interrupted), if it was sent.
    erasure: Option<u16>,
}

/// Kill -9 during uploads, deletes, an erasure and derived writes; restart on the same
/// storage. Every `201` image is whole (metadata, listing and a render); every `204` delete
/// and erasure stayed done; an interrupted delete left the image either whole or gone, never
/// half; `pixgate fsck --repair` then clears what the crash left, and touches no live image.
async fn kill_9_during_writes(backend: Backend) {
    let mut extra_owned = match backend {
        Backend::Fs => Vec::new(),
        Backend::S3 => own_buckets("crash"),
    };
    for k in [
        "PIXGATE__LIMITS__UPLOADS_PER_HOUR",
        "PIXGATE__LIMITS__TRANSFORMS_PER_HOUR",
    ] {
        extra_owned.push((k.to_owned(), "100000".to_owned()));
    }
    let extra: Vec<(&str, &str)> = extra_owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut s = Server::start_with(backend, &extra);
    let a = crate::identity::unique("crash-a");
    let b = crate::identity::unique("crash-b");
    let mut doomed = Vec::new();
    for _ in 0..8 {
        doomed.push(upload_fixture(&s, &a, "photo_320x240.jpg", "image/jpeg").await);
    }
    let mut erased = Vec::new();
    for _ in 0..4 {
        erased.push(upload_fixture(&s, &b, "photo_320x240.jpg", "image/jpeg").await);
    }
    let (ta, tb) = (token(&a, Role::Editor), token(&b, Role::Editor));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let base = s.base.clone();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (seen, base, auth) = (seen.clone(), base.clone(), bearer(&ta));
        tasks.push(tokio::spawn(async move {
            loop {
                let r = try_request(
                    Method::POST,
                    &format!("{base}/v1/images"),
                    &[("authorization", &auth), ("content-type", "image/jpeg")],
                    fixture("photo_320x240.jpg"),
                )
                .await;
                match r {
                    Ok(r) if r.status == 201 => {
                        let id = r.json()["id"].as_str().unwrap().to_owned();
                        seen.lock().unwrap().created.push(id);
                    }
                    Ok(r) => panic!("upload answered {}", r.status),
                    Err(_) => return,
                }
            }
        }));
    }
    {
        let (seen, base, auth, doomed) = (seen.clone(), base.clone(), bearer(&ta), doomed.clone());
        tasks.push(tokio::spawn(async move {
            for id in doomed {
                tokio::time::sleep(Duration::from_millis(60)).await;
                let r = try_request(
                    Method::DELETE,
                    &format!("{base}/v1/images/{id}"),
                    &[("authorization", &auth)],
                    Bytes::new(),
                )
                .await;
                let status = r.map_or(0, |r| r.status);
                seen.lock().unwrap().deletes.push((id, status));
                if status == 0 {
                    return;
                }
            }
        }));
    }
    {
        // Misses: each one ends in a background derived write.
        let (base, doomed) = (base.clone(), doomed.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0u32.. {
                let id = &doomed[n as usize % doomed.len()];
                let path = signed(&format!("/rs:fit:{}:{}/plain/{id}", 10 + n, 10 + n));
                if try_request(Method::GET, &format!("{base}{path}"), &[], Bytes::new())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    {
        let (seen, base, auth) = (seen.clone(), base.clone(), bearer(&tb));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(350)).await;
            seen.lock().unwrap().erasure = Some(0);
            let r = try_request(
                Method::DELETE,
                &format!("{base}/v1/me"),
                &[("authorization", &auth)],
                Bytes::new(),
            )
            .await;
            seen.lock().unwrap().erasure = Some(r.map_or(0, |r| r.status));
        }));
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    s.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        !seen.created.is_empty(),
        "no upload finished before the kill"
    );

    let s2 = match backend {
        Backend::Fs => restart_on_same_storage(Backend::Fs, &s, &[]),
        Backend::S3 => Server::start_with(Backend::S3, &extra),
    };
    let (auth_a, auth_b) = (bearer(&ta), bearer(&tb));
    let state = |id: String, auth: String| {
        let s2 = &s2;
        async move {
            let meta = get(
                &s2.url(&format!("/v1/images/{id}")),
                &[("authorization", &auth)],
            )
            .await;
            let render = get(&s2.url(&signed(&format!("/rs:fit:50:50/plain/{id}"))), &[]).await;
            (meta.status, render.status)
        }
    };
    let deleted: Vec<&String> = seen
        .deletes
        .iter()
        .filter(|(_, st)| *st == 204)
        .map(|(id, _)| id)
        .collect();
    for id in &seen.created {
        assert_eq!(
            state(id.clone(), auth_a.clone()).await,
            (200, 200),
            "{id} answered 201"
        );
    }
    for (id, status) in &seen.deletes {
        let st = state(id.clone(), auth_a.clone()).await;
        match status {
            204 => assert_eq!(st, (404, 404), "{id}: delete answered 204"),
            0 => {
                assert!(
                    st == (404, 404) || st == (200, 200),
                    "{id}: interrupted delete left {st:?}"
                );
                // Asking again finishes it (or finds it finished).
                let again = request(
                    Method::DELETE,
                    &s2.url(&format!("/v1/images/{id}")),
                    &[("authorization", &auth_a)],
                    Bytes::new(),
                )
                .await;
                assert!(
                    again.status == 204 || again.status == 404,
                    "{id}: DELETE again answered {}",
                    again.status
                );
                let after = state(id.clone(), auth_a.clone()).await;
                assert_eq!(after, (404, 404), "{id} after DELETE again");
            }
            other => panic!("delete of {id} answered {other}"),
        }
    }
    // Nothing half-written is visible: every listed image renders.
    let list = |auth: String| {
        let s2 = &s2;
        async move {
            // Every page: a fast machine uploads more than one page before the kill.
            let mut ids = Vec::new();
            let mut cursor = String::new();
            loop {
                let url = s2.url(&format!("/v1/images?limit=100&cursor={cursor}"));
                let r = get(&url, &[("authorization", &auth)]).await;
                assert_eq!(r.status, 200);
                let page = r.json();
                ids.extend(
                    page["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i["id"].as_str().unwrap().to_owned()),
                );
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = c.to_owned(),
                    None => return ids,
                }
            }
        }
    };
    let listed = list(auth_a.clone()).await;
    for id in &listed {
        assert_eq!(
            state(id.clone(), auth_a.clone()).await,
            (200, 200),
            "{id} is listed"
        );
        assert!(!deleted.contains(&id), "{id} listed after its 204");
    }
    for id in &seen.created {
        assert!(listed.contains(id), "{id} answered 201 but is not listed");
    }
    // The erasure: done if it answered 204; otherwise finished by asking again.
    if seen.erasure != Some(204) {
        let r = request(
            Method::DELETE,
            &s2.url("/v1/me"),
            &[("authorization", &auth_b)],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 204, "erasure retried after the crash");
    }
    assert!(list(auth_b.clone()).await.is_empty());
    for id in &erased {
        assert_eq!(
            state(id.clone(), auth_b.clone()).await,
            (404, 404),
            "{id} was erased"
        );
    }

    // fsck finds what the crash left, repairs it, and leaves every live image whole.
    let env = server_env(backend, s.dir.path(), &extra);
    let (_, report) = crate::hardening::fsck(&env, &["--min-age", "0s"]);
    eprintln!("fsck after kill -9 ({backend:?}): {report}");
    let (_, _) = crate::hardening::fsck(&env, &["--repair", "--min-age", "0s"]);
    let (code, after) = crate::hardening::fsck(&env, &["--min-age", "0s"]);
    assert_eq!(code, 0, "findings remain after --repair: {after:#}");
    for id in &seen.created {
        assert_eq!(
            state(id.clone(), auth_a.clone()).await,
            (200, 200),
            "{id} after fsck --repair"
        );
    }
    eprintln!(
        "kill -9 ({backend:?}): {} uploads answered 201, deletes {:?}, erasure {:?}",
        seen.created.len(),
        seen.deletes.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        seen.erasure
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_writes_fs() {
    kill_9_during_writes(Backend::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_writes_s3() {
    kill_9_during_writes(Backend::S3).await;
}
