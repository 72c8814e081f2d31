//! Bounded memory and time for the worst input of every format within the default limits.
//!
//! Each case is the most expensive source `ImageLimits::default()` accepts for one dimension of
//! cost (widest, tallest, most pixels, 16-bit, most frames, progressive), transformed to an
//! 800 px WebP the way a signed URL would ask for it. Every case runs in a fresh child process
//! (this binary re-executed with `PIXGATE_BOUNDS_CASE`), which measures its own peak resident
//! memory (`VmHWM`, reset through `/proc/self/clear_refs` after the source is loaded) and its
//! wall time, so allocator state from one case cannot hide or inflate another's.
//!
//! The test fails when a case's peak exceeds `Engine::memory_estimate` — the estimate the CPU pool
//! reserves from `transform.memory_budget_mb` — or its time exceeds the stated bound; the
//! bounds and the measured table are in `docs/decoders.md` ("Bounds"). Sources the limits must
//! refuse (50,000,000×1) are checked to be refused from the header, in microseconds.

use std::io::Write;
use std::time::{Duration, Instant};

use pixgate::image::{Engine, ImageLimits, frame_count, probe};
use pixgate::options::TransformSpec;
use pixgate::options::{OutputFormat, ParseLimits, parse_path};

/// Wall-time bound of one case: a fixed part plus a per-source-pixel part. Generous enough
/// for the unoptimised test profile on a loaded 2-core CI machine (release builds run the
/// same cases 3–6× faster); what it catches is superlinear cost — the 50,000,000×1 PNG took
/// 14 s in release before the side limit.
fn time_bound(pixels: u64) -> Duration {
    Duration::from_millis(3_000) + Duration::from_nanos(pixels.saturating_mul(400))
}

struct Case {
    name: &'static str,
    make: fn() -> Vec<u8>,
    /// The transform's options (most cases: fit into 800×800).
    options: &'static str,
    /// `None`: the transform succeeds; `Some(code)`: it is refused with that error.
    refused: Option<&'static str>,
}

const FIT_800: &str = "rs:fit:800:800";

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "png_50000000x1_refused",
            make: || png_header_only(50_000_000, 1),
            refused: Some("dimension_too_large"),
            options: FIT_800,
        },
        Case {
            name: "png_1x50000000_refused",
            make: || png_header_only(1, 50_000_000),
            refused: Some("dimension_too_large"),
            options: FIT_800,
        },
        Case {
            name: "png_32768x1_widest",
            make: || png_rgb(32_768, 1, png::BitDepth::Eight, png::ColorType::Rgb),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "png_1x32768_tallest",
            make: || png_rgb(1, 32_768, png::BitDepth::Eight, png::ColorType::Rgb),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "png_32768x1525_widest_at_pixel_cap",
            make: || png_rgb(32_768, 1_525, png::BitDepth::Eight, png::ColorType::Rgba),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "png_7071x7071_rgba16",
            make: || png_rgb(7_071, 7_071, png::BitDepth::Sixteen, png::ColorType::Rgba),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "png_7071x7071_grey_alpha",
            make: || {
                png_rgb(
                    7_071,
                    7_071,
                    png::BitDepth::Eight,
                    png::ColorType::GrayscaleAlpha,
                )
            },
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "gif_7071x7071_screen_one_pixel_frame",
            make: || gif_screen(7_071, 7_071, 1, 1),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "gif_7071x5303_full_frame",
            make: || gif_screen(7_071, 5_303, 7_071, 1),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "gif_1000_frames_400x300",
            make: || gif_screen(400, 300, 400, 1000),
            refused: None,
            options: FIT_800,
        },
        Case {
            // The issue's reference animation: every frame rendered (animated WebP out).
            name: "gif_100_frames_800x600_animated",
            make: || gif_screen(800, 600, 800, 100),
            refused: None,
            options: FIT_800,
        },
        Case {
            // frames × canvas at `max_animation_pixels` (200 MP): 50 frames of 2000².
            name: "gif_50_frames_2000x2000_animated",
            make: || gif_screen(2_000, 2_000, 2_000, 50),
            refused: None,
            options: FIT_800,
        },
        Case {
            // The result side at the frame bound: 5 frames enlarged to 6000² (180 MP of result
            // frames, within 200 MP) through libwebp's animation encoder.
            name: "gif_5_frames_100x100_enlarged_to_6000x6000",
            make: || gif_screen(100, 100, 100, 5),
            options: "rs:fit:6000:6000/el:1",
            refused: None,
        },
        Case {
            name: "webp_animated_30_frames_2000x2000",
            make: || webp_animation(2_000, 2_000, 30),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "gif_51_frames_2000x2000_refused",
            make: || gif_screen(2_000, 2_000, 1, 51),
            refused: Some("too_many_frames"),
            options: FIT_800,
        },
        Case {
            name: "jpeg_7071x7071_progressive_444",
            make: || jpeg(7_071, 7_071, true),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "jpeg_32768x1525_baseline",
            make: || jpeg(32_768, 1_525, false),
            refused: None,
            options: FIT_800,
        },
        Case {
            // The scan limit (100) reached: one DC scan and 99 one-band AC scans, each a
            // pass over the coefficient buffer (jpegtran -scans; tests/fixtures/README.md).
            name: "jpeg_2000x2000_100_scans",
            make: || fixture("progressive_100_scans_2000x2000.jpg"),
            refused: None,
            options: FIT_800,
        },
        Case {
            // The largest metadata the parsers accept, on a full-size image: a 4 MiB ICC
            // profile in 65 APP2 segments and a 64 KiB EXIF block with 512 IFD entries.
            name: "jpeg_7071x7071_max_icc_and_exif",
            make: || with_max_icc_and_exif(jpeg(7_071, 7_071, false)),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "webp_16383x3051",
            make: || webp(16_383, 3_051),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "jxl_7000x7000_lossy",
            make: || fixture("gradient_7000x7000.jxl"),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "jxl_7000x7000_rgba_lossless",
            make: || fixture("gradient_rgba_7000x7000_lossless.jxl"),
            refused: None,
            options: FIT_800,
        },
        Case {
            // An enlargement: the result (36 MP) dwarfs the source (1 MP).
            name: "png_1000x1000_enlarged_to_6000x6000",
            make: || png_rgb(1_000, 1_000, png::BitDepth::Eight, png::ColorType::Rgba),
            options: "rs:fit:6000:6000/el:1",
            refused: None,
        },
        Case {
            // SVG drawing at a large output: 16 nested layers (opacity, a filter) and a blur over a 6000²
            // canvas (the 256 MiB drawing budget shrinks it; the result is enlarged to 36 MP).
            name: "svg_6000x6000_16_layers",
            make: svg_layers,
            options: "rs:fit:6000:6000",
            refused: None,
        },
        Case {
            // Decoded in the sandboxed child: its peak RSS counts on top of this process's.
            name: "avif_7000x7000_rgba_10bit_444",
            make: || fixture("gradient_rgba_7000x7000_10bit_444.avif"),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "heic_6000x6000_rgba_10bit_444",
            make: || fixture("gradient_rgba_6000x6000_10bit_444.heic"),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "bmp_7071x7071_24bit",
            make: || bmp(7_071, 7_071),
            refused: None,
            options: FIT_800,
        },
        Case {
            name: "tiff_5000x5000_rgba16_deflate",
            make: || tiff_rgba16(5_000, 5_000),
            refused: None,
            options: FIT_800,
        },
    ]
}

fn bmp(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::bmp::BmpEncoder::new(&mut out)
        .encode(&gradient(w, h, 3), w, h, image::ExtendedColorType::Rgb8)
        .expect("bmp");
    out
}

/// 16-bit RGBA, deflated: a small file that decodes to 8 bytes per pixel.
fn tiff_rgba16(w: u32, h: u32) -> Vec<u8> {
    use tiff::encoder::{Compression, DeflateLevel, TiffEncoder, colortype};
    let data: Vec<u16> = gradient(w, h, 4)
        .iter()
        .map(|&v| u16::from(v) * 257)
        .collect();
    let mut out = std::io::Cursor::new(Vec::new());
    TiffEncoder::new(&mut out)
        .expect("tiff")
        .with_compression(Compression::Deflate(DeflateLevel::Fast))
        .write_image::<colortype::RGBA16>(w, h, &data)
        .expect("tiff");
    out.into_inner()
}

fn gradient(w: u32, h: u32, channels: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(w as usize * h as usize * channels);
    for y in 0..h {
        for x in 0..w {
            let v = [(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8, 200];
            out.extend_from_slice(&v[..channels.min(4)]);
            if channels > 4 {
                out.extend_from_slice(&v[..channels - 4]);
            }
        }
    }
    out
}

fn png_rgb(w: u32, h: u32, depth: png::BitDepth, color: png::ColorType) -> Vec<u8> {
    let samples = color.samples();
    let bytes_per_sample = if depth == png::BitDepth::Sixteen {
        2
    } else {
        1
    };
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        enc.set_compression(png::Compression::Fast);
        let mut writer = enc.write_header().expect("png header");
        let mut stream = writer.stream_writer().expect("png stream");
        let row: Vec<u8> = (0..w as usize * samples * bytes_per_sample)
            .map(|i| (i % 253) as u8)
            .collect();
        for _ in 0..h {
            stream.write_all(&row).expect("png row");
        }
        stream.finish().expect("png finish");
    }
    out
}

/// A PNG whose IHDR claims `w`×`h` followed by a tiny, invalid IDAT: the limits must refuse
/// it from the header alone, so the rest is never read.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(b"IEND", &[]);
    out
}

/// A GIF with a `sw`×`sh` logical screen and `frames` frames of `fw`×`fw`·3/4 pixels.
fn gif_screen(sw: u16, sh: u16, fw: u16, frames: usize) -> Vec<u8> {
    let fh = (fw * 3 / 4).max(1);
    let mut out = Vec::new();
    {
        let palette: Vec<u8> = (0..=255u8).flat_map(|i| [i, 255 - i, i / 2]).collect();
        let mut enc = gif::Encoder::new(&mut out, sw, sh, &palette).expect("gif header");
        let pixels: Vec<u8> = (0..usize::from(fw) * usize::from(fh))
            .map(|i| (i % 256) as u8)
            .collect();
        for _ in 0..frames {
            let frame = gif::Frame {
                width: fw,
                height: fh,
                buffer: std::borrow::Cow::Borrowed(&pixels),
                ..gif::Frame::default()
            };
            enc.write_frame(&frame).expect("gif frame");
        }
    }
    out
}

fn jpeg(w: u32, h: u32, progressive: bool) -> Vec<u8> {
    let data = gradient(w, h, 3);
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 85);
    enc.set_progressive(progressive);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
    enc.encode(&data, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .expect("jpeg encode");
    out
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `jpeg` with, right after SOI, a 64 KiB EXIF APP1 (512 IFD entries, the reader's cap, the
/// orientation last) and a 4 MiB ICC profile (the extractor's cap) split over APP2 segments.
fn with_max_icc_and_exif(jpeg: Vec<u8>) -> Vec<u8> {
    fn segment(out: &mut Vec<u8>, marker: u8, payload: &[u8]) {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(payload);
    }
    let mut out = jpeg[..2].to_vec();
    let mut exif = b"Exif\0\0II*\0\x08\0\0\0".to_vec();
    exif.extend_from_slice(&512u16.to_le_bytes());
    for i in 0..512u16 {
        let tag = if i == 511 { 0x0112 } else { 0x0100 + i };
        exif.extend_from_slice(&tag.to_le_bytes());
        exif.extend_from_slice(&3u16.to_le_bytes());
        exif.extend_from_slice(&1u32.to_le_bytes());
        exif.extend_from_slice(&1u32.to_le_bytes());
    }
    exif.resize(65_533, 0);
    segment(&mut out, 0xE1, &exif);
    let size: usize = 4 << 20;
    let mut profile = vec![0u8; size];
    profile[..4].copy_from_slice(&(size as u32).to_be_bytes());
    profile[12..16].copy_from_slice(b"mntr");
    profile[16..20].copy_from_slice(b"RGB ");
    profile[20..24].copy_from_slice(b"XYZ ");
    profile[36..40].copy_from_slice(b"acsp");
    let chunk = 65_533 - 14;
    let count = size.div_ceil(chunk);
    for (i, part) in profile.chunks(chunk).enumerate() {
        let mut payload = b"ICC_PROFILE\0".to_vec();
        payload.push(i as u8 + 1);
        payload.push(count as u8);
        payload.extend_from_slice(part);
        segment(&mut out, 0xE2, &payload);
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn webp(w: u32, h: u32) -> Vec<u8> {
    let data = gradient(w, h, 3);
    webp::Encoder::from_rgb(&data, w, h).encode(75.0).to_vec()
}

/// An animated WebP of `frames` full-canvas frames (libwebp's animation encoder).
fn webp_animation(w: u32, h: u32, frames: usize) -> Vec<u8> {
    let data: Vec<Vec<u8>> = (0..frames)
        .map(|i| {
            let mut d = gradient(w, h, 4);
            let shift = (i * 4 * 37) % d.len();
            d.rotate_left(shift);
            d
        })
        .collect();
    let config = webp::WebPConfig::new().expect("webp config");
    let mut enc = webp::AnimEncoder::new(w, h, &config);
    for (i, d) in data.iter().enumerate() {
        enc.add_frame(webp::AnimFrame::from_rgba(d, w, h, (i * 100) as i32));
    }
    enc.try_encode().expect("animated webp").to_vec()
}

/// 15 nested opacity groups around a blurred full-canvas rectangle (a 16th layer), 6000×6000.
fn svg_layers() -> Vec<u8> {
    let mut s = String::from(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="6000" height="6000"><filter id="b"><feGaussianBlur stdDeviation="20"/></filter>"#,
    );
    for i in 0..15 {
        s.push_str(&format!(
            r#"<g opacity="0.95"><circle cx="{}" cy="3000" r="2000" fill="rgb({},80,160)"/>"#,
            1000 + i * 250,
            i * 15
        ));
    }
    s.push_str(
        r#"<rect width="6000" height="6000" fill="orange" opacity="0.3" filter="url(#b)"/>"#,
    );
    s.push_str(&"</g>".repeat(15));
    s.push_str("</svg>");
    s.into_bytes()
}

/// The transform a case runs (`options`, then the fixed source).
fn spec(options: &str) -> TransformSpec {
    let limits = ParseLimits {
        max_dimension: ImageLimits::default().max_result_dimension,
        presets: Default::default(),
        presets_only: false,
    };
    parse_path(
        &format!("/{options}/plain/0123456789abcdef0123456789abcdef"),
        &limits,
    )
    .expect("spec")
    .spec
}

/// `VmHWM` or `VmRSS` of this process, bytes.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The largest peak RSS of a waited-for child process (the decoder sandbox), bytes.
fn children_peak() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN covers children this process has waited for.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0;
    }
    u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024
}

/// The child: transform the file named by the environment, print one result line.
fn child(case: &str, file: &str) {
    let bytes = std::fs::read(file).expect("read case file");
    let options = std::env::var("PIXGATE_BOUNDS_OPTIONS").unwrap_or_else(|_| FIT_800.into());
    let spec = spec(&options);
    let engine = Engine::new(ImageLimits::default());
    pixgate::image::isolated::install(Box::new(pixgate::sandbox::ChildDecoder::new(
        env!("CARGO_BIN_EXE_pixgate").into(),
    )));
    // Reset the high-water mark to the current RSS: what follows is the transform alone.
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
    let base = status_kib("VmRSS:");
    let started = Instant::now();
    let result = engine.transform(&bytes, &spec, OutputFormat::Webp, 80);
    let elapsed = started.elapsed();
    // AVIF and HEIC decode in a child process: its peak adds to ours (an upper bound: the
    // child has exited before most of the pipeline runs).
    let peak = status_kib("VmHWM:").saturating_sub(base) + children_peak();
    let outcome = match result {
        Ok(e) => format!("ok {}x{}", e.width, e.height),
        Err(e) => format!("err {}", pixgate::http::error::Error::from(e).code()),
    };
    println!(
        "RESULT {case} peak={peak} ms={} outcome={outcome}",
        elapsed.as_millis()
    );
}

fn main() {
    if let (Ok(case), Ok(file)) = (
        std::env::var("PIXGATE_BOUNDS_CASE"),
        std::env::var("PIXGATE_BOUNDS_FILE"),
    ) {
        child(&case, &file);
        return;
    }
    // `cargo test` passes harness flags (e.g. `--list` from tooling): list the one test.
    if std::env::args().any(|a| a == "--list") {
        println!("worst_inputs_stay_within_their_bounds: test");
        return;
    }
    let only = std::env::var("PIXGATE_BOUNDS_ONLY").ok();
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current exe");
    let mut failures = Vec::new();
    println!(
        "{:<40} {:>13} {:>11} {:>10} {:>9} {:>9}  outcome",
        "case", "source", "peak MiB", "cost MiB", "ms", "bound ms"
    );
    for case in cases() {
        if only.as_deref().is_some_and(|o| !case.name.contains(o)) {
            continue;
        }
        let bytes = (case.make)();
        let p = probe(&bytes).expect("probe");
        // Every frame is rendered: time grows with all of them.
        let frames = frame_count(&bytes, p.format, ImageLimits::default().max_frames);
        let pixels = u64::from(p.width) * u64::from(p.height) * frames;
        let cost = Engine::new(ImageLimits::default()).memory_estimate(
            &bytes,
            &spec(case.options),
            OutputFormat::Webp,
        );
        let path = dir.path().join(case.name);
        std::fs::write(&path, &bytes).expect("write case");
        drop(bytes);
        let out = std::process::Command::new(&exe)
            .env("PIXGATE_BOUNDS_CASE", case.name)
            .env("PIXGATE_BOUNDS_OPTIONS", case.options)
            .env("PIXGATE_BOUNDS_FILE", &path)
            .output()
            .expect("run case");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT ")) else {
            failures.push(format!(
                "{}: no result ({}; stderr: {})",
                case.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        };
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .unwrap_or("")
                .to_owned()
        };
        let peak: u64 = field("peak=").parse().unwrap_or(u64::MAX);
        let ms: u64 = field("ms=").parse().unwrap_or(u64::MAX);
        let outcome = line.split("outcome=").nth(1).unwrap_or("").to_owned();
        // Enlargements cost by their result (every frame of it).
        let result_pixels = outcome
            .strip_prefix("ok ")
            .and_then(|d| d.split_once('x'))
            .and_then(|(w, h)| Some(w.parse::<u64>().ok()? * h.parse::<u64>().ok()?))
            .unwrap_or(0);
        let bound = time_bound(pixels.max(result_pixels.saturating_mul(frames)));
        println!(
            "{:<40} {:>13} {:>11.1} {:>10.1} {:>9} {:>9}  {outcome}",
            case.name,
            format!("{}x{}", p.width, p.height),
            peak as f64 / 1048576.0,
            cost as f64 / 1048576.0,
            ms,
            bound.as_millis()
        );
        match case.refused {
            Some(code) => {
                if outcome != format!("err {code}") {
                    failures.push(format!("{}: expected {code}, got {outcome}", case.name));
                }
                if ms > 50 {
                    failures.push(format!("{}: refusal took {ms} ms", case.name));
                }
            }
            None => {
                if !outcome.starts_with("ok ") {
                    failures.push(format!("{}: {outcome}", case.name));
                }
                if peak > cost {
                    failures.push(format!(
                        "{}: peak {peak} B is over the reserved estimate {cost} B",
                        case.name
                    ));
                }
                if u128::from(ms) > bound.as_millis() {
                    failures.push(format!(
                        "{}: {ms} ms is over the bound of {} ms",
                        case.name,
                        bound.as_millis()
                    ));
                }
            }
        }
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAIL {f}");
        }
        std::process::exit(1);
    }
    println!("test worst_inputs_stay_within_their_bounds ... ok");
}
