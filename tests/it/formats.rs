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
