//! The engine's option set through the server: geometry, effects, presets, watermark and
//! format negotiation, as a browser or CDN would request them.

use pixgate::auth::Role;
use pixgate::image::{ImageFormat, decode, probe};

use crate::harness::*;
use crate::limits::usage;

fn dims(body: &[u8]) -> (ImageFormat, u32, u32) {
    let p = probe(body).expect("an image");
    (p.format, p.width, p.height)
}

#[tokio::test]
async fn geometry_and_effect_options_render() {
    let s = Server::start(Backend::Fs);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let cases: &[(&str, (ImageFormat, u32, u32))] = &[
        ("c:160:120:nowe/f:png", (ImageFormat::Png, 160, 120)),
        // Crop sizes are in the rotated frame (what the viewer sees).
        ("c:160:120/rot:90/f:png", (ImageFormat::Png, 160, 120)),
        ("c:100:200/rot:90/f:png", (ImageFormat::Png, 100, 200)),
        ("rot:270/w:60/f:jpg", (ImageFormat::Jpeg, 60, 80)),
        ("fl:1:1/w:64/f:webp", (ImageFormat::Webp, 64, 48)),
        ("rs:fill:100:100/g:sm/f:webp", (ImageFormat::Webp, 100, 100)),
        (
            "rs:fit:100:100:0:1/bg:ff0000/f:png",
            (ImageFormat::Png, 100, 100),
        ),
        ("w:50/pd:10/f:jpg", (ImageFormat::Jpeg, 70, 58)),
        (
            "w:64/bl:2/sh:1/fi:grayscale/f:png",
            (ImageFormat::Png, 64, 48),
        ),
        ("w:64/fi:sepia/ar:0/f:jpg", (ImageFormat::Jpeg, 64, 48)),
    ];
    for (options, want) in cases {
        let r = get(&s.url(&signed(&format!("/{options}/plain/{id}"))), &[]).await;
        assert_eq!(r.status, 200, "{options}: {:?}", r.body);
        assert_eq!(dims(&r.body), *want, "{options}");
    }
    // Grayscale really is grey.
    let r = get(
        &s.url(&signed(&format!("/w:32/fi:grayscale/f:png/plain/{id}"))),
        &[],
    )
    .await;
    let b = decode(&r.body, &probe(&r.body).unwrap()).unwrap();
    assert!(b.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    // Extension with a background fills the new area with it.
    let r = get(
        &s.url(&signed(&format!(
            "/rs:fit:100:100:0:1:no/bg:0:0:255/f:png/plain/{id}"
        ))),
        &[],
    )
    .await;
    let b = decode(&r.body, &probe(&r.body).unwrap()).unwrap();
    let last = b.data.len() - 3;
    assert_eq!(&b.data[last..], &[0, 0, 255]);

    // Refusals are 400s with stable codes, before any work.
    for (options, code) in [
        ("wm:0.5", "invalid_option"),
        ("pr:nothing", "invalid_option"),
        ("rot:45", "invalid_option"),
        ("bl:1000", "invalid_option"),
        ("pd:5000", "invalid_option"),
        ("f:tiff", "unsupported_format"),
    ] {
        let r = get(&s.url(&signed(&format!("/{options}/plain/{id}"))), &[]).await;
        assert_eq!((r.status, r.code()), (400, code.to_owned()), "{options}");
    }
    // A padded canvas beyond the result limits is refused, not allocated.
    let r = get(
        &s.url(&signed(&format!(
            "/rs:fit:16000:16000:1/pd:2048/plain/{id}"
        ))),
        &[],
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
}

#[tokio::test]
async fn presets_expand_and_presets_only_mode_refuses_other_options() {
    let s = Server::start_with(
        Backend::Fs,
        &[
            ("PIXGATE__PRESETS__THUMB", "rs:fill:64:64/f:png"),
            ("PIXGATE__PRESETS__GRAY", "fi:grayscale"),
            ("PIXGATE__TRANSFORM__PRESETS_ONLY", "true"),
        ],
    );
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let r = get(&s.url(&signed(&format!("/pr:thumb:gray/plain/{id}"))), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(dims(&r.body), (ImageFormat::Png, 64, 64));
    let r = get(&s.url(&signed(&format!("/pr:thumb/w:10/plain/{id}"))), &[]).await;
    assert_eq!((r.status, r.code()), (400, "invalid_option".to_owned()));
    // Bearer transforms obey the same rule.
    let t = token("alice", Role::Viewer);
    let r = get(
        &s.url(&format!("/_/w:10/plain/{id}")),
        &[("authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn bad_presets_and_watermarks_stop_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, named) in [
        ("PIXGATE__PRESETS__BAD", "zz:1", "presets.bad"),
        ("PIXGATE__PRESETS__NESTED", "pr:other", "presets.nested"),
        (
            "PIXGATE__WATERMARK__PATH",
            "/nonexistent/wm.png",
            "watermark.path",
        ),
        (
            "PIXGATE__WATERMARK__PATH",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/not_an_image.html"
            ),
            "watermark.path",
        ),
    ] {
        let env = server_env(Backend::Fs, dir.path(), &[(key, value)]);
        let out = pixgate_cmd(&env)
            .arg("serve")
            .current_dir(dir.path())
            .output()
            .expect("run pixgate");
        assert!(!out.status.success(), "{key}={value} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{key}: {err}");
    }
}

#[tokio::test]
async fn configured_watermark_is_composited() {
    let wm = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/watermark_64x32.png"
    );
    let s = Server::start_with(Backend::Fs, &[("PIXGATE__WATERMARK__PATH", wm)]);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let plain = get(&s.url(&signed(&format!("/w:200/f:png/plain/{id}"))), &[]).await;
    let marked = get(
        &s.url(&signed(&format!("/w:200/wm:1:soea:4:4/f:png/plain/{id}"))),
        &[],
    )
    .await;
    assert_eq!(marked.status, 200, "{:?}", marked.body);
    let a = decode(&plain.body, &probe(&plain.body).unwrap()).unwrap();
    let b = decode(&marked.body, &probe(&marked.body).unwrap()).unwrap();
    assert_eq!((a.width, a.height), (b.width, b.height));
    let px = |bm: &pixgate::image::Bitmap, x: u32, y: u32| {
        let i = ((y * bm.width + x) * 3) as usize;
        [bm.data[i], bm.data[i + 1], bm.data[i + 2]]
    };
    // Inside the mark (bottom-right, 4 px in): near white; top-left corner untouched.
    let inside = px(&b, 200 - 4 - 32, 150 - 4 - 16);
    assert!(inside.iter().all(|&v| v > 200), "{inside:?}");
    assert_eq!(px(&a, 5, 5), px(&b, 5, 5));
}

fn animated_gif(frames: usize) -> bytes::Bytes {
    let mut out = Vec::new();
    {
        let palette = [0u8, 0, 0, 255, 255, 255];
        let mut enc = gif::Encoder::new(&mut out, 8, 8, &palette).expect("gif");
        for i in 0..frames {
            let frame = gif::Frame {
                width: 8,
                height: 8,
                buffer: std::borrow::Cow::Owned(vec![(i % 2) as u8; 64]),
                ..gif::Frame::default()
            };
            enc.write_frame(&frame).expect("frame");
        }
    }
    bytes::Bytes::from(out)
}

#[tokio::test]
async fn animation_frame_limit_applies_to_uploads() {
    let s = Server::start_with(Backend::Fs, &[("PIXGATE__LIMITS__MAX_FRAMES", "3")]);
    let t = token("alice", Role::Editor);
    let r = upload(&s, &t, "image/gif", animated_gif(3)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // The first frame renders.
    let r = get(&s.url(&signed(&format!("/w:4/f:png/plain/{id}"))), &[]).await;
    assert_eq!(dims(&r.body), (ImageFormat::Png, 4, 4));
    let r = upload(&s, &t, "image/gif", animated_gif(4)).await;
    assert_eq!((r.status, r.code()), (422, "too_many_frames".to_owned()));
}

#[tokio::test]
async fn avif_output_explicit_and_negotiated() {
    let s = Server::start_with(
        Backend::Fs,
        &[("PIXGATE__TRANSFORM__AUTO_FORMATS", "avif,webp")],
    );
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let is_avif = |b: &[u8]| b.len() > 12 && &b[4..12] == b"ftypavif";
    let r = get(&s.url(&signed(&format!("/w:100/f:avif/plain/{id}"))), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("image/avif"));
    assert!(is_avif(&r.body));
    assert_eq!(r.header("vary"), None);
    // Negotiation follows the configured order, and the choice is part of the cache key.
    let path = signed(&format!("/w:100/plain/{id}"));
    let avif = get(&s.url(&path), &[("accept", "image/avif,image/webp,*/*")]).await;
    assert_eq!(avif.header("content-type"), Some("image/avif"));
    assert_eq!(avif.header("vary"), Some("Accept"));
    let webp = get(&s.url(&path), &[("accept", "image/webp,*/*")]).await;
    assert_eq!(webp.header("content-type"), Some("image/webp"));
    let refused = get(&s.url(&path), &[("accept", "image/avif;q=0,image/webp")]).await;
    assert_eq!(refused.header("content-type"), Some("image/webp"));
    let plain = get(&s.url(&path), &[("accept", "*/*")]).await;
    assert_eq!(plain.header("content-type"), Some("image/jpeg"));
    assert_ne!(avif.header("etag"), webp.header("etag"));
}

/// A page of twelve AVIF `<img>` tags on a cold cache (issue 20): the one AVIF encoder serves
/// them in turn, every one 200 (it used to answer all but one with 503 `overloaded`).
#[tokio::test]
async fn a_page_of_avif_images_loads_without_errors() {
    let s = Server::start(Backend::Fs);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let requests: Vec<_> = (0..12u32)
        .map(|i| {
            let url = s.url(&signed(&format!("/w:{}/f:avif/plain/{id}", 200 + i)));
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    for (i, r) in requests.into_iter().enumerate() {
        let r = r.await.unwrap();
        assert_eq!((i, r.status), (i, 200), "{:?}", r.body);
        assert_eq!(r.header("content-type"), Some("image/avif"));
    }
}

/// Beyond the AVIF queue (`transform.avif_queue_len` waiting, for at most
/// `transform.avif_queue_wait_ms`), an explicit `f:avif` gets `503 overloaded` with
/// `Retry-After` over HTTP, and a negotiated one falls back to WebP instead of failing.
#[tokio::test]
async fn beyond_the_avif_queue_explicit_avif_is_503_and_negotiated_falls_back() {
    let s = Server::start_with(
        Backend::Fs,
        &[
            ("PIXGATE__TRANSFORM__AVIF_QUEUE_LEN", "1"),
            ("PIXGATE__TRANSFORM__AVIF_QUEUE_WAIT_MS", "0"),
            ("PIXGATE__TRANSFORM__AUTO_FORMATS", "avif,webp"),
        ],
    );
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    // Large AVIF encodes (an enlargement), so the encoder stays busy while the others ask.
    let requests: Vec<_> = (0..6u32)
        .map(|i| {
            let url = s.url(&signed(&format!(
                "/rs:fit:{}:0/el:1/f:avif/plain/{id}",
                1600 + i
            )));
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in requests {
        let r = r.await.unwrap();
        if r.status == 503 {
            assert_eq!(r.code(), "overloaded");
            assert!(r.header("retry-after").is_some(), "503 without Retry-After");
        }
        statuses.push(r.status);
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses.iter().all(|&st| st == 200 || st == 503),
        "{statuses:?}"
    );
    // A negotiated request while the encoder is busy: WebP, never a 503.
    let busy = s.url(&signed(&format!("/rs:fit:1700:0/el:1/f:avif/plain/{id}")));
    let running = tokio::spawn(async move { get(&busy, &[]).await });
    // The AVIF permit is taken before the CPU-queue place: once the job is in the queue, the
    // encoder is busy.
    wait_for(&s, "the AVIF job to be admitted", |m| {
        metric(m, "pixgate_transform_queue_depth", "") >= 1.0
    })
    .await;
    let r = get(
        &s.url(&signed(&format!("/w:90/plain/{id}"))),
        &[("accept", "image/avif,image/webp,*/*")],
    )
    .await;
    assert_eq!(
        r.status, 200,
        "a negotiated request falls back, never refused"
    );
    assert_eq!(r.header("content-type"), Some("image/webp"));
    assert_eq!(running.await.unwrap().status, 200);
}

/// Negotiated requests that all find the AVIF encoder free when they are negotiated (a cold
/// page of `<picture>` elements) race for it: the ones that lose get WebP, never a wait in the
/// explicit-AVIF queue or a `503` (here the queue refuses at once), and each is charged one
/// transform (the lost AVIF attempt's unit is given back).
#[tokio::test]
async fn negotiated_avif_that_loses_the_encoder_race_falls_back_to_webp() {
    let s = Server::start_with(
        Backend::Fs,
        &[
            ("PIXGATE__TRANSFORM__AVIF_QUEUE_LEN", "1"),
            ("PIXGATE__TRANSFORM__AVIF_QUEUE_WAIT_MS", "0"),
            ("PIXGATE__TRANSFORM__AUTO_FORMATS", "avif,webp"),
        ],
    );
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let before = usage(&s, &token("alice", Role::Viewer)).await["quotas"]["transforms"]["used"]
        .as_u64()
        .unwrap();
    let n = 8u32;
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let url = s.url(&signed(&format!("/rs:fit:{}:0/el:1/plain/{id}", 1200 + i)));
            tokio::spawn(async move { get(&url, &[("accept", "image/avif,image/webp,*/*")]).await })
        })
        .collect();
    let mut types = Vec::new();
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("vary"), Some("Accept"));
        let t = r.header("content-type").unwrap().to_owned();
        let want = if t == "image/avif" {
            ImageFormat::Avif
        } else {
            ImageFormat::Webp
        };
        assert_eq!(probe(&r.body).unwrap().format, want, "{t}");
        types.push(t);
    }
    assert!(types.iter().any(|t| t == "image/avif"), "{types:?}");
    assert!(types.iter().any(|t| t == "image/webp"), "{types:?}");
    let after = usage(&s, &token("alice", Role::Viewer)).await["quotas"]["transforms"]["used"]
        .as_u64()
        .unwrap();
    assert_eq!(
        after - before,
        u64::from(n),
        "one unit per result delivered"
    );
}

/// imgproxy's `fn` / `att`: `Content-Disposition` with the output format's extension and an
/// RFC 6266 `filename*`, from one cached result; `f:auto` negotiates from `Accept` (it was
/// described in the configuration sample but refused); hostile names are `400 invalid_option`.
#[tokio::test]
async fn filename_attachment_and_auto_format() {
    let s = Server::start(Backend::Fs);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let webp = [("accept", "image/webp,image/*")];
    let r = get(&s.url(&signed(&format!("/w:64/f:auto/plain/{id}"))), &webp).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("image/webp"))
    );
    assert_eq!(r.header("vary"), Some("Accept"));
    assert_eq!(r.header("content-disposition"), None);
    let r = get(
        &s.url(&signed(&format!(
            "/w:64/f:auto/fn:caf%C3%A9%20menu/plain/{id}"
        ))),
        &webp,
    )
    .await;
    assert_eq!(
        r.header("content-disposition"),
        Some("inline; filename=\"caf_ menu.webp\"; filename*=UTF-8''caf%C3%A9%20menu.webp")
    );
    let r = get(
        &s.url(&signed(&format!("/w:64/att:1/f:png/plain/{id}"))),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(dims(&r.body), (ImageFormat::Png, 64, 48));
    let want = format!("attachment; filename=\"{id}.png\"; filename*=UTF-8''{id}.png");
    assert_eq!(r.header("content-disposition"), Some(want.as_str()));
    for bad in ["fn:a%0Ab", "fn:..%2Fetc", "att:yes", "f:best"] {
        let r = get(&s.url(&signed(&format!("/w:64/{bad}/plain/{id}"))), &[]).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(
            ["invalid_option", "unsupported_format"].contains(&r.code().as_str()),
            "{bad}: {}",
            r.code()
        );
    }
}

/// imgproxy's `fq`: a quality per output format, over `q`, also when the format is chosen from
/// the source (a JPEG source without `f` and without WebP in `Accept` gets JPEG).
#[tokio::test]
async fn format_quality_applies_to_the_format_served() {
    let s = Server::start(Backend::Fs);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let size = |options: String| {
        let url = s.url(&signed(&format!("/w:200/{options}/plain/{id}")));
        async move {
            let r = get(&url, &[("accept", "image/jpeg")]).await;
            assert_eq!(r.status, 200, "{options}");
            (
                r.body.len(),
                r.header("etag").unwrap_or_default().to_owned(),
            )
        }
    };
    let (webp_lo, e1) = size("f:webp/q:90/fq:webp:10".into()).await;
    let (webp_hi, e2) = size("f:webp/q:90".into()).await;
    assert!(webp_lo * 2 < webp_hi, "{webp_lo} vs {webp_hi}");
    assert_ne!(e1, e2);
    // Another format's entry changes nothing of this one's bytes.
    let (jpg_other, _) = size("f:jpg/q:90/fq:webp:10".into()).await;
    let (jpg_plain, _) = size("f:jpg/q:90".into()).await;
    assert_eq!(jpg_other, jpg_plain);
    // The source's format, chosen after the metadata is read.
    let (fallback_lo, _) = size("fq:jpg:10".into()).await;
    assert!(fallback_lo * 2 < jpg_plain, "{fallback_lo} vs {jpg_plain}");
    for bad in ["fq:webp", "fq:webp:101", "fq:bmp:50"] {
        let r = get(&s.url(&signed(&format!("/w:64/{bad}/plain/{id}"))), &[]).await;
        assert_eq!(r.status, 400, "{bad}");
    }
}

/// imgproxy's `pix`: the result in blocks of one colour (CSS pixels × dpr), part of the cache
/// key; `pix:0`/`pix:1` are no-ops; hostile sizes are `400 invalid_option`.
#[tokio::test]
async fn pixelate_renders_blocks() {
    let s = Server::start(Backend::Fs);
    let id = upload_fixture(&s, "alice", "photo_320x240.jpg", "image/jpeg").await;
    let pix = get(
        &s.url(&signed(&format!("/w:64/pix:8/f:png/plain/{id}"))),
        &[],
    )
    .await;
    assert_eq!(pix.status, 200);
    assert_eq!(dims(&pix.body), (ImageFormat::Png, 64, 48));
    let b = decode(&pix.body, &probe(&pix.body).unwrap()).unwrap();
    let c = usize::from(b.channels);
    let px = |x: usize, y: usize| b.data[(y * 64 + x) * c..(y * 64 + x) * c + c].to_vec();
    for (tx, ty) in [(0, 0), (8, 16), (56, 40)] {
        for (dx, dy) in [(0, 0), (7, 0), (0, 7), (7, 7), (3, 5)] {
            assert_eq!(px(tx, ty), px(tx + dx, ty + dy), "tile {tx},{ty}");
        }
    }
    // Twice the DPR, twice the block: 16-pixel tiles in a 128-pixel result.
    let r = get(
        &s.url(&signed(&format!("/w:64/dpr:2/pix:8/f:png/plain/{id}"))),
        &[],
    )
    .await;
    let b2 = decode(&r.body, &probe(&r.body).unwrap()).unwrap();
    let c2 = usize::from(b2.channels);
    let at = |x: usize, y: usize| b2.data[(y * 128 + x) * c2..(y * 128 + x) * c2 + c2].to_vec();
    assert_eq!(at(0, 0), at(15, 15));
    let plain = get(&s.url(&signed(&format!("/w:64/f:png/plain/{id}"))), &[]).await;
    let none = get(
        &s.url(&signed(&format!("/w:64/pix:1/f:png/plain/{id}"))),
        &[],
    )
    .await;
    assert_eq!(plain.header("etag"), none.header("etag"));
    assert_ne!(plain.header("etag"), pix.header("etag"));
    for bad in ["pix:1025", "pix:-2", "pix:x"] {
        let r = get(&s.url(&signed(&format!("/w:64/{bad}/plain/{id}"))), &[]).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_option"),
            "{bad}"
        );
    }
}
