//! The image API against real servers: listing with cursors, metadata changes, signed-URL
//! minting, multipart uploads and their hostile cases, and deletion that leaves nothing behind
//! in either bucket.

use bytes::Bytes;
use http::Method;
use pixgate::auth::Role;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::*;
use crate::identity::unique;

async fn call(s: &Server, method: Method, path: &str, token: &str, body: Value) -> Resp {
    let auth = bearer(token);
    let mut headers = vec![("authorization", auth.as_str())];
    let body = if body.is_null() {
        Bytes::new()
    } else {
        headers.push(("content-type", "application/json"));
        Bytes::from(body.to_string())
    };
    request(method, &s.url(path), &headers, body).await
}

both_backends!(
    listing_is_paginated_newest_first_and_private,
    metadata_changes_are_validated,
    signed_urls_are_minted_for_owners_with_bounded_lifetimes,
    multipart_uploads_and_their_hostile_cases,
);

async fn listing_is_paginated_newest_first_and_private(backend: Backend) {
    let s = Server::start(backend);
    let alice = unique("alice");
    let t = token(&alice, Role::Editor);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(upload_fixture(&s, &alice, "photo_320x240.jpg", "image/jpeg").await);
        // created_at has second resolution; keep the order unambiguous.
        tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let r = call(
            &s,
            Method::GET,
            &format!("/v1/images?limit=2&cursor={cursor}"),
            &t,
            Value::Null,
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let j = r.json();
        let items = j["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        pages += 1;
        match j["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every image once, newest first");
    assert_eq!(pages, 3);
    for bad in ["limit=0", "limit=101", "limit=x", "cursor=..%2F..%2Fx"] {
        let r = call(
            &s,
            Method::GET,
            &format!("/v1/images?{bad}"),
            &t,
            Value::Null,
        )
        .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_field"),
            "{bad}"
        );
    }
    // Another user sees none of them; an admin sees them on request.
    let bob = token(&unique("bob"), Role::Editor);
    let r = call(&s, Method::GET, "/v1/images", &bob, Value::Null).await;
    assert_eq!(r.json()["items"], json!([]));
    let r = call(
        &s,
        Method::GET,
        &format!("/v1/images?owner={alice}"),
        &bob,
        Value::Null,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    let admin = token(&unique("root"), Role::Admin);
    let r = call(
        &s,
        Method::GET,
        &format!("/v1/images?owner={alice}&limit=100"),
        &admin,
        Value::Null,
    )
    .await;
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 5);
}

async fn metadata_changes_are_validated(backend: Backend) {
    let s = Server::start(backend);
    let alice = unique("alice");
    let t = token(&alice, Role::Editor);
    let id = upload_fixture(&s, &alice, "photo_320x240.jpg", "image/jpeg").await;
    let path = format!("/v1/images/{id}");
    let r = call(
        &s,
        Method::PATCH,
        &path,
        &t,
        json!({"title": "Élan", "alt_text": "a tree", "tags": ["nature", " nature ", "tree"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = call(&s, Method::GET, &path, &t, Value::Null).await;
    let j = r.json();
    assert_eq!(
        (&j["title"], &j["alt_text"], &j["tags"]),
        (&json!("Élan"), &json!("a tree"), &json!(["nature", "tree"]))
    );
    // Rectification can clear a field.
    let r = call(&s, Method::PATCH, &path, &t, json!({"alt_text": null})).await;
    assert_eq!(r.json()["alt_text"], Value::Null);
    assert_eq!(r.json()["title"], json!("Élan"));
    let too_many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
    for (name, body, code) in [
        (
            "long title",
            json!({"title": "x".repeat(256)}),
            "invalid_field",
        ),
        (
            "long alt",
            json!({"alt_text": "x".repeat(256)}),
            "invalid_field",
        ),
        ("21 tags", json!({ "tags": too_many }), "invalid_field"),
        (
            "long tag",
            json!({"tags": ["x".repeat(51)]}),
            "invalid_field",
        ),
        (
            "control chars",
            json!({"title": "a\u{1b}[31m"}),
            "invalid_field",
        ),
        (
            "owner is not editable",
            json!({"owner": "mallory"}),
            "invalid_field",
        ),
        ("not an object", json!(["title"]), "bad_request"),
    ] {
        let r = call(&s, Method::PATCH, &path, &t, body).await;
        assert_eq!((r.status, r.code().as_str()), (400, code), "{name}");
    }
    let r = request(
        Method::PATCH,
        &s.url(&path),
        &[("authorization", &bearer(&t))],
        Bytes::from("{not json"),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "bad_request"));
    // Nothing of the refused patches stuck.
    let r = call(&s, Method::GET, &path, &t, Value::Null).await;
    assert_eq!(r.json()["title"], json!("Élan"));
}

async fn signed_urls_are_minted_for_owners_with_bounded_lifetimes(backend: Backend) {
    let s = Server::start_with(
        backend,
        &[
            ("PIXGATE__SIGNING__MAX_URL_TTL_SECS", "7200"),
            ("PIXGATE__PRESETS__SHARE", "rs:fit:32:32/exp:4102444800"),
        ],
    );
    let alice = unique("alice");
    let t = token(&alice, Role::Viewer);
    let id = upload_fixture(&s, &alice, "photo_320x240.jpg", "image/jpeg").await;
    let path = format!("/v1/images/{id}/url");
    let r = call(
        &s,
        Method::POST,
        &path,
        &t,
        json!({"options": "rs:fit:64:64/f:png", "expires_in": 600}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let url = r.json()["url"].as_str().unwrap().to_owned();
    let img = get(&s.url(&url), &[]).await;
    assert_eq!(img.status, 200);
    assert_eq!(img.header("content-type"), Some("image/png"));
    let max_age: u64 = img
        .header("cache-control")
        .and_then(|c| c.split("max-age=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(max_age <= 600, "max-age {max_age} outlives the URL");
    // Default lifetime, and no options at all.
    let r = call(&s, Method::POST, &path, &t, Value::Null).await;
    assert_eq!(r.json()["expires_in"], json!(3600));
    assert_eq!(
        get(&s.url(r.json()["url"].as_str().unwrap()), &[])
            .await
            .status,
        200
    );
    for (name, body) in [
        ("beyond the maximum", json!({"expires_in": 7201})),
        ("zero", json!({"expires_in": 0})),
        ("negative", json!({"expires_in": -5})),
        ("unknown option", json!({"options": "zz:1"})),
        (
            "another source",
            json!({"options": "rs:fit:1:1/plain/0123456789abcdef0123456789abcdef"}),
        ),
        ("own exp", json!({"options": "exp:99999999999"})),
        ("a preset's exp", json!({"options": "pr:share"})),
        ("options not a string", json!({"options": 5})),
    ] {
        let r = call(&s, Method::POST, &path, &t, body).await;
        assert_eq!(
            r.status,
            400,
            "{name}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let bob = token(&unique("bob"), Role::Editor);
    let r = call(&s, Method::POST, &path, &bob, Value::Null).await;
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
}

/// A `multipart/form-data` body with the given parts: (name, content type, bytes).
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Bytes) {
    let boundary = "pixgate-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, ct, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match ct {
            Some(ct) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"x\"\r\nContent-Type: {ct}\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={boundary}"),
        Bytes::from(body),
    )
}

async fn multipart_uploads_and_their_hostile_cases(backend: Backend) {
    let s = Server::start_with(
        backend,
        &[
            ("PIXGATE__LIMITS__MAX_SOURCE_BYTES", "40000"),
            ("PIXGATE__LIMITS__UPLOAD_FORMATS", "jpeg,png"),
        ],
    );
    let alice = unique("alice");
    let t = token(&alice, Role::Editor);
    let jpeg = fixture("photo_320x240.jpg");
    let (ct, body) = multipart(&[
        ("title", None, "Sunset".as_bytes()),
        ("file", Some("image/jpeg"), &jpeg),
        ("tags", None, b"sky, sea"),
        ("tags", None, b"sun"),
    ]);
    let r = upload(&s, &t, &ct, body).await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["title"], json!("Sunset"));
    assert_eq!(j["tags"], json!(["sky", "sea", "sun"]));
    assert_eq!(j["bytes"], json!(jpeg.len()));
    // The stored original is byte-identical.
    let id = j["id"].as_str().unwrap();
    let r = get(
        &s.url(&format!("/_/rs:fit:320:320/plain/{id}@jpg")),
        &[("authorization", &bearer(&t))],
    )
    .await;
    assert_eq!(r.status, 200);

    let big = vec![0u8; 50_000];
    let cases: Vec<(&str, (String, Bytes), u16, &str)> = vec![
        (
            "magic bytes disagree",
            multipart(&[("file", Some("image/png"), &jpeg)]),
            415,
            "unsupported_media_type",
        ),
        (
            "type not allowed here",
            multipart(&[("file", Some("image/webp"), &fixture("photo_320x240.webp"))]),
            415,
            "unsupported_media_type",
        ),
        (
            "no type on the file",
            multipart(&[("file", None, &jpeg)]),
            415,
            "unsupported_media_type",
        ),
        (
            "oversize file",
            multipart(&[("file", Some("image/jpeg"), &big)]),
            413,
            "payload_too_large",
        ),
        (
            "pixel flood",
            multipart(&[("file", Some("image/png"), &fixture("bomb_30000x30000.png"))]),
            422,
            "too_many_pixels",
        ),
        (
            "corrupt",
            multipart(&[("file", Some("image/jpeg"), &fixture("truncated.jpg"))]),
            422,
            "invalid_image",
        ),
        (
            "html posing as jpeg",
            multipart(&[("file", Some("image/jpeg"), &fixture("not_an_image.html"))]),
            415,
            "unsupported_media_type",
        ),
        (
            "no file",
            multipart(&[("title", None, b"x")]),
            400,
            "invalid_field",
        ),
        (
            "two files",
            multipart(&[
                ("file", Some("image/jpeg"), &jpeg),
                ("file", Some("image/jpeg"), &jpeg),
            ]),
            400,
            "invalid_field",
        ),
        (
            "unknown field",
            multipart(&[
                ("owner", None, b"mallory"),
                ("file", Some("image/jpeg"), &jpeg),
            ]),
            400,
            "invalid_field",
        ),
        (
            "title too long",
            multipart(&[
                ("title", None, "x".repeat(256).as_bytes()),
                ("file", Some("image/jpeg"), &jpeg),
            ]),
            400,
            "invalid_field",
        ),
        (
            "21 tags",
            multipart(&[
                (
                    "tags",
                    None,
                    (0..21)
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                        .as_bytes(),
                ),
                ("file", Some("image/jpeg"), &jpeg),
            ]),
            400,
            "invalid_field",
        ),
        (
            "tag flood",
            multipart(&[
                ("tags", None, "a,".repeat(150).as_bytes()),
                ("file", Some("image/jpeg"), &jpeg),
            ]),
            400,
            "invalid_field",
        ),
        (
            "truncated body",
            (
                "multipart/form-data; boundary=abc".into(),
                Bytes::from_static(b"--abc\r\nContent-Disposition: form-data; name=\"file\"\r\n"),
            ),
            400,
            "bad_request",
        ),
        (
            "no boundary",
            ("multipart/form-data".into(), Bytes::from_static(b"x")),
            400,
            "bad_request",
        ),
    ];
    for (name, (ct, body), status, code) in cases {
        let r = upload(&s, &t, &ct, body).await;
        assert_eq!((r.status, r.code().as_str()), (status, code), "{name}");
    }
    // Only the one good upload exists.
    let r = get(&s.url("/v1/images"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 1);
    // Raw uploads obey the allowed formats too.
    let r = upload(&s, &t, "image/webp", fixture("photo_320x240.webp")).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (415, "unsupported_media_type")
    );
}

#[tokio::test]
async fn delete_removes_every_object_and_old_signed_urls_404() {
    let s = Server::start(Backend::S3);
    let alice = unique("alice");
    let t = token(&alice, Role::Editor);
    let id = upload_fixture(&s, &alice, "photo_320x240.jpg", "image/jpeg").await;
    let keep = upload_fixture(&s, &alice, "photo_320x240.jpg", "image/jpeg").await;
    let url = signed(&format!("/rs:fit:50:50/plain/{id}@webp"));
    assert_eq!(get(&s.url(&url), &[]).await.status, 200); // now in the memory cache
    assert_eq!(get(&s.url(&url), &[]).await.status, 200);
    // Derived objects under the image's prefix (what the derived cache writes).
    let client = s3_client().await;
    for leaf in ["a1b2.webp", "c3d4.jpg", "sub/e5f6.png"] {
        client
            .put_object()
            .bucket(DERIVED_BUCKET)
            .key(format!("derived/{id}/{leaf}"))
            .body(Bytes::from_static(b"derived").into())
            .send()
            .await
            .unwrap();
    }
    let mentions = |keys: &[String], id: &str| keys.iter().filter(|k| k.contains(id)).count();
    let before = [
        s3_keys(&client, ORIGINALS_BUCKET).await,
        s3_keys(&client, DERIVED_BUCKET).await,
    ]
    .concat();
    assert!(mentions(&before, &id) >= 6, "{before:?}");

    let viewer = token(&alice, Role::Viewer);
    let r = request(
        Method::DELETE,
        &s.url(&format!("/v1/images/{id}")),
        &[("authorization", &bearer(&viewer))],
        Bytes::new(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    let r = request(
        Method::DELETE,
        &s.url(&format!("/v1/images/{id}")),
        &[("authorization", &bearer(&t))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
    let after = [
        s3_keys(&client, ORIGINALS_BUCKET).await,
        s3_keys(&client, DERIVED_BUCKET).await,
    ]
    .concat();
    assert_eq!(mentions(&after, &id), 0, "left behind: {after:?}");
    assert!(mentions(&after, &keep) >= 2, "the other image is untouched");
    let r = get(&s.url(&url), &[]).await;
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    let r = get(
        &s.url(&format!("/v1/images/{id}")),
        &[("authorization", &bearer(&t))],
    )
    .await;
    assert_eq!(r.status, 404);
    // A second delete is a 404, not an error.
    let r = request(
        Method::DELETE,
        &s.url(&format!("/v1/images/{id}")),
        &[("authorization", &bearer(&t))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = get(&s.url("/v1/images"), &[("authorization", &bearer(&t))]).await;
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn sse_configured_uploads_work_against_the_store() {
    // Garage implements SSE-C only and ignores SSE-S3 headers; this proves a deployment with
    // `storage.s3_sse` set keeps working end to end. That the header is sent on every PUT is
    // proved by the unit test `storage::s3::tests::configured_sse_is_sent_with_every_put`.
    let s = Server::start_with(Backend::S3, &[("PIXGATE__STORAGE__S3_SSE", "AES256")]);
    let alice = unique("alice");
    let id = upload_fixture(&s, &alice, "photo_320x240.jpg", "image/jpeg").await;
    let r = get(
        &s.url(&signed(&format!("/rs:fit:30:30/plain/{id}@png"))),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_delete_through_one_instance_stops_the_others_serving_from_memory() {
    let bound = [("PIXGATE__AUTH__REVOCATION_CACHE_SECS", "1")];
    let a = Server::start_with(Backend::S3, &bound);
    let b = Server::start_with(Backend::S3, &bound);
    let alice = unique("alice");
    let id = upload_fixture(&a, &alice, "photo_320x240.jpg", "image/jpeg").await;
    let url = signed(&format!("/rs:fit:40:40/plain/{id}@png"));
    assert_eq!(get(&b.url(&url), &[]).await.status, 200); // in b's memory now
    let r = request(
        Method::DELETE,
        &a.url(&format!("/v1/images/{id}")),
        &[("authorization", &bearer(&token(&alice, Role::Editor)))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(get(&a.url(&url), &[]).await.status, 404);
    // b notices within its bound (1 s here, `auth.revocation_cache_secs`).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(get(&b.url(&url), &[]).await.status, 404);
}
