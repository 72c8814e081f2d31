//! Engine benchmark and the Rust side of `benches/compare.sh`.
//!
//! Runs pixgate's own pipeline (`Engine::transform`, exactly what the server runs on a worker)
//! on the realistic photos, single thread, median of several runs, and prints per task: time,
//! output size and peak memory of one transform (max RSS of a child process doing only that).
//! With `PIXGATE_COMPARE=<dir>` (written by `benches/sharp_bench.mjs` in the same run) it also
//! prints sharp's time and the ratio, T1 PSNR of both outputs against a full-decode Lanczos3
//! reference, and T1 throughput with two workers.
//!
//!     cargo bench --bench pipeline            # photos from ../shared/fixtures/photos
//!     bash benches/compare.sh                 # the same, beside sharp

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{photos_dir, spec, tasks};
use fast_image_resize as fir;
use pixgate::image::{Bitmap, EncodeSettings, Engine, JpegDecoder, decode, probe};
use pixgate::options::{OutputFormat, ResizingType};

const RUNS: usize = 9;

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

fn engine(decoder: JpegDecoder) -> Engine {
    let mut engine = common::engine();
    engine.jpeg_decoder = decoder;
    engine.encode = EncodeSettings {
        webp_method: std::env::var("PIXGATE_WEBP_METHOD")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(EncodeSettings::default().webp_method),
        ..EncodeSettings::default()
    };
    engine
}

/// Peak resident memory of this process image, bytes (`VmHWM`; unlike `ru_maxrss` it is not
/// inherited across `exec` from the benchmark that spawned us).
fn max_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Child mode: `--peak <task id>` runs one transform and prints the RSS growth it caused.
fn peak_child(id: &str) {
    let task = tasks().into_iter().find(|t| t.id == id).expect("task");
    let bytes = std::fs::read(photos_dir().join(task.file)).expect("photo");
    let engine = engine(JpegDecoder::Turbo);
    let before = max_rss();
    let out = engine
        .transform(&bytes, &task.spec, task.format, 80)
        .expect("transform");
    std::hint::black_box(out);
    println!("{}", max_rss().saturating_sub(before));
}

fn peak_of(id: &str) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args(["--peak", id])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn decode_file(path: &Path) -> Option<Bitmap> {
    let bytes = std::fs::read(path).ok()?;
    let p = probe(&bytes).ok()?;
    decode(&bytes, &p).ok()
}

/// PSNR (dB) of `b` against `reference` over RGB.
fn psnr(reference: &Bitmap, b: &Bitmap) -> Option<f64> {
    if (reference.width, reference.height) != (b.width, b.height) {
        return None;
    }
    let (rc, bc) = (usize::from(reference.channels), usize::from(b.channels));
    let mut sum = 0f64;
    let mut n = 0f64;
    for (r, x) in reference.data.chunks(rc).zip(b.data.chunks(bc)) {
        for c in 0..3 {
            let d = f64::from(r[c]) - f64::from(x[c]);
            sum += d * d;
            n += 1.0;
        }
    }
    let mse = sum / n;
    Some(10.0 * (255.0 * 255.0 / mse).log10())
}

/// Full-size zune-jpeg decode + Lanczos3 to `w`×`h`: the quality reference for shrink-on-load.
fn reference(source: &[u8], w: u32, h: u32) -> Bitmap {
    let p = probe(source).expect("probe");
    let full = decode(source, &p).expect("decode");
    let src = fir::images::ImageRef::new(full.width, full.height, &full.data, fir::PixelType::U8x3)
        .expect("view");
    let mut dst = fir::images::Image::new(w, h, fir::PixelType::U8x3);
    fir::Resizer::new()
        .resize(
            &src,
            &mut dst,
            &fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3)),
        )
        .expect("resize");
    Bitmap {
        width: w,
        height: h,
        channels: 3,
        data: dst.into_vec(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--peak") {
        peak_child(&args[i + 1]);
        return;
    }
    // `--repeat <task> <n>`: run one task n times (for `perf record`).
    if let Some(i) = args.iter().position(|a| a == "--repeat") {
        let task = tasks()
            .into_iter()
            .find(|t| t.id == args[i + 1])
            .expect("task");
        let n: usize = args[i + 2].parse().expect("count");
        let bytes = std::fs::read(photos_dir().join(task.file)).expect("photo");
        let engine = engine(JpegDecoder::Turbo);
        for _ in 0..n {
            std::hint::black_box(
                engine
                    .transform(&bytes, &task.spec, task.format, 80)
                    .expect("transform"),
            );
        }
        return;
    }
    let dir = photos_dir();
    let compare_dir = std::env::var_os("PIXGATE_COMPARE").map(PathBuf::from);
    let sharp: Option<serde_json::Value> = compare_dir
        .as_ref()
        .and_then(|d| std::fs::read(d.join("sharp.json")).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let turbo = engine(JpegDecoder::Turbo);
    let zune = engine(JpegDecoder::Zune);

    println!("pixgate engine: single thread, median of {RUNS} runs");
    if let Some(s) = &sharp {
        println!(
            "sharp {} (libvips {}), sharp.concurrency(1), same tasks and encoder settings",
            s["version"]["sharp"].as_str().unwrap_or("?"),
            s["version"]["vips"].as_str().unwrap_or("?")
        );
    }
    println!(
        "{:<3} {:<42} {:>9} {:>9} {:>7} {:>9} {:>9} {:>8} {:>9}",
        "", "task", "pixgate", "sharp", "ratio", "px bytes", "sh bytes", "zune", "peak MiB"
    );
    let mut t1_output = None;
    for task in tasks() {
        let path = dir.join(task.file);
        let Ok(bytes) = std::fs::read(&path) else {
            eprintln!(
                "skipping {}: {} not found (set PIXGATE_PHOTOS)",
                task.id,
                path.display()
            );
            continue;
        };
        let mut out = Vec::new();
        let t = median(|| {
            out = turbo
                .transform(&bytes, &task.spec, task.format, 80)
                .expect("transform")
                .bytes;
        });
        let z = median(|| {
            std::hint::black_box(
                zune.transform(&bytes, &task.spec, task.format, 80)
                    .expect("transform"),
            );
        });
        if task.id == "T1" {
            t1_output = Some(out.clone());
        }
        let ms = t.as_secs_f64() * 1e3;
        let (sharp_ms, sharp_bytes) = sharp
            .as_ref()
            .and_then(|s| {
                let t = &s["tasks"][task.id];
                Some((t["ms"].as_f64()?, t["bytes"].as_u64()?))
            })
            .map_or((None, None), |(m, b)| (Some(m), Some(b)));
        let peak =
            peak_of(task.id).map_or("?".to_owned(), |b| format!("{:.1}", b as f64 / 1048576.0));
        println!(
            "{:<3} {:<42} {:>7.1}ms {:>9} {:>7} {:>9} {:>9} {:>6.1}ms {:>9}",
            task.id,
            task.name,
            ms,
            sharp_ms.map_or("-".to_owned(), |m| format!("{m:.1}ms")),
            sharp_ms.map_or("-".to_owned(), |m| format!("{:.2}x", ms / m)),
            out.len(),
            sharp_bytes.map_or("-".to_owned(), |b| b.to_string()),
            z.as_secs_f64() * 1e3,
            peak
        );
    }

    // Quality: T1 outputs against a full-decode Lanczos3 reference.
    if let Ok(source) = std::fs::read(dir.join("photo_4000x3000_q90.jpg")) {
        let reference = reference(&source, 800, 600);
        let ours = t1_output.and_then(|o| {
            let p = probe(&o).ok()?;
            decode(&o, &p).ok()
        });
        let theirs = compare_dir
            .as_ref()
            .and_then(|d| decode_file(&d.join("sharp_T1.jpg")));
        let fmt = |b: Option<&Bitmap>| {
            b.and_then(|b| psnr(&reference, b))
                .map_or("-".to_owned(), |p| format!("{p:.2} dB"))
        };
        println!(
            "T1 PSNR vs full-decode Lanczos3 reference: pixgate {}, sharp {}",
            fmt(ours.as_ref()),
            fmt(theirs.as_ref())
        );

        // Throughput: two workers, T1.
        let lane_runs: usize = std::env::var("LANE_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let t1 = spec(ResizingType::Fit, 800, 0);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..lane_runs {
                        std::hint::black_box(
                            turbo
                                .transform(&source, &t1, OutputFormat::Jpeg, 80)
                                .expect("transform"),
                        );
                    }
                });
            }
        });
        let ours = (2 * lane_runs) as f64 / start.elapsed().as_secs_f64();
        let theirs = sharp.as_ref().and_then(|s| s["throughput_t1"].as_f64());
        println!(
            "T1 throughput, 2 workers: pixgate {ours:.1} img/s, sharp {}{}",
            theirs.map_or("-".to_owned(), |t| format!("{t:.1} img/s")),
            theirs.map_or(String::new(), |t| format!(" ({:.2}x)", ours / t))
        );
    }
}
