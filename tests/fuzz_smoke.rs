//! The CI smoke run of the fuzz targets (`pixgate::fuzzing`): every committed corpus file
//! (`fuzz/corpus/{target}/`, seeds and the regression case of every finding) is replayed, then
//! each target gets `PIXGATE_FUZZ_SECS` seconds (default 3) of mutation from a fixed seed.
//! The coverage-guided runs use the same targets through cargo-fuzz (`fuzz/README.md`).
//!
//! A failing input is written to `target/fuzz-smoke/{target}-{n}.bin`; copy it into the
//! target's corpus as a regression case once fixed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Inputs never grow past this (the seeds are small; bigger inputs only slow the loop).
const MAX_LEN: usize = 64 * 1024;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

/// xorshift64*: deterministic, so a smoke failure reproduces with the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    &[0],
    &[0xFF],
    &[0x7F],
    &[0x80],
    &[0xFF, 0xFF],
    &[0xFF, 0xFF, 0xFF, 0xFF],
    &[0x00, 0x00, 0x00, 0x00],
    &[0x7F, 0xFF, 0xFF, 0xFF],
    &[0x80, 0x00, 0x00, 0x00],
    b"=",
    b"/",
    b":",
    b"\"",
    b"-1",
    b"99999999999",
    b"\r\n",
    b"--XyZ",
    b"{}",
    b"null",
];

/// One to four stacked mutations of `input` (bit flips, byte sets, interesting values,
/// inserts, deletes, duplications, splices from another corpus entry, truncation).
fn mutate(rng: &mut Rng, input: &[u8], others: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = rng.next() as u8;
            }
            2 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(len + 1);
                if rng.below(2) == 0 {
                    d.splice(i..i, v.iter().copied());
                } else {
                    let end = (i + v.len()).min(len);
                    d.splice(i..end, v.iter().copied());
                }
            }
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(i..i, bytes);
            }
            4 if len > 1 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                d.drain(i..i + n);
            }
            5 if len > 1 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let copy = d[i..i + n].to_vec();
                let at = rng.below(len + 1);
                d.splice(at..at, copy);
            }
            6 if !others.is_empty() => {
                let other = &others[rng.below(others.len())].1;
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below((other.len() - i).min(256));
                    let at = rng.below(len + 1);
                    d.splice(at..at, other[i..i + n].iter().copied());
                }
            }
            7 if len > 0 => d.truncate(rng.below(len)),
            _ => {}
        }
    }
    d.truncate(MAX_LEN);
    d
}

fn save_failure(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-smoke");
    std::fs::create_dir_all(&dir).unwrap();
    for n in 0.. {
        let p = dir.join(format!("{target}-{n}.bin"));
        if !p.exists() {
            std::fs::write(&p, input).unwrap();
            return p;
        }
    }
    unreachable!()
}

fn check(target: &str, f: pixgate::fuzzing::Target, input: &[u8], what: &str) {
    if let Err(panic) = std::panic::catch_unwind(|| f(input)) {
        let saved = save_failure(target, input);
        eprintln!(
            "fuzz target `{target}` failed on {what} ({} bytes), saved as {}",
            input.len(),
            saved.display()
        );
        std::panic::resume_unwind(panic);
    }
}

fn smoke(target: &str) {
    let f = pixgate::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no target {target}"));
    let corpus = corpus(target);
    assert!(!corpus.is_empty(), "{target}: empty corpus");
    for (path, data) in &corpus {
        check(target, f, data, &path.display().to_string());
    }
    let secs: f64 = std::env::var("PIXGATE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let seed = target.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    let mut rng = Rng(seed);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let base = &corpus[rng.below(corpus.len())].1;
        let input = mutate(&mut rng, base, &corpus);
        check(target, f, &input, &format!("mutation {runs}"));
        runs += 1;
    }
    eprintln!(
        "{target}: {} corpus files, {runs} mutations in {secs} s",
        corpus.len()
    );
}

#[test]
fn options() {
    smoke("options");
}

#[test]
fn signature() {
    smoke("signature");
}

#[test]
fn probe() {
    smoke("probe");
}

#[test]
fn decode() {
    // AVIF and HEIC mutations go through the real decoder child, sandbox and all.
    pixgate::image::isolated::install(Box::new(pixgate::sandbox::ChildDecoder::new(
        env!("CARGO_BIN_EXE_pixgate").into(),
    )));
    smoke("decode");
}

#[test]
fn exif_icc() {
    smoke("exif_icc");
}

#[test]
fn multipart() {
    smoke("multipart");
}

#[test]
fn jwt() {
    smoke("jwt");
}

#[test]
fn jwks() {
    smoke("jwks");
}

#[test]
fn audit_chain() {
    smoke("audit_chain");
}

#[test]
fn zip() {
    smoke("zip");
}

#[test]
fn every_target_has_a_smoke_test_and_a_fuzz_binary() {
    let source = include_str!("fuzz_smoke.rs");
    let manifest = include_str!("../fuzz/Cargo.toml");
    for (name, _) in pixgate::fuzzing::TARGETS {
        assert!(
            source.contains(&format!("smoke(\"{name}\")")),
            "{name}: no smoke test"
        );
        assert!(
            manifest.contains(&format!("fuzz_targets/{name}.rs")),
            "{name}: no cargo-fuzz binary"
        );
    }
}
