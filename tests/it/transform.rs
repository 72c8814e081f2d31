//! The transform route end to end: upload → signed URL → correct image, caching headers,
//! and every hostile variant of a URL.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Method;
use pixgate::auth::Role;
use pixgate::image::{ImageFormat, probe};

use crate::both_backends;
use crate::harness::*;

both_backends!(
    signed_url_resizes_to_every_format,
    etag_304_head_and_cache_control,
    expiry_bounds_max_age_and_expired_urls_are_refused,
    hostile_urls_are_refused_before_storage,
    bearer_transforms_respect_ownership,
    exif_orientation_is_applied,
    every_source_format_transforms,
    accept_negotiates_webp_with_vary,
);

async fn signed_url_resizes_to_every_format(backend: Backend) {
    let s = Server::start(backend);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    for (ext, format) in [
        ("webp", ImageFormat::Webp),
        ("jpg", ImageFormat::Jpeg),
        ("png", ImageFormat::Png),
    ] {
        let r = get(
            &s.url(&signed(&format!("/rs:fit:100:100/f:{ext}/plain/{id}"))),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{ext}: {:?}", r.body);
        assert_eq!(r.header("content-type"), Some(format.mime()));
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        let p = probe(&r.body).expect("valid image");
        assert_eq!((p.format, p.width, p.height), (format, 100, 75), "{ext}");
    }
    // Fill crops to the exact box; base64 source form; split base64 source.
    let enc = URL_SAFE_NO_PAD.encode(&id);
    let r = get(
        &s.url(&signed(&format!("/rs:fill:50:50/g:nowe/{enc}.png"))),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let p = probe(&r.body).unwrap();
    assert_eq!((p.width, p.height), (50, 50));
    let (a, b) = enc.split_at(20);
    let r = get(&s.url(&signed(&format!("/w:64/dpr:2/{a}/{b}.jpg"))), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(probe(&r.body).unwrap().width, 128);
    // The second identical request is a memory hit and computes nothing.
    let path = signed(&format!("/rs:fit:100:100/f:webp/plain/{id}"));
    let before = metrics(&s).await;
    let r = get(&s.url(&path), &[]).await;
    assert_eq!(r.status, 200);
    let after = metrics(&s).await;
    let hits = |t: &str| {
        metric(
            t,
            "pixgate_cache_requests_total",
            "{layer=\"memory\",result=\"hit\"}",
        )
    };
    let computed = |t: &str| metric(t, "pixgate_transform_duration_seconds_count", "");
    assert_eq!(hits(&after), hits(&before) + 1.0);
    assert_eq!(computed(&after), computed(&before));
    // Metrics never carry image ids.
    assert!(!after.contains(&id));
}

async fn etag_304_head_and_cache_control(backend: Backend) {
    let s = Server::start(backend);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let url = s.url(&signed(&format!("/rs:fit:80:80/f:png/plain/{id}")));
    let first = get(&url, &[]).await;
    assert_eq!(first.status, 200);
    let etag = first.header("etag").expect("etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.len() > 10,
        "strong etag: {etag}"
    );
    assert_eq!(
        first.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert!(first.header("last-modified").is_some());
    assert!(first.header("vary").is_none(), "explicit format: no Vary");

    // Same transform, other spelling → same ETag (canonical key).
    let other = get(
        &s.url(&signed(&format!("/w:80/h:80/rt:fit/plain/{id}@png"))),
        &[],
    )
    .await;
    assert_eq!(other.header("etag"), Some(etag.as_str()));

    let nm = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(nm.status, 304);
    assert!(nm.body.is_empty());
    assert_eq!(nm.header("etag"), Some(etag.as_str()));
    assert!(nm.header("cache-control").is_some());

    // A 304 on a memory miss (fresh server, same store) needs no computation.
    if backend == Backend::S3 {
        let s2 = Server::start(backend);
        let nm = get(
            &s2.url(&signed(&format!("/rs:fit:80:80/f:png/plain/{id}"))),
            &[("if-none-match", &etag)],
        )
        .await;
        assert_eq!(nm.status, 304);
        let m = metrics(&s2).await;
        assert_eq!(
            metric(&m, "pixgate_transform_duration_seconds_count", ""),
            0.0
        );
    }

    let head = request(Method::HEAD, &url, &[], bytes::Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert_eq!(head.header("content-type"), Some("image/png"));
    let head_nm = request(
        Method::HEAD,
        &url,
        &[("if-none-match", &etag)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(head_nm.status, 304);
    let stale = get(&url, &[("if-none-match", "\"something-else\"")]).await;
    assert_eq!(stale.status, 200);
}

async fn expiry_bounds_max_age_and_expired_urls_are_refused(backend: Backend) {
    let s = Server::start(backend);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = get(
        &s.url(&signed(&format!("/exp:{}/w:50/plain/{id}", now + 120))),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let cc = r.header("cache-control").unwrap();
    let age: u64 = cc
        .split(", ")
        .find_map(|p| p.strip_prefix("max-age="))
        .unwrap()
        .parse()
        .unwrap();
    assert!((100..=120).contains(&age), "{cc}");

    let r = get(
        &s.url(&signed(&format!("/exp:{}/w:50/plain/{id}", now - 1))),
        &[],
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (410, "url_expired"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

async fn hostile_urls_are_refused_before_storage(backend: Backend) {
    let s = Server::start(backend);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let good = signed(&format!("/rs:fit:100:100/plain/{id}"));
    let sig = good.split('/').nth(1).unwrap().to_owned();
    let unknown_id = "0123456789abcdef0123456789abcdef";
    let cases: Vec<(String, u16, &str)> = vec![
        // Tampered: the signature no longer matches the edited path.
        (
            format!("/{sig}/rs:fit:1000:1000/plain/{id}"),
            403,
            "invalid_signature",
        ),
        (
            format!("/{sig}/rs:fit:100:100/plain/{unknown_id}"),
            403,
            "invalid_signature",
        ),
        (
            format!("/{}{}", &sig[..sig.len() - 1], "A/rs:fit:100:100/plain/x"),
            403,
            "invalid_signature",
        ),
        (
            "/bm90LWEtc2lnbmF0dXJl/rs:fit:100:100/plain/x".to_owned(),
            403,
            "invalid_signature",
        ),
        // Properly signed but invalid.
        (signed(&format!("/zz:1/plain/{id}")), 400, "unknown_option"),
        (signed(&format!("/w:abc/plain/{id}")), 400, "invalid_option"),
        (
            signed(&format!("/w:99999/plain/{id}")),
            400,
            "invalid_option",
        ),
        (
            signed(&format!("/f:heic/plain/{id}")),
            400,
            "unsupported_format",
        ),
        (
            signed("/w:10/plain/../../etc/passwd"),
            400,
            "invalid_source",
        ),
        (
            signed("/w:10/plain/s3://other-bucket/key"),
            400,
            "invalid_source",
        ),
        (
            signed(&format!("/rs:force:16000:16000:1/plain/{id}")),
            400,
            "result_too_large",
        ),
        (
            signed(&format!("/w:10/plain/{unknown_id}")),
            404,
            "not_found",
        ),
        ("/onlyone".to_owned(), 404, "not_found"),
    ];
    for (path, status, code) in cases {
        let r = get(&s.url(&path), &[]).await;
        assert_eq!((r.status, r.code().as_str()), (status, code), "{path}");
        // Errors are never cached, except a verified signed URL's 404 (briefly, at the edge).
        let expected = if code == "not_found" && path != "/onlyone" {
            "public, max-age=10"
        } else {
            "no-store"
        };
        assert_eq!(r.header("cache-control"), Some(expected), "{path}");
    }
    let r = request(Method::POST, &s.url(&good), &[], bytes::Bytes::new()).await;
    assert_eq!((r.status, r.code().as_str()), (405, "method_not_allowed"));
}

async fn bearer_transforms_respect_ownership(backend: Backend) {
    let s = Server::start(backend);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let url = s.url(&format!("/_/rs:fit:60:60/f:jpg/plain/{id}"));
    let bearer = |sub: &str, role: Role| format!("Bearer {}", token(sub, role));

    let owner = get(&url, &[("authorization", &bearer("alice", Role::Viewer))]).await;
    assert_eq!(owner.status, 200);
    assert_eq!(
        owner.header("cache-control"),
        Some("private, max-age=31536000")
    );
    let admin = get(&url, &[("authorization", &bearer("root", Role::Admin))]).await;
    assert_eq!(admin.status, 200);
    // Another user gets 404 — on a cold path and on the memory-cache hit path alike.
    let other = get(&url, &[("authorization", &bearer("mallory", Role::Editor))]).await;
    assert_eq!((other.status, other.code().as_str()), (404, "not_found"));
    let none = get(&url, &[]).await;
    assert_eq!((none.status, none.code().as_str()), (401, "missing_token"));
    assert!(
        none.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let garbage = get(&url, &[("authorization", "Bearer nope")]).await;
    assert_eq!(
        (garbage.status, garbage.code().as_str()),
        (401, "invalid_token")
    );
    assert!(
        garbage
            .header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    let cold = s.url(&format!("/_/w:33/plain/{id}"));
    let other = get(
        &cold,
        &[("authorization", &bearer("mallory", Role::Editor))],
    )
    .await;
    assert_eq!(other.status, 404);
}

async fn exif_orientation_is_applied(backend: Backend) {
    let s = Server::start(backend);
    let r = upload(
        &s,
        &token("alice", Role::Editor),
        "image/jpeg",
        fixture("orient6_320x240.jpg"),
    )
    .await;
    assert_eq!(r.status, 201);
    // Metadata reports the displayed size.
    assert_eq!(
        (r.json()["width"].as_u64(), r.json()["height"].as_u64()),
        (Some(240), Some(320))
    );
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = get(&s.url(&signed(&format!("/plain/{id}@png"))), &[]).await;
    assert_eq!(r.status, 200);
    let p = probe(&r.body).unwrap();
    assert_eq!((p.width, p.height, p.orientation), (240, 320, 1));
    let r = get(
        &s.url(&signed(&format!("/rs:fill:100:50/plain/{id}@jpg"))),
        &[],
    )
    .await;
    let p = probe(&r.body).unwrap();
    assert_eq!((p.width, p.height, p.orientation), (100, 50, 1));
    for needle in [&b"Exif"[..], b"GPS"] {
        assert!(!r.body.windows(needle.len()).any(|w| w == needle));
    }
}

async fn every_source_format_transforms(backend: Backend) {
    let s = Server::start(backend);
    for (name, mime) in [
        ("alpha_320x240.png", "image/png"),
        ("photo_320x240.webp", "image/webp"),
        ("photo_320x240.gif", "image/gif"),
    ] {
        let id = upload_fixture(&s, "alice", name, mime).await;
        for ext in ["png", "webp", "jpg"] {
            let r = get(
                &s.url(&signed(&format!("/rs:fit:64:64/plain/{id}@{ext}"))),
                &[],
            )
            .await;
            assert_eq!(r.status, 200, "{name} → {ext}");
            let p = probe(&r.body).unwrap();
            assert_eq!((p.width, p.height), (64, 48), "{name} → {ext}");
        }
    }
}

async fn accept_negotiates_webp_with_vary(backend: Backend) {
    let s = Server::start(backend);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let url = s.url(&signed(&format!("/w:40/plain/{id}")));
    let webp = get(&url, &[("accept", "image/avif,image/webp,*/*")]).await;
    assert_eq!(webp.header("content-type"), Some("image/webp"));
    assert_eq!(webp.header("vary"), Some("Accept"));
    let jpeg = get(&url, &[("accept", "image/png,*/*")]).await;
    assert_eq!(jpeg.header("content-type"), Some("image/jpeg"));
    assert_eq!(jpeg.header("vary"), Some("Accept"));
    assert_ne!(webp.header("etag"), jpeg.header("etag"));
}
