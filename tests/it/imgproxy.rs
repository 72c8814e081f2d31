//! imgproxy's processing options beyond the first round, through the server: geometry
//! (`mw`, `mh`, `z`, `exar`, gravity offsets, relative crops), `t`, `wm:…:re`, `mb`, `raw`/`sp`
//! (originals without metadata), `da`, and the `/info` endpoint with placeholders.

use bytes::Bytes;
use pixgate::auth::Role;
use pixgate::image::{Bitmap, EncodeSettings, ImageFormat, decode, encode, probe};
use pixgate::options::OutputFormat;

use crate::harness::*;

fn bitmap(body: &[u8]) -> Bitmap {
    decode(body, &probe(body).expect("an image")).expect("decodes")
}

fn px(b: &Bitmap, x: u32, y: u32) -> Vec<u8> {
    let c = usize::from(b.channels);
    let i = (y as usize * b.width as usize + x as usize) * c;
    b.data[i..i + 3].to_vec()
}

const BANDS: [[u8; 3]; 4] = [[200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0]];

/// A 400×100 PNG of four 100-pixel vertical bands (red, green, blue, yellow).
pub(crate) fn bands_png() -> Bytes {
    let mut data = Vec::with_capacity(400 * 100 * 3);
    for _ in 0..100 {
        for x in 0..400 {
            data.extend_from_slice(&BANDS[x / 100]);
        }
    }
    let b = Bitmap {
        width: 400,
        height: 100,
        channels: 3,
        data,
    };
    Bytes::from(encode(&b, OutputFormat::Png, 90, &EncodeSettings::default()).expect("png"))
}

async fn upload_png(s: &Server, owner: &str, body: Bytes) -> String {
    let r = upload(s, &token(owner, Role::Editor), "image/png", body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["id"].as_str().expect("id").to_owned()
}

async fn render(s: &Server, options: &str, id: &str) -> Resp {
    let r = get(&s.url(&signed(&format!("/{options}/plain/{id}"))), &[]).await;
    assert_eq!(r.status, 200, "{options}: {:?}", r.body);
    r
}

#[tokio::test]
async fn geometry_options_render_as_imgproxy() {
    let s = Server::start(Backend::Fs);
    let id = upload_png(&s, "alice", bands_png()).await;
    let size = |r: &Resp| {
        let p = probe(&r.body).expect("image");
        (p.width, p.height)
    };
    // Gravity offsets push inwards from the anchored edge; below 1 they are fractions.
    for (options, band) in [
        ("rs:fill:100:100/g:we", 0),
        ("rs:fill:100:100/g:we:100:0", 1),
        ("rs:fill:100:100/g:ea:100:0", 2),
        ("rs:fill:100:100/g:we:0.5:0", 2),
        ("rs:fill:100:100/g:ce:-0.125:0", 1),
        ("rs:fill:100:100/g:ea:2048:0", 0), // clamped inside
        ("c:100:100:we:300:0", 3),          // crop offsets: source pixels
        ("c:0.25:0:ea:0.25:0", 2),          // relative crop size and offset
    ] {
        let r = render(&s, &format!("{options}/f:png"), &id).await;
        assert_eq!(size(&r), (100, 100), "{options}");
        let b = bitmap(&r.body);
        for x in [2, 50, 97] {
            assert_eq!(px(&b, x, 50), BANDS[band], "{options} at x={x}");
        }
    }
    for (options, want) in [
        ("c:0.5:0:we", (200, 100)),
        ("c:0.5:1:we", (200, 1)), // 1 is one pixel (imgproxy: fractions are below 1)
        // min-width enlarges even without el; a width still crops.
        ("mw:800", (800, 200)),
        ("w:100/mw:200", (100, 50)),
        ("rs:fit:100:100/mh:50", (100, 50)),
        // zoom multiplies the result (per axis: it may stretch), never past the source.
        ("w:100/z:2", (200, 50)),
        ("w:100/z:2:1", (200, 25)),
        ("w:100/z:100", (400, 100)),
        // exar: one side grows to the box's aspect ratio.
        ("rs:fit:200:200/exar:1", (200, 200)),
        ("rs:fit:200:100/exar:1", (200, 100)),
        ("w:200/exar:1", (200, 50)),
    ] {
        let r = render(&s, &format!("{options}/f:png"), &id).await;
        assert_eq!(size(&r), want, "{options}");
    }
    // Extend with offsets: 10 CSS px down from the north edge, × dpr.
    let r = render(&s, "rs:fit:200:200:0:1:no:0:10/bg:000000/f:png", &id).await;
    let b = bitmap(&r.body);
    assert_eq!((b.width, b.height), (200, 200));
    assert_eq!(px(&b, 10, 5), [0, 0, 0]);
    assert_eq!(px(&b, 10, 15), BANDS[0]);
    assert_eq!(px(&b, 10, 65), [0, 0, 0]);
    // exar's gravity: the image at the bottom.
    let r = render(&s, "rs:fit:200:200/exar:1:so/bg:000000/f:png", &id).await;
    let b = bitmap(&r.body);
    assert_eq!(
        (px(&b, 10, 100), px(&b, 10, 190)),
        (vec![0, 0, 0], BANDS[0].to_vec())
    );
    // Hostile values of each: 400 with stable codes.
    for (options, code) in [
        ("g:ce:99999:0", "invalid_option"),
        ("g:sm:1:1", "invalid_option"),
        ("c:0.5:-1", "invalid_option"),
        ("z:0", "invalid_option"),
        ("z:1e9", "invalid_option"),
        ("mw:99999", "invalid_option"),
        ("exar:1:sm", "invalid_option"),
        ("t:300", "invalid_option"),
        ("t:10:nothex", "invalid_option"),
        ("mb:-5", "invalid_option"),
        ("sp:exe", "unsupported_format"),
        ("raw:2", "invalid_option"),
        ("da:perhaps", "invalid_option"),
    ] {
        let r = get(&s.url(&signed(&format!("/{options}/plain/{id}"))), &[]).await;
        assert_eq!((r.status, r.code()), (400, code.to_owned()), "{options}");
    }
}

#[tokio::test]
async fn trim_cuts_the_uniform_border() {
    let s = Server::start(Backend::Fs);
    // A white 200×150 canvas with a red 60×40 box at (30, 50) and a green one at (150, 60).
    let mut data = vec![255u8; 200 * 150 * 3];
    for (x0, y0, w, h, c) in [
        (30, 50, 60, 40, [220, 10, 10]),
        (150, 60, 20, 10, [10, 220, 10]),
    ] {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                let i = (y * 200 + x) * 3;
                data[i..i + 3].copy_from_slice(&c);
            }
        }
    }
    let b = Bitmap {
        width: 200,
        height: 150,
        channels: 3,
        data,
    };
    let png = encode(&b, OutputFormat::Png, 90, &EncodeSettings::default()).unwrap();
    let id = upload_png(&s, "trimmer", Bytes::from(png)).await;
    let size = |r: &Resp| {
        let p = probe(&r.body).unwrap();
        (p.width, p.height)
    };
    // Content spans x 30..170, y 50..90.
    assert_eq!(size(&render(&s, "t:10/f:png", &id).await), (140, 40));
    // Equal cuts: 30 left / 30 right, 50 top / 60 bottom → 50 both.
    assert_eq!(size(&render(&s, "t:10::1:1/f:png", &id).await), (140, 50));
    // Then resized like any source: planning sees the trimmed size.
    assert_eq!(size(&render(&s, "t:10/w:70/f:png", &id).await), (70, 20));
    // A colour that is not the border trims nothing.
    assert_eq!(
        size(&render(&s, "t:10:dc0a0a/f:png", &id).await),
        (200, 150)
    );
    let r = render(&s, "t:10/f:png", &id).await;
    assert_eq!(px(&bitmap(&r.body), 0, 0), [220, 10, 10]);
}

#[tokio::test]
async fn watermark_tiles_with_gaps_and_relative_offsets() {
    let wm = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/watermark_64x32.png"
    );
    let s = Server::start_with(Backend::Fs, &[("PIXGATE__WATERMARK__PATH", wm)]);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let plain = bitmap(&render(&s, "w:320/f:png", &id).await.body);
    // Tiles 64×32 with 64/32 px gaps: a 128×64 grid with one tile at the centre
    // (x 128..192, y 104..136); the next tile right starts at 256. The mark is white at
    // alpha 230 inside a 4-pixel transparent-to-110 rim: samples are inside the rim.
    let tiled = bitmap(&render(&s, "w:320/wm:1:re:64:32/f:png", &id).await.body);
    let white = |p: Vec<u8>| p.iter().all(|&v| v > 200);
    for (x, y) in [(160, 120), (134, 110), (280, 120), (160, 50), (30, 180)] {
        assert!(
            white(px(&tiled, x, y)),
            "tile at {x},{y}: {:?}",
            px(&tiled, x, y)
        );
    }
    for (x, y) in [(220, 120), (160, 90), (100, 150)] {
        assert_eq!(px(&tiled, x, y), px(&plain, x, y), "gap at {x},{y}");
    }
    // Without gaps the tiles touch: what was a gap is covered.
    let full = bitmap(&render(&s, "w:320/wm:1:re/f:png", &id).await.body);
    for (x, y) in [(220, 120), (36, 20), (300, 220)] {
        assert!(white(px(&full, x, y)), "{x},{y}");
    }
    // A relative offset: 0.25 of the width in from the east edge.
    let r = bitmap(&render(&s, "w:320/wm:1:ea:0.25:0/f:png", &id).await.body);
    // The mark spans x 320-80-64 = 176..240 at the vertical centre.
    assert!(white(px(&r, 200, 120)));
    assert_eq!(px(&r, 250, 120), px(&plain, 250, 120));
}

#[tokio::test]
async fn max_bytes_degrades_quality_until_the_result_fits() {
    let s = Server::start(Backend::Fs);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    for f in ["jpg", "webp"] {
        let full = render(&s, &format!("q:95/f:{f}"), &id).await;
        let bound = full.body.len() / 2;
        let fitted = render(&s, &format!("q:95/mb:{bound}/f:{f}"), &id).await;
        assert!(
            fitted.body.len() <= bound,
            "{f}: {} > {bound}",
            fitted.body.len()
        );
        let p = probe(&fitted.body).unwrap();
        assert_eq!((p.width, p.height), (320, 240));
        assert_ne!(full.header("etag"), fitted.header("etag"));
        // Unreachable: 95 → 24 → 6, and the quality-6 result is served (imgproxy).
        let tiny = render(&s, &format!("q:95/mb:1/f:{f}"), &id).await;
        let q6 = render(&s, &format!("q:6/f:{f}"), &id).await;
        assert_eq!(tiny.body, q6.body, "{f}");
    }
    // PNG has no quality: mb leaves it as it is.
    let png = render(&s, "f:png", &id).await;
    let png_mb = render(&s, "mb:1/f:png", &id).await;
    assert_eq!(png.body, png_mb.body);
}

fn app_segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = vec![0xFF, marker];
    s.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    s.extend_from_slice(payload);
    s
}

/// The photo fixture with EXIF (orientation 6 and GPS-looking text), XMP, a comment, an ICC
/// profile chunk and an MPF-style trailer after EOI.
fn tagged_jpeg() -> Bytes {
    let plain = fixture("photo_320x240.jpg");
    let mut exif =
        b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0".to_vec();
    exif.extend_from_slice(b"GPSLatitude 52.52N");
    let mut out = plain[..2].to_vec();
    out.extend(app_segment(0xE1, &exif));
    out.extend(app_segment(
        0xE1,
        b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>creator alice</x:xmpmeta>",
    ));
    out.extend(app_segment(0xFE, b"taken at home"));
    out.extend(app_segment(
        0xE2,
        b"ICC_PROFILE\0\x01\x01not-a-real-profile",
    ));
    out.extend_from_slice(&plain[2..]);
    out.extend_from_slice(b"\xFF\xD8trailing image with GPSLatitude");
    Bytes::from(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn raw_and_skip_processing_serve_the_original_without_metadata() {
    let s = Server::start_with(
        Backend::Fs,
        &[("PIXGATE__LIMITS__TRANSFORMS_PER_HOUR", "1")],
    );
    let original = tagged_jpeg();
    let r = upload(
        &s,
        &token("rawuser", Role::Editor),
        "image/jpeg",
        original.clone(),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let want = pixgate::image::strip_metadata(&original, ImageFormat::Jpeg).unwrap();
    // More requests than the hourly transform quota: a raw response costs no unit.
    let mut etag = String::new();
    for _ in 0..3 {
        let r = get(&s.url(&signed(&format!("/raw:1/plain/{id}"))), &[]).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.header("content-type"), Some("image/jpeg"));
        assert_eq!(r.body.as_ref(), want.as_slice());
        etag = r.header("etag").unwrap().to_owned();
    }
    assert!(!contains(&want, b"GPSLatitude") && !contains(&want, b"alice"));
    assert!(!contains(&want, b"taken at home") && contains(&want, b"ICC_PROFILE"));
    let p = probe(&want).unwrap();
    assert_eq!((p.orientation, p.width, p.height), (6, 320, 240));
    // The compressed image is untouched: same pixels as the stored original.
    assert_eq!(
        decode(&want, &p).unwrap().data,
        decode(&original, &probe(&original).unwrap()).unwrap().data
    );
    let r = get(
        &s.url(&signed(&format!("/raw:1/plain/{id}"))),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(r.status, 304);
    // sp names the source's format: the original; another format: processed as usual
    // (that one is charged: the quota's single unit).
    let r = get(
        &s.url(&signed(&format!("/w:100/sp:png:jpg/plain/{id}"))),
        &[],
    )
    .await;
    assert_eq!((r.status, r.body.len()), (200, want.len()));
    let r = get(&s.url(&signed(&format!("/w:100/sp:png/plain/{id}"))), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(probe(&r.body).unwrap().width, 100);
    // fn/att name the original with its own extension.
    let r = get(
        &s.url(&signed(&format!("/raw:1/fn:holiday/att:1/plain/{id}"))),
        &[],
    )
    .await;
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"holiday.jpg\"; filename*=UTF-8''holiday.jpg")
    );
    // The quota's unit is spent: processing is refused, originals are still served.
    let r = get(&s.url(&signed(&format!("/w:99/plain/{id}"))), &[]).await;
    assert_eq!(r.status, 429);
    let r = get(&s.url(&signed(&format!("/raw:t/plain/{id}"))), &[]).await;
    assert_eq!(r.status, 200);

    // Operators can turn originals off.
    let off = Server::start_with(Backend::Fs, &[("PIXGATE__TRANSFORM__ALLOW_RAW", "false")]);
    let id = upload_fixture(&off, "alice", "photo_320x240.jpg", "image/jpeg").await;
    // da on a still source gives the same pixels (it is part of the cache key all the same).
    let a = render(&off, "w:50/f:png", &id).await;
    let b = render(&off, "w:50/da:1/f:png", &id).await;
    assert_eq!(a.body, b.body);
    for options in ["raw:1", "sp:jpg"] {
        let r = get(&off.url(&signed(&format!("/{options}/plain/{id}"))), &[]).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_option"),
            "{options}"
        );
    }
}

/// `/info/{signature}/…` for a signed info path (the signature covers the path after `/info`).
fn info_url(s: &Server, path: &str) -> String {
    s.url(&format!("/info{}", signed(path)))
}

#[tokio::test]
async fn info_endpoint_with_placeholders_for_every_source_format() {
    let s = Server::start(Backend::Fs);
    for (name, mime, format) in [
        ("photo_320x240.jpg", "image/jpeg", "jpeg"),
        ("alpha_320x240.png", "image/png", "png"),
        ("photo_320x240.webp", "image/webp", "webp"),
        ("photo_320x240.gif", "image/gif", "gif"),
    ] {
        let id = upload_fixture(&s, "alice", name, mime).await;
        let r = get(&info_url(&s, &format!("/plain/{id}")), &[]).await;
        assert_eq!(r.status, 200, "{name}: {:?}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("cache-control").unwrap().starts_with("public"));
        let j = r.json();
        assert_eq!(
            (j["width"].as_u64(), j["height"].as_u64()),
            (Some(320), Some(240))
        );
        assert_eq!(j["format"], format, "{name}");
        assert_eq!(j["bytes"].as_u64(), Some(fixture(name).len() as u64));
        assert_eq!(j["orientation"], 1);
        assert_eq!(j["has_alpha"], name.starts_with("alpha"));
        assert_eq!(
            (j["animated"].as_bool(), j["frames"].as_u64()),
            (Some(false), Some(1))
        );
        assert!(j["blurhash"].as_str().unwrap().len() >= 6);
        assert!(!j["thumbhash"].as_str().unwrap().is_empty());
        let lqip = j["lqip"].as_str().unwrap();
        assert!(lqip.starts_with("data:image/webp;base64,") && lqip.len() <= 1024);
        // The image API shows the same fields.
        let auth = bearer(&token("alice", Role::Editor));
        let meta = get(
            &s.url(&format!("/v1/images/{id}")),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(meta.json()["blurhash"], j["blurhash"]);
        assert_eq!(meta.json()["lqip"], j["lqip"]);
        // Conditional requests.
        let etag = r.header("etag").unwrap().to_owned();
        let again = get(
            &info_url(&s, &format!("/plain/{id}")),
            &[("if-none-match", &etag)],
        )
        .await;
        assert_eq!(again.status, 304);
    }
    let id = upload_fixture(&s, "alice", "orient6_320x240.jpg", "image/jpeg").await;
    let j = get(&info_url(&s, &format!("/d:t/s:t/plain/{id}")), &[])
        .await
        .json();
    assert_eq!(
        (
            j["width"].as_u64(),
            j["height"].as_u64(),
            j["orientation"].as_u64()
        ),
        (Some(240), Some(320), Some(6))
    );
    // Bearer form, owner only; another user's image is a 404 like a missing one.
    let own = bearer(&token("alice", Role::Editor));
    let r = get(
        &s.url(&format!("/info/_/plain/{id}")),
        &[("authorization", &own)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("cache-control").unwrap().starts_with("private"));
    let other = bearer(&token("mallory", Role::Editor));
    let r = get(
        &s.url(&format!("/info/_/plain/{id}")),
        &[("authorization", &other)],
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    // Refusals: a bad signature, an option pixgate does not answer, an expired URL.
    let r = get(&s.url(&format!("/info/AAAA/plain/{id}")), &[]).await;
    assert_eq!(r.status, 403);
    let r = get(&info_url(&s, &format!("/exif:t/plain/{id}")), &[]).await;
    assert_eq!((r.status, r.code().as_str()), (400, "unknown_option"));
    let r = get(&info_url(&s, &format!("/exp:1/plain/{id}")), &[]).await;
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn info_of_an_image_uploaded_before_placeholders_is_computed_once_and_kept() {
    let s = Server::start(Backend::Fs);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let dir = s.dir.path().join("data/originals/images").join(&id);
    let fresh = get(&info_url(&s, &format!("/plain/{id}")), &[])
        .await
        .json();
    // Make it an image of the previous release: metadata without info.
    let meta_path = dir.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta.as_object_mut().unwrap().remove("info");
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let auth = bearer(&token("alice", Role::Editor));
    let (info, api) = (
        info_url(&s, &format!("/plain/{id}")),
        s.url(&format!("/v1/images/{id}")),
    );
    let headers = [("authorization", auth.as_str())];
    let (a, b) = tokio::join!(get(&info, &[]), get(&api, &headers));
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), fresh, "the same computation as at upload");
    assert_eq!(b.json()["thumbhash"], fresh["thumbhash"]);
    assert!(dir.join("info.json").exists());
    // The metadata record was not rewritten (a concurrent PATCH cannot be lost).
    let after: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    assert_eq!(after, meta);
    // Deleting the image removes the info too.
    let r = request(
        http::Method::DELETE,
        &s.url(&format!("/v1/images/{id}")),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(!dir.join("info.json").exists() && !meta_path.exists());
    let r = get(&info_url(&s, &format!("/plain/{id}")), &[]).await;
    assert_eq!(r.status, 404);
}

/// EXIF with Make, Artist and Copyright (big-endian TIFF, one IFD).
fn camera_exif() -> Vec<u8> {
    let fields: [(u16, &[u8]); 3] = [
        (0x010F, b"SecretCam\0"),
        (0x013B, b"Ada Lovelace\0"),
        (0x8298, b"(c) Ada\0"),
    ];
    let mut t = b"MM\0\x2a\0\0\0\x08\0\x03".to_vec();
    let mut at = 8 + 2 + 12 * 3 + 4;
    let mut data = Vec::new();
    for (tag, text) in fields {
        t.extend_from_slice(&tag.to_be_bytes());
        t.extend_from_slice(&[0, 2]);
        t.extend_from_slice(&(text.len() as u32).to_be_bytes());
        t.extend_from_slice(&(at as u32).to_be_bytes());
        data.extend_from_slice(text);
        at += text.len();
    }
    t.extend_from_slice(&[0; 4]);
    t.extend_from_slice(&data);
    t
}

#[tokio::test]
async fn result_metadata_follows_kcr_sm_and_the_operators_consent() {
    let plain = fixture("photo_320x240.jpg");
    let mut exif = b"Exif\0\0".to_vec();
    exif.extend(camera_exif());
    let mut src = plain[..2].to_vec();
    src.extend(app_segment(0xE1, &exif));
    src.extend_from_slice(&plain[2..]);
    let src = Bytes::from(src);
    let strict = Server::start(Backend::Fs);
    let open = Server::start_with(
        Backend::Fs,
        &[("PIXGATE__TRANSFORM__ALLOW_KEEP_METADATA", "true")],
    );
    for s in [&strict, &open] {
        let r = upload(s, &token("meta", Role::Editor), "image/jpeg", src.clone()).await;
        assert_eq!(r.status, 201);
        let id = r.json()["id"].as_str().unwrap().to_owned();
        for f in ["jpg", "png", "webp"] {
            let plain = render(s, &format!("w:100/f:{f}"), &id).await.body;
            assert!(
                !contains(&plain, b"SecretCam") && !contains(&plain, b"Ada"),
                "{f}"
            );
            let kcr = render(s, &format!("w:100/kcr:1/f:{f}"), &id).await.body;
            assert!(
                contains(&kcr, b"Ada Lovelace") && contains(&kcr, b"(c) Ada"),
                "{f}"
            );
            assert!(!contains(&kcr, b"SecretCam"), "{f}");
            let sm0 = render(s, &format!("w:100/sm:0/f:{f}"), &id).await.body;
            let consented = std::ptr::eq(s, &open);
            assert_eq!(contains(&sm0, b"SecretCam"), consented, "{f}");
        }
    }
}

/// A 320×240 JPEG of `colour` whose EXIF holds `thumb` as its IFD1 thumbnail.
fn jpeg_with_thumbnail(colour: [u8; 3], thumb: &[u8]) -> Bytes {
    let main = Bitmap {
        width: 320,
        height: 240,
        channels: 3,
        data: colour.repeat(320 * 240),
    };
    let main = encode(&main, OutputFormat::Jpeg, 90, &EncodeSettings::default()).unwrap();
    // IFD0 without entries, IFD1 at 14 with JPEGInterchangeFormat and its length.
    let mut tiff = b"MM\0\x2a\0\0\0\x08\0\0\0\0\0\x0e\0\x02".to_vec();
    tiff.extend_from_slice(&[0x02, 0x01, 0, 4, 0, 0, 0, 1, 0, 0, 0, 44]);
    tiff.extend_from_slice(&[0x02, 0x02, 0, 4, 0, 0, 0, 1]);
    tiff.extend_from_slice(&(thumb.len() as u32).to_be_bytes());
    tiff.extend_from_slice(&[0; 4]);
    tiff.extend_from_slice(thumb);
    let mut out = main[..2].to_vec();
    out.extend(app_segment(0xE1, &[b"Exif\0\0".as_slice(), &tiff].concat()));
    out.extend_from_slice(&main[2..]);
    Bytes::from(out)
}

#[tokio::test]
async fn enforce_thumbnail_renders_from_a_large_enough_exif_thumbnail() {
    let s = Server::start(Backend::Fs);
    let green = Bitmap {
        width: 80,
        height: 60,
        channels: 3,
        data: [20u8, 200, 20].repeat(80 * 60),
    };
    let thumb = encode(&green, OutputFormat::Jpeg, 90, &EncodeSettings::default()).unwrap();
    let src = jpeg_with_thumbnail([200, 20, 20], &thumb);
    let r = upload(&s, &token("eth", Role::Editor), "image/jpeg", src).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let centre = |r: &Resp| {
        let b = bitmap(&r.body);
        px(&b, b.width / 2, b.height / 2)
    };
    // 64 px wide from an 80-px thumbnail: green; 160 px needs the source: red.
    let small = render(&s, "w:64/eth:1/f:png", &id).await;
    assert_eq!(probe(&small.body).unwrap().width, 64);
    assert!(centre(&small)[1] > 150, "{:?}", centre(&small));
    let large = render(&s, "w:160/eth:1/f:png", &id).await;
    assert!(centre(&large)[0] > 150);
    assert!(centre(&render(&s, "w:64/f:png", &id).await)[0] > 150);
    // Part of the cache key: a different result, a different ETag.
    assert_ne!(
        render(&s, "w:64/f:png", &id).await.header("etag"),
        small.header("etag")
    );
}

#[tokio::test]
async fn scp_0_carries_the_source_profile() {
    let s = Server::start(Backend::Fs);
    let plain = fixture("photo_320x240.jpg");
    let profile: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(7)).collect();
    let mut src = plain[..2].to_vec();
    src.extend(app_segment(
        0xE2,
        &[b"ICC_PROFILE\0\x01\x01".as_slice(), &profile].concat(),
    ));
    src.extend_from_slice(&plain[2..]);
    let r = upload(
        &s,
        &token("scp", Role::Editor),
        "image/jpeg",
        Bytes::from(src),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let kept = render(&s, "w:100/scp:0/f:jpg", &id).await.body;
    assert!(contains(&kept, &profile));
    let webp = render(&s, "w:100/scp:0/f:webp", &id).await.body;
    assert!(contains(&webp, b"ICCP") && contains(&webp, &profile));
    let png = render(&s, "w:100/scp:0/f:png", &id).await.body;
    assert!(contains(&png, b"iCCP"));
    assert_eq!(probe(&png).unwrap().width, 100);
    let default = render(&s, "w:100/f:jpg", &id).await.body;
    assert!(!contains(&default, &profile) && !contains(&default, b"ICC_PROFILE"));
}
