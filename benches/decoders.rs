//! Each source decoder next to the alternative it replaced, on the same bytes, in one run
//! (issue 19: untrusted bytes meet memory-safe Rust where a maintained decoder exists).
//!
//! - WebP: `image-webp` (pure Rust, what pixgate decodes with) against libwebp 1.3 through the
//!   `webp` crate (C; still pixgate's encoder), on the 12 MP photo encoded lossy (q80) and on
//!   the 2000² PNG photo encoded lossless.
//!
//! Run with `cargo bench --bench decoders` (`PIXGATE_PHOTOS=/dir` for other photos).

// Only `photos_dir` of the shared bench helpers is used here.
#[allow(dead_code)]
mod common;

use std::io::Cursor;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pixgate::image::{Bitmap, decode, probe};

/// The photo as decoded pixels, or `None` when the photos are not there.
fn photo(file: &str) -> Option<Bitmap> {
    let bytes = std::fs::read(common::photos_dir().join(file)).ok()?;
    decode(&bytes, &probe(&bytes).ok()?).ok()
}

fn webp_files() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    if let Some(b) = photo("photo_4000x3000_q90.jpg") {
        let lossy = webp::Encoder::from_rgb(&b.data, b.width, b.height).encode(80.0);
        out.push(("12MP lossy q80", lossy.to_vec()));
    }
    if let Some(b) = photo("photo_2000x2000.png") {
        let encoder = if b.channels == 4 {
            webp::Encoder::from_rgba(&b.data, b.width, b.height)
        } else {
            webp::Encoder::from_rgb(&b.data, b.width, b.height)
        };
        out.push(("2000x2000 lossless", encoder.encode_lossless().to_vec()));
    }
    out
}

fn webp_decoders(c: &mut Criterion) {
    let files = webp_files();
    if files.is_empty() {
        eprintln!("skipping: photos not found (set PIXGATE_PHOTOS)");
        return;
    }
    let mut group = c.benchmark_group("webp decode");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(6));
    for (name, bytes) in &files {
        eprintln!("{name}: {} bytes", bytes.len());
        group.bench_function(format!("{name} image-webp (Rust)"), |b| {
            b.iter(|| {
                let mut d =
                    image_webp::WebPDecoder::new(Cursor::new(bytes.as_slice())).expect("header");
                let mut buf = vec![0; d.output_buffer_size().expect("size")];
                d.read_image(&mut buf).expect("decode");
                buf
            })
        });
        group.bench_function(format!("{name} libwebp (C)"), |b| {
            b.iter(|| webp::Decoder::new(bytes).decode().expect("decode").to_vec())
        });
    }
    group.finish();
}

criterion_group!(benches, webp_decoders);
criterion_main!(benches);
