//! `POST /v1/images` and `GET /v1/images/{id}`: a stored original, and every hostile upload.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pixgate::auth::Role;
use sha2::{Digest, Sha256};

use crate::both_backends;
use crate::harness::*;

both_backends!(
    upload_stores_original_and_metadata,
    hostile_uploads_are_refused_with_stable_codes,
    hostile_tokens_are_refused,
    oversize_bodies_are_refused,
);

async fn upload_stores_original_and_metadata(backend: Backend) {
    let s = Server::start(backend);
    let body = fixture("photo_320x240.jpg");
    let r = upload(
        &s,
        &token("alice", Role::Editor),
        "image/jpeg",
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let meta = r.json();
    let id = meta["id"].as_str().unwrap();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/images/{id}").as_str())
    );
    assert_eq!(meta["owner"], "alice");
    assert_eq!(meta["format"], "jpeg");
    assert_eq!(
        (meta["width"].as_u64(), meta["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(meta["bytes"].as_u64(), Some(body.len() as u64));
    assert_eq!(meta["sha256"], hex::encode(Sha256::digest(&body)));
    assert!(meta["created_at"].as_str().unwrap().ends_with('Z'));

    let auth = |sub: &str, role| format!("Bearer {}", token(sub, role));
    let url = s.url(&format!("/v1/images/{id}"));
    let mine = get(&url, &[("authorization", &auth("alice", Role::Viewer))]).await;
    assert_eq!(mine.status, 200);
    assert_eq!(mine.json(), meta);
    let admin = get(&url, &[("authorization", &auth("root", Role::Admin))]).await;
    assert_eq!(admin.status, 200);
    let other = get(&url, &[("authorization", &auth("bob", Role::Admin))]).await;
    assert_eq!(other.status, 200, "admin role reads any image");
    let other = get(&url, &[("authorization", &auth("bob", Role::Editor))]).await;
    assert_eq!((other.status, other.code().as_str()), (404, "not_found"));
    let missing = get(
        &s.url("/v1/images/0123456789abcdef0123456789abcdef"),
        &[("authorization", &auth("alice", Role::Viewer))],
    )
    .await;
    assert_eq!(missing.status, 404);
    let junk = get(
        &s.url("/v1/images/..%2F..%2Fetc"),
        &[("authorization", &auth("alice", Role::Viewer))],
    )
    .await;
    assert_eq!(junk.status, 404);
    let anon = get(&url, &[]).await;
    assert_eq!((anon.status, anon.code().as_str()), (401, "missing_token"));

    // The stored original is byte-identical (a no-op transform to the same format re-encodes,
    // so compare through the storage layout instead).
    if backend == Backend::Fs {
        let stored = std::fs::read(
            s.dir
                .path()
                .join(format!("data/originals/images/{id}/original")),
        )
        .unwrap();
        assert_eq!(stored, body);
    }
}

async fn hostile_uploads_are_refused_with_stable_codes(backend: Backend) {
    let s = Server::start(backend);
    let editor = token("alice", Role::Editor);
    let cases: Vec<(&str, &str, bytes::Bytes, u16, &str)> = vec![
        (
            "viewer",
            "image/jpeg",
            fixture("photo_320x240.jpg"),
            403,
            "forbidden",
        ),
        (
            "html as jpeg",
            "image/jpeg",
            fixture("not_an_image.html"),
            415,
            "unsupported_media_type",
        ),
        (
            "png as jpeg",
            "image/jpeg",
            fixture("alpha_320x240.png"),
            415,
            "unsupported_media_type",
        ),
        (
            "text/html",
            "text/html",
            fixture("photo_320x240.jpg"),
            415,
            "unsupported_media_type",
        ),
        (
            "svg",
            "image/svg+xml",
            bytes::Bytes::from_static(b"<svg/>"),
            415,
            "unsupported_media_type",
        ),
        (
            "pixel flood",
            "image/png",
            fixture("bomb_30000x30000.png"),
            422,
            "too_many_pixels",
        ),
        (
            "truncated jpeg",
            "image/jpeg",
            fixture("truncated.jpg"),
            422,
            "invalid_image",
        ),
        (
            "empty",
            "image/png",
            bytes::Bytes::new(),
            422,
            "invalid_image",
        ),
        (
            "header only",
            "image/png",
            fixture("alpha_320x240.png").slice(..40),
            422,
            "invalid_image",
        ),
    ];
    for (name, ct, body, status, code) in cases {
        let t = if name == "viewer" {
            token("vic", Role::Viewer)
        } else {
            editor.clone()
        };
        let r = upload(&s, &t, ct, body).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{name}: {:?}",
            r.body
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    // Nothing was stored by any refused upload.
    if backend == Backend::Fs {
        let images = s.dir.path().join("data/originals/images");
        let n = std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0);
        assert_eq!(n, 0, "refused uploads left objects behind");
    }
    let r = request(Method::PUT, &s.url("/v1/images"), &[], bytes::Bytes::new()).await;
    assert_eq!(r.status, 405);
}

async fn hostile_tokens_are_refused(backend: Backend) {
    let s = Server::start(backend);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"sub": "alice", "role": "editor", "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE});
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sign = |alg, c: &serde_json::Value, secret: &str| {
        jsonwebtoken::encode(
            &Header::new(alg),
            c,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let mut expired = claims.clone();
    expired["exp"] = (now - 3600).into();
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = "https://evil/".into();
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = "someone-else".into();
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none, "invalid_token"),
        (
            "HS512",
            sign(Algorithm::HS512, &claims, JWT_SECRET),
            "invalid_token",
        ),
        (
            "HS384",
            sign(Algorithm::HS384, &claims, JWT_SECRET),
            "invalid_token",
        ),
        (
            "wrong secret",
            sign(
                Algorithm::HS256,
                &claims,
                "x-wrong-secret-wrong-secret-wrong-x",
            ),
            "invalid_token",
        ),
        (
            "expired",
            sign(Algorithm::HS256, &expired, JWT_SECRET),
            "token_expired",
        ),
        (
            "wrong iss",
            sign(Algorithm::HS256, &wrong_iss, JWT_SECRET),
            "invalid_token",
        ),
        (
            "wrong aud",
            sign(Algorithm::HS256, &wrong_aud, JWT_SECRET),
            "invalid_token",
        ),
        ("garbage", "a.b.c".into(), "invalid_token"),
    ];
    for (name, t, code) in cases {
        let r = upload(&s, &t, "image/jpeg", fixture("photo_320x240.jpg")).await;
        assert_eq!((r.status, r.code().as_str()), (401, code), "{name}");
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(www.contains("error=\"invalid_token\""), "{name}: {www}");
    }
    let r = request(
        Method::POST,
        &s.url("/v1/images"),
        &[("content-type", "image/jpeg")],
        fixture("photo_320x240.jpg"),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (401, "missing_token"));
    let r = request(
        Method::POST,
        &s.url("/v1/images"),
        &[
            ("authorization", "Basic YTpi"),
            ("content-type", "image/jpeg"),
        ],
        fixture("photo_320x240.jpg"),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_token"));
    // Tokens never reach the log.
    let t = token("alice", Role::Editor);
    upload(&s, &t, "image/jpeg", fixture("photo_320x240.jpg")).await;
    let sig = t.rsplit('.').next().unwrap();
    assert!(
        !s.log().contains(sig),
        "token signature found in the server log"
    );
}

async fn oversize_bodies_are_refused(backend: Backend) {
    let s = Server::start_with(backend, &[("PIXGATE__LIMITS__MAX_SOURCE_BYTES", "20000")]);
    let t = token("alice", Role::Editor);
    let big = fixture("photo_320x240.jpg");
    assert!(big.len() > 20_000);
    // Declared length over the cap.
    let r = upload(&s, &t, "image/jpeg", big.clone()).await;
    assert_eq!((r.status, r.code().as_str()), (413, "payload_too_large"));
    // Chunked (no Content-Length): the cap is enforced while reading.
    let r = chunked_upload(&s, &t, &big).await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("payload_too_large"), "{r}");
    // Other routes have their own, smaller body cap.
    let r = request(
        Method::GET,
        &s.url("/healthz"),
        &[],
        bytes::Bytes::from(vec![b'x'; 70_000]),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (413, "payload_too_large"));
}

/// Sends a chunked upload over a raw socket and returns the response head and body as text.
async fn chunked_upload(s: &Server, token: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/images HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(4096) {
        let frame = format!("{:x}\r\n", chunk.len());
        if c.write_all(frame.as_bytes()).await.is_err()
            || c.write_all(chunk).await.is_err()
            || c.write_all(b"\r\n").await.is_err()
        {
            break; // the server may stop reading once over the cap
        }
    }
    let _ = c.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}
