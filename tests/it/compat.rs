//! imgproxy's official Node client (`@imgproxy/imgproxy-node`, pinned in `tests/compat/`,
//! installed by `.ci/test`) builds the URLs; pixgate must answer them. One case per option the
//! client can write and pixgate supports, plus the info endpoint, with plain and base64
//! sources. The client writes short names in its own order, `t`/`f` booleans, and `sp` for
//! `skip_processing`.

use std::process::{Command, Stdio};

use pixgate::auth::Role;
use pixgate::image::{ImageFormat, decode, probe};
use serde_json::{Value, json};

use crate::harness::*;

/// URLs for `cases` (`{id, source, info, options}`) from the Node client.
fn client_urls(endpoint: &str, cases: &[Value]) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/urls.js");
    let mut child = Command::new("node")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (the test command installs Node.js and tests/compat's packages)");
    let input =
        json!({"endpoint": endpoint, "key": SIGNING_KEY, "salt": SIGNING_SALT, "cases": cases});
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.to_string().as_bytes())
            .expect("write to node");
    }
    let out = child.wait_with_output().expect("node runs");
    assert!(
        out.status.success(),
        "the client failed (run `npm ci` in tests/compat)"
    );
    serde_json::from_slice(&out.stdout).expect("a JSON list of URLs")
}

type Check = Box<dyn Fn(&Resp)>;

fn size_is(format: ImageFormat, w: u32, h: u32) -> Check {
    Box::new(move |r: &Resp| {
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        let p = probe(&r.body).expect("an image");
        assert_eq!((p.format, p.width, p.height), (format, w, h));
    })
}

fn band_at_centre(band: usize) -> Check {
    Box::new(move |r: &Resp| {
        assert_eq!(r.status, 200);
        let b = decode(&r.body, &probe(&r.body).unwrap()).unwrap();
        let c = usize::from(b.channels);
        let i = ((b.height / 2) as usize * b.width as usize + (b.width / 2) as usize) * c;
        let bands = [[200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0]];
        assert_eq!(b.data[i..i + 3], bands[band]);
    })
}

#[tokio::test]
async fn urls_built_by_imgproxys_node_client_work() {
    let wm = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/watermark_64x32.png"
    );
    let s = Server::start_with(Backend::Fs, &[("PIXGATE__WATERMARK__PATH", wm)]);
    let photo = upload_fixture(&s, "compat", "photo_320x240.jpg", "image/jpeg").await;
    let r = upload(
        &s,
        &token("compat", Role::Editor),
        "image/png",
        crate::imgproxy::bands_png(),
    )
    .await;
    let bands = r.json()["id"].as_str().unwrap().to_owned();
    let hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    use ImageFormat::{Jpeg, Png, Webp};
    let cases: Vec<(&str, Value, Check)> = vec![
        (
            &bands,
            json!({"width": 100, "format": "png"}),
            size_is(Png, 100, 25),
        ),
        (
            &bands,
            json!({"height": 50, "format": "png"}),
            size_is(Png, 200, 50),
        ),
        (
            &bands,
            json!({"size": {"width": 100, "height": 25}, "format": "png"}),
            size_is(Png, 100, 25),
        ),
        (
            &bands,
            json!({"resizing_type": "force", "width": 100, "height": 100, "format": "png"}),
            size_is(Png, 100, 100),
        ),
        (
            &bands,
            json!({"width": 800, "enlarge": true, "format": "png"}),
            size_is(Png, 800, 200),
        ),
        (
            &bands,
            json!({"width": 100, "min_width": 200, "format": "png"}),
            size_is(Png, 100, 50),
        ),
        (
            &bands,
            json!({"min_height": 200, "format": "png"}),
            size_is(Png, 800, 200),
        ),
        (
            &bands,
            json!({"width": 100, "zoom": {"zoom_x": 2, "zoom_y": 1}, "format": "png"}),
            size_is(Png, 200, 25),
        ),
        (
            &bands,
            json!({"width": 100, "zoom": 2, "format": "png"}),
            size_is(Png, 200, 50),
        ),
        (
            &bands,
            json!({"resize": {"resizing_type": "fill", "width": 100, "height": 100}, "gravity": {"type": "we", "x_offset": 100, "y_offset": 0}, "format": "png"}),
            band_at_centre(1),
        ),
        (
            &bands,
            json!({"resize": {"resizing_type": "fill", "width": 100, "height": 100}, "gravity": {"type": "fp", "x": 0.9, "y": 0.5}, "format": "png"}),
            band_at_centre(3),
        ),
        (
            &bands,
            json!({"resize": {"resizing_type": "fill", "width": 100, "height": 100}, "gravity": {"type": "sm"}, "format": "png"}),
            size_is(Png, 100, 100),
        ),
        (
            &bands,
            json!({"crop": {"width": 0.25, "height": 0, "gravity": {"type": "ea", "x_offset": 0.25, "y_offset": 0}}, "format": "png"}),
            band_at_centre(2),
        ),
        (
            &bands,
            json!({"crop": {"width": 100, "height": 100, "gravity": {"type": "we", "x_offset": 300, "y_offset": 0}}, "format": "png"}),
            band_at_centre(3),
        ),
        (
            &bands,
            json!({"resize": {"resizing_type": "fit", "width": 200, "height": 200, "extend": {"extend": true, "gravity": {"type": "no", "x_offset": 0, "y_offset": 10}}}, "background": "000000", "format": "png"}),
            size_is(Png, 200, 200),
        ),
        (
            &bands,
            json!({"resize": {"resizing_type": "fit", "width": 200, "height": 200}, "extend_aspect_ratio": {"extend": true, "gravity": {"type": "so"}}, "format": "png"}),
            size_is(Png, 200, 200),
        ),
        (
            &bands,
            json!({"trim": {"threshold": 10, "color": "c80000"}, "format": "png"}),
            size_is(Png, 300, 100),
        ),
        (
            &bands,
            json!({"trim": {"threshold": 10, "color": "c80000", "equal_hor": true, "equal_ver": false}, "format": "png"}),
            size_is(Png, 400, 100),
        ),
        (
            &bands,
            json!({"width": 50, "pixelate": 5, "format": "png"}),
            size_is(Png, 50, 13),
        ),
        (
            &photo,
            json!({"width": 50, "dpr": 2, "rotate": 90, "flip": {"horizontal": true}, "auto_rotate": false, "padding": {"top": 1, "right": 2, "bottom": 3, "left": 4}, "background": "ff0000", "blur": 1, "sharpen": 0.5, "format": "png"}),
            size_is(Png, 112, 141),
        ),
        (
            &photo,
            json!({"width": 100, "quality": 50, "format": "jpg"}),
            size_is(Jpeg, 100, 75),
        ),
        (
            &photo,
            json!({"width": 100, "format_quality": [{"format": "webp", "quality": 20}], "format": "webp"}),
            size_is(Webp, 100, 75),
        ),
        (
            &photo,
            json!({"width": 200, "max_bytes": 5000, "format": "jpg"}),
            Box::new(|r: &Resp| {
                assert_eq!(r.status, 200);
                assert!(r.body.len() <= 5000, "{}", r.body.len());
            }),
        ),
        (
            &photo,
            json!({"width": 100, "watermark": {"opacity": 0.8, "position": "re", "x_offset": 10, "y_offset": 0.1, "scale": 0.2}, "format": "png"}),
            size_is(Png, 100, 75),
        ),
        (
            &photo,
            json!({"width": 100, "watermark": {"opacity": 1, "position": "soea", "x_offset": 4, "y_offset": 4}, "format": "png"}),
            size_is(Png, 100, 75),
        ),
        (
            &photo,
            json!({"width": 100, "strip_metadata": true, "keep_copyright": true, "strip_color_profile": true, "enforce_thumbnail": true, "disable_animation": true, "format": "jpg"}),
            size_is(Jpeg, 100, 75),
        ),
        (
            &photo,
            json!({"width": 100, "strip_metadata": false, "strip_color_profile": false, "format": "webp"}),
            size_is(Webp, 100, 75),
        ),
        (
            &photo,
            json!({"width": 100, "filename": {"name": "holiday"}, "return_attachment": true, "format": "png"}),
            Box::new(|r: &Resp| {
                assert_eq!(
                    r.header("content-disposition"),
                    Some("attachment; filename=\"holiday.png\"; filename*=UTF-8''holiday.png")
                );
            }),
        ),
        (
            &photo,
            json!({"width": 100, "filename": {"name": "aG9saWRheQ", "encoded": true}, "format": "png"}),
            Box::new(|r: &Resp| {
                assert_eq!(
                    r.header("content-disposition"),
                    Some("inline; filename=\"holiday.png\"; filename*=UTF-8''holiday.png")
                );
            }),
        ),
        (
            &photo,
            json!({"raw": true}),
            Box::new(|r: &Resp| {
                assert_eq!(
                    (r.status, r.header("content-type")),
                    (200, Some("image/jpeg"))
                );
                assert!(r.header("etag").unwrap().starts_with("\"o-"));
            }),
        ),
        (
            &photo,
            json!({"width": 10, "skip_processing": ["jpg", "png"]}),
            Box::new(|r: &Resp| {
                assert_eq!(probe(&r.body).unwrap().width, 320);
            }),
        ),
        (
            &photo,
            json!({"width": 10, "expires": hour, "cachebuster": "v2", "format": "png"}),
            size_is(Png, 10, 8),
        ),
        (
            &photo,
            json!({"width": 10, "expires": 1}),
            Box::new(|r: &Resp| assert_eq!(r.status, 410)),
        ),
    ];
    let mut requests: Vec<Value> = Vec::new();
    for (id, options, _) in &cases {
        for source in ["plain", "base64"] {
            // The client base64url-encodes the `url` string it is given (the image id) itself.
            requests.push(json!({"id": id, "source": source, "options": options}));
        }
    }
    let urls = client_urls(&s.base, &requests);
    assert_eq!(urls.len(), cases.len() * 2);
    for (i, (_, _, check)) in cases.iter().enumerate() {
        for url in &urls[2 * i..2 * i + 2] {
            let r = get(url, &[]).await;
            eprintln!("{url} -> {}", r.status);
            check(&r);
        }
    }

    // The info endpoint, as `generateImageInfoUrl` writes it (options pixgate answers anyway).
    let info = client_urls(
        &s.base,
        &[
            json!({"id": photo, "source": "plain", "info": true, "options": {"size": 1, "dimensions": 1, "format": 1, "blurhash": {"x_components": 4, "y_components": 3}, "thumb_hash": 1, "expires": hour}}),
        ],
    );
    let r = get(&info[0], &[]).await;
    assert_eq!(r.status, 200, "{}: {:?}", info[0], r.body);
    let j = r.json();
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert!(j["blurhash"].is_string() && j["thumbhash"].is_string());
    // Options pixgate does not answer are refused, not ignored.
    let exif = client_urls(
        &s.base,
        &[json!({"id": photo, "source": "plain", "info": true, "options": {"exif": true}})],
    );
    let r = get(&exif[0], &[]).await;
    assert_eq!((r.status, r.code().as_str()), (400, "unknown_option"));
}
