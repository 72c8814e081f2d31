//! Source formats (issue 19): what each decodes to through the server, with memory-safe
//! decoders.

use pixgate::auth::Role;
use pixgate::image::{decode, probe};

use crate::harness::*;

/// An animated WebP (three 64×48 frames: red, green, blue) is accepted and rendered from its
/// first frame by image-webp (libwebp's simple decoder refused it with 422); `/info` counts
/// its frames.
#[tokio::test]
async fn animated_webp_is_accepted_and_renders_its_first_frame() {
    let s = Server::start(Backend::Fs);
    let r = upload(
        &s,
        &token("webp", Role::Editor),
        "image/webp",
        fixture("anim_3x64x48.webp"),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let out = get(&s.url(&signed(&format!("/w:32/f:png/plain/{id}"))), &[]).await;
    assert_eq!(out.status, 200);
    let b = decode(&out.body, &probe(&out.body).unwrap()).unwrap();
    assert_eq!((b.width, b.height), (32, 24));
    let c = usize::from(b.channels);
    let centre = &b.data[(12 * 32 + 16) * c..][..3];
    assert!(centre[0] > 180 && centre[1] < 60, "{centre:?}");
    let info = get(
        &s.url(&format!("/info{}", signed(&format!("/plain/{id}")))),
        &[],
    )
    .await
    .json();
    assert_eq!(
        (info["animated"].as_bool(), info["frames"].as_u64()),
        (Some(true), Some(3))
    );
    // The photo fixture (lossy) still renders as before.
    let id = upload_fixture(&s, "webp", "photo_320x240.webp", "image/webp").await;
    let out = get(&s.url(&signed(&format!("/w:100/f:png/plain/{id}"))), &[]).await;
    assert_eq!(probe(&out.body).unwrap().width, 100);
}

/// Mean RGB of the photo fixture `reference` rendered 80 px wide: what the same photo in
/// another format should come close to.
async fn reference_mean(s: &Server, reference: &str) -> [f64; 3] {
    let r = get(
        &s.url(&signed(&format!("/w:80/f:png/plain/{reference}"))),
        &[],
    )
    .await;
    mean(&r.body)
}

/// Mean RGB of a decoded result.
fn mean(body: &[u8]) -> [f64; 3] {
    let b = decode(body, &probe(body).unwrap()).unwrap();
    let c = usize::from(b.channels);
    let n = (b.data.len() / c) as f64;
    let mut m = [0.0; 3];
    for px in b.data.chunks_exact(c) {
        for i in 0..3 {
            m[i] += f64::from(px[i]) / n;
        }
    }
    m
}

/// BMP, ICO (largest entry) and TIFF (first page) through image-rs's Rust codecs: accepted
/// under their MIME types, sized from their own headers, rendered like any source.
#[tokio::test]
async fn bmp_ico_and_tiff_sources() {
    let s = Server::start(Backend::Fs);
    let owner = token("formats", Role::Editor);
    let reference = upload_fixture(&s, "formats", "photo_320x240.jpg", "image/jpeg").await;
    let want = reference_mean(&s, &reference).await;
    for (file, mime, format, size, out) in [
        (
            "photo_160x120.bmp",
            "image/bmp",
            "bmp",
            (160, 120),
            (80, 60),
        ),
        (
            "pages_160x120.tif",
            "image/tiff",
            "tiff",
            (160, 120),
            (80, 60),
        ),
        (
            "icon_64.ico",
            "image/vnd.microsoft.icon",
            "ico",
            (64, 64),
            (64, 64),
        ),
    ] {
        let r = upload(&s, &owner, mime, fixture(file)).await;
        assert_eq!(r.status, 201, "{file}: {:?}", r.body);
        let j = r.json();
        assert_eq!(j["format"], format);
        assert_eq!(
            (j["width"].as_u64(), j["height"].as_u64()),
            (Some(size.0), Some(size.1))
        );
        let id = j["id"].as_str().unwrap().to_owned();
        let r = get(&s.url(&signed(&format!("/w:80/f:png/plain/{id}"))), &[]).await;
        assert_eq!(r.status, 200, "{file}");
        let p = probe(&r.body).unwrap();
        assert_eq!((p.width, p.height), out, "{file}");
        if format != "ico" {
            // The same picture as the JPEG it was made from (the TIFF's first page, not its
            // small grey second page).
            let got = mean(&r.body);
            for c in 0..3 {
                assert!(
                    (got[c] - want[c]).abs() < 6.0,
                    "{file}: {got:?} vs {want:?}"
                );
            }
        }
        // Negotiated without WebP: TIFF falls back to JPEG, the others to PNG.
        let r = get(
            &s.url(&signed(&format!("/w:40/plain/{id}"))),
            &[("accept", "image/png")],
        )
        .await;
        let fallback = if format == "tiff" {
            "image/jpeg"
        } else {
            "image/png"
        };
        assert_eq!(r.header("content-type"), Some(fallback), "{file}");
        // Originals: BMP and ICO carry no metadata (served as stored); TIFF's cannot be
        // removed losslessly, so its original is not served.
        let r = get(&s.url(&signed(&format!("/raw:1/plain/{id}"))), &[]).await;
        if format == "tiff" {
            assert_eq!((r.status, r.code().as_str()), (400, "invalid_option"));
        } else {
            assert_eq!(r.body, fixture(file), "{file}");
        }
    }
}

fn bmp_header(width: i32, height: i32) -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend_from_slice(&[0; 12]);
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&width.to_le_bytes());
    b.extend_from_slice(&height.to_le_bytes());
    b.extend_from_slice(&[1, 0, 24, 0]);
    b.extend_from_slice(&[0; 24]);
    b
}

fn tiff_header(width: u32, height: u32) -> Vec<u8> {
    let mut t = b"II\x2a\0\x08\0\0\0\x02\0".to_vec();
    for (tag, v) in [(256u16, width), (257, height)] {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&4u16.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&v.to_le_bytes());
    }
    t.extend_from_slice(&[0; 4]);
    t
}

/// Hostile headers are refused from the header, before any allocation of their size.
#[tokio::test]
async fn hostile_bmp_ico_and_tiff_are_refused_with_stable_codes() {
    let s = Server::start(Backend::Fs);
    let owner = token("hostile", Role::Editor);
    let mut ico_past_end = vec![0, 0, 1, 0, 1, 0, 64, 64, 0, 0, 1, 0, 32, 0];
    ico_past_end.extend_from_slice(&100u32.to_le_bytes());
    ico_past_end.extend_from_slice(&0xFFFF_FF00u32.to_le_bytes());
    let mut ico_png_bomb = vec![0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 32, 0];
    ico_png_bomb.extend_from_slice(&100u32.to_le_bytes());
    ico_png_bomb.extend_from_slice(&22u32.to_le_bytes());
    ico_png_bomb.extend_from_slice(
        b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\x75\x30\0\0\x75\x30\x08\x06\0\0\0",
    );
    let truncated_tiff = fixture("pages_160x120.tif").slice(..4000);
    for (name, mime, body, status, code) in [
        (
            "bmp 100000²",
            "image/bmp",
            bmp_header(100_000, 100_000),
            422,
            "too_many_pixels",
        ),
        (
            "bmp 40000×1 (side)",
            "image/bmp",
            bmp_header(40_000, 1),
            422,
            "dimension_too_large",
        ),
        (
            "bmp top-down, no pixels",
            "image/bmp",
            bmp_header(64, -64),
            422,
            "invalid_image",
        ),
        (
            "bmp zero width",
            "image/bmp",
            bmp_header(0, 10),
            422,
            "invalid_image",
        ),
        (
            "tiff 70000²",
            "image/tiff",
            tiff_header(70_000, 70_000),
            422,
            "too_many_pixels",
        ),
        (
            "tiff truncated",
            "image/tiff",
            truncated_tiff.to_vec(),
            422,
            "invalid_image",
        ),
        (
            "ico entry past the end",
            "image/x-icon",
            ico_past_end,
            422,
            "invalid_image",
        ),
        (
            "ico with a 30000² PNG",
            "image/x-icon",
            ico_png_bomb,
            422,
            "too_many_pixels",
        ),
        (
            "ico declared, bmp sent",
            "image/x-icon",
            fixture("photo_160x120.bmp").to_vec(),
            415,
            "unsupported_media_type",
        ),
    ] {
        let r = upload(&s, &owner, mime, bytes::Bytes::from(body)).await;
        assert_eq!((r.status, r.code().as_str()), (status, code), "{name}");
    }
}

/// A GIF with a `w`×`h` logical screen and `frames` one-pixel frames.
fn gif_frames(w: u16, h: u16, frames: usize) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&w.to_le_bytes());
    g.extend_from_slice(&h.to_le_bytes());
    g.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 255, 255, 255]); // 2-colour global table
    for _ in 0..frames {
        g.extend_from_slice(b"\x21\xF9\x04\x00\x0a\x00\x00\x00"); // 100 ms
        g.extend_from_slice(b"\x2C\0\0\0\0\x01\0\x01\0\0\x02\x02\x44\x01\0");
    }
    g.push(0x3B);
    g
}

/// `limits.max_animation_pixels` (default 200 MP): frames × canvas, checked from the header.
/// A 2000×2000 screen may have 50 frames; 60 are refused before any decode, naming the 50.
#[tokio::test]
async fn animation_pixels_are_bounded_across_frames() {
    let s = Server::start(Backend::Fs);
    let owner = token("frames", Role::Editor);
    let r = upload(&s, &owner, "image/gif", gif_frames(2000, 2000, 50).into()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = upload(&s, &owner, "image/gif", gif_frames(2000, 2000, 60).into()).await;
    assert_eq!((r.status, r.code().as_str()), (422, "too_many_frames"));
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("50"),
        "{:?}",
        r.body
    );
    // Small canvases keep the frame limit of their own (1000 by default).
    let r = upload(&s, &owner, "image/gif", gif_frames(100, 100, 900).into()).await;
    assert_eq!(r.status, 201);
    // A lower operator bound.
    let tight = Server::start_with(
        Backend::Fs,
        &[("PIXGATE__LIMITS__MAX_ANIMATION_PIXELS", "100000")],
    );
    let r = upload(&tight, &owner, "image/gif", gif_frames(100, 100, 11).into()).await;
    assert_eq!((r.status, r.code().as_str()), (422, "too_many_frames"));
    let r = upload(&tight, &owner, "image/gif", gif_frames(100, 100, 10).into()).await;
    assert_eq!(r.status, 201);
}

/// `f:gif` (and `@gif`): a still GIF, 256 colours; transparency kept as GIF's one
/// transparent index; no quality (`q`, `mb` do not apply).
#[tokio::test]
async fn gif_output() {
    let s = Server::start(Backend::Fs);
    let photo = upload_fixture(&s, "gif", "photo_320x240.jpg", "image/jpeg").await;
    let r = get(&s.url(&signed(&format!("/w:160/f:gif/plain/{photo}"))), &[]).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("image/gif"))
    );
    let p = probe(&r.body).unwrap();
    assert_eq!(
        (p.format, p.width, p.height),
        (pixgate::image::ImageFormat::Gif, 160, 120)
    );
    let png = get(&s.url(&signed(&format!("/w:160/f:png/plain/{photo}"))), &[]).await;
    let (a, b) = (mean(&r.body), mean(&png.body));
    for c in 0..3 {
        assert!((a[c] - b[c]).abs() < 4.0, "{a:?} vs {b:?}");
    }
    let ext = get(&s.url(&signed(&format!("/w:160/plain/{photo}@gif"))), &[]).await;
    assert_eq!(ext.header("content-type"), Some("image/gif"));
    let q = get(
        &s.url(&signed(&format!("/w:160/q:10/mb:100/f:gif/plain/{photo}"))),
        &[],
    )
    .await;
    assert_eq!(q.body, r.body);
    // Transparency: the padding (transparent without `bg`) stays transparent, the photo opaque.
    let r = get(
        &s.url(&signed(&format!("/w:160/pd:10/f:gif/plain/{photo}"))),
        &[],
    )
    .await;
    let b = decode(&r.body, &probe(&r.body).unwrap()).unwrap();
    assert_eq!((b.width, b.height, b.channels), (180, 140, 4));
    let alpha_at = |x: u32, y: u32| b.data[((y * b.width + x) * 4 + 3) as usize];
    assert_eq!((alpha_at(2, 2), alpha_at(90, 70)), (0, 255));
}

/// JPEG XL through jxl-oxide (pure Rust): a lossy VarDCT codestream and a lossless RGBA file
/// in the ISO BMFF container.
#[tokio::test]
async fn jpeg_xl_sources() {
    let s = Server::start(Backend::Fs);
    let owner = token("jxl", Role::Editor);
    let reference = upload_fixture(&s, "jxl", "photo_320x240.jpg", "image/jpeg").await;
    let want = reference_mean(&s, &reference).await;
    let r = upload(&s, &owner, "image/jxl", fixture("photo_160x120.jxl")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let j = r.json();
    assert_eq!(
        (j["format"].as_str(), j["width"].as_u64()),
        (Some("jxl"), Some(160))
    );
    let id = j["id"].as_str().unwrap().to_owned();
    let r = get(&s.url(&signed(&format!("/w:80/f:png/plain/{id}"))), &[]).await;
    let got = mean(&r.body);
    for c in 0..3 {
        assert!((got[c] - want[c]).abs() < 6.0, "{got:?} vs {want:?}");
    }
    // The bare codestream has no metadata: its original is served as stored.
    let r = get(&s.url(&signed(&format!("/raw:1/plain/{id}"))), &[]).await;
    assert_eq!(
        (r.status, r.body.len()),
        (200, fixture("photo_160x120.jxl").len())
    );

    let id = transparent_left_half(&s, "jxl", "image/jxl", "alpha_160x120_lossless.jxl").await;
    // A container's metadata boxes are not stripped: its original is refused, not leaked.
    let r = get(&s.url(&signed(&format!("/raw:1/plain/{id}"))), &[]).await;
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_option"));
    // Negotiated without WebP: PNG (JPEG XL may carry alpha).
    let r = get(
        &s.url(&signed(&format!("/w:40/plain/{id}"))),
        &[("accept", "image/png")],
    )
    .await;
    assert_eq!(r.header("content-type"), Some("image/png"));
}

/// Hostile JPEG XL: sizes from the header are limited before jxl-oxide sees the file; a
/// truncated or corrupt stream is `invalid_image`.
#[tokio::test]
async fn hostile_jpeg_xl_is_refused_with_stable_codes() {
    let s = Server::start(Backend::Fs);
    let owner = token("jxl-hostile", Role::Editor);
    let photo = fixture("photo_160x120.jxl");
    // A 1,073,741,824 × 1,073,741,824 header (30-bit sizes, ratio 0): 10 bytes.
    let huge: &[u8] = &[
        0xFF, 0x0A, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x07,
    ];
    let mut flipped = photo.to_vec();
    for b in flipped.iter_mut().skip(40).step_by(7) {
        *b ^= 0x5A;
    }
    for (name, body, status, code) in [
        ("huge header", huge.to_vec(), 422, "too_many_pixels"),
        (
            "truncated",
            photo[..photo.len() / 2].to_vec(),
            422,
            "invalid_image",
        ),
        ("corrupt", flipped, 422, "invalid_image"),
        ("signature only", vec![0xFF, 0x0A], 422, "invalid_image"),
    ] {
        let r = upload(&s, &owner, "image/jxl", body.into()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{name}: {:?}",
            r.body
        );
    }
}

/// Uploads each HEIF-family `(file, mime)` and checks its format, stored size, colours against
/// the same photo's JPEG, and that its original is refused (Exif/XMP items are not stripped:
/// refused, not leaked).
async fn heif_uploads(s: &Server, owner: &str, format: &str, files: &[(&str, &str)]) {
    let reference = upload_fixture(s, owner, "photo_320x240.jpg", "image/jpeg").await;
    let want = reference_mean(s, &reference).await;
    for (file, mime) in files {
        let r = upload(s, &token(owner, Role::Editor), mime, fixture(file)).await;
        assert_eq!(r.status, 201, "{file}: {:?}", r.body);
        let j = r.json();
        assert_eq!(
            (
                j["format"].as_str(),
                j["width"].as_u64(),
                j["height"].as_u64()
            ),
            (Some(format), Some(160), Some(120)),
            "{file}"
        );
        let id = j["id"].as_str().unwrap().to_owned();
        let got = reference_mean(s, &id).await;
        for c in 0..3 {
            assert!(
                (got[c] - want[c]).abs() < 6.0,
                "{file}: {got:?} vs {want:?}"
            );
        }
        let r = get(&s.url(&signed(&format!("/raw:1/plain/{id}"))), &[]).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_option"),
            "{file}"
        );
    }
}

/// An alpha fixture (the left half transparent) is accepted and renders that half; its id.
async fn transparent_left_half(s: &Server, owner: &str, mime: &str, file: &str) -> String {
    let r = upload(s, &token(owner, Role::Editor), mime, fixture(file)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = get(&s.url(&signed(&format!("/w:80/f:png/plain/{id}"))), &[]).await;
    let b = decode(&r.body, &probe(&r.body).unwrap()).unwrap();
    assert_eq!((b.width, b.height, b.channels), (80, 60, 4));
    let alpha = |x: usize| b.data[(30 * 80 + x) * 4 + 3];
    assert!(
        alpha(10) < 8 && alpha(70) > 247,
        "{} {}",
        alpha(10),
        alpha(70)
    );
    id
}

/// Hostile HEIF-family uploads: truncated, `damaged` (its coded data broken), and an `ispe`
/// claiming 100000² (refused from the header, before any decode).
async fn hostile_heif(s: &Server, owner: &str, mime: &str, photo: &[u8], damaged: Vec<u8>) {
    let mut huge = photo.to_vec();
    let at = huge.windows(4).position(|w| w == b"ispe").unwrap() + 8;
    huge[at..at + 8].copy_from_slice(&[0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0]);
    for (name, body, code) in [
        (
            "truncated",
            photo[..photo.len() / 2].to_vec(),
            "invalid_image",
        ),
        ("damaged", damaged, "invalid_image"),
        ("100000² ispe", huge, "too_many_pixels"),
    ] {
        let r = upload(s, &token(owner, Role::Editor), mime, body.into()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (422, code),
            "{name}: {:?}",
            r.body
        );
    }
}

/// AVIF through avif-parse and rav1d (in the sandboxed decoder child): 8-bit, 10-bit and an
/// alpha item, sized from `ispe`, converted from YUV by the matrix and range the AV1 stream
/// declares.
#[tokio::test]
async fn avif_sources() {
    let s = Server::start(Backend::Fs);
    let files = [
        ("photo_160x120.avif", "image/avif"),
        ("photo_160x120_10bit.avif", "image/avif"),
    ];
    heif_uploads(&s, "avif", "avif", &files).await;
    transparent_left_half(&s, "avif", "image/avif", "alpha_160x120.avif").await;
    // The AV1 data's first OBU header with its forbidden bit set (AV1 decoders are tolerant
    // of damaged coefficients, not of broken OBU framing).
    let photo = fixture("photo_160x120.avif").to_vec();
    let mut flipped = photo.clone();
    let mdat = flipped.windows(4).position(|w| w == b"mdat").unwrap() + 4;
    flipped[mdat..mdat + 4].copy_from_slice(&[0xFF; 4]);
    hostile_heif(&s, "avif", "image/avif", &photo, flipped).await;
}

/// HEIC through libheif in the sandboxed decoder child: 8-bit, 10-bit (sent as `image/heif`),
/// a grid, an alpha item, and `irot` applied as the orientation (a photo shot in portrait).
#[tokio::test]
async fn heic_sources() {
    let s = Server::start(Backend::Fs);
    let files = [
        ("photo_160x120.heic", "image/heic"),
        ("photo_160x120_10bit.heic", "image/heif"),
        // Tiles, the bottom row padded past the output: how phones store every photo.
        ("grid_2x2_160x120.heic", "image/heic"),
    ];
    heif_uploads(&s, "heic", "heic", &files).await;
    transparent_left_half(&s, "heic", "image/heic", "alpha_160x120.heic").await;
    // Stored 160x120 with `irot`: shown (and reported) as 120x160.
    let owner = token("heic", Role::Editor);
    let r = upload(&s, &owner, "image/heic", fixture("orient6_160x120.heic")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let j = r.json();
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(120), Some(160))
    );
    let id = j["id"].as_str().unwrap().to_owned();
    let r = get(&s.url(&signed(&format!("/f:png/plain/{id}"))), &[]).await;
    let p = probe(&r.body).unwrap();
    assert_eq!((p.width, p.height), (120, 160));
    // The HEVC data overwritten with garbage.
    let photo = fixture("photo_160x120.heic").to_vec();
    let mut garbage = photo.clone();
    let mdat = garbage.windows(4).position(|w| w == b"mdat").unwrap() + 4;
    let end = garbage.len();
    garbage[mdat..end].fill(0xA5);
    hostile_heif(&s, "heic", "image/heic", &photo, garbage).await;
}

/// A source that crashes its decoder takes down only the decoder child: rav1d aborts on this
/// AVIF (a panic inside its C API), the upload is a 422, the server keeps serving, the crash
/// is counted; and the child's seccomp filter refuses what an exploited decoder would try.
#[tokio::test]
async fn a_decoder_crash_is_one_refused_source() {
    let s = Server::start(Backend::Fs);
    let owner = token("crash", Role::Editor);
    for _ in 0..2 {
        let r = upload(&s, &owner, "image/avif", fixture("crash_rav1d_panic.avif")).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (422, "invalid_image"),
            "{:?}",
            r.body
        );
    }
    let r = upload(&s, &owner, "image/avif", fixture("photo_160x120.avif")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "pixgate_decoder_crashes_total", ""), 2.0);
    assert!(
        s.log_with(&["decoder child failed"])
            .contains("decoder child failed")
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pixgate"))
        .args(["decode-worker", "--check"])
        .env("MIMALLOC_ARENA_RESERVE", "0")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.trim(),
        "open refused: true; socket refused: true; exec refused: true; \
         signal refused: true; shared memory refused: true"
    );
}

/// The decoder child is this very program even after its file is replaced or removed (a
/// package upgrade under a running server): the server spawns `/proc/self/exe`, not a path.
#[tokio::test]
async fn the_decoder_child_outlives_a_removed_binary() {
    // `sh -c` copies the binary into the server's directory and runs the copy.
    let s = Server::start_wrapped(
        Backend::Fs,
        &[],
        &[
            "sh",
            "-c",
            "cp \"$0\" ./pixgate-old && exec ./pixgate-old \"$@\"",
        ],
    );
    std::fs::remove_file(s.dir.path().join("pixgate-old")).unwrap();
    let owner = token("upgraded", Role::Editor);
    let r = upload(&s, &owner, "image/heic", fixture("photo_160x120.heic")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

/// The decoder child cannot allocate past the memory it is given: the 36 MP 10-bit 4:4:4 HEIC
/// decodes within its reservation (`memory_cost`) and is refused — the child's allocation
/// fails, `invalid_image` — under the bare 128 MiB base.
#[test]
fn the_decoder_child_is_held_to_its_memory_reservation() {
    use pixgate::image::isolated::{Job, Runner};
    let bytes = fixture("gradient_rgba_6000x6000_10bit_444.heic");
    let p = probe(&bytes).unwrap();
    let child = pixgate::sandbox::ChildDecoder::new(env!("CARGO_BIN_EXE_pixgate").into());
    let job = |memory| Job {
        format: p.format,
        width: p.width,
        height: p.height,
        memory,
    };
    let reserved = pixgate::image::memory_cost(&p);
    let b = child.decode(&job(reserved), &bytes).unwrap();
    assert_eq!((b.width, b.height, b.channels), (6000, 6000, 4));
    let r = child.decode(&job(0), &bytes);
    assert!(
        matches!(r, Err(pixgate::image::ImageError::Corrupt(_))),
        "{:?}",
        r.map(|b| b.width)
    );
}
