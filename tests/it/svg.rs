//! SVG sources (issue 19): opt-in, rasterised by resvg, never served as SVG, nothing fetched,
//! and hostile documents refused with stable codes before they cost anything.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pixgate::auth::Role;
use pixgate::image::{decode, probe};

use crate::harness::*;

const LOGO: &str = r##"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd" [
  <!ENTITY brand "#1060c0">
]>
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 100" width="200" height="100">
  <script>alert(document.cookie)</script>
  <rect x="0" y="0" width="100" height="100" fill="#e02020"/>
  <circle cx="150" cy="50" r="40" fill="&brand;"/>
  <text x="10" y="90" font-size="16" fill="white">pixgate</text>
</svg>"##;

fn svg_server() -> Server {
    Server::start_with(
        Backend::Fs,
        &[("PIXGATE__LIMITS__UPLOAD_FORMATS", "jpeg,png,svg")],
    )
}

#[tokio::test]
async fn svg_is_opt_in_and_rendered_as_a_raster() {
    // Not in the default formats.
    let plain = Server::start(Backend::Fs);
    let owner = token("svg", Role::Editor);
    let r = upload(
        &plain,
        &owner,
        "image/svg+xml",
        LOGO.as_bytes().to_vec().into(),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (415, "unsupported_media_type")
    );

    let s = svg_server();
    let r = upload(&s, &owner, "image/svg+xml", LOGO.as_bytes().to_vec().into()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let j = r.json();
    assert_eq!(
        (
            j["format"].as_str(),
            j["width"].as_u64(),
            j["height"].as_u64()
        ),
        (Some("svg"), Some(200), Some(100))
    );
    let id = j["id"].as_str().unwrap().to_owned();
    // Enlarged crisply: drawn at the result's size, not resampled from 200×100.
    let r = get(
        &s.url(&signed(&format!("/w:400/el:1/f:png/plain/{id}"))),
        &[],
    )
    .await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("image/png"))
    );
    let b = decode(&r.body, &probe(&r.body).unwrap()).unwrap();
    assert_eq!((b.width, b.height), (400, 200));
    let c = usize::from(b.channels);
    let px = |x: usize, y: usize| &b.data[(y * 400 + x) * c..][..3];
    assert_eq!(px(100, 40), &[0xe0, 0x20, 0x20]);
    assert_eq!(px(300, 100), &[0x10, 0x60, 0xc0], "the entity's colour");
    // The edge of the red square is sharp at 2×: one pixel of transition at most.
    assert_eq!(px(198, 40), &[0xe0, 0x20, 0x20]);
    // Negotiated: a raster format, never SVG.
    let r = get(
        &s.url(&signed(&format!("/w:100/plain/{id}"))),
        &[("accept", "image/svg+xml,image/webp,*/*")],
    )
    .await;
    assert_eq!(r.header("content-type"), Some("image/webp"));
    let r = get(
        &s.url(&signed(&format!("/w:100/plain/{id}"))),
        &[("accept", "image/svg+xml,*/*")],
    )
    .await;
    assert_eq!(r.header("content-type"), Some("image/png"));
    // The original is never served.
    for options in ["raw:1", "sp:svg"] {
        let r = get(&s.url(&signed(&format!("/{options}/plain/{id}"))), &[]).await;
        assert_ne!(r.header("content-type"), Some("image/svg+xml"), "{options}");
        if options == "raw:1" {
            assert_eq!((r.status, r.code().as_str()), (400, "invalid_option"));
        }
    }
}

/// A TCP listener that counts connections: anything the renderer fetches shows up here.
fn recording_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut s = stream;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
        }
    });
    (port, hits)
}

#[tokio::test]
async fn nothing_is_fetched_and_hostile_documents_are_refused() {
    let s = svg_server();
    let owner = token("svg-hostile", Role::Editor);
    let (port, hits) = recording_listener();
    let base = format!("http://127.0.0.1:{port}");
    let tiny_png = fixture("alpha_320x240.png");
    use base64::Engine as _;
    let inline = base64::engine::general_purpose::STANDARD.encode(&tiny_png);
    let nested = base64::engine::general_purpose::STANDARD
        .encode(format!(r#"<svg xmlns="http://www.w3.org/2000/svg"><image href="{base}/nested.png" width="9" height="9"/></svg>"#));
    let external = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="100" height="100">
  <style>@import url("{base}/style.css"); @font-face {{ font-family: X; src: url("{base}/font.woff"); }}
    rect {{ fill: url("{base}/paint.svg#p"); }}</style>
  <image href="{base}/a.png" width="50" height="50"/>
  <image xlink:href="file:///etc/hostname" width="50" height="50"/>
  <image href="/etc/passwd" width="50" height="50"/>
  <image href="data:image/svg+xml;base64,{nested}" width="50" height="50"/>
  <use href="{base}/sprite.svg#icon"/>
  <filter id="f"><feImage href="{base}/fe.png"/></filter>
  <rect width="10" height="10" filter="url(#f)"/>
  <text x="0" y="90" font-family="X">text</text>
  <image href="data:image/png;base64,{inline}" x="50" y="50" width="50" height="50"/>
</svg>"##
    );
    let r = upload(&s, &owner, "image/svg+xml", external.into_bytes().into()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = get(&s.url(&signed(&format!("/f:png/plain/{id}"))), &[]).await;
    assert_eq!(r.status, 200);
    let b = decode(&r.body, &probe(&r.body).unwrap()).unwrap();
    let c = usize::from(b.channels);
    // The inline PNG is drawn (bottom right); the external image's place stays empty.
    assert!(b.data[(75 * 100 + 75) * c..][..3].iter().any(|&v| v > 0));
    if c == 4 {
        assert_eq!(
            b.data[(25 * 100 + 25) * 4 + 3],
            0,
            "nothing drawn where a.png would be"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the renderer made a request"
    );

    let deep = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg">{}<rect width="1" height="1"/>{}</svg>"#,
        "<g>".repeat(5000),
        "</g>".repeat(5000)
    );
    let mut uses = String::from(
        r#"<svg xmlns="http://www.w3.org/2000/svg"><defs><rect id="l0" width="1" height="1"/>"#,
    );
    for i in 1..=30 {
        uses.push_str(&format!(
            r##"<g id="l{i}"><use href="#l{p}"/><use href="#l{p}"/></g>"##,
            p = i - 1
        ));
    }
    uses.push_str(r##"</defs><use href="#l30"/></svg>"##);
    let laughs = {
        let mut d = String::from("<?xml version=\"1.0\"?><!DOCTYPE svg [<!ENTITY a0 \"lol\">");
        for i in 1..10 {
            d.push_str(&format!(
                "<!ENTITY a{i} \"{}\">",
                format!("&a{};", i - 1).repeat(10)
            ));
        }
        d.push_str("]><svg xmlns=\"http://www.w3.org/2000/svg\"><text>&a9;</text></svg>");
        d
    };
    let flat_entities = format!(
        "<!DOCTYPE svg [<!ENTITY big \"{}\">]><svg xmlns=\"http://www.w3.org/2000/svg\"><text>{}</text></svg>",
        "x".repeat(60_000),
        "&big;".repeat(100)
    );
    let cycle = r##"<svg xmlns="http://www.w3.org/2000/svg"><g id="a"><use href="#b"/></g><g id="b"><use href="#a"/></g></svg>"##;
    let filters = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg"><filter id="f">{}</filter></svg>"#,
        r#"<feGaussianBlur stdDeviation="50"/>"#.repeat(100)
    );
    let layers = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">{}<rect width="9" height="9"/>{}</svg>"#,
        r#"<g opacity="0.9">"#.repeat(40),
        "</g>".repeat(40)
    );
    // An inline PNG whose header claims 30000² (900 MP in a few hundred bytes): over the
    // inline bound, so it is not decoded; the document around it renders at once.
    let bomb = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/corpus/decode/regress-bomb-30000x30000.png"
    ))
    .unwrap();
    let with_bomb = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><rect width="40" height="40" fill="blue"/><image href="data:image/png;base64,{}" width="40" height="40"/></svg>"#,
        base64::engine::general_purpose::STANDARD.encode(&bomb)
    );
    let started = std::time::Instant::now();
    let r = upload(&s, &owner, "image/svg+xml", with_bomb.into_bytes().into()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = get(&s.url(&signed(&format!("/f:png/plain/{id}"))), &[]).await;
    let b = decode(&r.body, &probe(&r.body).unwrap()).unwrap();
    assert_eq!(
        &b.data[..3],
        &[0, 0, 255],
        "the bomb drew nothing over the rectangle"
    );
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "100000² viewBox",
            br#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100000 100000"/>"#.to_vec(),
            422,
            "too_many_pixels",
        ),
        (
            "5000 nested groups",
            deep.into_bytes(),
            422,
            "invalid_image",
        ),
        (
            "2^30 elements through <use>",
            uses.into_bytes(),
            422,
            "invalid_image",
        ),
        ("billion laughs", laughs.into_bytes(), 422, "invalid_image"),
        (
            "6 MB of flat entity expansion",
            flat_entities.into_bytes(),
            422,
            "invalid_image",
        ),
        (
            "<use> cycle",
            cycle.as_bytes().to_vec(),
            422,
            "invalid_image",
        ),
        (
            "100 blur primitives",
            filters.into_bytes(),
            422,
            "invalid_image",
        ),
        (
            "40 nested opacity layers",
            layers.into_bytes(),
            422,
            "invalid_image",
        ),
        (
            "not UTF-8",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"><text>\xff\xfe</text></svg>".to_vec(),
            422,
            "invalid_image",
        ),
        (
            "unclosed",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"><g>".to_vec(),
            422,
            "invalid_image",
        ),
        (
            "over 4 MiB",
            format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\"><!--{}--></svg>",
                "x".repeat(5 << 20)
            )
            .into_bytes(),
            422,
            "invalid_image",
        ),
    ];
    for (name, body, status, code) in cases {
        let started = std::time::Instant::now();
        let r = upload(&s, &owner, "image/svg+xml", body.into()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{name}: {:?}",
            r.body
        );
        assert!(
            started.elapsed().as_secs() < 5,
            "{name} took {:?}",
            started.elapsed()
        );
    }
    // The server is still there.
    let r = get(&s.url("/healthz"), &[]).await;
    assert_eq!(r.status, 200);
}
