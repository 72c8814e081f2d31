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
