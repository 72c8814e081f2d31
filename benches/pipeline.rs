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
    // `--measure <file.json>`: one round of timings, written for the report.
    if let Some(i) = args.iter().position(|a| a == "--measure") {
        let round = measure();
        let out = PathBuf::from(&args[i + 1]);
        std::fs::write(&out, serde_json::to_vec_pretty(&round).expect("json")).expect("write");
        return;
    }
    report();
}

/// One round: per task the median time with libjpeg-turbo and with zune-jpeg, the output size,
/// T1's output (for PSNR), and T1 throughput with two workers.
fn measure() -> serde_json::Value {
    let dir = photos_dir();
    let turbo = engine(JpegDecoder::Turbo);
    let zune = engine(JpegDecoder::Zune);
    let mut tasks_json = serde_json::Map::new();
    let mut t1_output = None;
    for task in tasks() {
        let Ok(bytes) = std::fs::read(dir.join(task.file)) else {
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
        tasks_json.insert(
            task.id.to_owned(),
            serde_json::json!({
                "ms": t.as_secs_f64() * 1e3,
                "zune_ms": z.as_secs_f64() * 1e3,
                "bytes": out.len(),
            }),
        );
    }
    let mut throughput = None;
    if let Ok(source) = std::fs::read(dir.join("photo_4000x3000_q90.jpg")) {
        let lane_runs: usize = std::env::var("LANE_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let t1 = spec(ResizingType::Fit, 800, 0);
        let run = || {
            for _ in 0..lane_runs {
                std::hint::black_box(
                    turbo
                        .transform(&source, &t1, OutputFormat::Jpeg, 80)
                        .expect("transform"),
                );
            }
        };
        run(); // warm-up
        let start = Instant::now();
        std::thread::scope(|s| {
            s.spawn(run);
            s.spawn(run);
        });
        throughput = Some((2 * lane_runs) as f64 / start.elapsed().as_secs_f64());
    }
    serde_json::json!({
        "tasks": tasks_json,
        "throughput_t1": throughput,
        "t1_output": t1_output.map(hex::encode),
    })
}

fn median_f64(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn read_rounds(dir: &Path, prefix: &str) -> Vec<serde_json::Value> {
    let mut rounds: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix) && name.ends_with(".json")
        })
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    rounds.truncate(64);
    rounds
}

/// Prints the comparison: medians over the rounds in `PIXGATE_COMPARE` (written alternately by
/// `sharp_bench.mjs` and `--measure`, so both sides see the same machine conditions), or one
/// round measured now when run alone.
fn report() {
    let dir = photos_dir();
    let compare_dir = std::env::var_os("PIXGATE_COMPARE").map(PathBuf::from);
    let mut ours = compare_dir
        .as_deref()
        .map(|d| read_rounds(d, "px_"))
        .unwrap_or_default();
    if ours.is_empty() {
        ours.push(measure());
    }
    let sharp = compare_dir
        .as_deref()
        .map(|d| read_rounds(d, "sharp_"))
        .unwrap_or_default();
    let stat = |rounds: &[serde_json::Value], task: &str, field: &str| {
        median_f64(
            rounds
                .iter()
                .filter_map(|r| r["tasks"][task][field].as_f64())
                .collect(),
        )
    };
    let fmt_ms = |v: Option<f64>| v.map_or("-".to_owned(), |m| format!("{m:.1}ms"));
    let fmt_n = |v: Option<f64>| v.map_or("-".to_owned(), |b| format!("{b:.0}"));

    println!(
        "pixgate engine: single thread, median of {RUNS} runs per round, median of {} round(s)",
        ours.len()
    );
    if let Some(s) = sharp.first() {
        println!(
            "sharp {} (libvips {}), sharp.concurrency(1), same tasks and encoder settings, {} round(s) interleaved",
            s["version"]["sharp"].as_str().unwrap_or("?"),
            s["version"]["vips"].as_str().unwrap_or("?"),
            sharp.len()
        );
    }
    println!(
        "{:<3} {:<42} {:>9} {:>9} {:>7} {:>9} {:>9} {:>8} {:>9}",
        "", "task", "pixgate", "sharp", "ratio", "px bytes", "sh bytes", "zune", "peak MiB"
    );
    for task in tasks() {
        let ms = stat(&ours, task.id, "ms");
        if ms.is_none() {
            eprintln!(
                "skipping {}: {} not found (set PIXGATE_PHOTOS)",
                task.id, task.file
            );
            continue;
        }
        let sharp_ms = stat(&sharp, task.id, "ms");
        let ratio = ms.zip(sharp_ms).map(|(a, b)| a / b);
        let peak =
            peak_of(task.id).map_or("?".to_owned(), |b| format!("{:.1}", b as f64 / 1048576.0));
        println!(
            "{:<3} {:<42} {:>9} {:>9} {:>7} {:>9} {:>9} {:>8} {:>9}",
            task.id,
            task.name,
            fmt_ms(ms),
            fmt_ms(sharp_ms),
            ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")),
            fmt_n(stat(&ours, task.id, "bytes")),
            fmt_n(stat(&sharp, task.id, "bytes")),
            fmt_ms(stat(&ours, task.id, "zune_ms")),
            peak
        );
    }

    // Quality: T1 outputs against a full-decode Lanczos3 reference.
    if let Ok(source) = std::fs::read(dir.join("photo_4000x3000_q90.jpg")) {
        let reference = reference(&source, 800, 600);
        let ours_t1 = ours[0]["t1_output"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|o| {
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
            fmt(ours_t1.as_ref()),
            fmt(theirs.as_ref())
        );
    }
    let tp = |rounds: &[serde_json::Value]| {
        median_f64(
            rounds
                .iter()
                .filter_map(|r| r["throughput_t1"].as_f64())
                .collect(),
        )
    };
    if let Some(ours) = tp(&ours) {
        let theirs = tp(&sharp);
        println!(
            "T1 throughput, 2 workers: pixgate {ours:.1} img/s, sharp {}{}",
            theirs.map_or("-".to_owned(), |t| format!("{t:.1} img/s")),
            theirs.map_or(String::new(), |t| format!(" ({:.2}x)", ours / t))
        );
    }
}
