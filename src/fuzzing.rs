//! Fuzz targets: one function per parser that hostile bytes reach, each taking arbitrary
//! bytes and panicking only when pixgate is wrong (a crash, a broken invariant, an accepted
//! upload that cannot render). Not part of the server: the coverage-guided fuzzer (`fuzz/`,
//! cargo-fuzz / libFuzzer) and the CI smoke run (`tests/fuzz_smoke.rs`, corpus replay plus a
//! few seconds of mutation) both call [`TARGETS`], so the two can never drift apart.
//!
//! Place in the architecture: a leaf beside the modules it drives; it adds no behaviour, and
//! the server never calls it. Targets hold to the same limits the server configures by default,
//! scaled down where a limit only multiplies time (pixel counts), so a fuzzer spends its
//! executions on structure, not on decoding large valid images.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

use crate::audit::chain;
use crate::auth::AuthConfig;
use crate::auth::jwt::{self, JwtVerifier};
use crate::image::{self, Engine, ImageFormat, ImageLimits, JpegDecoder};
use crate::options::{self, OutputFormat, ParseLimits, TransformSpec};
use crate::signature::Signer;
use crate::zipstream::ZipStream;

/// A fuzz target: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target by name (the name is its corpus directory, `fuzz/corpus/{name}`, and its
/// cargo-fuzz binary).
pub const TARGETS: &[(&str, Target)] = &[
    ("options", options),
    ("signature", signature),
    ("probe", probe),
    ("decode", decode),
    ("exif_icc", exif_icc),
    ("multipart", multipart),
    ("jwt", jwt),
    ("jwks", jwks),
    ("audit_chain", audit_chain),
    ("zip", zip),
];

/// Limits of the decode target: the server's defaults, with pixel counts scaled down so one
/// execution stays in milliseconds. Every dimension and frame check still applies.
pub fn fuzz_limits() -> ImageLimits {
    ImageLimits {
        max_source_pixels: 1_000_000,
        max_source_dimension: 32_768,
        max_result_pixels: 1_000_000,
        max_result_dimension: 16_383,
        max_frames: 1000,
        max_animation_pixels: 200_000_000,
        max_result_bytes: 64 << 20,
    }
}

/// The transform URL grammar: `parse_path` (options, presets, plain and base64url sources)
/// and the canonical form, which must be a pure function of the parsed request.
pub fn options(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let limits = ParseLimits {
        max_dimension: 8192,
        presets: BTreeMap::from([
            ("thumb".to_owned(), "rs:fill:300:300/q:70".to_owned()),
            ("gray".to_owned(), "fi:grayscale".to_owned()),
        ]),
        presets_only: data.first().is_some_and(|b| b & 1 == 1) && data.len().is_multiple_of(7),
    };
    let Ok(req) = options::parse_path(path, &limits) else {
        return;
    };
    let spec = &req.spec;
    assert!(spec.width <= limits.max_dimension && spec.height <= limits.max_dimension);
    assert!(spec.quality.is_none_or(|q| (1..=100).contains(&q)));
    assert!(matches!(spec.rotate, 0 | 90 | 180 | 270));
    assert!(spec.blur_centi <= options::MAX_BLUR_CENTI);
    assert!(spec.sharpen_centi <= options::MAX_SHARPEN_CENTI);
    // Planning any parsed spec against any source size is total: no panic, sizes ≥ 1.
    for (w, h) in [(1, 1), (1, 16_383), (16_383, 1), (4000, 3000)] {
        let g = crate::image::plan(w, h, spec);
        assert!(g.out.0 >= 1 && g.out.1 >= 1 && g.dpr_scale > 0.0);
    }
    let again = options::parse_path(path, &limits).map(|r| r.spec.canonical());
    assert_eq!(
        again.ok().as_deref(),
        Some(spec.canonical().as_str()),
        "parsing is not deterministic"
    );
}

fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| {
        Signer::from_hex(&["736563726574".into()], &["68656c6c6f".into()], 32)
            .unwrap_or_else(|e| panic!("fuzz signer: {e}"))
    })
}

/// Signature verification: `{signature}/{path}`. Exactly the canonical signature of the path
/// verifies — no padding, no alias with other trailing bits, no other length.
pub fn signature(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (sig, rest) = s.split_once('/').unwrap_or((s, ""));
    let path = format!("/{rest}");
    let s = signer();
    let canonical = s.sign(&path);
    assert_eq!(
        s.verify(sig, &path),
        sig == canonical,
        "verify disagrees with the canonical signature"
    );
    assert!(s.verify(&canonical, &path));
}

/// The header probe of every format, the frame count and the JPEG scan walk.
pub fn probe(data: &[u8]) {
    let sniffed = image::sniff(data);
    if let Ok(p) = image::probe(data) {
        assert_eq!(Some(p.format), sniffed, "probe and sniff disagree");
        assert!((1..=8).contains(&p.orientation));
        let _ = image::memory_cost(&p);
    }
    for format in [
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::Webp,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Ico,
        ImageFormat::Tiff,
        ImageFormat::Jxl,
        ImageFormat::Svg,
        ImageFormat::Avif,
        ImageFormat::Heic,
    ] {
        let n = image::frame_count(data, format, 50);
        assert!(n <= 51, "frame count went past its stop");
    }
    assert!(image::probe::jpeg_scan_count(data, 50) <= 51);
}

fn engines() -> &'static [Engine; 2] {
    static ENGINES: OnceLock<[Engine; 2]> = OnceLock::new();
    ENGINES.get_or_init(|| {
        let turbo = Engine::new(fuzz_limits());
        let zune = Engine {
            jpeg_decoder: JpegDecoder::Zune,
            ..Engine::new(fuzz_limits())
        };
        [turbo, zune]
    })
}

/// Every decoder behind pixgate's limits: upload validation, then — for whatever it accepts —
/// a transform on both JPEG decoders. Whatever validation accepts must render (an accepted
/// upload that every `<img>` shows broken is a finding), and no codec may panic (a panic the
/// engine contains is still a bug in a decoder).
pub fn decode(data: &[u8]) {
    decoder_child_from_env();
    let panics = image::caught_panics();
    let limits = fuzz_limits();
    let accepted = image::validate_upload(data, &limits).is_ok();
    if accepted {
        let spec = TransformSpec {
            width: 48,
            height: 48,
            ..TransformSpec::default()
        };
        // JPEG and PNG through both JPEG decoders; WebP and GIF (the animation path for
        // animated sources) through the first.
        let engines = engines();
        let runs = [
            (&engines[0], OutputFormat::Jpeg),
            (&engines[1], OutputFormat::Png),
            (&engines[0], OutputFormat::Webp),
            (&engines[0], OutputFormat::Gif),
        ];
        for (engine, format) in runs {
            if let Err(e) = engine.transform(data, &spec, format, 80) {
                panic!(
                    "accepted upload does not render ({:?}): {e}",
                    engine.jpeg_decoder
                );
            }
        }
    }
    assert_eq!(image::caught_panics(), panics, "a codec panicked");
}

/// EXIF orientation and ICC profiles: extraction from every container and conversion of a
/// small bitmap with the bytes as the profile.
pub fn exif_icc(data: &[u8]) {
    assert!((1..=8).contains(&image::exif::orientation(data)));
    for format in [
        ImageFormat::Jpeg,
        ImageFormat::Png,
        ImageFormat::Webp,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Ico,
        ImageFormat::Tiff,
    ] {
        if let Some(profile) = image::icc::extract(data, format) {
            assert!(
                profile.len() <= data.len() * 1100 + 64,
                "profile grew past any bound"
            );
        }
    }
    let mut bitmap = image::Bitmap {
        width: 4,
        height: 2,
        channels: 3,
        data: (0..24).map(|i| (i * 11) as u8).collect(),
    };
    image::icc::to_srgb(&mut bitmap, data);
    assert_eq!(bitmap.data.len(), 24);
}

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// Runs a future on this thread's current-thread runtime (created on first use).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|cell| {
        let mut slot = cell.borrow_mut();
        let rt = slot.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap_or_else(|e| panic!("fuzz runtime: {e}"))
        });
        rt.block_on(f)
    })
}

/// A request body delivered in the chunks the fuzzer chose.
struct Chunks(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// Multipart upload parsing (`POST /v1/images` with `multipart/form-data`), boundary
/// `XyZ`, the body split where the first byte says. Whatever parses has a file within the cap
/// and metadata that passed the JSON path's checks.
pub fn multipart(data: &[u8]) {
    const CAP: u64 = 16 * 1024;
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(split).max(1);
    let chunks = body
        .chunks(step)
        .map(Bytes::copy_from_slice)
        .collect::<std::collections::VecDeque<_>>();
    let allowed = crate::limits::LimitsConfig::default().upload_formats;
    let parsed = block_on(crate::http::images::read_multipart(
        &allowed,
        Chunks(chunks),
        "multipart/form-data; boundary=XyZ",
        CAP,
    ));
    if let Ok((file, _format, patch)) = parsed {
        assert!(file.len() as u64 <= CAP);
        for text in [&patch.title, &patch.alt_text]
            .into_iter()
            .flatten()
            .flatten()
        {
            assert!(!text.chars().any(char::is_control));
        }
        if let Some(tags) = &patch.tags {
            assert!(tags.len() <= 100);
        }
    }
}

const JWT_SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret!";

fn verifier() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let cfg = AuthConfig {
            jwt_hs256_secret: JWT_SECRET.into(),
            jwt_issuer: "https://idp.test".into(),
            jwt_audience: "pixgate".into(),
            ..AuthConfig::default()
        };
        block_on(JwtVerifier::from_config(&cfg)).unwrap_or_else(|e| panic!("fuzz verifier: {e}"))
    })
}

/// Bearer JWT verification. First byte even: the rest is a token as sent. Odd: the rest is
/// `header JSON 0xFF claims JSON`, signed with the right secret, so the fuzzer reaches the
/// header and claim checks behind the signature. A principal that comes out has a usable
/// subject.
pub fn jwt(data: &[u8]) {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::Mac as _;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let (header, claims) = match rest.iter().position(|b| *b == 0xFF) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (br#"{"alg":"HS256","typ":"JWT"}"#.as_slice(), rest),
        };
        let claims = String::from_utf8_lossy(claims).replace("$NOW", &now_secs().to_string());
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.as_bytes())
        );
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(JWT_SECRET.as_bytes()) else {
            return;
        };
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    };
    if let Ok(p) = block_on(verifier().verify(&token)) {
        assert!(!p.user_id.is_empty() && !p.user_id.chars().any(char::is_control));
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// JWKS documents (`auth.jwks_file`, `auth.jwks_url`): every key that comes out is pinned to
/// an allowed asymmetric algorithm.
pub fn jwks(data: &[u8]) {
    let allowed = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
        .iter()
        .filter_map(|a| jwt::parse_algorithm(a))
        .collect::<Vec<_>>();
    if let Ok((keys, _skipped)) = jwt::jwks_keys(data, &allowed) {
        for k in keys {
            assert!(allowed.contains(&k.alg), "a key escaped its algorithm pin");
        }
    }
}

/// The audit chain verifier on arbitrary batch bodies, and the seal → verify round trip on
/// the JSON-object lines of the input: what pixgate seals always verifies, with its counts.
pub fn audit_chain(data: &[u8]) {
    let mut problems = Vec::new();
    let _ = chain::header(data);
    let mut check = chain::ChainCheck::new("fz", None);
    check.batch("k", 1, data, &mut problems);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = chain::parse_key(text);
    }

    let events: Vec<String> = data
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter(|v| {
            v.as_object()
                .is_some_and(|o| !o.is_empty() && !o.contains_key("prev"))
        })
        .map(|v| v.to_string())
        .collect();
    let mut state = chain::ChainState::new("fz");
    let half = events.len() / 2;
    let bodies = [
        chain::seal(&mut state, &events[..half]),
        chain::seal(&mut state, &events[half..]),
    ];
    let mut check = chain::ChainCheck::new("fz", None);
    let mut problems = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let seq = i as u64 + 1;
        check.batch(
            &chain::object_key("2026/12/04", "fz", seq),
            seq,
            body,
            &mut problems,
        );
    }
    assert!(
        problems.is_empty(),
        "a sealed chain fails verification: {problems:?}"
    );
    assert_eq!(check.records, events.len() as u64);
    assert_eq!(check.batches, 2);
}

/// The export's ZIP writer: entries built from the input (names, contents, chunking, known or
/// streamed sizes) are written, then read back by an independent reader of the central
/// directory and local headers, which must find every name and byte with matching CRCs.
pub fn zip(data: &[u8]) {
    let mut z = ZipStream::new();
    let mut out: Vec<u8> = Vec::new();
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rest = data;
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    while let [mode, name_len, len_hi, len_lo, tail @ ..] = rest {
        let name_len = usize::from(*name_len % 48).min(tail.len());
        let name = String::from_utf8_lossy(&tail[..name_len]).into_owned();
        let tail = &tail[name_len..];
        let len = (usize::from(*len_hi) << 8 | usize::from(*len_lo)).min(tail.len());
        let (content, next) = tail.split_at(len);
        rest = next;
        let result = if mode & 1 == 0 {
            z.begin(&name, t).and_then(|header| {
                out.extend_from_slice(&header);
                for chunk in content.chunks(usize::from(mode >> 1).max(1)) {
                    z.data(chunk)?;
                    out.extend_from_slice(chunk);
                }
                z.end()
            })
        } else {
            z.begin_known(&name, t, content).and_then(|header| {
                out.extend_from_slice(&header);
                z.data(content)?;
                out.extend_from_slice(content);
                z.end()
            })
        };
        match result {
            Ok(tail_bytes) => {
                out.extend_from_slice(&tail_bytes);
                expected.push((name, content.to_vec()));
            }
            // Only names are refused; a refused name leaves no bytes behind.
            Err(crate::zipstream::ZipError::InvalidName) => {}
            Err(e) => panic!("writer refused a valid sequence: {e}"),
        }
    }
    match z.finish() {
        Ok(directory) => out.extend_from_slice(&directory),
        Err(e) => panic!("finish: {e}"),
    }
    let read = read_zip(&out).unwrap_or_else(|e| panic!("unreadable archive: {e}"));
    assert_eq!(read.len(), expected.len());
    for ((name, content), (rname, rcontent)) in expected.iter().zip(&read) {
        assert_eq!(name, rname);
        assert_eq!(content, rcontent);
        let safe = !name.is_empty()
            && !name.starts_with('/')
            && !name.contains('\\')
            && name
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..");
        assert!(safe, "an unsafe name was written: {name:?}");
    }
}

fn le16(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("short read at {at}"))
}

fn le32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("short read at {at}"))
}

fn le64(b: &[u8], at: usize) -> Result<u64, String> {
    Ok(u64::from(le32(b, at)?) | u64::from(le32(b, at + 4)?) << 32)
}

fn usize_of(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| "offset overflow".to_owned())
}

/// Reads a ZIP64 archive of stored entries by its directory (APPNOTE 4.3.14–4.3.16, 4.5.3):
/// end record → ZIP64 locator → ZIP64 end record → central headers → local headers → data,
/// checking signatures, sizes and every CRC. Written from the APPNOTE, not from the writer.
fn read_zip(b: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let eocd = b.len().checked_sub(22).ok_or("no end record")?;
    if le32(b, eocd)? != 0x0605_4b50 {
        return Err("end record signature".into());
    }
    let locator = eocd.checked_sub(20).ok_or("no ZIP64 locator")?;
    if le32(b, locator)? != 0x0706_4b50 {
        return Err("ZIP64 locator signature".into());
    }
    let z64 = usize_of(le64(b, locator + 8)?)?;
    if le32(b, z64)? != 0x0606_4b50 || z64 + 56 != locator {
        return Err("ZIP64 end record".into());
    }
    let entries = le64(b, z64 + 32)?;
    let cd_size = usize_of(le64(b, z64 + 40)?)?;
    let cd_offset = usize_of(le64(b, z64 + 48)?)?;
    if cd_offset + cd_size != z64 {
        return Err("directory does not end at the ZIP64 end record".into());
    }
    let mut at = cd_offset;
    let mut out = Vec::new();
    for _ in 0..entries {
        if le32(b, at)? != 0x0201_4b50 || le16(b, at + 10)? != 0 {
            return Err("central header".into());
        }
        let crc = le32(b, at + 16)?;
        let name_len = usize::from(le16(b, at + 28)?);
        let extra_len = usize::from(le16(b, at + 30)?);
        let comment_len = usize::from(le16(b, at + 32)?);
        let name = b.get(at + 46..at + 46 + name_len).ok_or("name")?.to_vec();
        let extra = at + 46 + name_len;
        if le16(b, extra)? != 1 || extra_len != 28 || le16(b, extra + 2)? != 24 {
            return Err("ZIP64 extra".into());
        }
        let size = usize_of(le64(b, extra + 4)?)?;
        if le64(b, extra + 12)? != size as u64 {
            return Err("stored entry with different sizes".into());
        }
        let local = usize_of(le64(b, extra + 20)?)?;
        at = extra + extra_len + comment_len;

        if le32(b, local)? != 0x0403_4b50 {
            return Err("local header signature".into());
        }
        let local_name_len = usize::from(le16(b, local + 26)?);
        let local_extra_len = usize::from(le16(b, local + 28)?);
        if b.get(local + 30..local + 30 + local_name_len) != Some(name.as_slice()) {
            return Err("local and central names differ".into());
        }
        let start = local + 30 + local_name_len + local_extra_len;
        let content = b.get(start..start + size).ok_or("data past the end")?;
        if crc32fast::hash(content) != crc {
            return Err("CRC mismatch".into());
        }
        let flags = le16(b, local + 6)?;
        if flags & 8 != 0 {
            let d = start + size;
            if le32(b, d)? != 0x0807_4b50
                || le32(b, d + 4)? != crc
                || le64(b, d + 8)? != size as u64
                || le64(b, d + 16)? != size as u64
            {
                return Err("data descriptor".into());
            }
        } else if le32(b, local + 14)? != crc {
            return Err("local CRC".into());
        }
        let name = String::from_utf8(name).map_err(|_| "name is not UTF-8".to_owned())?;
        out.push((name, content.to_vec()));
    }
    if at != z64 {
        return Err("directory size does not match its headers".into());
    }
    Ok(out)
}

/// Under cargo-fuzz: AVIF and HEIC decode in the child `PIXGATE_DECODER_EXE` names (a built
/// `pixgate` binary); without it they are refused as unavailable and only the header walk is
/// fuzzed. The smoke test installs the child itself.
fn decoder_child_from_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Some(exe) = std::env::var_os("PIXGATE_DECODER_EXE") {
            image::isolated::install(Box::new(crate::sandbox::ChildDecoder::new(exe.into())));
        }
    });
}
