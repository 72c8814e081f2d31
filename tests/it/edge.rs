//! Edge hygiene against real servers: security headers on every kind of response, CORS from an
//! allowlist, the TLS listener (with HSTS), and client addresses from trusted proxies only.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};
use pixgate::auth::Role;

use crate::harness::*;
use crate::identity::unique;

fn assert_security_headers(r: &Resp, what: &str) {
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}");
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("sandbox"),
        "{what}: {csp}"
    );
    assert!(
        r.header("strict-transport-security").is_none(),
        "{what}: HSTS over plain HTTP"
    );
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let s = Server::start(Backend::S3);
    let alice = unique("alice");
    let t = token(&alice, Role::Editor);
    let id = upload_fixture(&s, &alice, "photo_320x240.jpg", "image/jpeg").await;
    let image = get(
        &s.url(&signed(&format!("/rs:fit:40:40/plain/{id}@png"))),
        &[],
    )
    .await;
    assert_eq!(image.status, 200);
    assert_security_headers(&image, "image");
    let api = get(
        &s.url(&format!("/v1/images/{id}")),
        &[("authorization", &bearer(&t))],
    )
    .await;
    assert_eq!(api.status, 200);
    assert_eq!(api.header("cache-control"), Some("no-store"));
    assert_security_headers(&api, "api");
    let err = get(&s.url("/v1/nothing"), &[]).await;
    assert_eq!(err.status, 404);
    assert_security_headers(&err, "error");
    assert_security_headers(&get(&s.url("/healthz"), &[]).await, "healthz");
}

#[tokio::test]
async fn cors_follows_the_allowlist() {
    let s = Server::start_with(
        Backend::Fs,
        &[("PIXGATE__SERVER__CORS_ORIGINS", "https://app.example")],
    );
    let preflight = |origin: &'static str, method: &'static str| {
        let url = s.url("/v1/images");
        async move {
            request(
                Method::OPTIONS,
                &url,
                &[
                    ("origin", origin),
                    ("access-control-request-method", method),
                    (
                        "access-control-request-headers",
                        "authorization, content-type",
                    ),
                ],
                Bytes::new(),
            )
            .await
        }
    };
    let ok = preflight("https://app.example", "POST").await;
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(
        ok.header("access-control-allow-methods")
            .unwrap()
            .contains("DELETE")
    );
    assert!(ok.header("access-control-allow-credentials").is_none());
    let evil = preflight("https://evil.example", "POST").await;
    assert_eq!(
        (evil.status, evil.code().as_str()),
        (403, "cors_origin_not_allowed")
    );
    assert!(evil.header("access-control-allow-origin").is_none());
    let bad_method = preflight("https://app.example", "PUT").await;
    assert_eq!(bad_method.status, 403);
    // Actual requests: allowed origins see the headers (errors included), others do not.
    let r = get(&s.url("/v1/images"), &[("origin", "https://app.example")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(r.header("vary").unwrap_or_default().contains("Origin"));
    let r = get(&s.url("/healthz"), &[("origin", "https://evil.example")]).await;
    assert!(r.header("access-control-allow-origin").is_none());

    // `*` with credentials is refused at start; `*` alone never sends credentials.
    let dir = tempfile::tempdir().unwrap();
    let env = server_env(
        Backend::Fs,
        dir.path(),
        &[
            ("PIXGATE__SERVER__CORS_ORIGINS", "*"),
            ("PIXGATE__SERVER__CORS_ALLOW_CREDENTIALS", "true"),
        ],
    );
    let out = pixgate_cmd(&env).arg("check-config").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.cors_allow_credentials"));
}

#[tokio::test]
async fn tls_listener_serves_https_with_hsts() {
    let cert = format!("{}/tests/fixtures/tls_cert.pem", env!("CARGO_MANIFEST_DIR"));
    let key = format!("{}/tests/fixtures/tls_key.pem", env!("CARGO_MANIFEST_DIR"));
    let s = Server::start_with(
        Backend::Fs,
        &[
            ("PIXGATE__SERVER__TLS_CERT_FILE", &cert),
            ("PIXGATE__SERVER__TLS_KEY_FILE", &key),
        ],
    );
    assert!(s.base.starts_with("https://"), "{}", s.base);
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = format!("{}/tests/fixtures/tls_ca.pem", env!("CARGO_MANIFEST_DIR"));
    for c in CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let url = format!("https://localhost:{}/healthz", s.addr.port());
    let resp = client
        .request(http::Request::get(&url).body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("ok"));
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let r = plain
        .request(
            http::Request::get(format!("http://127.0.0.1:{}/healthz", s.addr.port()))
                .body(Empty::new())
                .unwrap(),
        )
        .await;
    assert!(r.is_err() || r.unwrap().status() != 200);
}

#[tokio::test]
async fn client_ip_comes_from_trusted_proxies_only() {
    let trusting = Server::start_with(
        Backend::Fs,
        &[("PIXGATE__SERVER__TRUSTED_PROXIES", "127.0.0.1/32")],
    );
    // X-Forwarded-For (the default) is read; a client-sent Forwarded does not override it.
    get(
        &trusting.url("/healthz"),
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=203.0.113.66"),
        ],
    )
    .await;
    let log = trusting.log_with(&["client_ip=198.51.100.7"]);
    assert!(log.contains("client_ip=198.51.100.7"), "{log}");
    assert!(!log.contains("203.0.113.66"), "{log}");
    let rfc7239 = Server::start_with(
        Backend::Fs,
        &[
            ("PIXGATE__SERVER__TRUSTED_PROXIES", "127.0.0.1/32"),
            ("PIXGATE__SERVER__CLIENT_IP_HEADER", "forwarded"),
        ],
    );
    get(
        &rfc7239.url("/readyz"),
        &[
            ("forwarded", "for=\"[2001:db8::9]:443\";proto=https"),
            ("x-forwarded-for", "203.0.113.66"),
        ],
    )
    .await;
    let log = rfc7239.log_with(&["client_ip=2001:db8::9"]);
    assert!(log.contains("client_ip=2001:db8::9"), "{log}");
    assert!(!log.contains("203.0.113.66"), "{log}");
    let untrusting = Server::start(Backend::Fs);
    get(
        &untrusting.url("/healthz"),
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=203.0.113.1"),
        ],
    )
    .await;
    let log = untrusting.log_with(&["client_ip=127.0.0.1"]);
    assert!(
        !log.contains("198.51.100.7") && !log.contains("203.0.113.1"),
        "{log}"
    );
    assert!(log.contains("client_ip=127.0.0.1"), "{log}");
}

/// The IP blocklist: an admin blocks a network (with a reason and an expiry); clients in it
/// get `403 blocked` on every route but the probes, before their credentials are looked at,
/// on this instance at once and on another within `auth.revocation_cache_secs`; the block
/// expires, is listed, lifted (`204`, then `404`), audited; an admin cannot block their own
/// address; non-admins cannot block.
#[tokio::test]
async fn blocked_networks_are_refused_before_any_work_on_every_instance() {
    // Buckets of its own: no other test's server sees these blocks.
    let buckets = own_buckets("blk");
    let mut env: Vec<(&str, &str)> = buckets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.extend([
        ("PIXGATE__SERVER__TRUSTED_PROXIES", "127.0.0.1/32"),
        ("PIXGATE__AUTH__REVOCATION_CACHE_SECS", "1"),
        ("PIXGATE__AUDIT__FLUSH_SECONDS", "1"),
    ]);
    // Two instances on the same storage.
    let (a, b) = (
        Server::start_with(Backend::S3, &env),
        Server::start_with(Backend::S3, &env),
    );
    let admin = bearer(&token(&unique("root"), Role::Admin));
    let user = bearer(&token(&unique("uma"), Role::Editor));
    let post = |s: &Server, from: &'static str, auth: &str, body: String| {
        let (url, auth) = (s.url("/v1/admin/blocks"), auth.to_owned());
        async move {
            request(
                Method::POST,
                &url,
                &[("authorization", &auth), ("x-forwarded-for", from)],
                Bytes::from(body),
            )
            .await
        }
    };
    let from = |s: &Server, ip: &'static str, path: &str, auth: &str| {
        let (url, auth) = (s.url(path), auth.to_owned());
        async move { get(&url, &[("authorization", &auth), ("x-forwarded-for", ip)]).await }
    };
    // Refusals: a non-admin, the admin's own network, bad input.
    let body =
        |cidr: &str, extra: &str| format!("{{\"cidr\":\"{cidr}\",\"reason\":\"scan\"{extra}}}");
    let r = post(&a, "198.51.100.9", &user, body("203.0.113.0/24", "")).await;
    assert_eq!(r.status, 403);
    let r = post(&a, "198.51.100.9", &admin, body("198.51.100.0/24", "")).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_field"),
        "own address"
    );
    for bad in [
        body("nope", ""),
        body("203.0.113.0/24", ",\"expires_in\":0"),
        "{}".into(),
    ] {
        let r = post(&a, "198.51.100.9", &admin, bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}");
    }
    // Blocked here at once: any route, any credential; probes still answer.
    let r = post(&a, "198.51.100.9", &admin, body("203.0.113.9/24", "")).await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let block = r.json();
    assert_eq!(block["cidr"], "203.0.113.0/24");
    let id = block["id"].as_str().unwrap().to_owned();
    for path in ["/v1/images", "/v1/usage", "/v1/admin/audit"] {
        for auth in [&user, &admin] {
            let r = from(&a, "203.0.113.5", path, auth).await;
            assert_eq!((r.status, r.code().as_str()), (403, "blocked"), "{path}");
        }
    }
    let r = get(
        &a.url(&signed("/w:10/plain/none")),
        &[("x-forwarded-for", "203.0.113.5")],
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "blocked"),
        "transforms too"
    );
    let r = get(&a.url("/healthz"), &[("x-forwarded-for", "203.0.113.5")]).await;
    assert_eq!(r.status, 200, "probes are not refused");
    assert_eq!(
        from(&a, "198.51.100.1", "/v1/images", &user).await.status,
        200
    );
    // The other instance: within the bound (its list is reloaded after 1 s).
    let mut refused = false;
    for _ in 0..40 {
        if from(&b, "203.0.113.5", "/v1/images", &user).await.status == 403 {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused, "the second instance refuses within the bound");
    // Listed, lifted, gone: 404 the second time; both instances serve again.
    let r = from(&a, "198.51.100.9", "/v1/admin/blocks", &admin).await;
    assert!(
        r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == id.as_str())
    );
    let del = |s: &Server| {
        let (url, auth) = (s.url(&format!("/v1/admin/blocks/{id}")), admin.clone());
        async move {
            request(
                Method::DELETE,
                &url,
                &[
                    ("authorization", &auth),
                    ("x-forwarded-for", "198.51.100.9"),
                ],
                Bytes::new(),
            )
            .await
            .status
        }
    };
    assert_eq!(del(&a).await, 204);
    assert_eq!(del(&a).await, 404);
    assert_eq!(
        from(&a, "203.0.113.5", "/v1/images", &user).await.status,
        200
    );
    let mut served = false;
    for _ in 0..40 {
        if from(&b, "203.0.113.5", "/v1/images", &user).await.status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(served, "lifted on the second instance within the bound");
    // An expiring block lapses by itself.
    let r = post(
        &a,
        "198.51.100.9",
        &admin,
        body("2001:db8::/32", ",\"expires_in\":1"),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        from(&a, "2001:db8::7", "/v1/images", &user).await.status,
        403
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        from(&a, "2001:db8::7", "/v1/images", &user).await.status,
        200
    );
    // Audited.
    let mut actions = Vec::new();
    for _ in 0..50 {
        let r = from(
            &a,
            "198.51.100.9",
            "/v1/admin/audit?since=0&action=block.create",
            &admin,
        )
        .await;
        actions = r.json()["items"].as_array().unwrap().clone();
        if actions.iter().filter(|e| e["status"] == 201).count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        actions.iter().filter(|e| e["status"] == 201).count() >= 2,
        "{actions:?}"
    );
}
