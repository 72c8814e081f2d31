//! Issue 15's findings, each as a regression test against a real server, and `pixgate fsck`
//! on real storage (fs, and Garage on buckets of its own).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use pixgate::auth::Role;

use crate::harness::*;

fn png_chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// A 4×4 palette PNG whose PLTE chunk is `plte_len` bytes long (the `png` crate panicked on 10).
fn palette_png(plte_len: usize) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&4u32.to_be_bytes());
    ihdr.extend_from_slice(&4u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 3, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    let plte: Vec<u8> = (0..plte_len).map(|i| (i * 37) as u8).collect();
    png_chunk(&mut out, b"PLTE", &plte);
    let raw: Vec<u8> = (0..4).flat_map(|_| [0u8, 0, 1, 2, 0]).collect();
    let idat = miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6);
    png_chunk(&mut out, b"IDAT", &idat);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A PNG header claiming `w`×`h`, with a token IDAT.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// The test photo with junk between its last scan and EOI: libjpeg-turbo (strict) refuses it
/// ("extraneous bytes before marker"), zune-jpeg accepts it.
fn jpeg_with_extraneous_bytes() -> Vec<u8> {
    let mut jpeg = fixture("photo_320x240.jpg").to_vec();
    let eoi = jpeg.len() - 2;
    assert_eq!(&jpeg[eoi..], [0xFF, 0xD9]);
    jpeg.splice(eoi..eoi, [0x12, 0x34, 0x56]);
    jpeg
}

fn raw_http(s: &Server, request: &str) -> String {
    let mut c = std::net::TcpStream::connect(s.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn hostile_uploads_get_stable_codes_and_whatever_is_accepted_renders() {
    let s = Server::start(Backend::Fs);
    let t = token("hostile", Role::Editor);
    // A malformed palette: refused from the header, never a panic or a 500.
    for len in [10, 0, 769, 1] {
        let r = upload(&s, &t, "image/png", Bytes::from(palette_png(len))).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (422, "invalid_image"),
            "{len}"
        );
    }
    let ok = upload(&s, &t, "image/png", Bytes::from(palette_png(12))).await;
    assert_eq!(ok.status, 201);
    // 50,000,000×1 and 1×50,000,000 are within the pixel cap but not the side limit.
    for (w, h) in [(50_000_000, 1), (1, 50_000_000)] {
        let started = Instant::now();
        let r = upload(&s, &t, "image/png", Bytes::from(png_header_only(w, h))).await;
        assert_eq!((r.status, r.code().as_str()), (422, "dimension_too_large"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // Accepted by zune-jpeg at upload, refused by libjpeg-turbo: it must still render.
    let r = upload(
        &s,
        &t,
        "image/jpeg",
        Bytes::from(jpeg_with_extraneous_bytes()),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    for opts in ["rs:fit:100:100", "rs:fit:40:40/f:webp", "f:png"] {
        let r = get(&s.url(&signed(&format!("/{opts}/plain/{id}"))), &[]).await;
        assert_eq!(
            r.status,
            200,
            "{opts}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[tokio::test]
async fn only_canonical_signatures_and_well_formed_requests_are_served() {
    let s = Server::start(Backend::Fs);
    let owner = "canon";
    let id = upload_fixture(&s, owner, "photo_320x240.jpg", "image/jpeg").await;
    let path = signed(&format!("/rs:fit:50:50/plain/{id}"));
    assert_eq!(get(&s.url(&path), &[]).await.status, 200);
    let (sig, rest) = path[1..].split_once('/').unwrap();
    for pad in ["=", "==", &"=".repeat(100)] {
        let r = get(&s.url(&format!("/{sig}{pad}/{rest}")), &[]).await;
        assert_eq!((r.status, r.code().as_str()), (403, "invalid_signature"));
    }

    // RFC 9112 §3.2: exactly one Host on HTTP/1.1.
    let missing = raw_http(&s, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.1 400"), "{missing}");
    let twice = raw_http(
        &s,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    );
    assert!(twice.starts_with("HTTP/1.1 400"), "{twice}");
    let one = raw_http(
        &s,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(one.starts_with("HTTP/1.1 200"), "{one}");
    let old = raw_http(&s, "GET /healthz HTTP/1.0\r\n\r\n");
    assert!(old.starts_with("HTTP/1.0 200"), "{old}");

    // A PATCH that changes nothing is a client bug, not a 200.
    let auth = bearer(&token(owner, Role::Editor));
    let url = s.url(&format!("/v1/images/{id}"));
    for body in ["", "{}", "  "] {
        let r = request(
            Method::PATCH,
            &url,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Bytes::from(body),
        )
        .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_field"),
            "{body:?}"
        );
    }
    // Multipart text fields must be UTF-8, as on the JSON path.
    let jpeg = fixture("photo_320x240.jpg");
    let mut body = Vec::new();
    body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n");
    body.extend_from_slice(b"caf\xe9 \xff\r\n");
    body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n");
    body.extend_from_slice(&jpeg);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let r = upload(
        &s,
        &token(owner, Role::Editor),
        "multipart/form-data; boundary=XyZ",
        Bytes::from(body),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_field"));
}

#[tokio::test]
async fn damaged_stored_objects_answer_fast_with_a_stable_code() {
    let s = Server::start(Backend::Fs);
    let owner = "damaged";
    let auth = bearer(&token(owner, Role::Editor));
    let images = s.dir.path().join("data/originals/images");
    // An original replaced by a FIFO: refused at once, never a thread blocked for 10 s.
    let fifo_id = upload_fixture(&s, owner, "photo_320x240.jpg", "image/jpeg").await;
    let original = images.join(&fifo_id).join("original");
    std::fs::remove_file(&original).unwrap();
    let c = std::ffi::CString::new(original.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for _ in 0..3 {
        let started = Instant::now();
        let r = get(
            &s.url(&signed(&format!("/rs:fit:60:60/plain/{fifo_id}"))),
            &[],
        )
        .await;
        assert_eq!((r.status, r.code().as_str()), (500, "storage_corrupt"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // Garbage, empty and over-long metadata.
    for body in [b"garbage".to_vec(), Vec::new(), vec![b' '; 70 * 1024]] {
        let id = upload_fixture(&s, owner, "photo_320x240.jpg", "image/jpeg").await;
        std::fs::write(images.join(&id).join("meta.json"), &body).unwrap();
        let r = get(
            &s.url(&format!("/v1/images/{id}")),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!((r.status, r.code().as_str()), (500, "storage_corrupt"));
        let r = get(&s.url(&signed(&format!("/rs:fit:60:60/plain/{id}"))), &[]).await;
        assert_eq!((r.status, r.code().as_str()), (500, "storage_corrupt"));
    }
    assert_eq!(get(&s.url("/readyz"), &[]).await.status, 200);
}

/// What `pixgate fsck` prints, and its exit code.
pub(crate) fn fsck(env: &[(String, String)], args: &[&str]) -> (i32, serde_json::Value) {
    let out = pixgate_cmd(env)
        .arg("fsck")
        .args(args)
        .output()
        .expect("run fsck");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fsck printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

use pixgate::storage::{Bucket, ObjectKey, ObjectStore};

/// The test's own view of the storage: pixgate's fs backend, or an S3 client with the test
/// key (the server's S3 store takes its credentials from the process environment).
enum Store {
    Fs(pixgate::storage::FsStore),
    S3(aws_sdk_s3::Client, String, String),
}

impl Store {
    fn bucket(&self, b: Bucket) -> &str {
        match (self, b) {
            (Store::S3(_, _, derived), Bucket::Derived) => derived,
            (Store::S3(_, originals, _), _) => originals,
            (Store::Fs(_), _) => "",
        }
    }

    async fn list(&self, b: Bucket, prefix: &str) -> Result<Vec<ObjectKey>, String> {
        match self {
            Store::Fs(fs) => fs.list(b, prefix).await.map_err(|e| e.to_string()),
            Store::S3(c, ..) => Ok(s3_keys(c, self.bucket(b))
                .await
                .into_iter()
                .filter(|k| k.starts_with(prefix))
                .map(|k| ObjectKey::new(k).unwrap())
                .collect()),
        }
    }

    async fn delete(&self, b: Bucket, key: &ObjectKey) -> Result<(), String> {
        match self {
            Store::Fs(fs) => fs.delete(b, key).await.map_err(|e| e.to_string()),
            Store::S3(c, ..) => c
                .delete_object()
                .bucket(self.bucket(b))
                .key(key.as_str())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    async fn put(&self, b: Bucket, key: &ObjectKey, body: Bytes, ct: &str) -> Result<(), String> {
        match self {
            Store::Fs(fs) => fs.put(b, key, body, ct).await.map_err(|e| e.to_string()),
            Store::S3(c, ..) => c
                .put_object()
                .bucket(self.bucket(b))
                .key(key.as_str())
                .body(body.to_vec().into())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    async fn exists(&self, b: Bucket, key: &ObjectKey) -> bool {
        self.list(b, key.as_str()).await.unwrap().contains(key)
    }
}

async fn fsck_repairs_every_kind(backend: Backend) {
    let extra: Vec<(String, String)> = match backend {
        Backend::Fs => Vec::new(),
        // Buckets of its own: other tests' uploads in flight are not this test's orphans.
        Backend::S3 => own_buckets("fsck"),
    };
    let extra_ref: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut s = Server::start_with(backend, &extra_ref);
    let owner = crate::identity::unique("fsck-owner");
    let owner = owner.as_str();
    let auth = bearer(&token(owner, Role::Editor));
    let healthy = upload_fixture(&s, owner, "photo_320x240.jpg", "image/jpeg").await;
    let no_meta = upload_fixture(&s, owner, "photo_320x240.jpg", "image/jpeg").await;
    let no_original = upload_fixture(&s, owner, "photo_320x240.jpg", "image/jpeg").await;
    for id in [&healthy, &no_meta] {
        let r = get(&s.url(&signed(&format!("/rs:fit:30:30/plain/{id}"))), &[]).await;
        assert_eq!(r.status, 200);
    }
    let key = request(
        Method::POST,
        &s.url("/v1/api-keys"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Bytes::from_static(b"{\"name\":\"ci\"}"),
    )
    .await;
    assert_eq!(key.status, 201, "{:?}", String::from_utf8_lossy(&key.body));
    let key_id = key.json()["id"].as_str().unwrap().to_owned();
    // Derived writes are in the background: wait for both.
    let env = server_env(backend, s.dir.path(), &extra_ref);
    let store = match backend {
        Backend::Fs => Store::Fs(
            pixgate::storage::FsStore::new(s.dir.path().join("data"), Duration::from_secs(10))
                .unwrap(),
        ),
        Backend::S3 => Store::S3(s3_client().await, extra[0].1.clone(), extra[1].1.clone()),
    };
    for _ in 0..100 {
        if store.list(Bucket::Derived, "derived/").await.unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.terminate();

    // The damage a crash or a half-done operation leaves.
    let k = |s: &str| ObjectKey::new(s).unwrap();
    store
        .delete(
            Bucket::Originals,
            &k(&format!("images/{no_meta}/meta.json")),
        )
        .await
        .unwrap();
    store
        .delete(
            Bucket::Originals,
            &k(&format!("images/{no_original}/original")),
        )
        .await
        .unwrap();
    let users = store.list(Bucket::Originals, "users/").await.unwrap();
    let key_record = users
        .iter()
        .find(|u| u.as_str().ends_with(&format!("/apikeys/{key_id}.json")))
        .expect("key record")
        .clone();
    store.delete(Bucket::Originals, &key_record).await.unwrap();
    let marker = k(&format!(
        "{}.used",
        key_record.as_str().trim_end_matches(".json")
    ));
    store
        .put(
            Bucket::Originals,
            &marker,
            Bytes::from_static(b"1"),
            "text/plain",
        )
        .await
        .unwrap();
    if backend == Backend::Fs {
        let dir = s.dir.path().join("data/derived/derived").join(&healthy);
        std::fs::write(dir.join(".tmp-0123456789abcdef"), b"half").unwrap();
    }

    let before = |kind: &str, r: &serde_json::Value| r["findings"][kind].as_u64().unwrap();
    let (code, r) = fsck(&env, &["--min-age", "0s"]);
    assert_eq!(code, 1, "{r:#}");
    for (kind, n) in [
        ("original_without_meta", 1),
        ("meta_without_original", 1),
        ("dangling_index_entry", 1),
        ("derived_of_deleted_image", 1),
        ("orphan_api_key_lookup", 1),
        ("orphan_api_key_marker", 1),
        ("temporary_file", if backend == Backend::Fs { 1 } else { 0 }),
    ] {
        assert_eq!(before(kind, &r), n, "{kind}: {r:#}");
    }
    assert_eq!(r["repaired"]["original_without_meta"], 0);
    let (code, r) = fsck(&env, &["--min-age", "0s", "--repair"]);
    assert_eq!(code, 0, "{r:#}");
    let (code, r) = fsck(&env, &["--min-age", "0s"]);
    assert_eq!(code, 0, "{r:#}");
    assert!(
        r["findings"].as_object().unwrap().values().all(|v| v == 0),
        "{r:#}"
    );
    // The default grace period leaves a fresh orphan (an upload in flight) alone, even with
    // --repair; without the grace period it goes.
    let fresh = k("images/00000000000000000000000000000abc/original");
    store
        .put(
            Bucket::Originals,
            &fresh,
            Bytes::from_static(b"x"),
            "image/jpeg",
        )
        .await
        .unwrap();
    let (code, r) = fsck(&env, &["--repair"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["skipped_recent"], 1, "{r:#}");
    assert!(store.exists(Bucket::Originals, &fresh).await);
    let (code, r) = fsck(&env, &["--repair", "--min-age", "0s"]);
    assert_eq!(
        (code, &r["repaired"]["original_without_meta"]),
        (0, &serde_json::json!(1))
    );

    // The healthy image and its derived result are untouched; the damaged ones are gone.
    let s = restart_on_same_storage(backend, &s, &extra_ref);
    let r = get(
        &s.url(&format!("/v1/images/{healthy}")),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200);
    let listed = get(&s.url("/v1/images"), &[("authorization", &auth)])
        .await
        .json();
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, [healthy.as_str()]);
    for id in [&no_meta, &no_original] {
        let r = get(
            &s.url(&format!("/v1/images/{id}")),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(r.status, 404);
    }
    let derived = store.list(Bucket::Derived, "derived/").await.unwrap();
    assert!(
        derived
            .iter()
            .all(|d| d.as_str().starts_with(&format!("derived/{healthy}/"))),
        "{derived:?}"
    );
    assert_eq!(derived.len(), 1);
}

#[tokio::test]
async fn fsck_finds_and_repairs_every_kind_of_orphan_fs() {
    fsck_repairs_every_kind(Backend::Fs).await;
}

#[tokio::test]
async fn fsck_finds_and_repairs_every_kind_of_orphan_s3() {
    fsck_repairs_every_kind(Backend::S3).await;
}
