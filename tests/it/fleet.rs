//! Fleets (issue 17): several pixgate instances sharing one Redis (or a Redis Cluster) and one
//! bucket set. Deletes, erasures and revocations answer only once every live instance has
//! forgotten what they removed; the `Pixgate-Fleet` header says how far an event got.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use pixgate::auth::Role;

use crate::harness::*;
use crate::identity::unique;

/// Servers of one fleet: same key prefix (so the same bus and registry), same buckets.
pub fn fleet_env(prefix: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PIXGATE__REDIS__KEY_PREFIX".to_owned(), prefix.to_owned()),
        ("PIXGATE__REDIS__TIMEOUT_MS".to_owned(), "2000".to_owned()),
        (
            "PIXGATE__LIMITS__UPLOADS_PER_HOUR".to_owned(),
            "100000".to_owned(),
        ),
        (
            "PIXGATE__LIMITS__TRANSFORMS_PER_HOUR".to_owned(),
            "100000".to_owned(),
        ),
    ];
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

pub fn start_fleet(n: usize, env: &[(String, String)]) -> Vec<Server> {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    (0..n)
        .map(|_| Server::start_with(Backend::S3, &pairs))
        .collect()
}

/// A signed transform of `id`, answered from memory on its second request.
pub fn thumb(id: &str) -> String {
    signed(&format!("/rs:fit:64:64/plain/{id}@png"))
}

/// Requests `path` on each server until it is a memory hit there.
pub async fn warm(servers: &[&Server], path: &str) {
    for s in servers {
        for _ in 0..2 {
            let r = get(&s.url(path), &[]).await;
            assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        }
    }
}

/// `acked=N/M, ms=T` → (N, M, T).
pub fn acked(header: Option<&str>) -> (usize, usize, u64) {
    let h = header.expect("Pixgate-Fleet header");
    let mut parts = h.split(", ");
    let (n, m) = parts
        .next()
        .and_then(|p| p.strip_prefix("acked="))
        .and_then(|p| p.split_once('/'))
        .unwrap_or_else(|| panic!("{h}"));
    let ms = parts
        .next()
        .and_then(|p| p.strip_prefix("ms="))
        .unwrap_or_else(|| panic!("{h}"));
    (n.parse().unwrap(), m.parse().unwrap(), ms.parse().unwrap())
}

pub async fn delete_image(s: &Server, credential: &str, id: &str) -> Resp {
    request(
        Method::DELETE,
        &s.url(&format!("/v1/images/{id}")),
        &[("authorization", &bearer(credential))],
        Bytes::new(),
    )
    .await
}

async fn list_images(s: &Server, credential: &str) -> u16 {
    get(
        &s.url("/v1/images"),
        &[("authorization", &bearer(credential))],
    )
    .await
    .status
}

/// The percentile `p` (0..=100) of sorted `v`.
pub fn percentile(v: &[u64], p: usize) -> u64 {
    let i = (v.len() * p).div_ceil(100).saturating_sub(1);
    v[i.min(v.len() - 1)]
}

/// Deletes, API-key revocations, token revocations and an account erasure made on one
/// instance are in force on the two others as soon as the response arrives — where, before
/// the bus, the others kept serving cached results and accepting cached credentials for up to
/// `auth.revocation_cache_secs` (30 s). Also measures propagation over 100 deletes.
#[tokio::test]
async fn deletes_and_revocations_reach_every_instance_before_the_response() {
    let prefix = format!("t{}", unique("fleet"));
    let fleet = start_fleet(3, &fleet_env(&prefix, &[]));
    let (a, b, c) = (&fleet[0], &fleet[1], &fleet[2]);
    let owner = unique("fleet-owner");
    let jwt = token(&owner, Role::Editor);

    // 1. An image cached in memory on B and C, deleted through A.
    let id = upload_fixture(a, &owner, "photo_320x240.jpg", "image/jpeg").await;
    warm(&[b, c], &thumb(&id)).await;
    let r = delete_image(a, &jwt, &id).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        acked(r.header("pixgate-fleet")).0,
        2,
        "{:?}",
        r.header("pixgate-fleet")
    );
    for s in [b, c] {
        assert_eq!(get(&s.url(&thumb(&id)), &[]).await.status, 404);
    }

    // 2. An API key used (and cached) on B and C, revoked through A.
    let r = request(
        Method::POST,
        &a.url("/v1/api-keys"),
        &[("authorization", &bearer(&jwt))],
        Bytes::from(r#"{"name":"fleet","scopes":["read"]}"#),
    )
    .await;
    assert_eq!(r.status, 201);
    let key = r.json()["key"].as_str().unwrap().to_owned();
    let key_id = r.json()["id"].as_str().unwrap().to_owned();
    for s in [b, c] {
        assert_eq!(list_images(s, &key).await, 200);
    }
    let r = request(
        Method::DELETE,
        &a.url(&format!("/v1/api-keys/{key_id}")),
        &[("authorization", &bearer(&jwt))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(acked(r.header("pixgate-fleet")).0, 2);
    for s in [b, c] {
        assert_eq!(list_images(s, &key).await, 401);
    }

    // 3. A token accepted (its revocation state cached) on B and C, revoked through A.
    let carol = unique("fleet-carol");
    let carol_jwt = token(&carol, Role::Editor);
    for s in [b, c] {
        assert_eq!(list_images(s, &carol_jwt).await, 200);
    }
    let admin = token(&unique("fleet-root"), Role::Admin);
    let r = request(
        Method::POST,
        &a.url(&format!("/v1/admin/users/{carol}/revoke-tokens")),
        &[("authorization", &bearer(&admin))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(acked(r.header("pixgate-fleet")).0, 2);
    for s in [b, c] {
        assert_eq!(list_images(s, &carol_jwt).await, 401);
    }

    // 4. An account erased through A: B and C serve none of its images from memory.
    let dave = unique("fleet-dave");
    let kept = upload_fixture(a, &dave, "photo_320x240.jpg", "image/jpeg").await;
    warm(&[b, c], &thumb(&kept)).await;
    let r = request(
        Method::DELETE,
        &a.url("/v1/me"),
        &[("authorization", &bearer(&token(&dave, Role::Editor)))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(acked(r.header("pixgate-fleet")).0, 2);
    for s in [b, c] {
        assert_eq!(get(&s.url(&thumb(&kept)), &[]).await.status, 404);
    }

    // 5. Propagation time over 100 deletes, sent through each instance in turn; every one is
    // in force on the two others right after its response.
    let mut ids = Vec::new();
    for _ in 0..100 {
        let r = upload(a, &jwt, "image/jpeg", fixture("photo_320x240.jpg")).await;
        assert_eq!(r.status, 201);
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let mut ms = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let sender = &fleet[i % 3];
        let others: Vec<&Server> = fleet.iter().filter(|s| s.addr != sender.addr).collect();
        warm(&others, &thumb(id)).await;
        let r = delete_image(sender, &jwt, id).await;
        assert_eq!(r.status, 204);
        let (n, m, t) = acked(r.header("pixgate-fleet"));
        assert_eq!((n, m), (2, 2));
        ms.push(t);
        for s in &others {
            assert_eq!(get(&s.url(&thumb(id)), &[]).await.status, 404);
        }
    }
    ms.sort_unstable();
    println!(
        "fleet propagation over {} events, 3 instances: p50 {} ms, p99 {} ms, max {} ms",
        ms.len(),
        percentile(&ms, 50),
        percentile(&ms, 99),
        ms[ms.len() - 1]
    );
    let m = wait_for(a, "three live instances", |m| {
        metric(m, "pixgate_fleet_instances", "") == 3.0
    })
    .await;
    assert_eq!(metric(&m, "pixgate_fleet_bus_up", ""), 1.0);
    assert!(
        metric(
            &m,
            "pixgate_fleet_events_total",
            "{kind=\"image_deleted\",outcome=\"applied\"}"
        ) >= 66.0
    );
}

/// An instance that dies without leaving stays registered until its heartbeat expires: a
/// delete meanwhile waits `fleet.ack_timeout_ms`, answers 204, names the silent instance and
/// states the bound that applies to it.
#[tokio::test]
async fn a_silent_instance_is_named_and_the_bound_is_stated() {
    let prefix = format!("t{}", unique("fleet-dead"));
    let env = fleet_env(&prefix, &[("PIXGATE__FLEET__ACK_TIMEOUT_MS", "500")]);
    let mut fleet = start_fleet(2, &env);
    let owner = unique("fleet-dead-owner");
    let jwt = token(&owner, Role::Editor);
    let id = upload_fixture(&fleet[0], &owner, "photo_320x240.jpg", "image/jpeg").await;
    let log = fleet[1].log_with(&["subscribed to the event bus"]);
    let silent = log
        .lines()
        .find(|l| l.contains("subscribed to the event bus"))
        .and_then(|l| l.split("instance=").nth(1))
        .map(|s| s.split_whitespace().next().unwrap_or_default().to_owned())
        .expect("instance id in the log");
    fleet[1].kill9();
    let t = Instant::now();
    let r = delete_image(&fleet[0], &jwt, &id).await;
    let waited = t.elapsed();
    assert_eq!(r.status, 204);
    let h = r.header("pixgate-fleet").unwrap_or_default().to_owned();
    assert!(
        h.starts_with("acked=0/1, ms=") && h.ends_with(", bound=30"),
        "{h}"
    );
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let m = metrics(&fleet[0]).await;
    assert_eq!(metric(&m, "pixgate_fleet_unacknowledged_total", ""), 1.0);
    let log = fleet[0].log_with(&["did not acknowledge"]);
    assert!(
        log.contains("did not acknowledge") && log.contains(&silent),
        "{silent} not named:\n{log}"
    );
}

/// Redis stopped: deletes still succeed, the response states the fallback bound, the metric
/// says the bus is down; once Redis is back the instance rejoins on its own.
#[tokio::test]
async fn with_the_bus_down_deletes_succeed_under_the_fallback_bound() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let s = Server::start_with(
        Backend::S3,
        &[
            ("PIXGATE__REDIS__URL", url.as_str()),
            ("PIXGATE__FLEET__HEARTBEAT_SECS", "1"),
        ],
    );
    let owner = unique("busdown");
    let jwt = token(&owner, Role::Editor);
    let id = upload_fixture(&s, &owner, "photo_320x240.jpg", "image/jpeg").await;
    let r = delete_image(&s, &jwt, &id).await;
    assert_eq!(acked(r.header("pixgate-fleet")).1, 0);
    redis.kill();
    wait_for(&s, "bus down", |m| {
        metric(m, "pixgate_fleet_bus_up", "") == 0.0
    })
    .await;
    let id = upload_fixture(&s, &owner, "photo_320x240.jpg", "image/jpeg").await;
    let r = delete_image(&s, &jwt, &id).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("pixgate-fleet"), Some("bus=down, bound=30"));
    assert_eq!(get(&s.url(&thumb(&id)), &[]).await.status, 404);
    redis.restart();
    wait_for(&s, "bus back", |m| {
        metric(m, "pixgate_fleet_bus_up", "") == 1.0
    })
    .await;
    let id = upload_fixture(&s, &owner, "photo_320x240.jpg", "image/jpeg").await;
    let r = delete_image(&s, &jwt, &id).await;
    assert_eq!(acked(r.header("pixgate-fleet")).1, 0);
}

/// Concurrent uploads of one user spread over `servers`: their statuses.
async fn concurrent_uploads(servers: &[&Server], jwt: &str, n: usize) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    for i in 0..n {
        let url = servers[i % servers.len()].url("/v1/images");
        let (jwt, barrier) = (jwt.to_owned(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let auth = bearer(&jwt);
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "image/jpeg"),
            ];
            request(Method::POST, &url, &headers, fixture("photo_320x240.jpg"))
                .await
                .status
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.unwrap());
    }
    out
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Waits until every server's readiness reports Redis `ok` (decisions exact again).
async fn wait_redis_ok(servers: &[&Server], max: Duration) -> Duration {
    let start = Instant::now();
    loop {
        // Readiness probes Redis on its own; the limiter leaves its fallback on its own
        // recovery probe, a moment later: both must say so (`/v1/usage` names the limiter).
        let probe_user = token(&unique("rc-probe"), Role::Viewer);
        let mut all = true;
        for s in servers {
            let r = get(&s.url("/readyz"), &[]).await;
            all &= r.json()["checks"]["redis"] == "ok";
            all &= crate::limits::usage(s, &probe_user).await["limiter"] == "redis";
        }
        if all {
            return start.elapsed();
        }
        assert!(start.elapsed() < max, "redis decisions never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Mixed traffic (uploads by fresh users, memory hits, misses) on `servers` until `stop`.
async fn traffic(
    servers: Vec<String>,
    hit: String,
    source: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<u16> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let base = &servers[i % servers.len()];
        let r = match i % 3 {
            0 => {
                let jwt = token(&unique("fo-user"), Role::Editor);
                let auth = bearer(&jwt);
                let headers = [
                    ("authorization", auth.as_str()),
                    ("content-type", "image/jpeg"),
                ];
                let url = format!("{base}/v1/images");
                request(Method::POST, &url, &headers, fixture("photo_320x240.jpg")).await
            }
            1 => get(&format!("{base}{hit}"), &[]).await,
            _ => {
                let path = signed(&format!("/rs:fit:{}:0/plain/{source}@png", 20 + i));
                get(&format!("{base}{path}"), &[]).await
            }
        };
        out.push(r.status);
        i += 1;
    }
    out
}

/// Three instances on a password-protected Redis Cluster (3 masters + 3 replicas; AUTH in cluster
/// mode): quotas exact across them, the
/// limiter's keys spread over several masters, deletes propagated over the cluster's pub/sub;
/// a master SIGKILLed mid-traffic costs only bounded 503s and decisions are exact again after
/// the failover, without restarting pixgate.
#[tokio::test]
async fn three_instances_on_a_redis_cluster() {
    let mut rc = crate::clusters::RedisCluster::start();
    let urls = rc.urls();
    let prefix = format!("t{}", unique("rc"));
    let env = fleet_env(
        &prefix,
        &[
            ("PIXGATE__REDIS__URL", ""),
            ("PIXGATE__REDIS__CLUSTER_URLS", urls.as_str()),
            ("PIXGATE__LIMITS__UPLOADS_PER_HOUR", "5"),
            ("PIXGATE__LIMITS__TRANSFORMS_PER_HOUR", "8"),
            ("PIXGATE__TRANSFORM__QUEUE_LEN", "64"),
        ],
    );
    let fleet = start_fleet(3, &env);
    let servers: Vec<&Server> = fleet.iter().collect();
    wait_redis_ok(&servers, Duration::from_secs(10)).await;

    // Quotas are one count across the instances.
    let statuses = concurrent_uploads(&servers, &token(&unique("rc-up"), Role::Editor), 9).await;
    assert_eq!(
        (count(&statuses, 201), count(&statuses, 429)),
        (5, 4),
        "{statuses:?}"
    );
    let owner = unique("rc-tx");
    let id = crate::limits::seed_image(servers[0], &owner).await;
    let statuses = crate::limits::concurrent_transforms(&servers, &id, 1, 12).await;
    assert_eq!(
        (count(&statuses, 200), count(&statuses, 429)),
        (8, 4),
        "{statuses:?}"
    );

    // Subjects hash to slots of different masters.
    for _ in 0..12 {
        let r = crate::limits::upload_tiny(servers[1], &token(&unique("rc-spread"), Role::Editor))
            .await;
        assert_eq!(r.status, 201);
    }
    let masters = rc.masters();
    let holding: Vec<u16> = masters
        .iter()
        .copied()
        .filter(|m| rc.keys_on(*m, &prefix) > 0)
        .collect();
    assert!(
        holding.len() >= 2,
        "keys on masters {holding:?} of {masters:?}"
    );

    // Deletes reach the other instances through the cluster's pub/sub.
    let img_owner = unique("rc-img");
    let img = upload_fixture(servers[2], &img_owner, "photo_320x240.jpg", "image/jpeg").await;
    let img_owner_jwt = token(&img_owner, Role::Editor);
    warm(&servers[1..], &thumb(&img)).await;
    let r = delete_image(servers[0], &img_owner_jwt, &img).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        acked(r.header("pixgate-fleet")).0,
        2,
        "{:?}",
        r.header("pixgate-fleet")
    );
    for s in &servers[1..] {
        assert_eq!(get(&s.url(&thumb(&img)), &[]).await.status, 404);
    }

    // A master SIGKILLed mid-traffic.
    // (Fresh owners: the first one's transforms quota is spent. Misses beyond the new owner's
    // 8 are refused with 429, decided by the limiter like the rest.)
    let hot = crate::limits::seed_image(servers[0], &unique("rc-hot")).await;
    let hit = thumb(&hot);
    warm(&servers, &hit).await;
    let source = crate::limits::seed_image(servers[0], &unique("rc-src")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    let load = tokio::spawn(traffic(bases, hit, source, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = holding[0];
    let killed = Instant::now();
    rc.kill(victim);
    // Failed over: the victim marked failed, its replica promoted, every slot served.
    let (_rc, failover) = tokio::task::spawn_blocking(move || {
        let d = rc.wait_ok(Duration::from_secs(30));
        (rc, d)
    })
    .await
    .unwrap();
    let exact_again = wait_redis_ok(&servers, Duration::from_secs(30)).await + failover;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.await.unwrap();
    let errors: Vec<u16> = statuses
        .iter()
        .copied()
        .filter(|s| *s >= 500 && *s != 503)
        .collect();
    assert!(errors.is_empty(), "5xx other than 503: {errors:?}");
    println!(
        "redis cluster master killed: {} requests, {} answered 503; cluster ok after {:?}, pixgate decisions in redis again {:?} after the kill (total {:?})",
        statuses.len(),
        count(&statuses, 503),
        failover,
        exact_again,
        killed.elapsed()
    );
    // Exact again: a fresh user's quota is one count across the instances.
    let statuses = concurrent_uploads(&servers, &token(&unique("rc-after"), Role::Editor), 8).await;
    assert_eq!(
        (count(&statuses, 201), count(&statuses, 429)),
        (5, 3),
        "{statuses:?}"
    );
    let u = crate::limits::usage(servers[2], &token(&owner, Role::Viewer)).await;
    assert_eq!(u["limiter"], "redis");
}

/// A three-node Garage (replication factor 3): one node SIGKILLed mid-traffic, uploads and
/// transforms keep succeeding (writes need two of three copies).
#[tokio::test]
async fn uploads_and_transforms_continue_with_a_garage_node_down() {
    let mut gc = crate::clusters::GarageCluster::start();
    let s = Server::start_with(
        Backend::S3,
        &[
            ("PIXGATE__STORAGE__S3_ENDPOINT", gc.endpoint.as_str()),
            ("PIXGATE__STORAGE__S3_ATTEMPT_TIMEOUT_MS", "3000"),
            ("PIXGATE__LIMITS__UPLOADS_PER_HOUR", "100000"),
            ("PIXGATE__LIMITS__TRANSFORMS_PER_HOUR", "100000"),
        ],
    );
    let owner = unique("gc");
    let id = upload_fixture(&s, &owner, "photo_320x240.jpg", "image/jpeg").await;
    let hit = thumb(&id);
    warm(&[&s], &hit).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(traffic(vec![s.base.clone()], hit, id.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    gc.kill(2);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.await.unwrap();
    let failed: Vec<u16> = statuses.iter().copied().filter(|s| *s >= 400).collect();
    assert!(failed.is_empty(), "{failed:?} of {}", statuses.len());
    // Written with a node down, read back.
    let after = upload_fixture(&s, &owner, "photo_320x240.jpg", "image/jpeg").await;
    let r = get(
        &s.url(&signed(&format!("/rs:fit:50:0/plain/{after}@png"))),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    println!(
        "garage node killed: {} requests (uploads, hits, misses), none failed",
        statuses.len()
    );
}

/// `signing.keys`, `signing.salts` and `auth.jwt_hs256_secret` from mounted files; a changed
/// file takes effect on `SIGHUP`, on a connection that stays open across it; a reload that
/// cannot load keeps the previous secrets.
#[tokio::test]
async fn secrets_rotate_on_sighup_without_dropping_connections() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("signing-key");
    let jwt_file = dir.path().join("jwt");
    std::fs::write(&key_file, format!("{SIGNING_KEY}\n")).unwrap();
    std::fs::write(&jwt_file, JWT_SECRET).unwrap();
    let key_env = format!("file:{}", key_file.display());
    let jwt_env = format!("file:{}", jwt_file.display());
    let s = Server::start_with(
        Backend::Fs,
        &[
            ("PIXGATE__SIGNING__KEYS", key_env.as_str()),
            ("PIXGATE__AUTH__JWT_HS256_SECRET", jwt_env.as_str()),
        ],
    );
    let owner = unique("hup");
    let id = upload_fixture(&s, &owner, "photo_320x240.jpg", "image/jpeg").await;
    let path = format!("/rs:fit:40:0/plain/{id}@png");
    let new_key = "aa".repeat(32);
    let new_signer = pixgate::signature::Signer::from_hex(
        std::slice::from_ref(&new_key),
        &[SIGNING_SALT.into()],
        32,
    )
    .unwrap();
    let new_url = format!("/{}{}", new_signer.sign(&path), path);
    let new_secret = "rotated-secret-rotated-secret-rotated-0001";
    let new_jwt = {
        let mut cfg = auth_config();
        cfg.jwt_hs256_secret = new_secret.into();
        pixgate::auth::mint_hs256(
            &cfg,
            &pixgate::auth::TokenRequest {
                sub: owner.clone(),
                role: Role::Editor,
                plan: None,
                ttl_secs: 600,
            },
        )
        .unwrap()
    };
    let old_jwt = token(&owner, Role::Editor);
    assert_eq!(get(&s.url(&signed(&path)), &[]).await.status, 200);
    assert_eq!(get(&s.url(&new_url), &[]).await.status, 403);

    // A keep-alive connection opened before the reload.
    let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = |conn: &mut std::net::TcpStream| {
        conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut conn).starts_with("HTTP/1.1 200"));

    std::fs::write(&key_file, &new_key).unwrap();
    std::fs::write(&jwt_file, new_secret).unwrap();
    signal(s.pid() as u32, libc::SIGHUP);
    wait_log(&s, "secrets reloaded", 1).await;
    assert_eq!(get(&s.url(&new_url), &[]).await.status, 200);
    assert_eq!(get(&s.url(&signed(&path)), &[]).await.status, 403);
    let list = |t: String| {
        let url = s.url("/v1/images");
        async move { get(&url, &[("authorization", &bearer(&t))]).await.status }
    };
    assert_eq!(list(new_jwt.clone()).await, 200);
    assert_eq!(list(old_jwt).await, 401);
    assert!(
        ask(&mut conn).starts_with("HTTP/1.1 200"),
        "connection dropped"
    );

    // A file that cannot be read: the reload is refused, the current secrets stay.
    std::fs::remove_file(&key_file).unwrap();
    signal(s.pid() as u32, libc::SIGHUP);
    wait_log(&s, "reload refused", 1).await;
    assert!(!s.log().contains(&new_key), "a secret reached the log");
    assert_eq!(get(&s.url(&new_url), &[]).await.status, 200);
    assert_eq!(list(new_jwt).await, 200);
}

/// Waits until `needle` appears `n` times in the server's log.
async fn wait_log(s: &Server, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.log().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Managed Redis requires TLS and a user: `rediss://user:password@host` with an ACL user that
/// may run exactly what pixgate needs (scripts, pub/sub, its own keys). The limiter decides in
/// Redis and the fleet bus is up over that connection. (The CA comes from `SSL_CERT_FILE`, as
/// rustls-native-certs reads it.)
#[tokio::test]
async fn rediss_with_an_acl_user() {
    let port = free_port();
    let fixtures = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("users.acl");
    std::fs::write(
        &acl,
        "user default off\nuser pixgate on >s3cret-pw ~px:* &px:* +@scripting +@pubsub +@keyspace +@read +@write +@connection +time\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new("redis-server");
    cmd.args([
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .args(["--tls-cert-file", &format!("{fixtures}/tls_cert.pem")])
    .args(["--tls-key-file", &format!("{fixtures}/tls_key.pem")])
    .args(["--tls-ca-cert-file", &format!("{fixtures}/tls_ca.pem")])
    .args([
        "--tls-auth-clients",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--aclfile")
    .arg(&acl)
    .stdout(std::process::Stdio::null());
    let mut child = spawn_tied(&mut cmd).expect("redis-server with TLS");
    wait_port(port, Duration::from_secs(10));
    let url = format!("rediss://pixgate:s3cret-pw@localhost:{port}/0");
    let s = Server::start_with(
        Backend::S3,
        &[
            ("PIXGATE__REDIS__URL", url.as_str()),
            ("PIXGATE__REDIS__KEY_PREFIX", "px"),
            ("SSL_CERT_FILE", &format!("{fixtures}/tls_ca.pem")),
        ],
    );
    let r = get(&s.url("/readyz"), &[]).await;
    assert_eq!(r.json()["checks"]["redis"], "ok", "{}", s.log());
    wait_for(&s, "bus up", |m| {
        metric(m, "pixgate_fleet_bus_up", "") == 1.0
    })
    .await;
    let owner = unique("tls");
    let id = upload_fixture(&s, &owner, "photo_320x240.jpg", "image/jpeg").await;
    let u = crate::limits::usage(&s, &token(&owner, Role::Viewer)).await;
    assert_eq!(
        (
            u["limiter"].as_str(),
            u["quotas"]["uploads"]["used"].as_u64()
        ),
        (Some("redis"), Some(1))
    );
    let r = delete_image(&s, &token(&owner, Role::Editor), &id).await;
    assert_eq!(acked(r.header("pixgate-fleet")).1, 0);
    assert!(!s.log().contains("s3cret-pw"), "a password reached the log");
    let _ = child.kill();
    let _ = child.wait();
}

/// The same client over TLS: a TLS-only Redis Cluster (clients, cluster bus, replication) with
/// a password — what managed Redis in cluster mode asks for. Quotas exact across two instances,
/// deletes propagated, decisions in Redis.
#[tokio::test]
async fn two_instances_on_a_tls_redis_cluster() {
    let rc = crate::clusters::RedisCluster::start_with(true);
    let urls = rc.urls();
    assert!(urls.starts_with("rediss://"), "{urls}");
    let prefix = format!("t{}", unique("rct"));
    let ca = crate::clusters::tls_fixture("redis_tls_ca.pem");
    let env = fleet_env(
        &prefix,
        &[
            ("PIXGATE__REDIS__URL", ""),
            ("PIXGATE__REDIS__CLUSTER_URLS", urls.as_str()),
            ("PIXGATE__LIMITS__UPLOADS_PER_HOUR", "5"),
            ("SSL_CERT_FILE", ca.as_str()),
        ],
    );
    let fleet = start_fleet(2, &env);
    let servers: Vec<&Server> = fleet.iter().collect();
    wait_redis_ok(&servers, Duration::from_secs(10)).await;
    let user = unique("rct-up");
    let statuses = concurrent_uploads(&servers, &token(&user, Role::Editor), 7).await;
    assert_eq!(
        (count(&statuses, 201), count(&statuses, 429)),
        (5, 2),
        "{statuses:?}"
    );
    let u = crate::limits::usage(servers[1], &token(&user, Role::Viewer)).await;
    assert_eq!(u["limiter"], "redis");
    let owner = unique("rct-img");
    let img = crate::limits::seed_image(servers[0], &owner).await;
    warm(&servers[1..], &thumb(&img)).await;
    let r = delete_image(servers[0], &token(&owner, Role::Editor), &img).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        acked(r.header("pixgate-fleet")).0,
        1,
        "{:?}",
        r.header("pixgate-fleet")
    );
    assert_eq!(get(&servers[1].url(&thumb(&img)), &[]).await.status, 404);
}
