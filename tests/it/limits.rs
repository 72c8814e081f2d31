//! Quotas and rate limits, on both limiters: in-process (fs backend, the embedded default's
//! shape) and Redis (S3 backend, a real `redis-server`). Some tests kill, slow down and restart
//! a Redis of their own.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Method;
use pixgate::auth::Role;

use crate::both_backends;
use crate::harness::*;
use crate::identity::unique;

const PNG: &str = "image/png";

/// A 16×16 PNG: uploads and transforms of it cost next to nothing, so a test can make
/// hundreds.
fn tiny_png() -> Bytes {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 16, 16);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        let data: Vec<u8> = (0..16 * 16 * 3).map(|i| (i * 7 % 251) as u8).collect();
        w.write_image_data(&data).unwrap();
    }
    Bytes::from(out)
}

pub(crate) async fn upload_tiny(server: &Server, token: &str) -> Resp {
    upload(server, token, PNG, tiny_png()).await
}

/// Uploads one image for `owner` with a bypassing admin (no quota spent) and returns its id.
pub(crate) async fn seed_image(server: &Server, owner: &str) -> String {
    let admin = token(&unique("root"), Role::Admin);
    let r = request(
        Method::POST,
        &server.url(&format!("/v1/images?owner={owner}")),
        &[("authorization", &bearer(&admin)), ("content-type", PNG)],
        tiny_png(),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    r.json()["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn usage(server: &Server, token: &str) -> serde_json::Value {
    let r = get(
        &server.url("/v1/usage"),
        &[("authorization", &bearer(token))],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    r.json()
}

fn assert_429(r: &Resp, code: &str, policy: &str) {
    assert_eq!(r.status, 429, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), code);
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After seconds");
    assert!(retry >= 1);
    let p = r.header("ratelimit-policy").expect("RateLimit-Policy");
    assert!(p.contains(&format!("\"{policy}\";q=")), "{p}");
    let s = r.header("ratelimit").expect("RateLimit");
    assert!(s.contains(&format!("\"{policy}\";r=0;t=")), "{s}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

fn unix_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// 100 uploads per rolling hour (the default): the 101st is refused with every header.
async fn hundred_and_first_upload_is_refused(backend: Backend) {
    let server = Server::start(backend);
    let user = unique("up");
    let t = token(&user, Role::Editor);
    for i in 0..100 {
        let r = upload_tiny(&server, &t).await;
        assert_eq!(r.status, 201, "upload {i}: {:?}", r.json());
        if i == 0 {
            let p = r.header("ratelimit-policy").unwrap();
            assert!(p.contains("\"uploads\";q=100;w=3600"), "{p}");
            let s = r.header("ratelimit").unwrap();
            assert!(s.contains("\"uploads\";r=99;t="), "{s}");
        }
    }
    let r = upload_tiny(&server, &t).await;
    assert_429(&r, "quota_exceeded", "uploads");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // The first upload leaves the window an hour after it was made, not before.
    assert!((3500..=3600).contains(&retry), "Retry-After {retry}");
    assert!(
        r.header("ratelimit-policy")
            .unwrap()
            .contains("\"uploads\";q=100;w=3600")
    );
    // The refused upload stored nothing and cost nothing more.
    let u = usage(&server, &t).await;
    assert_eq!(u["quotas"]["uploads"]["used"], 100);
    assert_eq!(u["quotas"]["uploads"]["remaining"], 0);
    let listed = get(
        &server.url("/v1/images?limit=100"),
        &[("authorization", &bearer(&t))],
    )
    .await;
    assert_eq!(listed.json()["items"].as_array().unwrap().len(), 100);
    let m = metrics(&server).await;
    assert!(
        metric(
            &m,
            "pixgate_quota_decisions_total",
            "{limiter=\"uploads\",outcome=\"refused\"}"
        ) >= 1.0
    );
    // Another user is unaffected.
    let other = token(&unique("up2"), Role::Editor);
    assert_eq!(upload_tiny(&server, &other).await.status, 201);
}

/// The boundary burst: a full quota spent just before a fixed-window boundary and a second
/// batch just after it. A fixed window would admit both; the rolling window refuses the second
/// batch until the first has aged out. (A 4-second window, so the test takes seconds, not two
/// hours; the unit tests run the same case on a simulated hour.)
async fn boundary_burst_is_refused(backend: Backend) {
    let server = Server::start_with(
        backend,
        &[
            ("PIXGATE__LIMITS__QUOTA_WINDOW_SECS", "4"),
            ("PIXGATE__LIMITS__UPLOADS_PER_HOUR", "5"),
        ],
    );
    let t = token(&unique("burst"), Role::Editor);
    // Warm up (connections, scripts) with another user, then wait until 0.8 s before a
    // multiple of 4 s of the wall clock: the edge of a fixed window.
    assert_eq!(
        upload_tiny(&server, &token(&unique("warm"), Role::Editor))
            .await
            .status,
        201
    );
    let now = unix_secs_f64();
    let edge = (now / 4.0).ceil() * 4.0 + 4.0;
    tokio::time::sleep(Duration::from_secs_f64(edge - 0.8 - now)).await;
    for i in 0..5 {
        assert_eq!(
            upload_tiny(&server, &t).await.status,
            201,
            "first batch {i}"
        );
    }
    // Just past the boundary.
    let after = edge + 0.2 - unix_secs_f64();
    if after > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(after)).await;
    }
    let mut retry = 0;
    for _ in 0..5 {
        let r = upload_tiny(&server, &t).await;
        assert_429(&r, "quota_exceeded", "uploads");
        retry = r.header("retry-after").unwrap().parse().unwrap();
        assert!(retry <= 4, "Retry-After {retry}");
    }
    // Honouring Retry-After works (it is never early): once the first batch has aged out,
    // uploads are admitted again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(upload_tiny(&server, &t).await.status, 201);
}

/// What the exactness tests add to a server: a Redis deadline that a 2-core CI machine running
/// a debug build, Garage and 200 concurrent requests cannot miss by accident. These tests are
/// about atomicity; the deadline and the fallback are `redis_outage_degrades_and_recovers`'s.
const PATIENT_REDIS: (&str, &str) = ("PIXGATE__REDIS__TIMEOUT_MS", "2000");

/// 990 of 1000 transforms used, then 200 concurrent computations: exactly 10 run.
async fn concurrent_transforms_fill_the_quota_exactly(backend: Backend) {
    let env = [
        PATIENT_REDIS,
        ("PIXGATE__LIMITS__TRANSFORMS_PER_HOUR", "1000"),
        ("PIXGATE__TRANSFORM__QUEUE_LEN", "256"),
        ("PIXGATE__SERVER__MAX_CONNECTIONS", "4096"),
    ];
    let server = Server::start_with(backend, &env);
    let owner = unique("tx");
    let id = seed_image(&server, &owner).await;
    spend_transforms(&server, &id, 1, 990).await;
    let statuses = concurrent_transforms(&[&server], &id, 2000, 200).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, refused), (10, 190), "{statuses:?}");
    let t = token(&owner, Role::Editor);
    let u = usage(&server, &t).await;
    assert_eq!(u["quotas"]["transforms"]["used"], 1000);
}

/// Signed transforms of `id` at widths `from..from+n`, 8 at a time, all computed and 200.
async fn spend_transforms(server: &Server, id: &str, from: usize, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(n.div_ceil(8)) {
        let urls: Vec<String> = chunk
            .iter()
            .map(|w| server.url(&signed(&format!("/rs:fit:{w}:0/plain/{id}@png"))))
            .collect();
        tasks.spawn(async move {
            for url in urls {
                let r = get(&url, &[]).await;
                assert_eq!(
                    r.status,
                    200,
                    "{url}: {:?}",
                    String::from_utf8_lossy(&r.body)
                );
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// `n` concurrent distinct computations of `id`, spread over `servers`; their statuses.
pub(crate) async fn concurrent_transforms(
    servers: &[&Server],
    id: &str,
    from: usize,
    n: usize,
) -> Vec<u16> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let server = servers[i % servers.len()];
        let url = server.url(&signed(&format!("/rs:fit:{}:0/plain/{id}@png", from + i)));
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let r = get(&url, &[]).await;
            if r.status == 429 {
                assert_eq!(r.code(), "quota_exceeded");
                assert!(r.header("retry-after").is_some());
            }
            r.status
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.unwrap());
    }
    out
}

/// The same with two pixgate instances sharing one Redis (and one bucket set).
#[tokio::test]
async fn two_instances_share_one_quota() {
    let prefix = format!("t{}", unique("shared"));
    let env = [
        PATIENT_REDIS,
        ("PIXGATE__LIMITS__TRANSFORMS_PER_HOUR", "1000"),
        ("PIXGATE__TRANSFORM__QUEUE_LEN", "256"),
        ("PIXGATE__SERVER__MAX_CONNECTIONS", "4096"),
        ("PIXGATE__REDIS__KEY_PREFIX", prefix.as_str()),
    ];
    let a = Server::start_with(Backend::S3, &env);
    let b = Server::start_with(Backend::S3, &env);
    let owner = unique("tx2");
    let id = seed_image(&a, &owner).await;
    spend_transforms(&a, &id, 1, 500).await;
    spend_transforms(&b, &id, 501, 490).await;
    let statuses = concurrent_transforms(&[&a, &b], &id, 2000, 200).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 10, "{statuses:?}");
    let u = usage(&b, &token(&owner, Role::Viewer)).await;
    assert_eq!(u["quotas"]["transforms"]["used"], 1000);
    assert_eq!(u["limiter"], "redis");
}

/// Plans override the base limits; admins bypass quotas unless told not to.
async fn plans_and_admin_bypass(backend: Backend) {
    let server = Server::start_with(
        backend,
        &[
            ("PIXGATE__LIMITS__UPLOADS_PER_HOUR", "2"),
            ("PIXGATE__LIMITS__TRANSFORMS_PER_HOUR", "1"),
            ("PIXGATE__LIMITS__PLANS__PRO__UPLOADS_PER_HOUR", "4"),
            ("PIXGATE__LIMITS__PLANS__PRO__TRANSFORMS_PER_HOUR", "3"),
        ],
    );
    // Free tier (no plan claim): 2 uploads.
    let free = token(&unique("free"), Role::Editor);
    for _ in 0..2 {
        assert_eq!(upload_tiny(&server, &free).await.status, 201);
    }
    assert_429(
        &upload_tiny(&server, &free).await,
        "quota_exceeded",
        "uploads",
    );
    // Pro: 4 uploads, and the usage endpoint says so.
    let pro_user = unique("pro");
    let pro = token_with_plan(&pro_user, Role::Editor, Some("pro"));
    for _ in 0..4 {
        let r = upload_tiny(&server, &pro).await;
        assert_eq!(r.status, 201);
        assert!(
            r.header("ratelimit-policy")
                .unwrap()
                .contains("\"uploads\";q=4;")
        );
    }
    assert_429(
        &upload_tiny(&server, &pro).await,
        "quota_exceeded",
        "uploads",
    );
    let u = usage(&server, &pro).await;
    assert_eq!(u["plan"], "pro");
    assert_eq!(u["quotas"]["uploads"]["limit"], 4);
    assert_eq!(u["quotas"]["uploads"]["used"], 4);
    assert_eq!(u["quotas"]["transforms"]["limit"], 3);
    assert!(u["quotas"]["uploads"]["resets_at"].is_string());
    // An unknown plan gets the base limits.
    let odd = token_with_plan(&unique("odd"), Role::Editor, Some("platinum"));
    assert_eq!(usage(&server, &odd).await["quotas"]["uploads"]["limit"], 2);

    // Signed URLs are priced at the owner's plan (remembered from their last request): the
    // pro owner gets 3 computations, where the base would allow 1.
    let id = seed_image(&server, &pro_user).await;
    for w in 1..=3 {
        let url = server.url(&signed(&format!("/rs:fit:{w}:0/plain/{id}@png")));
        assert_eq!(get(&url, &[]).await.status, 200);
    }
    let url = server.url(&signed(&format!("/rs:fit:4:0/plain/{id}@png")));
    let r = get(&url, &[]).await;
    assert_429(&r, "quota_exceeded", "transforms");
    // A cached result costs no quota: the first URL is still served.
    let url = server.url(&signed(&format!("/rs:fit:1:0/plain/{id}@png")));
    assert_eq!(get(&url, &[]).await.status, 200);

    // Admins bypass quotas by default…
    let admin = token(&unique("admin"), Role::Admin);
    for _ in 0..3 {
        assert_eq!(upload_tiny(&server, &admin).await.status, 201);
    }
    // …and not when the operator turns that off.
    let strict = Server::start_with(
        backend,
        &[
            ("PIXGATE__LIMITS__UPLOADS_PER_HOUR", "1"),
            ("PIXGATE__LIMITS__ADMIN_BYPASS", "false"),
        ],
    );
    assert_eq!(upload_tiny(&strict, &admin).await.status, 201);
    assert_429(
        &upload_tiny(&strict, &admin).await,
        "quota_exceeded",
        "uploads",
    );
}

/// 401, 403 and 404 answers spend no quota.
async fn refusals_spend_no_quota(backend: Backend) {
    let server = Server::start_with(
        backend,
        &[
            ("PIXGATE__LIMITS__UPLOADS_PER_HOUR", "2"),
            ("PIXGATE__LIMITS__TRANSFORMS_PER_HOUR", "1"),
        ],
    );
    let user = unique("refused");
    let editor = token(&user, Role::Editor);
    let viewer = token(&user, Role::Viewer);
    let stranger = token(&unique("stranger"), Role::Editor);
    let theirs = seed_image(&server, &unique("other")).await;
    // 401: no credential, a bad one.
    assert_eq!(upload(&server, "", PNG, tiny_png()).await.status, 401);
    assert_eq!(
        upload(&server, "garbage", PNG, tiny_png()).await.status,
        401
    );
    // 403: a viewer may not upload.
    assert_eq!(upload_tiny(&server, &viewer).await.status, 403);
    // 404: another user's image through a bearer transform; a missing image.
    let url = server.url(&format!("/_/rs:fit:10:0/plain/{theirs}@png"));
    let r = get(&url, &[("authorization", &bearer(&editor))]).await;
    assert_eq!(r.status, 404);
    let missing = "0".repeat(32);
    let url = server.url(&format!("/_/rs:fit:10:0/plain/{missing}@png"));
    assert_eq!(
        get(&url, &[("authorization", &bearer(&editor))])
            .await
            .status,
        404
    );
    // An upload refused after it was charged (here: the body is not an image) gives its
    // unit back.
    assert_eq!(
        upload(&server, &editor, PNG, Bytes::from_static(b"not a png"))
            .await
            .status,
        415
    );
    // With Redis the refund is sent from the charge's `Drop`, in a task of its own: it lands
    // a moment after the 415 (seen late under a loaded CI runner), so wait for it, briefly.
    let mut u = usage(&server, &editor).await;
    for _ in 0..50 {
        if u["quotas"]["uploads"]["used"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        u = usage(&server, &editor).await;
    }
    assert_eq!(u["quotas"]["uploads"]["used"], 0, "{u}");
    assert_eq!(u["quotas"]["transforms"]["used"], 0, "{u}");
    // A body that passes the header checks but fails the full decode keeps its unit: the
    // decode cost the CPU, and refunding it would make undecodable uploads free.
    let r = upload(&server, &editor, "image/jpeg", fixture("truncated.jpg")).await;
    assert_eq!(r.status, 422, "{:?}", r.json());
    assert_eq!(
        usage(&server, &editor).await["quotas"]["uploads"]["used"],
        1
    );
    // And the last unit of each is still there to be spent.
    let r = upload_tiny(&server, &editor).await;
    assert_eq!(r.status, 201);
    assert_429(
        &upload_tiny(&server, &editor).await,
        "quota_exceeded",
        "uploads",
    );
    let mine = r.json()["id"].as_str().unwrap().to_owned();
    let url = server.url(&format!("/_/rs:fit:10:0/plain/{mine}@png"));
    let r = get(&url, &[("authorization", &bearer(&editor))]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("ratelimit")
            .unwrap()
            .contains("\"transforms\";r=0;")
    );
    let url = server.url(&format!("/_/rs:fit:11:0/plain/{mine}@png"));
    let r = get(&url, &[("authorization", &bearer(&editor))]).await;
    assert_429(&r, "quota_exceeded", "transforms");
    // The stranger's quotas were never touched by any of this.
    let u = usage(&server, &stranger).await;
    assert_eq!(u["quotas"]["transforms"]["used"], 0);
}

/// Five failed authentications from one IP → 429 for that IP, for any credential, and only for
/// it. API keys count the same; successes do not count.
async fn failed_authentication_limiter(backend: Backend) {
    let server = Server::start_with(
        backend,
        &[
            ("PIXGATE__LIMITS__AUTH_FAILURES_PER_IP", "5"),
            ("PIXGATE__SERVER__TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    );
    let good = token(&unique("victim"), Role::Viewer);
    let list = server.url("/v1/images");
    let from = |ip: &'static str, credential: &str| {
        let auth = bearer(credential);
        let list = list.clone();
        async move { get(&list, &[("authorization", &auth), ("x-forwarded-for", ip)]).await }
    };
    // Successes never count.
    for _ in 0..10 {
        assert_eq!(from("198.51.100.7", &good).await.status, 200);
    }
    // Four bad JWTs and a random API key: five failures, each a 401.
    for _ in 0..4 {
        assert_eq!(from("198.51.100.7", "eyJ.bad.token").await.status, 401);
    }
    let random_key = format!("pxg_live_{}", "A".repeat(43));
    assert_eq!(from("198.51.100.7", &random_key).await.status, 401);
    // The sixth attempt is refused before the credential is even looked at — a valid one too.
    let r = from("198.51.100.7", "eyJ.bad.token").await;
    assert_429(&r, "rate_limited", "auth_failures");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((800..=900).contains(&retry), "Retry-After {retry}");
    assert_eq!(from("198.51.100.7", &good).await.status, 429);
    // Another IP is unaffected, with good and bad credentials alike.
    assert_eq!(from("203.0.113.9", &good).await.status, 200);
    assert_eq!(from("203.0.113.9", "eyJ.bad.token").await.status, 401);
    // Requests without any credential are not attempts (and cost no limiter call).
    let r = get(&list, &[("x-forwarded-for", "198.51.100.7")]).await;
    assert_eq!(r.status, 401);
}

/// Per-user request rate for bearer calls, per-IP rate for signed URLs, each with headers.
async fn request_rates(backend: Backend) {
    let server = Server::start_with(
        backend,
        &[
            ("PIXGATE__LIMITS__REQUESTS_PER_MINUTE", "5"),
            ("PIXGATE__LIMITS__IP_REQUESTS_PER_MINUTE", "3"),
            ("PIXGATE__SERVER__TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    );
    let user = unique("rate");
    let t = token(&user, Role::Editor);
    let list = server.url("/v1/images");
    for i in 0..5 {
        let r = get(&list, &[("authorization", &bearer(&t))]).await;
        assert_eq!(r.status, 200);
        assert!(
            r.header("ratelimit-policy")
                .unwrap()
                .contains("\"requests\";q=5;w=60")
        );
        let state = r.header("ratelimit").unwrap();
        assert!(
            state.contains(&format!("\"requests\";r={};t=", 4 - i)),
            "{state}"
        );
    }
    let r = get(&list, &[("authorization", &bearer(&t))]).await;
    assert_429(&r, "rate_limited", "requests");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((55..=61).contains(&retry), "Retry-After {retry}");
    // Another user is unaffected.
    let other = token(&unique("rate2"), Role::Editor);
    assert_eq!(
        get(&list, &[("authorization", &bearer(&other))])
            .await
            .status,
        200
    );

    // Signed URLs: per client IP. Seed with an admin (whose requests have their own rate).
    let id = seed_image(&server, &user).await;
    let url = server.url(&signed(&format!("/rs:fit:10:0/plain/{id}@png")));
    for i in 0..3 {
        let r = get(&url, &[("x-forwarded-for", "192.0.2.10")]).await;
        assert_eq!(r.status, 200, "{i}");
        let p = r.header("ratelimit-policy").unwrap();
        assert!(p.contains("\"ip\";q=3;w=60"), "{p}");
        // A public, CDN-cacheable response carries no client's or owner's state: the policy
        // only, and not the owner's quota.
        assert!(!p.contains("transforms"), "{p}");
        assert!(r.header("ratelimit").is_none());
    }
    let r = get(&url, &[("x-forwarded-for", "192.0.2.10")]).await;
    assert_429(&r, "rate_limited", "ip");
    assert_eq!(
        get(&url, &[("x-forwarded-for", "192.0.2.11")]).await.status,
        200
    );
    // A bad signature is refused before any limiter call: it cannot spend an IP's allowance.
    let bad = server.url(&format!("/AAAA/rs:fit:10:0/plain/{id}@png"));
    for _ in 0..5 {
        let r = get(&bad, &[("x-forwarded-for", "192.0.2.12")]).await;
        assert_eq!(r.status, 403);
    }
    assert_eq!(
        get(&url, &[("x-forwarded-for", "192.0.2.12")]).await.status,
        200
    );
}

both_backends!(
    hundred_and_first_upload_is_refused,
    boundary_burst_is_refused,
    concurrent_transforms_fill_the_quota_exactly,
    plans_and_admin_bypass,
    refusals_spend_no_quota,
    failed_authentication_limiter,
    request_rates,
);

/// Redis killed mid-test: uploads stay capped (by the per-instance fallback), cached transforms
/// keep being served, readiness says degraded; Redis slow: the deadline sends decisions to the
/// fallback instead of waiting; Redis restarted: decisions return to Redis.
#[tokio::test]
async fn redis_outage_degrades_and_recovers() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let server = Server::start_with(
        Backend::S3,
        &[
            ("PIXGATE__REDIS__URL", url.as_str()),
            ("PIXGATE__LIMITS__UPLOADS_PER_HOUR", "4"),
            ("PIXGATE__LIMITS__FALLBACK_SHARE_PERCENT", "50"),
        ],
    );
    let user = unique("outage");
    let t = token(&user, Role::Editor);
    let r = get(&server.url("/readyz"), &[]).await;
    assert_eq!(r.json()["status"], "ready");
    assert_eq!(r.json()["checks"]["redis"], "ok");
    // Before: one upload and a cached transform, decided in Redis.
    let r = upload_tiny(&server, &t).await;
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let cached = server.url(&signed(&format!("/rs:fit:8:0/plain/{id}@png")));
    let first = get(&cached, &[]).await;
    assert_eq!(first.status, 200);
    assert_ne!(redis.cli(&["DBSIZE"]), "0");
    assert_eq!(usage(&server, &t).await["limiter"], "redis");

    redis.kill();
    // Cached reads go on.
    for _ in 0..5 {
        let r = get(&cached, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, first.body);
    }
    // Readiness: still 200 (taking every instance out would be an outage), but degraded.
    let r = get(&server.url("/readyz"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "degraded");
    assert_eq!(r.json()["checks"]["redis"], "error");
    // Uploads stay capped: this instance's share is 50 % of 4 = 2, and it remembers the one
    // upload Redis admitted through it (mirrored), so one more, then 429.
    assert_eq!(upload_tiny(&server, &t).await.status, 201);
    assert_429(&upload_tiny(&server, &t).await, "quota_exceeded", "uploads");
    // A user this instance has not seen gets the share, not more.
    let newcomer = token(&unique("newcomer"), Role::Editor);
    for _ in 0..2 {
        assert_eq!(upload_tiny(&server, &newcomer).await.status, 201);
    }
    assert_429(
        &upload_tiny(&server, &newcomer).await,
        "quota_exceeded",
        "uploads",
    );
    let u = usage(&server, &t).await;
    assert_eq!(u["limiter"], "fallback");
    let m = metrics(&server).await;
    assert!(metric(&m, "pixgate_limiter_fallback_total", "") >= 3.0);
    assert_eq!(metric(&m, "pixgate_limiter_degraded", ""), 1.0);

    // Restarted (empty, as a Redis without persistence comes back): decisions return to it.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&server.url("/readyz"), &[]).await;
        if r.json()["status"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {:?}", r.json());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = metric(
        &metrics(&server).await,
        "pixgate_limiter_fallback_total",
        "",
    );
    let fresh = token(&unique("after"), Role::Editor);
    for _ in 0..4 {
        assert_eq!(upload_tiny(&server, &fresh).await.status, 201);
    }
    assert_429(
        &upload_tiny(&server, &fresh).await,
        "quota_exceeded",
        "uploads",
    );
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "pixgate_limiter_fallback_total", ""), before);
    assert_eq!(metric(&m, "pixgate_limiter_degraded", ""), 0.0);
    assert_ne!(redis.cli(&["DBSIZE"]), "0");
    assert_eq!(usage(&server, &fresh).await["limiter"], "redis");

    // Slow Redis: a 2-second stall must not stall requests; the 50 ms deadline falls back.
    let mut sleeper = redis.cli_background(&["DEBUG", "SLEEP", "2"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let r = get(&cached, &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "waited {:?} for a stalled Redis",
        started.elapsed()
    );
    let _ = sleeper.wait();
    assert!(
        metric(
            &metrics(&server).await,
            "pixgate_limiter_fallback_total",
            ""
        ) > before
    );
    // Keys are hash-tagged per subject (Redis Cluster): `{prefix}:{u:…}:uploads`.
    let keys = redis.cli(&["--scan", "--pattern", "*uploads"]);
    assert!(
        keys.lines()
            .all(|k| k.contains(":{u:") && k.ends_with("}:uploads")),
        "{keys}"
    );
    assert!(!keys.is_empty());
}

/// A busy pool (this instance loaded, Redis fine) is not an outage: rate decisions fall back
/// for that call, quota charges answer `503 overloaded` rather than a local guess, and Redis is
/// not marked down. Driven through the library, holding the pool's only connection.
#[tokio::test]
async fn a_busy_pool_is_not_an_outage() {
    let mut c = pixgate::config::Config::default();
    c.redis.url = format!("redis://127.0.0.1:{}/0", services().redis_port);
    c.redis.pool_size = 1;
    c.redis.key_prefix = format!("t{}", unique("busy"));
    let pool = pixgate::kv::Pool::from_config(&c.redis).unwrap().unwrap();
    let metrics = pixgate::metrics::Metrics::new().unwrap();
    let limiter = pixgate::limits::Limiter::new(&c.limits, &c.redis, Some(pool.clone()), &metrics);
    limiter.warm_up().await;
    assert_eq!(limiter.backend(), pixgate::limits::Backend::Redis);
    let user = unique("busy-user");
    let charge = limiter
        .charge(pixgate::limits::Kind::Uploads, &user, None, false)
        .await
        .unwrap();
    charge.commit();

    let held = pool.get().await.unwrap();
    let err = limiter
        .charge(pixgate::limits::Kind::Uploads, &user, None, false)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, pixgate::limits::Refusal::Busy), "{err:?}");
    assert_eq!(pixgate::http::error::Error::from(err).code(), "overloaded");
    let ip = "192.0.2.1".parse().unwrap();
    assert!(limiter.ip_request(ip).await.unwrap().is_some());
    assert_eq!(limiter.backend(), pixgate::limits::Backend::Redis);
    assert_eq!(limiter.fallback_count(), 1);
    drop(held);

    // Free again: decided in Redis, which counted the first upload only.
    let charge = limiter
        .charge(pixgate::limits::Kind::Uploads, &user, None, false)
        .await
        .unwrap();
    assert_eq!(charge.status().unwrap().used, 2);
}
