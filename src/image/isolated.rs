//! Decoders that never run in the server's process: AVIF (rav1d, whose C API aborts the process
//! on some malformed streams) and HEIC (libheif and libde265, C and C++). The engine hands their
//! bytes to a [`Runner`] installed at start-up — `crate::sandbox::ChildDecoder`, which decodes in
//! a short-lived child process under a memory cap (the reservation the CPU pool took), a CPU-time
//! cap and a seccomp filter — and gets 8-bit pixels back. A crash of the child is an
//! `invalid_image` answer for that one input.
//!
//! This module stays pure: the process work lives outside `image` (which does no I/O); the child
//! calls [`decode_here`].

use std::sync::OnceLock;

use super::{Bitmap, ImageError, ImageFormat, Probe};

/// The parent's copy of the child's pixels (RGBA), on top of the decoder's own memory.
pub const PARENT_BYTES_PER_PIXEL: u64 = 4;

/// One decode for the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub format: ImageFormat,
    /// The probed coded size the child must produce.
    pub width: u32,
    pub height: u32,
    /// The decoder's memory allowance in bytes ([`super::memory_cost`] of the probe).
    pub memory: u64,
}

/// Runs a [`Job`] somewhere other than this process and returns its pixels.
pub trait Runner: Send + Sync {
    fn decode(&self, job: &Job, bytes: &[u8]) -> Result<Bitmap, ImageError>;
}

static RUNNER: OnceLock<Box<dyn Runner>> = OnceLock::new();

/// Installs the process's runner; the first one stays (returns whether this one was taken).
pub fn install(runner: Box<dyn Runner>) -> bool {
    RUNNER.set(runner).is_ok()
}

/// Whether `format` is decoded through the runner.
pub fn isolated(format: ImageFormat) -> bool {
    matches!(format, ImageFormat::Avif | ImageFormat::Heic)
}

/// Decodes an isolated format through the installed runner and checks what came back against
/// the probe: size, channel count and buffer length.
pub(super) fn decode(bytes: &[u8], probe: &Probe) -> Result<Bitmap, ImageError> {
    let runner = RUNNER.get().ok_or_else(|| {
        ImageError::Unavailable(format!(
            "{} sources need the sandboxed decoder, which this process has not started",
            probe.format.as_str()
        ))
    })?;
    let job = Job {
        format: probe.format,
        width: probe.width,
        height: probe.height,
        memory: super::memory_cost(probe),
    };
    let bitmap = runner.decode(&job, bytes)?;
    let expected = u64::from(job.width)
        .checked_mul(u64::from(job.height))
        .and_then(|n| n.checked_mul(u64::from(bitmap.channels)));
    if (bitmap.width, bitmap.height) != (job.width, job.height)
        || !matches!(bitmap.channels, 3 | 4)
        || Some(bitmap.data.len() as u64) != expected
    {
        return Err(ImageError::Corrupt(
            "the sandboxed decoder returned another size".into(),
        ));
    }
    Ok(bitmap)
}

/// Where the work happens: in the child (or a unit test), never on a server thread.
pub fn decode_here(job: &Job, bytes: &[u8]) -> Result<Bitmap, ImageError> {
    match job.format {
        ImageFormat::Avif => super::avif::decode(bytes, (job.width, job.height)),
        ImageFormat::Heic => super::heic::decode(bytes, (job.width, job.height)),
        other => Err(ImageError::Unsupported(format!(
            "{} is not decoded in the sandbox",
            other.as_str()
        ))),
    }
}

/// What the child does before it locks itself down (libraries that open files on start-up).
pub fn prepare(format: ImageFormat) {
    if format == ImageFormat::Heic {
        super::heic::init();
    }
}

/// Decodes in this process: for unit tests of the engine only.
#[cfg(test)]
pub(crate) struct InProcess;

#[cfg(test)]
impl Runner for InProcess {
    fn decode(&self, job: &Job, bytes: &[u8]) -> Result<Bitmap, ImageError> {
        decode_here(job, bytes)
    }
}

/// Installs [`InProcess`] (unit tests of the engine).
#[cfg(test)]
pub(crate) fn in_process_for_tests() {
    install(Box::new(InProcess));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Engine, ImageLimits, probe};
    use crate::options::OutputFormat;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn heic_and_avif_decode_at_their_coded_size_and_orientation_comes_from_irot() {
        in_process_for_tests();
        for (name, format, channels) in [
            ("photo_160x120.heic", ImageFormat::Heic, 3),
            ("photo_160x120_10bit.heic", ImageFormat::Heic, 3),
            ("grid_2x2_160x120.heic", ImageFormat::Heic, 3),
            ("alpha_160x120.heic", ImageFormat::Heic, 4),
            ("photo_160x120.avif", ImageFormat::Avif, 3),
            ("alpha_160x120.avif", ImageFormat::Avif, 4),
        ] {
            let bytes = fixture(name);
            let p = probe(&bytes).unwrap();
            assert_eq!(
                (p.format, p.width, p.height, p.orientation),
                (format, 160, 120, 1)
            );
            let b = crate::image::decode(&bytes, &p).unwrap();
            assert_eq!(
                (b.width, b.height, b.channels),
                (160, 120, channels),
                "{name}"
            );
            if channels == 4 {
                // The left half is transparent, the right half opaque.
                assert!(b.data[3] < 16 && b.data[(159 * 4) + 3] > 240, "{name}");
            }
        }
        // EXIF orientation 6 written as `irot`: stored 160x120, shown 120x160.
        let bytes = fixture("orient6_160x120.heic");
        let p = probe(&bytes).unwrap();
        assert_eq!((p.width, p.height, p.orientation), (160, 120, 6));
        let engine = Engine::new(ImageLimits::default());
        let spec = crate::options::parse_path(
            "/rs:fit:1000:1000/plain/0123456789abcdef0123456789abcdef",
            &crate::options::ParseLimits {
                max_dimension: 8192,
                presets: Default::default(),
                presets_only: false,
            },
        )
        .unwrap()
        .spec;
        let out = engine
            .transform(&bytes, &spec, OutputFormat::Png, 80)
            .unwrap();
        assert_eq!((out.width, out.height), (120, 160));
    }

    #[test]
    fn a_heic_whose_pixels_disagree_with_its_header_is_refused() {
        let bytes = fixture("photo_160x120.heic");
        let job = Job {
            format: ImageFormat::Heic,
            width: 161,
            height: 120,
            memory: 1 << 30,
        };
        assert!(matches!(
            decode_here(&job, &bytes),
            Err(ImageError::Corrupt(_))
        ));
        for cut in [100, 400, bytes.len() / 2, bytes.len() - 1] {
            let job = Job { width: 160, ..job };
            assert!(decode_here(&job, &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
