//! Engine benchmark and the Rust side of `benches/compare.sh`.
//!
//! Runs pixgate's own pipeline (`Engine::transform`, exactly what the server runs on a worker)
//! on the realistic photos, single thread, and prints per task: median time, output size, the
//! time with the pure-Rust zune-jpeg decoder instead of libjpeg-turbo, and peak memory of one
//! transform (RSS high-water mark of a child process doing only that). With
//! `PIXGATE_SHARP_DIR` (set by `compare.sh`) it drives sharp through
//! `benches/sharp_bench.mjs` and alternates the two run by run, so both see the same machine
//! conditions, then prints sharp's median and the ratio, T1 PSNR of both outputs against a
//! full-decode Lanczos3 reference, and T1 throughput with two workers.
//!
//!     cargo bench --bench pipeline            # photos from ../shared/fixtures/photos
//!     bash benches/compare.sh                 # the same, beside sharp

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use common::{photos_dir, spec, tasks};
use fast_image_resize as fir;
use pixgate::image::{Bitmap, EncodeSettings, Engine, JpegDecoder, decode, probe};
use pixgate::options::{OutputFormat, ResizingType};

/// Alternating runs per task (pixgate, sharp, pixgate, sharp, …), after one warm-up each.
const RUNS: usize = 15;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_ms(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
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

/// A running `sharp_bench.mjs`, answering one request per line.
struct Sharp {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Sharp {
    fn start(out_dir: &Path) -> Option<Sharp> {
        let dir = std::env::var("PIXGATE_SHARP_DIR").ok()?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/sharp_bench.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .arg(dir)
            .arg(photos_dir())
            .arg(out_dir)
            .arg(std::env::var("PIXGATE_WEBP_METHOD").unwrap_or_else(|_| "2".into()))
            .arg(std::env::var("PIXGATE_PNG_LEVEL").unwrap_or_else(|_| "1".into()))
            .env("UV_THREADPOOL_SIZE", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let stdin = child.stdin.take()?;
        let stdout = BufReader::new(child.stdout.take()?);
        Some(Sharp {
            _child: child,
            stdin,
            stdout,
        })
    }

    fn ask(&mut self, request: &str) -> String {
        writeln!(self.stdin, "{request}").expect("sharp_bench stdin");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("sharp_bench stdout");
        line.trim().to_owned()
    }

    fn number(&mut self, request: &str) -> f64 {
        let answer = self.ask(request);
        answer
            .parse()
            .unwrap_or_else(|_| panic!("sharp_bench answered {answer:?} to {request:?}"))
    }
}

/// T1 images per second with two threads, `n` per thread.
fn throughput(engine: &Engine, source: &[u8], n: usize) -> f64 {
    let t1 = spec(ResizingType::Fit, 800, 0);
    let run = || {
        for _ in 0..n {
            std::hint::black_box(
                engine
                    .transform(source, &t1, OutputFormat::Jpeg, 80)
                    .expect("transform"),
            );
        }
    };
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(run);
        s.spawn(run);
    });
    (2 * n) as f64 / start.elapsed().as_secs_f64()
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
    let pixel = if full.channels == 4 {
        fir::PixelType::U8x4
    } else {
        fir::PixelType::U8x3
    };
    let src = fir::images::ImageRef::new(full.width, full.height, &full.data, pixel).expect("view");
    let mut dst = fir::images::Image::new(w, h, pixel);
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
        channels: full.channels,
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
    report();
}

/// AVIF outputs are decoded in this process for the PSNR (they are our own and sharp's
/// outputs; the server decodes AVIF in its sandboxed child).
struct DecodeHere;

impl pixgate::image::isolated::Runner for DecodeHere {
    fn decode(
        &self,
        job: &pixgate::image::isolated::Job,
        bytes: &[u8],
    ) -> Result<Bitmap, pixgate::image::ImageError> {
        pixgate::image::isolated::decode_here(job, bytes)
    }
}

fn report() {
    pixgate::image::isolated::install(Box::new(DecodeHere));
    let dir = photos_dir();
    let out_dir = std::env::var_os("PIXGATE_COMPARE").map_or_else(
        || std::env::temp_dir().join("pixgate-compare"),
        PathBuf::from,
    );
    let _ = std::fs::create_dir_all(&out_dir);
    let mut sharp = Sharp::start(&out_dir);
    let turbo = engine(JpegDecoder::Turbo);
    let zune = engine(JpegDecoder::Zune);

    println!("pixgate engine: single thread, median of {RUNS} runs");
    if let Some(s) = sharp.as_mut() {
        let v: serde_json::Value = serde_json::from_str(&s.ask("version")).unwrap_or_default();
        println!(
            "sharp {} (libvips {}), sharp.concurrency(1), same tasks and encoder settings, runs alternated with pixgate's",
            v["sharp"].as_str().unwrap_or("?"),
            v["vips"].as_str().unwrap_or("?")
        );
    }
    println!(
        "{:<3} {:<42} {:>9} {:>9} {:>7} {:>9} {:>9} {:>8} {:>9}",
        "", "task", "pixgate", "sharp", "ratio", "px bytes", "sh bytes", "zune", "peak MiB"
    );
    let mut outputs = Vec::new();
    for task in tasks() {
        let Ok(bytes) = std::fs::read(dir.join(task.file)) else {
            eprintln!(
                "skipping {}: {} not found (set PIXGATE_PHOTOS)",
                task.id, task.file
            );
            continue;
        };
        let run = |e: &Engine| {
            e.transform(&bytes, &task.spec, task.format, 80)
                .expect("transform")
                .bytes
        };
        // Warm-ups (page faults, lazy init; sharp writes its output file).
        let out = run(&turbo);
        if let Some(s) = sharp.as_mut() {
            s.number(task.id);
        }
        let mut ours = Vec::with_capacity(RUNS);
        let mut theirs = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            ours.push(time_ms(|| {
                std::hint::black_box(run(&turbo));
            }));
            if let Some(s) = sharp.as_mut() {
                theirs.push(s.number(task.id));
            }
        }
        let zune_ms = median(
            (0..5)
                .map(|_| {
                    time_ms(|| {
                        std::hint::black_box(run(&zune));
                    })
                })
                .collect(),
        );
        let ms = median(ours);
        let sharp_ms = (!theirs.is_empty()).then(|| median(theirs));
        let sharp_bytes = sharp.as_mut().map(|s| s.ask(&format!("bytes {}", task.id)));
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
            sharp_bytes.unwrap_or_else(|| "-".to_owned()),
            zune_ms,
            peak
        );
        // T3 crops: its reference would need the same crop; the others are plain downscales.
        if task.id != "T3" {
            outputs.push((task, bytes, out));
        }
    }

    // Quality: each output (and sharp's) against a full-decode Lanczos3 reference.
    for (task, source, out) in &outputs {
        let Some(ours) = probe(out).ok().and_then(|p| decode(out, &p).ok()) else {
            continue;
        };
        let reference = reference(source, ours.width, ours.height);
        let ext = task.format.extension();
        let theirs = sharp
            .is_some()
            .then(|| decode_file(&out_dir.join(format!("sharp_{}.{ext}", task.id))))
            .flatten();
        let fmt = |b: Option<&Bitmap>| {
            b.and_then(|b| psnr(&reference, b))
                .map_or("-".to_owned(), |p| format!("{p:.2} dB"))
        };
        println!(
            "{} PSNR vs full-decode Lanczos3 reference: pixgate {}, sharp {}",
            task.id,
            fmt(Some(&ours)),
            fmt(theirs.as_ref())
        );
    }

    let Ok(source) = std::fs::read(dir.join("photo_4000x3000_q90.jpg")) else {
        return;
    };

    // Throughput: two workers each side, alternated three times.
    let lane_runs: usize = std::env::var("LANE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    throughput(&turbo, &source, 2); // warm-up
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..3 {
        ours.push(throughput(&turbo, &source, lane_runs));
        if let Some(s) = sharp.as_mut() {
            theirs.push(s.number(&format!("throughput {lane_runs}")));
        }
    }
    let ours = median(ours);
    let theirs = (!theirs.is_empty()).then(|| median(theirs));
    println!(
        "T1 throughput, 2 workers: pixgate {ours:.1} img/s, sharp {}{}",
        theirs.map_or("-".to_owned(), |t| format!("{t:.1} img/s")),
        theirs.map_or(String::new(), |t| format!(" ({:.2}x)", ours / t))
    );
}
