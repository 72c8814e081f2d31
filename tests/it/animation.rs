//! Animation in and out (issue 19): animated GIF and WebP sources render every frame into an
//! animated WebP or GIF, with their timing, loop count and disposal; `da:1`, still formats and
//! `transform.animate = false` give the first frame; negotiation picks an animated format the
//! client accepts.

use pixgate::auth::Role;
use pixgate::image::anim::Frames;
use pixgate::image::{Bitmap, probe};

use crate::harness::*;

/// Every frame of an animated result: (bitmap, delay ms), and how many times it plays.
fn frames_of(body: &[u8]) -> (Vec<(Bitmap, u32)>, u32) {
    let p = probe(body).expect("probe result");
    let mut f = Frames::open(body, &p).expect("open frames");
    let plays = f.plays();
    let mut out = Vec::new();
    while let Some((b, ms)) = f.next_frame().expect("frame") {
        out.push((b.clone(), ms));
    }
    (out, plays)
}

/// RGBA (alpha 255 for RGB) of one pixel.
fn pixel(b: &Bitmap, x: u32, y: u32) -> [u8; 4] {
    let c = usize::from(b.channels);
    let i = (y as usize * b.width as usize + x as usize) * c;
    let px = &b.data[i..i + c];
    [px[0], px[1], px[2], if c == 4 { px[3] } else { 255 }]
}

fn near(a: [u8; 4], b: [u8; 4], tolerance: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tolerance)
}

const RED: [u8; 4] = [220, 20, 20, 255];
const GREEN: [u8; 4] = [20, 200, 20, 255];
const BLUE: [u8; 4] = [20, 20, 220, 255];

/// The three fixture frames (red; green with a transparent left half after the red was
/// disposed; blue) at 100/200/300 ms, looping forever, checked at the left and right of the
/// result.
fn assert_fixture_frames(body: &[u8], size: (u32, u32), what: &str) {
    let (frames, plays) = frames_of(body);
    assert_eq!(plays, 0, "{what}: loops forever");
    let delays: Vec<u32> = frames.iter().map(|f| f.1).collect();
    assert_eq!(delays, [100, 200, 300], "{what}");
    let (w, h) = size;
    for (i, (b, _)) in frames.iter().enumerate() {
        assert_eq!((b.width, b.height), size, "{what} frame {i}");
        let (left, right) = (pixel(b, w / 6, h / 2), pixel(b, w - 1 - w / 6, h / 2));
        let ok = match i {
            0 => near(left, RED, 40) && near(right, RED, 40),
            // GIF's frame 2 is transparent on the left; the red below was cleared.
            1 => left[3] < 128 && near(right, GREEN, 40),
            _ => near(left, BLUE, 40) && near(right, BLUE, 40),
        };
        assert!(ok, "{what} frame {i}: {left:?} {right:?}");
    }
}

#[tokio::test]
async fn animated_sources_render_every_frame() {
    let s = Server::start(Backend::Fs);
    let owner = token("anim", Role::Editor);
    let gif = upload_fixture(&s, "anim", "anim_3x64x48.gif", "image/gif").await;
    let webp_id = upload(&s, &owner, "image/webp", fixture("anim_3x64x48.webp")).await;
    assert_eq!(webp_id.status, 201, "{:?}", webp_id.body);
    let webp = webp_id.json()["id"].as_str().unwrap().to_owned();
    let browser = [("accept", "image/avif,image/webp,image/apng,*/*;q=0.8")];
    let old_client = [("accept", "image/png,image/*;q=0.8")];

    // Negotiated: an animated WebP for a browser that takes WebP, an animated GIF otherwise.
    let r = get(&s.url(&signed(&format!("/w:32/plain/{gif}"))), &browser).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/webp"));
    assert_eq!(r.header("vary"), Some("Accept"));
    assert_fixture_frames(&r.body, (32, 24), "gif → webp");
    let r = get(&s.url(&signed(&format!("/w:32/plain/{gif}"))), &old_client).await;
    assert_eq!(r.header("content-type"), Some("image/gif"));
    assert_fixture_frames(&r.body, (32, 24), "gif → gif");

    // The WebP source (lossless; its frame 2 is opaque green with a transparent left half
    // drawn over red with blending: the red shows through).
    for (format, mime) in [("webp", "image/webp"), ("gif", "image/gif")] {
        let r = get(
            &s.url(&signed(&format!("/rs:fill:20:30/f:{format}/plain/{webp}"))),
            &[],
        )
        .await;
        assert_eq!(r.header("content-type"), Some(mime));
        let (frames, plays) = frames_of(&r.body);
        assert_eq!(plays, 0);
        assert_eq!(frames.len(), 3, "webp → {format}");
        assert_eq!(
            frames.iter().map(|f| f.1).collect::<Vec<_>>(),
            [100, 200, 300]
        );
        for (b, _) in &frames {
            assert_eq!((b.width, b.height), (20, 30));
        }
        assert!(near(pixel(&frames[2].0, 10, 15), BLUE, 40));
    }

    // Rotation, padding and a background apply to every frame (`w` sizes the rotated image:
    // 32×43, padded by 4).
    let r = get(
        &s.url(&signed(&format!(
            "/w:32/rot:90/pd:4/bg:ffffff/f:webp/plain/{gif}"
        ))),
        &[],
    )
    .await;
    let (frames, _) = frames_of(&r.body);
    assert_eq!(frames.len(), 3);
    for (b, _) in &frames {
        assert_eq!((b.width, b.height), (32 + 8, 43 + 8));
        assert!(near(pixel(b, 1, 1), [255, 255, 255, 255], 8));
    }
    // Rotated 90° clockwise, frame 2's transparent left half is now its top half: white
    // background there, green at the bottom.
    assert!(near(pixel(&frames[1].0, 20, 14), [255, 255, 255, 255], 40));
    assert!(near(pixel(&frames[1].0, 20, 40), GREEN, 40));
}

#[tokio::test]
async fn first_frame_when_asked_or_when_the_format_cannot_animate() {
    let s = Server::start(Backend::Fs);
    let gif = upload_fixture(&s, "still", "anim_3x64x48.gif", "image/gif").await;
    let browser = [("accept", "image/webp,*/*")];
    // `da:1`: a still in the negotiated still format.
    let r = get(
        &s.url(&signed(&format!("/w:32/da:1/plain/{gif}"))),
        &browser,
    )
    .await;
    assert_eq!(r.header("content-type"), Some("image/webp"));
    let (frames, _) = frames_of(&r.body);
    assert_eq!(frames.len(), 1);
    assert!(near(pixel(&frames[0].0, 16, 12), RED, 40));
    let r = get(
        &s.url(&signed(&format!("/w:32/da:1/plain/{gif}"))),
        &[("accept", "image/png")],
    )
    .await;
    assert_eq!(r.header("content-type"), Some("image/png"));
    // `da:1` with an animated output format: one frame.
    let r = get(
        &s.url(&signed(&format!("/w:32/da:1/f:gif/plain/{gif}"))),
        &[],
    )
    .await;
    assert_eq!(frames_of(&r.body).0.len(), 1);
    // Formats that cannot animate: the first frame.
    for f in ["png", "jpg", "avif"] {
        let r = get(&s.url(&signed(&format!("/w:32/f:{f}/plain/{gif}"))), &[]).await;
        assert_eq!(r.status, 200, "{f}");
        if f != "avif" {
            let p = probe(&r.body).unwrap();
            assert_eq!((p.width, p.height), (32, 24), "{f}");
        }
    }

    // `transform.animate = false`: every result is the first frame.
    let stills = Server::start_with(Backend::Fs, &[("PIXGATE__TRANSFORM__ANIMATE", "false")]);
    let gif = upload_fixture(&stills, "still", "anim_3x64x48.gif", "image/gif").await;
    let r = get(
        &stills.url(&signed(&format!("/w:32/plain/{gif}"))),
        &browser,
    )
    .await;
    assert_eq!(r.header("content-type"), Some("image/webp"));
    assert_eq!(frames_of(&r.body).0.len(), 1);
    let r = get(
        &stills.url(&signed(&format!("/w:32/f:gif/plain/{gif}"))),
        &[],
    )
    .await;
    assert_eq!(frames_of(&r.body).0.len(), 1);

    // `transform.animated_formats = ["gif"]`: a browser taking WebP still gets a GIF for an
    // animation, and a WebP for a still source.
    let gifs = Server::start_with(
        Backend::Fs,
        &[("PIXGATE__TRANSFORM__ANIMATED_FORMATS", "gif")],
    );
    let gif = upload_fixture(&gifs, "still", "anim_3x64x48.gif", "image/gif").await;
    let photo = upload_fixture(&gifs, "still", "photo_320x240.jpg", "image/jpeg").await;
    let r = get(&gifs.url(&signed(&format!("/w:32/plain/{gif}"))), &browser).await;
    assert_eq!(r.header("content-type"), Some("image/gif"));
    assert_eq!(frames_of(&r.body).0.len(), 3);
    let r = get(
        &gifs.url(&signed(&format!("/w:32/plain/{photo}"))),
        &browser,
    )
    .await;
    assert_eq!(r.header("content-type"), Some("image/webp"));
}

/// A GIF whose third frame is cut short: its first frame decodes, so only a decode of every
/// frame can tell.
fn gif_with_broken_third_frame() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let palette = [0u8, 0, 0, 255, 255, 255];
        let mut enc = gif::Encoder::new(&mut out, 16, 16, &palette).unwrap();
        for i in 0..3u8 {
            let frame = gif::Frame {
                width: 16,
                height: 16,
                delay: 10,
                buffer: std::borrow::Cow::Owned((0..256).map(|p| (p as u8 ^ i) & 1).collect()),
                ..gif::Frame::default()
            };
            enc.write_frame(&frame).unwrap();
        }
    }
    // The last frame's image data ends at the trailer: cut most of it away, keep the trailer.
    let trailer = out.pop();
    out.truncate(out.len() - 20);
    out.extend(trailer);
    out
}

#[tokio::test]
async fn hostile_animations_are_refused_with_stable_codes() {
    let s = Server::start(Backend::Fs);
    let owner = token("hostile-anim", Role::Editor);
    // Every frame is decoded at upload: a broken third frame is refused, not stored to fail
    // on every render.
    let r = upload(
        &s,
        &owner,
        "image/gif",
        gif_with_broken_third_frame().into(),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (422, "invalid_image"),
        "{:?}",
        r.body
    );

    // Frames × result canvas is bounded like the source's: enlarging multiplies every frame.
    let gif = upload_fixture(&s, "hostile-anim", "anim_3x64x48.gif", "image/gif").await;
    let r = get(
        &s.url(&signed(&format!("/rs:fit:640:480:1:1/f:webp/plain/{gif}"))),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(frames_of(&r.body).0.len(), 3);
    let tight = Server::start_with(
        Backend::Fs,
        &[
            ("PIXGATE__LIMITS__MAX_ANIMATION_PIXELS", "1000000"),
            ("PIXGATE__LIMITS__MAX_RESULT_BYTES", "3000"),
        ],
    );
    let gif = upload_fixture(&tight, "hostile-anim", "anim_3x64x48.gif", "image/gif").await;
    let r = get(
        &tight.url(&signed(&format!("/rs:fit:1000:750:1:1/f:webp/plain/{gif}"))),
        &[],
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (422, "too_many_frames"));
    // The result's bytes (`limits.max_result_bytes`): flat colours stay small; a photo at
    // full size does not.
    let r = get(
        &tight.url(&signed(&format!("/w:500/q:100/f:gif/plain/{gif}"))),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "flat colours compress: {:?}", r.body.len());
    let photo = upload_fixture(&tight, "hostile-anim", "photo_320x240.jpg", "image/jpeg").await;
    let r = get(
        &tight.url(&signed(&format!("/w:300/q:100/f:png/plain/{photo}"))),
        &[],
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (422, "result_too_many_bytes")
    );
}
