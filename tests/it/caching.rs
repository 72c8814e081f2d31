//! The cache layers end to end: memory → derived store → single-flight computation, exact HTTP
//! caching headers, eager presets after uploads, purges (derived prefix, CDN hook), and cache
//! hits served while the CPU queue is full. Real servers, real Redis and Garage.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use pixgate::auth::Role;
use pixgate::image::{ImageFormat, probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::both_backends;
use crate::harness::*;

both_backends!(
    restart_serves_derived_hits_without_decoding,
    concurrent_identical_misses_compute_once,
    eager_presets_are_stored_after_upload,
    delete_purges_every_layer_and_calls_the_cdn_hook,
    oversize_results_skip_memory_but_not_the_derived_store,
    unused_derived_objects_expire_and_used_ones_stay,
);

const COMPUTED: &str = "pixgate_transform_duration_seconds_count";

fn cache(t: &str, layer: &str, result: &str) -> f64 {
    metric(
        t,
        "pixgate_cache_requests_total",
        &format!("{{layer=\"{layer}\",result=\"{result}\"}}"),
    )
}

fn derived_writes(t: &str, result: &str) -> f64 {
    metric(
        t,
        "pixgate_derived_writes_total",
        &format!("{{result=\"{result}\"}}"),
    )
}

/// Keys under `derived/{id}/` in the derived store, through the backend itself.
async fn derived_keys(backend: Backend, s: &Server, id: &str) -> Vec<String> {
    let prefix = format!("derived/{id}/");
    match backend {
        Backend::Fs => {
            let dir = s.dir.path().join("data/derived").join(&prefix);
            let mut keys: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| format!("{prefix}{}", e.file_name().to_string_lossy()))
                        .filter(|k| !k.contains(".tmp"))
                        .collect()
                })
                .unwrap_or_default();
            keys.sort();
            keys
        }
        Backend::S3 => s3_keys(&s3_client().await, DERIVED_BUCKET)
            .await
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect(),
    }
}

async fn restart_serves_derived_hits_without_decoding(backend: Backend) {
    let mut s = Server::start(backend);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let url_path = signed(&format!("/rs:fit:100:100/f:webp/plain/{id}"));
    let first = get(&s.url(&url_path), &[]).await;
    assert_eq!(first.status, 200);
    let etag = first.header("etag").unwrap().to_owned();
    // Written in the background after the response.
    let m = wait_for(&s, "the derived write", |m| derived_writes(m, "ok") == 1.0).await;
    assert_eq!(cache(&m, "derived", "miss"), 1.0);
    assert_eq!(metric(&m, COMPUTED, ""), 1.0);
    let keys = derived_keys(backend, &s, &id).await;
    assert_eq!(
        keys,
        vec![format!("derived/{id}/{}.webp", etag.trim_matches('"'))],
        "one object under the image's prefix, named by the ETag digest"
    );
    // The second identical request is a memory hit.
    let second = get(&s.url(&url_path), &[]).await;
    assert_eq!(second.body, first.body);
    let m = metrics(&s).await;
    assert_eq!(cache(&m, "memory", "hit"), 1.0);
    assert_eq!(metric(&m, COMPUTED, ""), 1.0);
    s.terminate();

    // After a restart the memory is empty: the result comes from the derived store, no decode.
    let s2 = restart_on_same_storage(backend, &s, &[]);
    let again = get(&s2.url(&url_path), &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body, "byte-identical");
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(again.header("content-type"), Some("image/webp"));
    let m = metrics(&s2).await;
    assert_eq!(cache(&m, "memory", "miss"), 1.0);
    assert_eq!(cache(&m, "derived", "hit"), 1.0);
    assert_eq!(
        metric(&m, COMPUTED, ""),
        0.0,
        "a derived hit decodes nothing"
    );
    // ... and is now in memory.
    get(&s2.url(&url_path), &[]).await;
    let m = metrics(&s2).await;
    assert_eq!(cache(&m, "memory", "hit"), 1.0);
    assert_eq!(cache(&m, "derived", "hit"), 1.0);

    // A corrupt derived object is a miss, recomputed (and rewritten), never served.
    let other = signed(&format!("/rs:fit:60:60/f:png/plain/{id}"));
    let good = get(&s2.url(&other), &[]).await;
    assert_eq!(good.status, 200);
    wait_for(&s2, "the second derived write", |m| {
        derived_writes(m, "ok") == 1.0
    })
    .await;
    let digest = good.header("etag").unwrap().trim_matches('"').to_owned();
    let key = format!("derived/{id}/{digest}.png");
    match backend {
        Backend::Fs => {
            std::fs::write(s.dir.path().join("data/derived").join(&key), b"junk").unwrap()
        }
        Backend::S3 => {
            s3_client()
                .await
                .put_object()
                .bucket(DERIVED_BUCKET)
                .key(&key)
                .body(Bytes::from_static(b"junk").into())
                .send()
                .await
                .unwrap();
        }
    }
    let s3 = restart_on_same_storage(backend, &s, &[]);
    let r = get(&s3.url(&other), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, good.body);
    let m = metrics(&s3).await;
    assert_eq!(cache(&m, "derived", "miss"), 1.0);
    assert_eq!(metric(&m, COMPUTED, ""), 1.0);
}

async fn concurrent_identical_misses_compute_once(backend: Backend) {
    let s = Server::start(backend);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    // Large enough to take a while, so the requests overlap.
    let url = s.url(&signed(&format!(
        "/rs:fit:2000:1500/el:1/bl:2/f:png/plain/{id}"
    )));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        bodies.push(r.body);
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]));
    let p = probe(&bodies[0]).unwrap();
    assert_eq!(
        (p.format, p.width, p.height),
        (ImageFormat::Png, 2000, 1500)
    );
    let m = metrics(&s).await;
    assert_eq!(
        metric(&m, COMPUTED, ""),
        1.0,
        "one computation for 50 requests"
    );
    let coalesced = metric(&m, "pixgate_singleflight_coalesced_total", "");
    let hits = cache(&m, "memory", "hit");
    assert_eq!(coalesced + hits, 49.0, "the rest waited or hit memory");
    assert!(coalesced > 0.0, "overlapping misses were coalesced");
    assert_eq!(cache(&m, "derived", "miss"), 1.0, "one derived lookup");

    // Every request is authorised before it may join a flight: a bearer non-owner racing the
    // owner for the same computation gets 404, never the result.
    let bearer_url = s.url(&format!("/_/rs:fit:2000:1500/el:1/bl:3/f:png/plain/{id}"));
    let owner = bearer(&token("alice", Role::Viewer));
    let stranger = bearer(&token("mallory", Role::Viewer));
    let owner_h = [("authorization", owner.as_str())];
    let stranger_h = [("authorization", stranger.as_str())];
    let (a, b) = tokio::join!(get(&bearer_url, &owner_h), get(&bearer_url, &stranger_h));
    assert_eq!(a.status, 200);
    assert_eq!(b.status, 404);
}

async fn eager_presets_are_stored_after_upload(backend: Backend) {
    let extra = [
        ("PIXGATE__PRESETS__THUMB", "rs:fill:64:64"),
        ("PIXGATE__PRESETS__ICON", "rs:fit:32:32/f:png"),
        ("PIXGATE__PRESETS__EAGER", "thumb,icon"),
    ];
    let s = Server::start_with(backend, &extra);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    // thumb in WebP (auto format) and JPEG (fallback), icon in PNG.
    let m = wait_for(&s, "eager renders", |m| {
        metric(m, "pixgate_eager_renders_total", "{result=\"ok\"}") == 3.0
            && derived_writes(m, "ok") == 3.0
    })
    .await;
    assert_eq!(metric(&m, COMPUTED, ""), 3.0);
    let keys = derived_keys(backend, &s, &id).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    for ext in ["webp", "jpg", "png"] {
        assert!(keys.iter().any(|k| k.ends_with(ext)), "{ext}: {keys:?}");
    }
    // First views are hits, whichever format the browser gets.
    let thumb = s.url(&signed(&format!("/pr:thumb/plain/{id}")));
    let webp = get(&thumb, &[("accept", "image/webp,*/*")]).await;
    let jpeg = get(&thumb, &[("accept", "image/png")]).await;
    let icon = get(&s.url(&signed(&format!("/pr:icon/plain/{id}"))), &[]).await;
    assert_eq!(webp.header("content-type"), Some("image/webp"));
    assert_eq!(jpeg.header("content-type"), Some("image/jpeg"));
    assert_eq!(icon.header("content-type"), Some("image/png"));
    assert_eq!(probe(&webp.body).unwrap().width, 64);
    let m = metrics(&s).await;
    assert_eq!(metric(&m, COMPUTED, ""), 3.0, "no view computed anything");
    assert_eq!(cache(&m, "memory", "hit"), 3.0);
    // A URL minted by the API (with exp:) names the same result.
    let minted = request(
        Method::POST,
        &s.url(&format!("/v1/images/{id}/url")),
        &[("authorization", &bearer(&token("alice", Role::Viewer)))],
        Bytes::from_static(br#"{"options":"pr:icon"}"#),
    )
    .await;
    let url = minted.json()["url"].as_str().unwrap().to_owned();
    let r = get(&s.url(&url), &[]).await;
    assert_eq!(r.body, icon.body);
    assert_eq!(metric(&metrics(&s).await, COMPUTED, ""), 3.0);
    // After a restart, the eager results are derived hits.
    let s2 = restart_on_same_storage(backend, &s, &extra);
    let r = get(&s2.url(&signed(&format!("/pr:icon/plain/{id}"))), &[]).await;
    assert_eq!(r.body, icon.body);
    let m = metrics(&s2).await;
    assert_eq!(cache(&m, "derived", "hit"), 1.0);
    assert_eq!(metric(&m, COMPUTED, ""), 0.0);
}

/// A purge-hook endpoint: records each request (line, headers, body) and answers with the
/// statuses given, in order (the last one repeats).
struct Hook {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn hook_server(statuses: Vec<u16>) -> Hook {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Head, then Content-Length bytes of body.
            while let Ok(k) = sock.read(&mut chunk).await {
                if k == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..k]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf).to_string());
            let status = statuses[n.min(statuses.len() - 1)];
            n += 1;
            let resp =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    Hook { port, seen }
}

async fn delete_purges_every_layer_and_calls_the_cdn_hook(backend: Backend) {
    // The CDN answers 503 once, then accepts: one retry.
    let hook = hook_server(vec![503, 200]).await;
    let purge_url = format!("http://127.0.0.1:{}/service/svc/purge/{{key}}", hook.port);
    let s = Server::start_with(
        backend,
        &[
            ("PIXGATE__CDN__PURGE_URL", purge_url.as_str()),
            ("PIXGATE__CDN__PURGE_HEADERS", "Fastly-Key: hook-secret-123"),
            (
                "PIXGATE__CDN__PURGE_BODY",
                r#"{"tags":["{key}"],"ref":"{nonce}"}"#,
            ),
        ],
    );
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let keep = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let paths: Vec<String> = ["w:50/f:webp", "w:60/f:png", "w:70/f:jpg"]
        .iter()
        .map(|o| signed(&format!("/{o}/plain/{id}")))
        .collect();
    for p in &paths {
        let r = get(&s.url(p), &[]).await;
        assert_eq!(r.status, 200);
        // Every transform response names the image for purges by key.
        assert_eq!(r.header("surrogate-key"), Some(id.as_str()));
        assert_eq!(r.header("cache-tag"), Some(id.as_str()));
    }
    let kept = signed(&format!("/w:50/f:webp/plain/{keep}"));
    assert_eq!(get(&s.url(&kept), &[]).await.status, 200);
    wait_for(&s, "derived writes", |m| derived_writes(m, "ok") == 4.0).await;
    assert_eq!(derived_keys(backend, &s, &id).await.len(), 3);

    let del = request(
        Method::DELETE,
        &s.url(&format!("/v1/images/{id}")),
        &[("authorization", &bearer(&token("alice", Role::Editor)))],
        Bytes::new(),
    )
    .await;
    assert_eq!(del.status, 204);
    // Gone from the derived store before the 204; other images untouched.
    assert!(derived_keys(backend, &s, &id).await.is_empty());
    assert_eq!(derived_keys(backend, &s, &keep).await.len(), 1);
    for p in &paths {
        let r = get(&s.url(p), &[]).await;
        assert_eq!(r.status, 404, "memory purged too");
        // A verified signed URL's 404 may be cached briefly at the edge; nothing longer.
        assert_eq!(r.header("cache-control"), Some("public, max-age=10"));
    }
    assert_eq!(get(&s.url(&kept), &[]).await.status, 200);

    // The hook: retried after the 503, then accepted; key in the URL and the body template.
    let m = wait_for(&s, "the CDN purge", |m| {
        metric(m, "pixgate_cdn_purges_total", "{result=\"ok\"}") == 1.0
    })
    .await;
    assert_eq!(metric(&m, "pixgate_cdn_purge_attempts_total", ""), 2.0);
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for req in &seen {
        assert!(
            req.starts_with(&format!("POST /service/svc/purge/{id} HTTP/1.1")),
            "{req}"
        );
        assert!(
            req.to_ascii_lowercase()
                .contains("fastly-key: hook-secret-123")
        );
        assert!(
            req.contains(&format!(r#"{{"tags":["{id}"],"ref":""#)),
            "{req}"
        );
    }
    // Two attempts, two different nonces (CloudFront's CallerReference must be unique).
    assert_ne!(
        seen[0].rsplit("\"ref\":").next(),
        seen[1].rsplit("\"ref\":").next()
    );
    // The hook's credential never reaches the log.
    assert!(!s.log().contains("hook-secret-123"));
}

async fn oversize_results_skip_memory_but_not_the_derived_store(backend: Backend) {
    let s = Server::start_with(backend, &[("PIXGATE__CACHE__MAX_ITEM_BYTES", "2000")]);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let big = s.url(&signed(&format!("/w:300/f:png/plain/{id}")));
    let first = get(&big, &[]).await;
    assert!(first.body.len() > 2000);
    wait_for(&s, "the derived write", |m| derived_writes(m, "ok") == 1.0).await;
    let again = get(&big, &[]).await;
    assert_eq!(again.body, first.body);
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "pixgate_cache_oversize_total", ""), 2.0);
    assert_eq!(cache(&m, "memory", "hit"), 0.0);
    assert_eq!(cache(&m, "derived", "hit"), 1.0);
    assert_eq!(metric(&m, COMPUTED, ""), 1.0);
}

/// When every CPU worker and queue place is taken, computations get a fast 503 with
/// Retry-After while cached results are still served.
#[tokio::test]
async fn overload_still_serves_cache_hits() {
    let s = Server::start_with(
        Backend::Fs,
        &[
            ("PIXGATE__TRANSFORM__WORKERS", "1"),
            ("PIXGATE__TRANSFORM__QUEUE_LEN", "0"),
        ],
    );
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let cached = s.url(&signed(&format!("/w:100/f:webp/plain/{id}")));
    assert_eq!(get(&cached, &[]).await.status, 200);
    // One slow computation takes the only place (worker + queue of 0).
    let slow_url = s.url(&signed(&format!(
        "/rs:fit:4000:3000/el:1/bl:3/f:png/plain/{id}"
    )));
    let slow = tokio::spawn(async move { get(&slow_url, &[]).await });
    let depth = |m: &str| metric(m, "pixgate_transform_queue_depth", "");
    wait_for(&s, "the slow computation to be admitted", |m| {
        depth(m) == 1.0
    })
    .await;
    // While it runs: hits are served, another computation is refused at once.
    for _ in 0..5 {
        assert_eq!(get(&cached, &[]).await.status, 200);
    }
    let refused = get(&s.url(&signed(&format!("/w:101/f:webp/plain/{id}"))), &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.code(), "overloaded");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("cache-control"), Some("no-store"));
    // The overload lasted through all of the above.
    let m = metrics(&s).await;
    assert_eq!(depth(&m), 1.0, "the slow computation was still running");
    assert_eq!(cache(&m, "memory", "hit"), 5.0);
    assert_eq!(slow.await.unwrap().status, 200);
}

/// `transform.max_queue_wait_ms` (issue 20): with room in the queue, a computation that would
/// wait longer than the bound behind the running one is refused at once with 503 +
/// `Retry-After`, while hits are still served.
#[tokio::test]
async fn a_computation_expected_to_wait_too_long_is_shed() {
    let s = Server::start_with(
        Backend::Fs,
        &[
            ("PIXGATE__TRANSFORM__WORKERS", "1"),
            ("PIXGATE__TRANSFORM__QUEUE_LEN", "64"),
            ("PIXGATE__TRANSFORM__MAX_QUEUE_WAIT_MS", "1"),
        ],
    );
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let cached = s.url(&signed(&format!("/w:100/f:webp/plain/{id}")));
    assert_eq!(get(&cached, &[]).await.status, 200);
    // A slow computation teaches the pool its job time (far above 1 ms)...
    let slow = |blur: u32| {
        s.url(&signed(&format!(
            "/rs:fit:4000:3000/el:1/bl:{blur}/f:png/plain/{id}"
        )))
    };
    assert_eq!(get(&slow(3), &[]).await.status, 200);
    // ...then another one runs while a third asks for a place.
    let running_url = slow(4);
    let running = tokio::spawn(async move { get(&running_url, &[]).await });
    let depth = |m: &str| metric(m, "pixgate_transform_queue_depth", "");
    wait_for(&s, "the slow computation to be admitted", |m| {
        depth(m) == 1.0
    })
    .await;
    let refused = get(&s.url(&signed(&format!("/w:101/f:webp/plain/{id}"))), &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.code(), "overloaded");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(get(&cached, &[]).await.status, 200);
    assert_eq!(depth(&metrics(&s).await), 1.0, "still running");
    assert_eq!(running.await.unwrap().status, 200);
    // With the pool idle again, the same request is computed.
    let r = get(&s.url(&signed(&format!("/w:101/f:webp/plain/{id}"))), &[]).await;
    assert_eq!(r.status, 200);
}

/// `transform.originals_budget_mb`: with room for a few originals at once, many concurrent
/// misses still all complete (queued jobs wait for room, then fetch; the room comes back when
/// each job is done: a leak would stall every request after the first few).
#[tokio::test]
async fn a_small_originals_budget_serves_every_concurrent_miss() {
    let s = Server::start_with(
        Backend::Fs,
        &[
            ("PIXGATE__TRANSFORM__WORKERS", "2"),
            ("PIXGATE__TRANSFORM__ORIGINALS_BUDGET_MB", "1"),
        ],
    );
    // 194 KB: five fit in the budget at once.
    let id = upload_fixture(&s, "alice", "alpha_320x240.png", "image/png").await;
    for round in 0..2 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..12 {
            // Enlarged and blurred: each job takes long enough for the twelve to overlap.
            let url = s.url(&signed(&format!(
                "/rs:fit:{}:0/el:1/bl:2/f:png/plain/{id}",
                1200 + round * 20 + i
            )));
            set.spawn(async move { get(&url, &[]).await.status });
        }
        let statuses = tokio::time::timeout(Duration::from_secs(60), set.join_all())
            .await
            .expect("every miss completes");
        assert!(statuses.iter().all(|&st| st == 200), "{statuses:?}");
    }
    let m = metrics(&s).await;
    assert!(
        metric(&m, "pixgate_transform_originals_waits_total", "") > 0.0,
        "with room for five originals, some of twelve concurrent jobs waited before fetching"
    );
    assert_eq!(metric(&m, "pixgate_transform_originals_bytes", ""), 0.0);
}

/// `If-Modified-Since`, `Vary` only when negotiated, and error caching.
#[tokio::test]
async fn conditional_requests_and_error_caching() {
    let s = Server::start(Backend::Fs);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let url = s.url(&signed(&format!("/w:40/f:jpg/plain/{id}")));
    let r = get(&url, &[]).await;
    let lm = r.header("last-modified").unwrap().to_owned();
    let ims = get(&url, &[("if-modified-since", &lm)]).await;
    assert_eq!(ims.status, 304);
    assert!(ims.body.is_empty());
    assert_eq!(ims.header("surrogate-key"), Some(id.as_str()));
    let head = request(
        Method::HEAD,
        &url,
        &[("if-modified-since", &lm)],
        Bytes::new(),
    )
    .await;
    assert_eq!(head.status, 304);
    let old = get(
        &url,
        &[("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT")],
    )
    .await;
    assert_eq!(old.status, 200);
    // If-None-Match takes precedence over If-Modified-Since.
    let both = get(
        &url,
        &[("if-none-match", "\"other\""), ("if-modified-since", &lm)],
    )
    .await;
    assert_eq!(both.status, 200);

    // Errors are no-store, except a verified signed URL's 404.
    let missing = "0123456789abcdef0123456789abcdef";
    let r = get(&s.url(&signed(&format!("/w:40/plain/{missing}"))), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("cache-control"), Some("public, max-age=10"));
    assert!(
        r.header("ratelimit").is_none(),
        "public: no per-client state"
    );
    let forged = get(&s.url(&format!("/AAAA/w:40/plain/{missing}")), &[]).await;
    assert_eq!(forged.status, 403);
    assert_eq!(forged.header("cache-control"), Some("no-store"));
    let auth = bearer(&token("alice", Role::Viewer));
    let r = get(
        &s.url(&format!("/_/w:40/plain/{missing}")),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let bad = get(&s.url(&signed(&format!("/w:abc/plain/{id}"))), &[]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("cache-control"), Some("no-store"));

    // No auto formats configured: a format-less URL does not depend on Accept.
    let fixed = Server::start_with(Backend::Fs, &[("PIXGATE__TRANSFORM__AUTO_FORMATS", "")]);
    let id2 = upload_fixture(&fixed, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let r = get(
        &fixed.url(&signed(&format!("/w:40/plain/{id2}"))),
        &[("accept", "image/webp")],
    )
    .await;
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    assert!(r.header("vary").is_none());
}

/// The first caller of a computation goes away (here: its request deadline passes) while the
/// computation runs. The computation is not lost and the key is not wedged: a request arriving
/// afterwards joins the same computation and gets its result; nothing is computed twice.
#[tokio::test]
async fn a_cancelled_leader_neither_wedges_nor_repeats_the_work() {
    let s = Server::start_with(
        Backend::Fs,
        &[("PIXGATE__SERVER__REQUEST_TIMEOUT_SECS", "1")],
    );
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    // Several seconds of CPU in the test build: longer than the deadline.
    let url = s.url(&signed(&format!(
        "/rs:fit:7000:5000/el:1/bl:8/f:png/plain/{id}"
    )));
    let started = Instant::now();
    let first = get(&url, &[]).await;
    assert_eq!(
        first.status,
        503,
        "{:?}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.code(), "timeout");
    // The computation is still running: a new request waits for it instead of starting one.
    let m = metrics(&s).await;
    assert_eq!(
        metric(&m, "pixgate_transform_queue_depth", ""),
        1.0,
        "the abandoned computation runs on ({:?} in)",
        started.elapsed()
    );
    let second = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let r = get(&url, &[]).await;
            if r.status == 200 {
                return r;
            }
            // Each retry also has a 1 s deadline; it may pass before the work ends.
            assert_eq!(r.code(), "timeout");
        }
    })
    .await
    .expect("the result arrives");
    let p = probe(&second.body).unwrap();
    assert_eq!((p.width, p.height), (6667, 5000));
    let m = metrics(&s).await;
    assert_eq!(metric(&m, COMPUTED, ""), 1.0, "computed once");
    assert!(
        metric(&m, "pixgate_singleflight_coalesced_total", "") + cache(&m, "memory", "hit") >= 1.0
    );
}

/// `pixgate sweep` with the server's configuration; its output.
fn sweep(backend: Backend, s: &Server, extra: &[(&str, &str)]) -> String {
    let env = server_env(backend, s.dir.path(), extra);
    let out = pixgate_cmd(&env)
        .arg("sweep")
        .current_dir(s.dir.path())
        .output()
        .expect("pixgate sweep");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

async fn unused_derived_objects_expire_and_used_ones_stay(backend: Backend) {
    let extra = [("PIXGATE__CACHE__DERIVED_TTL_DAYS", "2")];
    let s = Server::start_with(backend, &extra);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let used = signed(&format!("/rs:fit:60:60/f:webp/plain/{id}"));
    let unused = signed(&format!("/rs:fit:70:70/f:webp/plain/{id}"));
    for p in [&used, &unused] {
        assert_eq!(get(&s.url(p), &[]).await.status, 200);
    }
    wait_for(&s, "two derived writes", |m| derived_writes(m, "ok") == 2.0).await;
    let keys = derived_keys(backend, &s, &id).await;
    assert_eq!(keys.len(), 2);
    if backend == Backend::S3 {
        // S3 modification times cannot be set back: fresh objects survive a sweep.
        let out = sweep(backend, &s, &extra);
        assert!(out.contains("derived: removed 0 object(s)"), "{out}");
        assert_eq!(derived_keys(backend, &s, &id).await, keys);
        return;
    }
    // Three days pass for both objects.
    let root = s.dir.path().join("data/derived");
    for k in &keys {
        let st = std::process::Command::new("touch")
            .args(["-d", "3 days ago"])
            .arg(root.join(k))
            .status()
            .unwrap();
        assert!(st.success());
    }
    // A derived write a crash interrupted left a temporary two hours ago; one is in progress.
    let dir = root.join(keys[0].rsplit_once('/').unwrap().0);
    let (old_tmp, new_tmp) = (
        dir.join(".tmp-00000000000000aa"),
        dir.join(".tmp-00000000000000bb"),
    );
    std::fs::write(&old_tmp, b"half").unwrap();
    std::fs::write(&new_tmp, b"half").unwrap();
    let st = std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&old_tmp)
        .status()
        .unwrap();
    assert!(st.success());
    // After a restart one of them is used: the derived hit refreshes it.
    let s2 = restart_on_same_storage(backend, &s, &extra);
    assert_eq!(get(&s2.url(&used), &[]).await.status, 200);
    let m = wait_for(&s2, "the refresh", |m| derived_writes(m, "ok") == 1.0).await;
    assert_eq!(cache(&m, "derived", "hit"), 1.0);
    assert_eq!(
        metric(&m, COMPUTED, ""),
        0.0,
        "a refresh is a rewrite, not a computation"
    );
    let out = sweep(backend, &s, &extra);
    assert!(
        out.contains("derived: removed 1 object(s) unused for 2 day(s)"),
        "{out}"
    );
    assert!(
        out.contains("temporaries: removed 1 left by interrupted writes"),
        "{out}"
    );
    assert!(!old_tmp.exists() && new_tmp.exists());
    let left = derived_keys(backend, &s, &id).await;
    assert_eq!(left.len(), 1);
    let etag = get(&s2.url(&used), &[]).await;
    assert!(left[0].contains(etag.header("etag").unwrap().trim_matches('"')));
    // Without a TTL nothing is swept.
    let out = sweep(backend, &s, &[]);
    assert!(out.contains("derived: kept"), "{out}");
    assert_eq!(derived_keys(backend, &s, &id).await.len(), 1);
}
