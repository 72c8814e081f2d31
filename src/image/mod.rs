//! The image engine: bytes + spec in, bytes + metadata out.
//!
//! Invariants: no I/O, no HTTP, no clock, no globals. Every source is probed from its header
//! ([`probe`]) and checked against [`ImageLimits`] *before* any pixel is decoded, so a
//! decompression bomb costs a few header bytes. Outputs carry pixels only unless a URL asks
//! (`kcr`, `scp:0`, and `sm:0` where the operator allows it): then `metadata` puts a scrubbed
//! subset of the source's EXIF, XMP or ICC into the encoded container.
//!
//! Code map: `probe` (format sniffing, header dimensions, EXIF orientation) → `decode` →
//! `geometry` (what to crop and how big, in oriented coordinates) → `resize`
//! (fast_image_resize, Lanczos3) → `orient` → `encode`; `pipeline` strings them together.

pub mod anim;
mod avif;
mod bmff;
mod chunks;
mod decode;
mod effects;
mod encode;
pub(crate) mod exif;
mod geometry;
mod heic;
pub(crate) mod icc;
mod info;
pub mod isolated;
mod jxl;
pub(crate) mod metadata;
mod orient;
mod pipeline;
pub(crate) mod probe;
mod progressive;
mod smart;
mod strip;
mod svg;
mod svg_header;
mod tiff;
mod turbo;
mod webp_anim;

pub use decode::decode;
pub use encode::{EncodeSettings, PngCompression, Subsampling, encode};
pub use geometry::{Geometry, plan};
pub use info::{ImageInfo, MAX_LQIP_BYTES, analyze, analyze_upload};
pub use pipeline::{
    Encoded, Engine, JpegDecoder, MetadataPolicy, caught_panics, jpeg_shrink, validate_upload,
};
pub use probe::{Probe, frame_count, probe, sniff};
pub use strip::strip_metadata;

/// Source formats pixgate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
    Bmp,
    /// Windows icon: the largest entry (BMP or PNG inside).
    Ico,
    /// Baseline TIFF: the first page.
    Tiff,
    /// JPEG XL (codestream or container): the first frame.
    Jxl,
    /// SVG, rasterised (opt-in).
    Svg,
    /// AVIF: the primary item (no grids); decoded in the sandboxed child.
    Avif,
    /// HEIC/HEIF (HEVC): the primary item, grids included; decoded by libheif in the
    /// sandboxed child.
    Heic,
}

impl ImageFormat {
    /// The file extension (`jpg`, `png`, `webp`, `gif`, `bmp`, `ico`, `tiff`).
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            other => other.as_str(),
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Gif => "image/gif",
            ImageFormat::Bmp => "image/bmp",
            ImageFormat::Ico => "image/x-icon",
            ImageFormat::Tiff => "image/tiff",
            ImageFormat::Jxl => "image/jxl",
            ImageFormat::Svg => "image/svg+xml",
            ImageFormat::Avif => "image/avif",
            ImageFormat::Heic => "image/heic",
        }
    }

    /// Maps a declared media type (parameters ignored, case-insensitive) to a format.
    pub fn from_mime(mime: &str) -> Option<ImageFormat> {
        let essence = mime
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "image/jpeg" | "image/jpg" | "image/pjpeg" => Some(ImageFormat::Jpeg),
            "image/png" => Some(ImageFormat::Png),
            "image/webp" => Some(ImageFormat::Webp),
            "image/gif" => Some(ImageFormat::Gif),
            "image/bmp" | "image/x-bmp" | "image/x-ms-bmp" => Some(ImageFormat::Bmp),
            "image/x-icon" | "image/vnd.microsoft.icon" => Some(ImageFormat::Ico),
            "image/tiff" => Some(ImageFormat::Tiff),
            "image/jxl" => Some(ImageFormat::Jxl),
            "image/svg+xml" => Some(ImageFormat::Svg),
            "image/avif" => Some(ImageFormat::Avif),
            "image/heic" | "image/heif" | "image/heic-sequence" | "image/heif-sequence" => {
                Some(ImageFormat::Heic)
            }
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
            ImageFormat::Bmp => "bmp",
            ImageFormat::Ico => "ico",
            ImageFormat::Tiff => "tiff",
            ImageFormat::Jxl => "jxl",
            ImageFormat::Svg => "svg",
            ImageFormat::Avif => "avif",
            ImageFormat::Heic => "heic",
        }
    }
}

/// Progressive JPEGs with more scans than this are refused before decoding, by both decoders:
/// thousands of tiny scans make decoding quadratic (libjpeg-turbo's "two issues with the JPEG
/// standard"). Real encoders emit at most a dozen; libjpeg-turbo's fuzzers allow 500.
pub const MAX_JPEG_SCANS: u64 = 100;

/// Limits checked before work is done.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    pub max_source_pixels: u64,
    /// Largest width or height of a source. With the pixel cap alone, a 50,000,000×1 image is
    /// allowed, and resampling cost grows with the longer side (the resizer's filter
    /// coefficients are ~6 × that side per output line): 3.7 GB and 14 s for one such PNG.
    pub max_source_dimension: u32,
    pub max_result_pixels: u64,
    pub max_result_dimension: u32,
    /// Animation frames a source may have (only the first is rendered; more are refused so a
    /// stored file cannot be an unbounded animation).
    pub max_frames: u64,
    /// Pixels of all frames of an animation together (`limits.max_animation_pixels`), of the
    /// source and of the result.
    pub max_animation_pixels: u64,
    /// Largest encoded result (`limits.max_result_bytes`).
    pub max_result_bytes: u64,
}

/// Decoded pixels, 8 bits per channel, RGB (3) or RGBA (4, not premultiplied); a few internal
/// helpers use 1 channel.
#[derive(Debug, Clone)]
pub struct Bitmap {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

/// What can go wrong inside the engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    #[error("not a JPEG, PNG, WebP, GIF, BMP, ICO, TIFF, JPEG XL, AVIF, HEIC or SVG image")]
    UnknownFormat,
    #[error("{width}x{height} is more than {limit} pixels")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("{width}x{height} has a side longer than {limit} pixels")]
    DimensionTooLarge { width: u32, height: u32, limit: u32 },
    #[error("more than {limit} animation frames")]
    TooManyFrames { limit: u64 },
    #[error("result {width}x{height} is over the limit of {limit} pixels")]
    ResultTooLarge { width: u32, height: u32, limit: u64 },
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// An encoded result grew past `limits.max_result_bytes`.
    #[error("the result is over the limit of {limit} bytes")]
    OutputTooLarge { limit: u64 },
    #[error("encode failed: {0}")]
    Encode(String),
    /// The request asks for something this deployment does not offer (e.g. `wm:` without a
    /// configured watermark).
    #[error("{0}")]
    Unsupported(String),
    /// This process cannot decode the format now (the decoder sandbox did not start): the
    /// server's problem, not the source's.
    #[error("decoder unavailable: {0}")]
    Unavailable(String),
}

/// Estimated peak memory, in bytes, of validating or transforming a source with this header:
/// what the CPU pool reserves from `transform.memory_budget_mb` before running the job.
///
/// Source pixels × a per-format factor covering the decoder's buffers and the pipeline's
/// copies at full size (the worst case: no shrink-on-load), plus a constant for codec state
/// and the result. The factors are upper bounds measured by `tests/bounds.rs` for the worst
/// inputs of each format (see `docs/decoders.md`, "Bounds"); that test fails if a measured
/// peak ever exceeds this estimate.
pub fn memory_cost(p: &Probe) -> u64 {
    if p.format == ImageFormat::Svg {
        // Drawing is bounded by its own budget whatever the size (layers shrink the canvas);
        // the parsed tree of a 4 MiB document stays well under 128 MiB.
        return svg::RENDER_BYTES + (128 << 20) + COST_BASE;
    }
    let pixels = u64::from(p.width) * u64::from(p.height);
    let per_pixel = match p.format {
        // RGB decode (3) + a progressive file's coefficients (2 per sample, 3 samples at 4:4:4).
        ImageFormat::Jpeg => 9,
        // Decoder output (≤ 4 after STRIP_16) + grey/alpha expansion or alpha drop copy (4).
        ImageFormat::Png => 8,
        // image-webp: output (≤ 4) + its RGBA scratch for opaque lossless (4) + an alpha drop (3).
        ImageFormat::Webp => 11,
        // Canvas (4) + the frame buffer (4) + an alpha-dropping copy (3).
        ImageFormat::Gif => 11,
        // image-rs's decode (≤ 4) + its conversion to 8-bit RGB(A) (4) + an alpha-dropping
        // copy (3).
        ImageFormat::Bmp | ImageFormat::Ico => 11,
        // 16-bit RGBA: the tiff decoder's samples and image-rs's image of them overlap (8 + up
        // to 8), then the 8-bit conversion (4); measured 16.7 B/px (`tests/bounds.rs`).
        ImageFormat::Tiff => 20,
        // jxl-oxide's tracked allocations (its bound) + the 8-bit samples (4) + a grey
        // expansion (4).
        ImageFormat::Jxl => jxl::MAX_BYTES_PER_PIXEL + 8,
        ImageFormat::Svg => 0,
        ImageFormat::Avif => avif::MAX_BYTES_PER_PIXEL + isolated::PARENT_BYTES_PER_PIXEL,
        ImageFormat::Heic => heic::MAX_BYTES_PER_PIXEL + isolated::PARENT_BYTES_PER_PIXEL,
    };
    pixels.saturating_mul(per_pixel).saturating_add(COST_BASE)
}

/// Codec state, the resized result and the encoder's output, beyond the per-pixel part.
pub(crate) const COST_BASE: u64 = 16 << 20;

/// Maps every `step`-byte pixel of `src` to `N` bytes, into a buffer allocated once at its
/// exact size. (`flat_map(..).collect()` cannot know the length, so it grows by doubling: up
/// to twice the size allocated, and both buffers live during each reallocation — a 50 MP
/// grey+alpha PNG peaked at 10 B/px through it.)
pub(crate) fn map_pixels<const N: usize>(
    src: &[u8],
    step: usize,
    f: impl Fn(&[u8]) -> [u8; N],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / step.max(1) * N);
    for p in src.chunks_exact(step.max(1)) {
        out.extend_from_slice(&f(p));
    }
    out
}

/// Adds an opaque alpha channel to RGB bitmaps.
pub fn to_rgba(b: Bitmap) -> Bitmap {
    if b.channels == 4 {
        return b;
    }
    let data = map_pixels(&b.data, usize::from(b.channels), |p| {
        [p[0], p[1], p[2], 255]
    });
    Bitmap {
        channels: 4,
        data,
        ..b
    }
}

impl Default for ImageLimits {
    /// The server's defaults (`[limits]` in `config/pixgate.toml`).
    fn default() -> Self {
        ImageLimits {
            max_source_pixels: 50_000_000,
            max_source_dimension: 32_768,
            max_result_pixels: 40_000_000,
            max_result_dimension: 16_383,
            max_frames: 1000,
            max_animation_pixels: 200_000_000,
            max_result_bytes: 64 << 20,
        }
    }
}

impl ImageLimits {
    /// Refuses a source whose header claims too many pixels.
    pub fn check_source(&self, width: u32, height: u32) -> Result<(), ImageError> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_source_pixels {
            return Err(ImageError::TooManyPixels {
                width,
                height,
                limit: self.max_source_pixels,
            });
        }
        if width > self.max_source_dimension || height > self.max_source_dimension {
            return Err(ImageError::DimensionTooLarge {
                width,
                height,
                limit: self.max_source_dimension,
            });
        }
        if width == 0 || height == 0 {
            return Err(ImageError::Corrupt("zero-sized image".into()));
        }
        Ok(())
    }

    /// Refuses a source with more animation frames than allowed, or a JPEG with more
    /// progressive scans than [`MAX_JPEG_SCANS`] (structure walks, no decode).
    pub fn check_frames(&self, bytes: &[u8], p: &Probe) -> Result<(), ImageError> {
        let format = p.format;
        let frames = probe::frame_count(bytes, format, self.max_frames);
        if frames > self.max_frames {
            return Err(ImageError::TooManyFrames {
                limit: self.max_frames,
            });
        }
        // All frames together: at this canvas size, at most this many (imgproxy's
        // max_animation_frame_resolution × frames, as one bound).
        let canvas = u64::from(p.width) * u64::from(p.height);
        let allowed = self.max_animation_pixels / canvas.max(1);
        if frames > 1 && frames > allowed {
            return Err(ImageError::TooManyFrames { limit: allowed });
        }
        if format == ImageFormat::Jpeg
            && probe::jpeg_scan_count(bytes, MAX_JPEG_SCANS) > MAX_JPEG_SCANS
        {
            return Err(ImageError::Corrupt(format!(
                "more than {MAX_JPEG_SCANS} progressive scans"
            )));
        }
        Ok(())
    }

    /// Refuses a result that would be too large.
    pub fn check_result(&self, width: u32, height: u32) -> Result<(), ImageError> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_result_pixels
            || width > self.max_result_dimension
            || height > self.max_result_dimension
        {
            return Err(ImageError::ResultTooLarge {
                width,
                height,
                limit: self.max_result_pixels,
            });
        }
        Ok(())
    }
}
