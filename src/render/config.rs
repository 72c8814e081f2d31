//! `[transform]` (CPU pool, defaults, negotiation), `[encode]` (encoder settings) and
//! `[watermark]`: how results are computed.

use serde::{Deserialize, Serialize};

use crate::config::types::{ConfigError, positive, within};
use crate::image::{EncodeSettings, JpegDecoder, PngCompression, Subsampling};
use crate::options::OutputFormat;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformConfig {
    /// Concurrent CPU transforms; 0 means one per core.
    pub workers: u64,
    /// Transforms allowed to wait for a worker before new ones get 503.
    pub queue_len: u64,
    /// A job whose expected wait for a worker exceeds this gets 503 at once, ms; 0: only
    /// `queue_len` bounds the queue.
    pub max_queue_wait_ms: u64,
    pub default_quality: u64,
    /// `turbo` (libjpeg-turbo, shrink-on-load) or `zune` (pure Rust, full-size decode).
    pub jpeg_decoder: JpegDecoder,
    /// Only `pr:` (plus `f`, `exp`, `cb`) may appear in URLs.
    pub presets_only: bool,
    /// Accepted output formats in order of preference for `f:auto` / no format, when the
    /// request's `Accept` allows them.
    pub auto_formats: Vec<NegotiableFormat>,
    /// AVIF encodes allowed at once (they are slow); others wait their turn.
    pub avif_workers: u64,
    /// Explicit `f:avif` requests that may wait for an AVIF encoder; beyond, `503`.
    pub avif_queue_len: u64,
    /// How long such a request waits for an AVIF encoder before `503`, ms.
    pub avif_queue_wait_ms: u64,
    /// Process-wide budget for the decode memory of jobs on the CPU pool, MiB: each transform
    /// and upload validation reserves its estimated peak (see `image::memory_cost`) before it
    /// runs, so N concurrent worst cases stay under this total instead of N × 0.5 GB.
    pub memory_budget_mb: u64,
    /// Originals held in memory at once by queued and running transforms and info analyses,
    /// MiB: a job reserves its original's stored size before fetching it and waits while the
    /// budget is taken (the job runs in a task of its own: a request that times out meanwhile
    /// is answered, its job still completes and fills the caches). An original larger than the
    /// budget is fetched alone. Eager renders after an upload use the upload's bytes in hand.
    pub originals_budget_mb: u64,
    /// `raw` and `sp` may serve originals (metadata removed losslessly); false: `400`.
    pub allow_raw: bool,
    /// `sm:0` may keep the source's EXIF and XMP in results (without GPS unless `keep_gps`).
    /// Off: results never carry more than `kcr:1`'s copyright and artist.
    pub allow_keep_metadata: bool,
    /// With `allow_keep_metadata`, `sm:0` keeps location too.
    pub keep_gps: bool,
    /// Animated GIF and WebP sources give animated results in formats that animate (WebP,
    /// GIF); off, every result is the first frame (as `da:1` asks per URL).
    pub animate: bool,
    /// Formats a negotiated result of an animated source may take, in order of preference:
    /// the first the client accepts (GIF counts as accepted by every client). Empty: animated
    /// sources negotiate like stills (a first frame unless the still format animates).
    pub animated_formats: Vec<AnimatedFormat>,
}

/// A format negotiation may pick for an animated source (`transform.animated_formats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnimatedFormat {
    Webp,
    Gif,
}

impl AnimatedFormat {
    pub fn output(self) -> OutputFormat {
        match self {
            AnimatedFormat::Webp => OutputFormat::Webp,
            AnimatedFormat::Gif => OutputFormat::Gif,
        }
    }
}

/// A format content negotiation may pick (`transform.auto_formats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NegotiableFormat {
    Webp,
    Avif,
}

impl NegotiableFormat {
    pub fn output(self) -> OutputFormat {
        match self {
            NegotiableFormat::Webp => OutputFormat::Webp,
            NegotiableFormat::Avif => OutputFormat::Avif,
        }
    }
}

impl Default for TransformConfig {
    fn default() -> Self {
        TransformConfig {
            workers: 0,
            queue_len: 64,
            max_queue_wait_ms: 0,
            default_quality: 80,
            jpeg_decoder: JpegDecoder::Turbo,
            presets_only: false,
            auto_formats: vec![NegotiableFormat::Webp],
            avif_workers: 1,
            avif_queue_len: 32,
            avif_queue_wait_ms: 15_000,
            memory_budget_mb: 2048,
            originals_budget_mb: 64,
            allow_raw: true,
            allow_keep_metadata: false,
            keep_gps: false,
            animate: true,
            animated_formats: vec![AnimatedFormat::Webp, AnimatedFormat::Gif],
        }
    }
}

impl TransformConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        within("transform.default_quality", self.default_quality, 1..=100)?;
        positive("transform.avif_workers", self.avif_workers)?;
        within(
            "transform.avif_queue_wait_ms",
            self.avif_queue_wait_ms,
            0..=600_000,
        )?;
        within(
            "transform.originals_budget_mb",
            self.originals_budget_mb,
            1..=1_048_576,
        )?;
        within(
            "transform.memory_budget_mb",
            self.memory_budget_mb,
            64..=1_048_576,
        )
    }

    /// The CPU queue's bounds.
    pub fn queue(&self) -> crate::workers::QueueBounds {
        crate::workers::QueueBounds {
            len: usize::try_from(self.queue_len).unwrap_or(usize::MAX),
            max_wait: (self.max_queue_wait_ms > 0)
                .then(|| std::time::Duration::from_millis(self.max_queue_wait_ms)),
            originals_bytes: self.originals_budget_mb.saturating_mul(1 << 20),
        }
    }

    /// Number of CPU workers after resolving `0` to the core count.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }

    /// The default quality (validated 1..=100).
    pub fn quality(&self) -> u8 {
        u8::try_from(self.default_quality).unwrap_or(80)
    }

    /// `auto_formats` as output formats, in order of preference.
    pub fn negotiable(&self) -> Vec<OutputFormat> {
        self.auto_formats.iter().map(|f| f.output()).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncodeConfig {
    pub jpeg_progressive: bool,
    /// Huffman tables optimised per image (smaller files, same pixels).
    pub jpeg_optimize_coding: bool,
    /// `420` or `444`.
    pub jpeg_subsampling: Subsampling,
    /// `fast`, `balanced` or `high`.
    pub png_compression: PngCompression,
    /// libwebp method 0..=6 (speed/size trade-off).
    pub webp_method: u64,
    pub webp_lossless: bool,
    /// rav1e speed 1 (slowest) ..= 10 (fastest).
    pub avif_speed: u64,
}

impl Default for EncodeConfig {
    /// The engine's own defaults.
    fn default() -> Self {
        let s = EncodeSettings::default();
        EncodeConfig {
            jpeg_progressive: s.jpeg_progressive,
            jpeg_optimize_coding: s.jpeg_optimize_coding,
            jpeg_subsampling: s.jpeg_subsampling,
            png_compression: s.png_compression,
            webp_method: u64::from(s.webp_method),
            webp_lossless: s.webp_lossless,
            avif_speed: u64::from(s.avif_speed),
        }
    }
}

impl EncodeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        within("encode.webp_method", self.webp_method, 0..=6)?;
        within("encode.avif_speed", self.avif_speed, 1..=10)
    }

    /// The engine's encoder settings (the bounds were validated at load).
    pub fn settings(&self) -> EncodeSettings {
        EncodeSettings {
            jpeg_progressive: self.jpeg_progressive,
            jpeg_optimize_coding: self.jpeg_optimize_coding,
            jpeg_subsampling: self.jpeg_subsampling,
            png_compression: self.png_compression,
            webp_method: u8::try_from(self.webp_method).unwrap_or(6),
            webp_lossless: self.webp_lossless,
            avif_speed: u8::try_from(self.avif_speed).unwrap_or(10),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatermarkConfig {
    /// Image (PNG, WebP, JPEG or GIF) composited by `wm:`; empty disables `wm:`.
    pub path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_and_encode_validate_their_bounds() {
        assert!(TransformConfig::default().validate().is_ok());
        assert!(EncodeConfig::default().validate().is_ok());
        let q = TransformConfig {
            default_quality: 0,
            ..TransformConfig::default()
        };
        assert_eq!(q.validate().unwrap_err().key, "transform.default_quality");
        let budget = TransformConfig {
            memory_budget_mb: 63,
            ..TransformConfig::default()
        };
        assert_eq!(
            budget.validate().unwrap_err().key,
            "transform.memory_budget_mb"
        );
        let originals = TransformConfig {
            originals_budget_mb: 0,
            ..TransformConfig::default()
        };
        assert_eq!(
            originals.validate().unwrap_err().key,
            "transform.originals_budget_mb"
        );
        let webp = EncodeConfig {
            webp_method: 7,
            ..EncodeConfig::default()
        };
        assert_eq!(webp.validate().unwrap_err().key, "encode.webp_method");
        let avif = EncodeConfig {
            avif_speed: 0,
            ..EncodeConfig::default()
        };
        assert_eq!(avif.validate().unwrap_err().key, "encode.avif_speed");
    }

    #[test]
    fn enums_parse_while_loading() {
        let t: TransformConfig =
            toml::from_str("jpeg_decoder = \"zune\"\nauto_formats = [\"avif\", \"webp\"]").unwrap();
        assert_eq!(t.jpeg_decoder, JpegDecoder::Zune);
        assert_eq!(t.negotiable(), vec![OutputFormat::Avif, OutputFormat::Webp]);
        assert!(toml::from_str::<TransformConfig>("auto_formats = [\"gif\"]").is_err());
        assert!(toml::from_str::<TransformConfig>("jpeg_decoder = \"libjpeg\"").is_err());
        let e: EncodeConfig =
            toml::from_str("jpeg_subsampling = \"444\"\npng_compression = \"high\"").unwrap();
        assert_eq!(e.settings().jpeg_subsampling, Subsampling::S444);
        assert_eq!(e.settings().png_compression, PngCompression::High);
        assert!(toml::from_str::<EncodeConfig>("jpeg_subsampling = \"422\"").is_err());
    }
}
