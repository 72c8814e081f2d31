//! What issue 18's additions cost, measured side by side in one run on the realistic photos:
//!
//! - placeholders at upload: `validate_upload` (the decode every upload does) against
//!   `analyze_upload` (the same decode plus facts, BlurHash, ThumbHash and the LQIP);
//! - `mb` (max bytes): T1 (12 MP JPEG → 800 px JPEG, q80) plain against the same with a bound
//!   of half its size (and an unreachable one), printing how many encodes each took.
//!
//! Run with `cargo bench --bench info` (`PIXGATE_PHOTOS=/dir` for other photos).

mod common;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pixgate::image::{ImageLimits, analyze_upload, validate_upload};

fn placeholders(c: &mut Criterion) {
    let limits = ImageLimits::default();
    let mut group = c.benchmark_group("upload");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(6));
    for file in ["photo_4000x3000_q90.jpg", "photo_2000x2000.png"] {
        let Ok(bytes) = std::fs::read(common::photos_dir().join(file)) else {
            eprintln!("skipping {file}: not found (set PIXGATE_PHOTOS)");
            continue;
        };
        group.bench_function(format!("{file} validate"), |b| {
            b.iter(|| validate_upload(&bytes, &limits).expect("valid"))
        });
        group.bench_function(format!("{file} validate+info"), |b| {
            b.iter(|| analyze_upload(&bytes, &limits).expect("valid"))
        });
    }
    group.finish();
}

fn max_bytes(c: &mut Criterion) {
    let engine = common::engine();
    let Some(t1) = common::tasks().into_iter().find(|t| t.id == "T1") else {
        return;
    };
    let Ok(bytes) = std::fs::read(common::photos_dir().join(t1.file)) else {
        eprintln!("skipping mb: {} not found (set PIXGATE_PHOTOS)", t1.file);
        return;
    };
    eprintln!("mb on T1: {}", t1.name);
    let plain_spec = t1.spec;
    let plain = engine
        .transform(&bytes, &plain_spec, t1.format, 80)
        .expect("transform");
    let mut group = c.benchmark_group("max_bytes");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(6));
    for (label, bound) in [
        ("none", 0),
        ("half", plain.bytes.len() as u64 / 2),
        ("unreachable", 1),
    ] {
        let mut spec = plain_spec.clone();
        spec.max_bytes = bound;
        let once = engine
            .transform(&bytes, &spec, t1.format, 80)
            .expect("transform");
        eprintln!(
            "mb {label}: {} encodes, {} bytes (plain {} bytes)",
            once.encodes,
            once.bytes.len(),
            plain.bytes.len()
        );
        group.bench_function(format!("T1 mb {label}"), |b| {
            b.iter(|| {
                engine
                    .transform(&bytes, &spec, t1.format, 80)
                    .expect("transform")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, placeholders, max_bytes);
criterion_main!(benches);
