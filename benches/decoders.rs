//! Each source decoder next to the alternative it replaced, on the same bytes, in one run
//! (issue 19: untrusted bytes meet memory-safe Rust where a maintained decoder exists).
//!
//! - WebP: `image-webp` (pure Rust, what pixgate decodes with) against libwebp 1.3 through the
//!   `webp` crate (C; still pixgate's encoder), on the 12 MP photo encoded lossy (q80) and on
//!   the 2000² PNG photo encoded lossless.
//!
//! - JPEG XL: jxl-oxide (pure Rust, pixgate's) against libjxl 0.11 (C++, the reference
//!   decoder, through Python's `imagecodecs`, timed in the same run by a child process: there
//!   is no maintained Rust binding to build offline), on the 12 MP photo encoded lossy
//!   (distance 1) and the 2000² photo encoded lossless, both by libjxl.
//!
//! - AVIF: rav1d (Rust port of dav1d, pixgate's, plus its YUV→RGB) against libavif 1.4 with
//!   its C decoder (imagecodecs, child process, one thread), on the 12 MP photo encoded by
//!   libavif at quality 60 (8-bit 4:2:0). rav1d is timed twice: as pixgate runs it, in the
//!   sandboxed decoder child (spawn, limits, seccomp, pixels back through a pipe), and in this
//!   process — the difference is what the sandbox costs.
//!
//! - HEIC: libheif 1.15 + libde265 (Debian's; no memory-safe HEVC decoder exists, so the
//!   rejected alternative is running it unsandboxed) in the decoder child and in this process,
//!   next to libheif 1.23 through pillow-heif (child process, decode only, one thread), on the 12 MP photo
//!   encoded by pillow-heif at quality 80 (8-bit 4:2:0, as a phone writes it).
//!
//! Run with `cargo bench --bench decoders` (`PIXGATE_PHOTOS=/dir` for other photos; the
//! JPEG XL part needs `pip install imagecodecs` and is skipped without it).

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

/// Encodes the photos to JPEG XL with libjxl (imagecodecs) into a temporary directory.
fn jxl_files(dir: &std::path::Path) -> Vec<(&'static str, std::path::PathBuf)> {
    let photos = common::photos_dir();
    let script = format!(
        "import imagecodecs, numpy as np\nfrom PIL import Image\n\
         a = np.asarray(Image.open('{}').convert('RGB'))\n\
         open('{}/lossy.jxl', 'wb').write(imagecodecs.jpegxl_encode(a, distance=1.0, effort=7))\n\
         b = np.asarray(Image.open('{}').convert('RGB'))\n\
         open('{}/lossless.jxl', 'wb').write(imagecodecs.jpegxl_encode(b, lossless=True, effort=3))\n",
        photos.join("photo_4000x3000_q90.jpg").display(),
        dir.display(),
        photos.join("photo_2000x2000.png").display(),
        dir.display(),
    );
    let ok = std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Vec::new();
    }
    vec![
        ("12MP lossy d1", dir.join("lossy.jxl")),
        ("2000x2000 lossless", dir.join("lossless.jxl")),
    ]
}

/// libjxl's median decode time of `file`, ms, over 10 runs (single thread, as pixgate).
fn libjxl_ms(file: &std::path::Path) -> Option<f64> {
    c_decoder_ms(file, "jpegxl_decode")
}

/// The median time of imagecodecs' `function` (a C/C++ decoder) on `file`, ms, over 10 runs,
/// one thread.
fn c_decoder_ms(file: &std::path::Path, function: &str) -> Option<f64> {
    let script = format!(
        "import imagecodecs, time, statistics\n\
         d = open('{}', 'rb').read()\nt = []\n\
         for _ in range(10):\n    s = time.perf_counter(); imagecodecs.{function}(d, numthreads=1); \
         t.append(time.perf_counter() - s)\n\
         print(statistics.median(t) * 1000)\n",
        file.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn jxl_decoders(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = jxl_files(dir.path());
    if files.is_empty() {
        eprintln!("skipping JPEG XL: photos or imagecodecs not found");
        return;
    }
    let mut group = c.benchmark_group("jxl decode");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (name, path) in &files {
        let bytes = std::fs::read(path).expect("read jxl");
        let p = probe(&bytes).expect("probe jxl");
        eprintln!("{name}: {} bytes, {}x{}", bytes.len(), p.width, p.height);
        group.bench_function(format!("{name} jxl-oxide (Rust)"), |b| {
            b.iter(|| decode(&bytes, &p).expect("decode"))
        });
        match libjxl_ms(path) {
            Some(ms) => {
                eprintln!("jxl decode/{name} libjxl (C++, same file, median of 10): {ms:.1} ms")
            }
            None => eprintln!("jxl decode/{name} libjxl: not measured"),
        }
    }
    group.finish();
}

/// Runs a Python `script` that writes `path`, and reads what it wrote.
fn python_made(script: &str, path: &std::path::Path) -> Option<Vec<u8>> {
    let made = std::process::Command::new("python3")
        .args(["-c", script])
        .status()
        .is_ok_and(|s| s.success());
    made.then(|| std::fs::read(path).ok()).flatten()
}

fn avif_decoders(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("photo.avif");
    let script = format!(
        "import imagecodecs, numpy as np\nfrom PIL import Image\n\
         a = np.asarray(Image.open('{}').convert('RGB'))\n\
         open('{}', 'wb').write(imagecodecs.avif_encode(a, level=60, speed=6))\n",
        common::photos_dir()
            .join("photo_4000x3000_q90.jpg")
            .display(),
        path.display(),
    );
    let Some(bytes) = python_made(&script, &path) else {
        eprintln!("skipping AVIF: photos or imagecodecs not found");
        return;
    };
    let p = probe(&bytes).expect("probe avif");
    eprintln!("12MP q60: {} bytes, {}x{}", bytes.len(), p.width, p.height);
    let mut group = c.benchmark_group("avif decode");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    sandboxed(&mut group, "12MP q60 rav1d", &bytes, &p);
    group.finish();
    match c_decoder_ms(&path, "avif_decode") {
        Some(ms) => {
            eprintln!("avif decode/12MP q60 libavif (C, same file, median of 10): {ms:.1} ms")
        }
        None => eprintln!("avif decode/12MP q60 libavif: not measured"),
    }
}

/// Times a sandboxed format as pixgate decodes it (in the child) and in this process.
fn sandboxed(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    bytes: &[u8],
    p: &pixgate::image::Probe,
) {
    pixgate::image::isolated::install(Box::new(pixgate::sandbox::ChildDecoder::new(
        env!("CARGO_BIN_EXE_pixgate").into(),
    )));
    group.bench_function(format!("{name} in the decoder child (pixgate)"), |b| {
        b.iter(|| decode(bytes, p).expect("decode"))
    });
    let job = pixgate::image::isolated::Job {
        format: p.format,
        width: p.width,
        height: p.height,
        memory: u64::MAX,
    };
    group.bench_function(format!("{name} in process (no sandbox)"), |b| {
        b.iter(|| pixgate::image::isolated::decode_here(&job, bytes).expect("decode"))
    });
}

fn heic_decoders(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("photo.heic");
    let script = format!(
        "import pillow_heif\nfrom PIL import Image\npillow_heif.register_heif_opener()\n\
         Image.open('{}').convert('RGB').save('{}', quality=80)\n",
        common::photos_dir()
            .join("photo_4000x3000_q90.jpg")
            .display(),
        path.display(),
    );
    let Some(bytes) = python_made(&script, &path) else {
        eprintln!("skipping HEIC: photos or pillow-heif not found");
        return;
    };
    let p = probe(&bytes).expect("probe heic");
    eprintln!(
        "12MP q80 HEIC: {} bytes, {}x{}",
        bytes.len(),
        p.width,
        p.height
    );
    let mut group = c.benchmark_group("heic decode");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    sandboxed(&mut group, "12MP q80 libheif", &bytes, &p);
    group.finish();
    let script = format!(
        "import pillow_heif, time, statistics\npillow_heif.options.DECODE_THREADS = 1\n\
         d = open('{}', 'rb').read()\nt = []\n\
         for _ in range(10):\n    s = time.perf_counter(); \
         pillow_heif.open_heif(d, convert_hdr_to_8bit=True)[0].load(); \
         t.append(time.perf_counter() - s)\n\
         print(statistics.median(t) * 1000)\n",
        path.display()
    );
    let ms = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        });
    match ms {
        Some(ms) => eprintln!(
            "heic decode/12MP q80 libheif 1.23 via pillow-heif (same file, median of 10): {ms:.1} ms"
        ),
        None => eprintln!("heic decode/12MP q80 pillow-heif: not measured"),
    }
}

/// The Rust decoders with no alternative in the tree, on reference files: what the summary
/// table of `docs/decoders.md` reports (full decode through `pixgate::image::decode`).
fn other_decoders(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let photos = common::photos_dir();
    let script = format!(
        "from PIL import Image\nim = Image.open('{}').convert('RGB')\n\
         im.save('{d}/photo.bmp')\nim.save('{d}/photo.tif', compression='tiff_lzw')\n\
         im.save('{d}/photo.gif')\nim.convert('RGBA').resize((256, 256)).save('{d}/icon.ico', sizes=[(256, 256)])\n",
        photos.join("photo_2000x2000.png").display(),
        d = dir.path().display(),
    );
    let made = std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
        .is_ok_and(|s| s.success());
    let mut files: Vec<(&str, std::path::PathBuf)> = vec![
        (
            "JPEG 12MP q90 zune-jpeg",
            photos.join("photo_4000x3000_q90.jpg"),
        ),
        ("PNG 2000x2000 png", photos.join("photo_2000x2000.png")),
    ];
    if made {
        files.extend([
            ("BMP 2000x2000 image-rs", dir.path().join("photo.bmp")),
            ("TIFF 2000x2000 LZW image-rs", dir.path().join("photo.tif")),
            ("GIF 2000x2000 gif", dir.path().join("photo.gif")),
            (
                "ICO 256x256 PNG entry image-rs",
                dir.path().join("icon.ico"),
            ),
        ]);
    }
    let mut group = c.benchmark_group("other decoders");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(6));
    for (name, path) in files {
        let Ok(bytes) = std::fs::read(&path) else {
            eprintln!("skipping {name}: {} not found", path.display());
            continue;
        };
        let p = probe(&bytes).expect("probe");
        group.bench_function(name, |b| b.iter(|| decode(&bytes, &p).expect("decode")));
    }
    group.finish();
}

criterion_group!(
    benches,
    other_decoders,
    webp_decoders,
    jxl_decoders,
    avif_decoders,
    heic_decoders
);
criterion_main!(benches);
