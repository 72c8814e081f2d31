//! Engine benchmark: pixgate's own pipeline on the realistic photos, single thread, median of
//! several runs. Prints, in the same run, the decode-only time beside the full transform so the
//! share of each phase is visible.
//!
//!     cargo bench --bench pipeline            # photos from ../shared/fixtures/photos
//!     PIXGATE_PHOTOS=/path cargo bench --bench pipeline

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pixgate::image::{ImageLimits, decode, probe, transform};
use pixgate::options::{OutputFormat, ResizingType, TransformSpec};

const RUNS: usize = 9;

fn photos_dir() -> PathBuf {
    std::env::var_os("PIXGATE_PHOTOS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/photos"),
        PathBuf::from,
    )
}

fn median(mut f: impl FnMut()) -> Duration {
    f(); // warm-up (page faults, lazy init)
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[RUNS / 2]
}

fn spec(rt: ResizingType, w: u32, h: u32) -> TransformSpec {
    TransformSpec {
        resizing_type: rt,
        width: w,
        height: h,
        ..TransformSpec::default()
    }
}

fn main() {
    let dir = photos_dir();
    let limits = ImageLimits {
        max_source_pixels: 50_000_000,
        max_result_pixels: 40_000_000,
        max_result_dimension: 16_383,
    };
    let tasks: Vec<(&str, &str, TransformSpec, OutputFormat)> = vec![
        (
            "T1 4000x3000 JPEG -> 800px JPEG q80",
            "photo_4000x3000_q90.jpg",
            spec(ResizingType::Fit, 800, 0),
            OutputFormat::Jpeg,
        ),
        (
            "T2 4000x3000 JPEG -> 800px WebP q80",
            "photo_4000x3000_q90.jpg",
            spec(ResizingType::Fit, 800, 0),
            OutputFormat::Webp,
        ),
        (
            "T3 4000x3000 JPEG -> 300x300 fill JPEG",
            "photo_4000x3000_q90.jpg",
            spec(ResizingType::Fill, 300, 300),
            OutputFormat::Jpeg,
        ),
        (
            "T4 2000x2000 PNG -> 400px PNG",
            "photo_2000x2000.png",
            spec(ResizingType::Fit, 400, 0),
            OutputFormat::Png,
        ),
        (
            "T5 5640x3172 progressive JPEG -> 800px WebP",
            "src_elephants_5640x3172_progressive.jpg",
            spec(ResizingType::Fit, 800, 0),
            OutputFormat::Webp,
        ),
    ];
    println!("pixgate engine benchmark: single thread, median of {RUNS} runs");
    println!(
        "{:<46} {:>10} {:>10} {:>8} {:>10}",
        "task", "decode", "total", "decode%", "out bytes"
    );
    for (name, file, spec, format) in tasks {
        let path = dir.join(file);
        let Ok(bytes) = std::fs::read(&path) else {
            eprintln!(
                "skipping {name}: {} not found (set PIXGATE_PHOTOS)",
                path.display()
            );
            continue;
        };
        let p = probe(&bytes).expect("probe");
        let decode_t = median(|| {
            decode(&bytes, &p).expect("decode");
        });
        let mut out_len = 0;
        let total_t = median(|| {
            out_len = transform(&bytes, &spec, format, 80, &limits)
                .expect("transform")
                .bytes
                .len();
        });
        println!(
            "{:<46} {:>8.1}ms {:>8.1}ms {:>7.0}% {:>10}",
            name,
            decode_t.as_secs_f64() * 1e3,
            total_t.as_secs_f64() * 1e3,
            100.0 * decode_t.as_secs_f64() / total_t.as_secs_f64(),
            out_len
        );
    }
}
