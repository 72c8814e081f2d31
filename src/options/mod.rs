//! The transform URL grammar (imgproxy-compatible) → a typed, bounded [`TransformSpec`].
//!
//! `/{option}/{option}/…/{source}` where an option is `name:arg:arg…` and the source is
//! `plain/ID[@ext]` or base64url(ID)[.ext] (possibly split by `/`). Parsing is strict: unknown
//! options, repeated options, malformed or out-of-range arguments and stray segments are errors.
//! Two spellings of one transform produce the same [`TransformSpec::canonical`] string, which is
//! what caches key on. This module is pure: no clock, no I/O.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::id::ImageId;

pub mod presets;
mod slices;
pub use presets::{EAGER_KEY, Presets};
pub use slices::OptionName;

/// How the source is fitted into the requested box (imgproxy semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizingType {
    /// Keep aspect ratio, fit inside the box.
    Fit,
    /// Keep aspect ratio, cover the box, crop the overflow by gravity.
    Fill,
    /// Like fill, but when the source is smaller than the box, crop it to the box's aspect
    /// ratio instead of returning a smaller image of another shape.
    FillDown,
    /// Stretch to exactly the box.
    Force,
    /// Fill when source and box have the same orientation, fit otherwise.
    Auto,
}

/// Where a crop is anchored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gravity {
    Center,
    North,
    South,
    East,
    West,
    NorthEast,
    NorthWest,
    SouthEast,
    SouthWest,
    /// Focus point in ten-thousandths of width and height (0..=10000).
    FocusPoint {
        x: u16,
        y: u16,
    },
    /// Content-aware: the window with the most detail (see `image::smart`).
    Smart,
}

/// A colour filter applied to the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Grayscale,
    Sepia,
}

/// An offset from a gravity's anchor, in thousandths: `|v| ≥ 1000` is `v / 1000` pixels (× dpr
/// where imgproxy scales it), below that a fraction of the outer size (imgproxy's relative
/// values). Positive values push inwards from the edge the gravity anchors to.
pub type Offset = [i32; 2];

/// `c:width:height:gravity[:x:y]` — cut this region (in oriented source pixels) before resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    /// Thousandths: `≥ 1000` is whole pixels × 1000, `1..1000` a fraction of the source's
    /// width/height, 0 the full width/height.
    pub width: u32,
    pub height: u32,
    /// `None` means the main gravity (and its offsets).
    pub gravity: Option<Gravity>,
    /// Source pixels (not × dpr) or fractions of the source, as imgproxy.
    pub offset: Offset,
}

/// `t:threshold:colour:equal_hor:equal_ver` — cut off a uniform border before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    /// Largest per-channel difference from the background that still counts as background.
    pub threshold: u8,
    /// The background; `None`: the top-left pixel's colour (transparency for images with alpha).
    pub color: Option<[u8; 3]>,
    pub equal_hor: bool,
    pub equal_ver: bool,
}

/// `wm:opacity:position:x_offset:y_offset:scale` — the configured watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// 0..=1000 (thousandths).
    pub opacity_milli: u16,
    pub position: Gravity,
    /// `re`: tiled over the whole image; the offsets are then the gaps between tiles.
    pub replicate: bool,
    /// Thousandths, see [`Offset`] (pixels × dpr, or fractions of the result).
    pub x_offset: i32,
    pub y_offset: i32,
    /// The watermark fits inside this share of the result, thousandths; 0 = its own size.
    pub scale_milli: u16,
}

/// Why an option string, a source or a preset was refused. Mapped to `400` responses with
/// stable codes in `http::error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown option `{0}`")]
    UnknownOption(String),
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("invalid source: {0}")]
    InvalidSource(String),
    #[error("unsupported output format `{0}`")]
    UnsupportedFormat(String),
}

/// Output encodings this build produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Jpeg,
    Png,
    Webp,
    Avif,
    /// A still GIF (256 colours, NeuQuant); animation out is issue 19's next step.
    Gif,
}

/// A parsed, bounded transform. Defaults follow imgproxy.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformSpec {
    pub resizing_type: ResizingType,
    /// Requested box in CSS pixels; 0 means "derive from the other side" (both 0: no resize).
    pub width: u32,
    pub height: u32,
    /// Device pixel ratio in thousandths (1000 = 1.0).
    pub dpr_milli: u32,
    pub enlarge: bool,
    pub gravity: Gravity,
    /// Offsets of the main gravity (imgproxy `g:…:x:y`).
    pub gravity_offset: Offset,
    /// `mw`/`mh`: smallest result in CSS pixels (× dpr); may enlarge, as in imgproxy.
    pub min_width: u32,
    pub min_height: u32,
    /// `z`: zoom per axis, thousandths (1000 = none); multiplies the result, not padding.
    pub zoom_milli: [u32; 2],
    /// 1..=100; `None` means the configured default.
    pub quality: Option<u8>,
    /// `None` means negotiated from `Accept`.
    pub format: Option<OutputFormat>,
    /// Unix seconds after which the URL is refused.
    pub expires: Option<u64>,
    /// Changes the URL (so CDNs refetch) but not the result; not part of the canonical form.
    pub cachebuster: Option<String>,
    /// Crop before resizing.
    pub crop: Option<Crop>,
    /// Apply the EXIF orientation (default true).
    pub auto_rotate: bool,
    /// Clockwise rotation after the EXIF orientation: 0, 90, 180 or 270.
    pub rotate: u16,
    /// Mirror horizontally / vertically (after rotation).
    pub flip_horizontal: bool,
    pub flip_vertical: bool,
    /// Background for alpha flattening, padding and extension; `None`: transparent where the
    /// format has alpha, white otherwise.
    pub background: Option<[u8; 3]>,
    /// Padding in CSS pixels (× dpr): top, right, bottom, left.
    pub padding: [u32; 4],
    /// Extend the canvas to the requested box, placing the image by this gravity.
    pub extend: Option<Gravity>,
    pub extend_offset: Offset,
    /// `exar`: extend one side so the result has the requested box's aspect ratio.
    pub extend_aspect: Option<Gravity>,
    pub extend_aspect_offset: Offset,
    /// `t`: trim a uniform border first (on the full-size source: no shrink-on-load).
    pub trim: Option<Trim>,
    /// Gaussian blur sigma in hundredths (0: none).
    pub blur_centi: u32,
    /// Unsharp-mask sigma in hundredths (0: none).
    pub sharpen_centi: u32,
    pub filter: Option<Filter>,
    pub watermark: Option<Watermark>,
    /// `fn`: the name in `Content-Disposition` (without extension: the output format's is
    /// added). Not part of the canonical form: the bytes do not depend on it.
    pub filename: Option<String>,
    /// `att`: `Content-Disposition: attachment` instead of `inline`.
    pub attachment: bool,
    /// `pix`: pixelation block size in CSS pixels (× dpr); 0 or 1: none.
    pub pixelate: u32,
    /// `fq`: quality per output format, sorted by format; it overrides `q` for that format.
    pub format_quality: Vec<(OutputFormat, u8)>,
    /// `mb`: largest result in bytes for formats with a quality (0: no bound).
    pub max_bytes: u64,
    /// `raw`: serve the stored original (metadata removed losslessly), no processing.
    pub raw: bool,
    /// `sp`: source formats (extensions, sorted) whose originals are served as with `raw`.
    pub skip_processing: Vec<String>,
    /// `sm`: strip metadata (default). `sm:0` keeps the source's only where the operator
    /// allows it (`transform.allow_keep_metadata`).
    pub strip_metadata: bool,
    /// `kcr`: keep copyright and artist (EXIF, XMP) and nothing else. Off by default (imgproxy's
    /// default is on; pixgate's outputs carry nothing unless asked).
    pub keep_copyright: bool,
    /// `scp`: convert to sRGB and drop the profile (default); `scp:0` embeds the source's ICC
    /// profile and keeps its pixels (not for AVIF, which carries no metadata here).
    pub strip_color_profile: bool,
    /// `eth`: render from the JPEG's EXIF thumbnail when it yields the same result size.
    pub enforce_thumbnail: bool,
    /// `da`: first frame only (an animated source gives a still).
    pub disable_animation: bool,
}

/// What parsing needs from configuration: bounds and the named presets.
#[derive(Debug, Clone, Default)]
pub struct ParseLimits {
    pub max_dimension: u32,
    /// `presets.<name>` → option string (`rs:fill:300:300/q:70`), already validated.
    pub presets: std::collections::BTreeMap<String, String>,
    /// Refuse every option except `pr`, `f`, `exp` and `cb`.
    pub presets_only: bool,
}

/// A parsed transform path: what to do, and to which image.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformRequest {
    pub spec: TransformSpec,
    pub image: ImageId,
}

/// What a transform path names: a pixgate image, or (imgproxy's migration form) an object
/// by its `s3://BUCKET/KEY` address, which only `sources.legacy` can turn into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    Image(ImageId),
    /// `s3://BUCKET/KEY`, percent-decoded.
    S3 {
        bucket: String,
        key: String,
    },
}

impl SourceRef {
    /// The object's address as `pixgate import` records it.
    pub fn uri(bucket: &str, key: &str) -> String {
        format!("s3://{bucket}/{key}")
    }
}

/// Longest `s3://` key accepted (S3's own limit is 1024 bytes).
const MAX_S3_KEY: usize = 1024;

/// `s3://BUCKET/KEY` (its key percent-encoded or not) → bucket and key. Buckets follow S3's
/// naming rules; keys are UTF-8 without control characters, at most [`MAX_S3_KEY`] bytes.
fn parse_s3_source(raw: &str) -> Result<SourceRef, ParseError> {
    let bad = |m: &str| ParseError::InvalidSource(format!("s3:// source: {m}"));
    let rest = raw
        .strip_prefix("s3://")
        .ok_or_else(|| bad("must start with s3://"))?;
    let (bucket, key) = rest.split_once('/').ok_or_else(|| bad("no key"))?;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(bad("invalid bucket name"));
    }
    let key = percent_decode(key).ok_or_else(|| bad("invalid percent-encoding"))?;
    // No empty, `.` or `..` segment: an endpoint (or a proxy before it) that normalises paths
    // would otherwise read a key outside the prefix the owner mapping was checked against.
    if key.is_empty()
        || key.len() > MAX_S3_KEY
        || key.chars().any(char::is_control)
        || key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad("invalid key"));
    }
    Ok(SourceRef::S3 {
        bucket: bucket.to_owned(),
        key,
    })
}

const MAX_DPR_MILLI: u32 = 8000;
/// Largest zoom per axis (imgproxy has none; the result limits bound it anyway).
const MAX_ZOOM_MILLI: u32 = 100_000;
const MAX_CACHEBUSTER_LEN: usize = 128;
/// Largest blur sigma (pixels); beyond this everything is one colour anyway.
pub const MAX_BLUR_CENTI: u32 = 10_000;
/// Largest sharpen sigma (pixels).
pub const MAX_SHARPEN_CENTI: u32 = 1_000;
/// Largest pixelation block, CSS pixels (a block larger than the image is one colour).
pub const MAX_PIXELATE: u32 = 1024;
/// Largest padding per side and watermark offset, CSS pixels.
const MAX_PADDING: u32 = 2048;
/// Presets a URL may name at once.
const MAX_PRESETS: usize = 8;

/// Strict percent-decoding to UTF-8 (`None` on a bad escape or invalid UTF-8).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Default for TransformSpec {
    fn default() -> Self {
        TransformSpec {
            resizing_type: ResizingType::Fit,
            width: 0,
            height: 0,
            dpr_milli: 1000,
            enlarge: false,
            gravity: Gravity::Center,
            gravity_offset: [0, 0],
            min_width: 0,
            min_height: 0,
            zoom_milli: [1000, 1000],
            quality: None,
            format: None,
            expires: None,
            cachebuster: None,
            crop: None,
            auto_rotate: true,
            rotate: 0,
            flip_horizontal: false,
            flip_vertical: false,
            background: None,
            padding: [0; 4],
            extend: None,
            extend_offset: [0, 0],
            extend_aspect: None,
            extend_aspect_offset: [0, 0],
            trim: None,
            blur_centi: 0,
            sharpen_centi: 0,
            filter: None,
            watermark: None,
            filename: None,
            attachment: false,
            format_quality: Vec::new(),
            pixelate: 0,
            max_bytes: 0,
            raw: false,
            skip_processing: Vec::new(),
            disable_animation: false,
            strip_metadata: true,
            keep_copyright: false,
            strip_color_profile: true,
            enforce_thumbnail: false,
        }
    }
}

impl ResizingType {
    fn parse(s: &str) -> Result<Self, ParseError> {
        Ok(match s {
            "fit" => ResizingType::Fit,
            "fill" => ResizingType::Fill,
            "fill-down" => ResizingType::FillDown,
            "force" => ResizingType::Force,
            "auto" => ResizingType::Auto,
            other => {
                return Err(ParseError::InvalidOption(format!(
                    "unknown resizing type `{}`",
                    clip(other)
                )));
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            ResizingType::Fit => "fit",
            ResizingType::Fill => "fill",
            ResizingType::FillDown => "fill-down",
            ResizingType::Force => "force",
            ResizingType::Auto => "auto",
        }
    }
}

impl Gravity {
    fn canonical(self) -> String {
        match self {
            Gravity::Center => "ce".into(),
            Gravity::North => "no".into(),
            Gravity::South => "so".into(),
            Gravity::East => "ea".into(),
            Gravity::West => "we".into(),
            Gravity::NorthEast => "noea".into(),
            Gravity::NorthWest => "nowe".into(),
            Gravity::SouthEast => "soea".into(),
            Gravity::SouthWest => "sowe".into(),
            Gravity::FocusPoint { x, y } => format!("fp:{x}:{y}"),
            Gravity::Smart => "sm".into(),
        }
    }
}

impl OutputFormat {
    /// Parses an extension or format name (`jpg`, `jpeg`, `png`, `webp`, `avif`, `gif`).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        Ok(match s {
            "jpg" | "jpeg" => OutputFormat::Jpeg,
            "png" => OutputFormat::Png,
            "webp" => OutputFormat::Webp,
            "avif" => OutputFormat::Avif,
            "gif" => OutputFormat::Gif,
            other => return Err(ParseError::UnsupportedFormat(clip(other))),
        })
    }

    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
            OutputFormat::Avif => "avif",
            OutputFormat::Gif => "gif",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
            OutputFormat::Webp => "image/webp",
            OutputFormat::Avif => "image/avif",
            OutputFormat::Gif => "image/gif",
        }
    }

    /// Whether results carry a quality (`q`, `fq`, `mb` apply).
    pub fn has_quality(self) -> bool {
        matches!(
            self,
            OutputFormat::Jpeg | OutputFormat::Webp | OutputFormat::Avif
        )
    }

    /// Whether results can be animated (an animated source renders every frame).
    pub fn animates(self) -> bool {
        matches!(self, OutputFormat::Webp | OutputFormat::Gif)
    }

    /// Whether results can carry metadata and an ICC profile (`kcr`, `sm:0`, `scp:0`).
    pub fn carries_metadata(self) -> bool {
        matches!(
            self,
            OutputFormat::Jpeg | OutputFormat::Png | OutputFormat::Webp
        )
    }
}

impl TransformSpec {
    /// The canonical form of everything that changes the output pixels, except the output
    /// format and quality (resolved later, from `Accept` and config). Equal transforms written
    /// differently (aliases, `rs` vs `w`+`h`, arguments left at their defaults) map to one string.
    /// The quality for output `format`: its `fq` entry, else `q`, else `default`.
    pub fn quality_for(&self, format: OutputFormat, default: u8) -> u8 {
        self.format_quality
            .iter()
            .find(|(f, _)| *f == format)
            .map_or(self.quality.unwrap_or(default), |(_, q)| *q)
    }

    /// `fq` as it enters the cache key (`jpg:70:webp:60`; empty without `fq`).
    pub fn format_quality_token(&self) -> String {
        self.format_quality
            .iter()
            .map(|(f, q)| format!("{}:{q}", f.extension()))
            .collect::<Vec<_>>()
            .join(":")
    }

    pub fn canonical(&self) -> String {
        // Options at their defaults are left out, so adding an option kind never changes the
        // keys of URLs that do not use it. Each option writes its own part (`slices`).
        slices::write_canonical(self)
    }

    /// Whether a source stored as `extension` (`jpg`, `png`, …) is served as its original
    /// (`raw`, or named by `sp`) instead of being processed.
    pub fn serves_original(&self, extension: &str) -> bool {
        self.raw || self.skip_processing.iter().any(|f| f == extension)
    }

    /// Zoom per axis as factors.
    pub fn zoom(&self) -> (f64, f64) {
        (
            f64::from(self.zoom_milli[0]) / 1000.0,
            f64::from(self.zoom_milli[1]) / 1000.0,
        )
    }
}

/// Parses the path after the signature segment (it starts with `/`). An `s3://` source is
/// refused here (`400 invalid_source`); the transform route resolves those through
/// [`parse_path_with_source`].
pub fn parse_path(path: &str, limits: &ParseLimits) -> Result<TransformRequest, ParseError> {
    match parse_path_with_source(path, limits)? {
        (spec, SourceRef::Image(image)) => Ok(TransformRequest { spec, image }),
        (_, SourceRef::S3 { .. }) => Err(ParseError::InvalidSource(
            "s3:// sources are served only under sources.legacy".into(),
        )),
    }
}

/// [`parse_path`], also accepting imgproxy's `plain/s3://BUCKET/KEY[@ext]` and its base64url
/// form.
pub fn parse_path_with_source(
    path: &str,
    limits: &ParseLimits,
) -> Result<(TransformSpec, SourceRef), ParseError> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| ParseError::InvalidSource("path must start with /".into()))?;
    let segments: Vec<&str> = rest.split('/').collect();
    let mut spec = TransformSpec::default();
    // A preset named `default` applies to every URL, before anything the URL says.
    if let Some(default) = limits.presets.get("default") {
        apply_preset_string(&mut spec, default, limits)?;
    }
    let mut seen: Vec<OptionName> = Vec::new();
    let mut source_ext: Option<OutputFormat> = None;
    let mut image: Option<SourceRef> = None;

    let mut i = 0;
    while i < segments.len() {
        let seg = segments[i];
        if seg.is_empty() {
            return Err(ParseError::InvalidSource("empty path segment".into()));
        }
        if seg == "plain" {
            let raw = segments[i + 1..].join("/");
            let (source, ext) = split_plain_source(&raw)?;
            image = Some(source);
            source_ext = ext;
            break;
        }
        if seg.contains(':') {
            apply_option(&mut spec, seg, &mut seen, limits, false)?;
            i += 1;
            continue;
        }
        // First segment without ':' starts a base64url source, which may be split by '/'.
        let raw = segments[i..].concat();
        let (source, ext) = split_encoded_source(&raw)?;
        image = Some(source);
        source_ext = ext;
        break;
    }

    let image = image.ok_or_else(|| ParseError::InvalidSource("no source given".into()))?;
    if let Some(ext) = source_ext {
        match spec.format {
            Some(f) if f != ext => {
                return Err(ParseError::InvalidOption(
                    "format option and source extension disagree".into(),
                ));
            }
            _ => spec.format = Some(ext),
        }
    }
    Ok((spec, image))
}

/// A parsed `/info/{signature}/{options}/{source}` path (after the signature).
#[derive(Debug, Clone, PartialEq)]
pub struct InfoRequest {
    pub image: ImageId,
    pub expires: Option<u64>,
}

/// imgproxy's info options whose answers pixgate always includes: accepted (so URLs built for
/// imgproxy's `/info` work) and otherwise ignored. Anything else is refused, as for
/// transforms.
const INFO_FIELDS: &[&str] = &[
    "size",
    "s",
    "format",
    "f",
    "dimensions",
    "d",
    "alpha",
    "a",
    "blurhash",
    "bh",
    "thumb_hash",
    "th",
];

/// Parses an info path: `exp`, `cb` and the [`INFO_FIELDS`] options, then the source as in
/// [`parse_path`] (an extension is allowed and ignored: the answer is JSON).
pub fn parse_info_path(path: &str) -> Result<InfoRequest, ParseError> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| ParseError::InvalidSource("path must start with /".into()))?;
    let segments: Vec<&str> = rest.split('/').collect();
    let mut spec = TransformSpec::default();
    let mut seen: Vec<&str> = Vec::new();
    let limits = ParseLimits::default();
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            return Err(ParseError::InvalidSource("empty path segment".into()));
        }
        let (image, _) = if *seg == "plain" {
            split_plain(&segments[i + 1..].join("/"))?
        } else if !seg.contains(':') {
            split_encoded(&segments[i..].concat())?
        } else {
            let name = seg.split(':').next().unwrap_or_default();
            // Repeats are refused by canonical name (fields come in long/short pairs).
            let canonical = match name {
                "expires" => "exp",
                "cachebuster" => "cb",
                n => INFO_FIELDS
                    .iter()
                    .position(|f| *f == n)
                    .map_or(n, |i| INFO_FIELDS[i & !1]),
            };
            if seen.contains(&canonical) {
                return Err(ParseError::InvalidOption(format!(
                    "option `{}` given more than once",
                    clip(name)
                )));
            }
            seen.push(canonical);
            let args: Vec<&str> = seg.split(':').skip(1).collect();
            match name {
                "exp" | "expires" | "cb" | "cachebuster" => {
                    apply_option(&mut spec, seg, &mut Vec::new(), &limits, false)?;
                }
                _ if INFO_FIELDS.contains(&name) => {
                    if args.len() > 2 || args.iter().any(|a| a.len() > 8) {
                        return Err(ParseError::InvalidOption(format!(
                            "`{}` takes at most 2 short arguments",
                            clip(name)
                        )));
                    }
                }
                _ => return Err(ParseError::UnknownOption(clip(name))),
            }
            continue;
        };
        return Ok(InfoRequest {
            image,
            expires: spec.expires,
        });
    }
    Err(ParseError::InvalidSource("no source given".into()))
}

/// Applies a preset's option string. Options inside one preset may not repeat; a later preset
/// or the URL itself may override what an earlier preset set.
fn apply_preset_string(
    spec: &mut TransformSpec,
    options: &str,
    limits: &ParseLimits,
) -> Result<(), ParseError> {
    let mut seen = Vec::new();
    for seg in options.split('/').filter(|s| !s.is_empty()) {
        apply_option(spec, seg, &mut seen, limits, true)?;
    }
    Ok(())
}

/// Checks a configured preset string (at start-up): it must parse on its own and may not name
/// other presets. The `default` preset applies to every URL, so it may not set an expiry or a
/// format (that would silently expire or re-encode every image).
pub fn validate_preset(name: &str, options: &str, max_dimension: u32) -> Result<(), ParseError> {
    let limits = ParseLimits {
        max_dimension,
        ..ParseLimits::default()
    };
    if options.split('/').all(str::is_empty) {
        return Err(ParseError::InvalidOption("preset is empty".into()));
    }
    let mut spec = TransformSpec::default();
    apply_preset_string(&mut spec, options, &limits)?;
    if name == "default" && (spec.expires.is_some() || spec.format.is_some()) {
        return Err(ParseError::InvalidOption(
            "the default preset may not set exp or f".into(),
        ));
    }
    Ok(())
}

fn split_plain(raw: &str) -> Result<(ImageId, Option<OutputFormat>), ParseError> {
    let (id, ext) = match raw.rsplit_once('@') {
        Some((id, ext)) => (id, Some(OutputFormat::parse(ext)?)),
        None => (raw, None),
    };
    let id = ImageId::parse(id)
        .ok_or_else(|| ParseError::InvalidSource("plain source must be an image id".into()))?;
    Ok((id, ext))
}

/// A plain source: an image id, or `s3://BUCKET/KEY`; either with an `@ext`.
fn split_plain_source(raw: &str) -> Result<(SourceRef, Option<OutputFormat>), ParseError> {
    if raw.starts_with("s3://") || raw.to_ascii_lowercase().starts_with("s3%3a%2f%2f") {
        let (src, ext) = match raw.rsplit_once('@') {
            Some((src, ext)) => (src, Some(OutputFormat::parse(ext)?)),
            None => (raw, None),
        };
        let src = if src.starts_with("s3://") {
            src.to_owned()
        } else {
            percent_decode(src).ok_or_else(|| {
                ParseError::InvalidSource("s3:// source: invalid percent-encoding".into())
            })?
        };
        return Ok((parse_s3_source(&src)?, ext));
    }
    let (id, ext) = split_plain(raw)?;
    Ok((SourceRef::Image(id), ext))
}

/// A base64url source: of an image id, or of `s3://BUCKET/KEY`.
fn split_encoded_source(raw: &str) -> Result<(SourceRef, Option<OutputFormat>), ParseError> {
    let (enc, ext) = match raw.split_once('.') {
        Some((enc, ext)) => (enc, Some(OutputFormat::parse(ext)?)),
        None => (raw, None),
    };
    if let Ok(bytes) = URL_SAFE_NO_PAD.decode(enc.trim_end_matches('='))
        && let Ok(text) = std::str::from_utf8(&bytes)
        && text.starts_with("s3://")
    {
        return Ok((parse_s3_source(text)?, ext));
    }
    let (id, ext) = split_encoded(raw)?;
    Ok((SourceRef::Image(id), ext))
}

fn split_encoded(raw: &str) -> Result<(ImageId, Option<OutputFormat>), ParseError> {
    let (enc, ext) = match raw.split_once('.') {
        Some((enc, ext)) => (enc, Some(OutputFormat::parse(ext)?)),
        None => (raw, None),
    };
    let bad = || ParseError::InvalidSource("source is not base64url of an image id".into());
    let bytes = URL_SAFE_NO_PAD
        .decode(enc.trim_end_matches('='))
        .map_err(|_| bad())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    let id = ImageId::parse(text).ok_or_else(bad)?;
    Ok((id, ext))
}

/// One `name:arg:…` segment: its slice (unknown names refused), the `presets_only` rule, no
/// repeats within one option string, the argument count, then the slice's parser.
fn apply_option(
    spec: &mut TransformSpec,
    seg: &str,
    seen: &mut Vec<OptionName>,
    limits: &ParseLimits,
    in_preset: bool,
) -> Result<(), ParseError> {
    let mut parts = seg.split(':');
    let name = parts.next().unwrap_or_default();
    let args: Vec<&str> = parts.collect();
    let slice = OptionName::slice_of(name).ok_or_else(|| ParseError::UnknownOption(clip(name)))?;
    let canonical = slice.name.as_str();
    if limits.presets_only && !in_preset && !slice.name.allowed_with_presets_only() {
        return Err(ParseError::InvalidOption(format!(
            "only presets are allowed here, not `{canonical}`"
        )));
    }
    if seen.contains(&slice.name) {
        return Err(ParseError::InvalidOption(format!(
            "option `{canonical}` given more than once"
        )));
    }
    seen.push(slice.name);
    if args.is_empty() || args.len() > slice.max_args {
        return Err(ParseError::InvalidOption(format!(
            "`{name}` takes 1 to {} arguments",
            slice.max_args
        )));
    }
    (slice.apply)(spec, &args, &slices::Cx { limits, in_preset })
}

/// `width:height:enlarge:extend:gravity`, each optional.
fn apply_size(
    spec: &mut TransformSpec,
    args: &[&str],
    limits: &ParseLimits,
) -> Result<(), ParseError> {
    if let Some(w) = nonempty(args, 0) {
        spec.width = parse_dimension(w, limits.max_dimension)?;
    }
    if let Some(h) = nonempty(args, 1) {
        spec.height = parse_dimension(h, limits.max_dimension)?;
    }
    if let Some(e) = nonempty(args, 2) {
        spec.enlarge = parse_bool(e)?;
    }
    let extend = match nonempty(args, 3) {
        Some(x) => parse_bool(x)?,
        None => false,
    };
    let gravity = args.get(4..).filter(|g| !g.is_empty());
    match (extend, gravity) {
        (true, g) => {
            let (g, offset) = extend_gravity(g.unwrap_or_default())?;
            spec.extend = Some(g);
            spec.extend_offset = offset;
        }
        (false, Some(_)) => {
            return Err(ParseError::InvalidOption(
                "extend gravity without extend".into(),
            ));
        }
        (false, None) => {
            if nonempty(args, 3).is_some() {
                spec.extend = None;
            }
        }
    }
    Ok(())
}

/// The gravity of `ex`/`exar` (centre when not given; not smart).
fn extend_gravity(args: &[&str]) -> Result<(Gravity, Offset), ParseError> {
    if args.is_empty() {
        return Ok((Gravity::Center, [0, 0]));
    }
    let (g, offset) = parse_gravity(args)?;
    if g == Gravity::Smart {
        return Err(ParseError::InvalidOption(
            "extend cannot use smart gravity".into(),
        ));
    }
    Ok((g, offset))
}

/// `bg:R:G:B` (decimal) or `bg:RRGGBB` / `bg:RGB` (hex).
fn parse_color(args: &[&str]) -> Result<[u8; 3], ParseError> {
    let bad = || ParseError::InvalidOption("background is R:G:B (0..255) or RRGGBB hex".into());
    match args {
        [hex] if hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            let v = u32::from_str_radix(hex, 16).map_err(|_| bad())?;
            Ok([(v >> 16) as u8, (v >> 8) as u8, v as u8])
        }
        [hex] if hex.len() == 3 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            let v = u32::from_str_radix(hex, 16).map_err(|_| bad())?;
            Ok([
                (v >> 8) as u8 * 17,
                ((v >> 4) & 15) as u8 * 17,
                (v & 15) as u8 * 17,
            ])
        }
        [r, g, b] => {
            let c = |s: &str| -> Result<u8, ParseError> {
                let v = parse_u64(s, "colour component").map_err(|_| bad())?;
                u8::try_from(v).map_err(|_| bad())
            };
            Ok([c(r)?, c(g)?, c(b)?])
        }
        _ => Err(bad()),
    }
}

/// A sigma like `2` or `0.5`, in hundredths; 0 turns the effect off.
fn parse_sigma(s: &str, max_centi: u32, what: &str) -> Result<u32, ParseError> {
    match parse_fixed(s, 2) {
        Some(v) if v <= u64::from(max_centi) => Ok(v as u32),
        _ => Err(ParseError::InvalidOption(format!(
            "{what} sigma must be in [0, {}] with up to 2 decimals",
            max_centi / 100
        ))),
    }
}

/// An [`Offset`] component: a decimal with up to 3 places, `|v| ≤ 2048`; below 1 it is
/// relative (a fraction of the outer size).
fn parse_offset(s: &str) -> Result<i32, ParseError> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let v = match parse_fixed(digits, 3) {
        Some(v) if v <= u64::from(MAX_PADDING) * 1000 => v as i32,
        _ => {
            return Err(ParseError::InvalidOption(
                "offsets are numbers in ±2048 with up to 3 decimals (below 1: a fraction)".into(),
            ));
        }
    };
    Ok(if neg { -v } else { v })
}

/// `wm:opacity:position:x_offset:y_offset:scale`; opacity 0 turns the watermark off.
fn parse_watermark(args: &[&str]) -> Result<Option<Watermark>, ParseError> {
    let opacity = match parse_fixed(args[0], 3) {
        Some(v) if v <= 1000 => v as u16,
        _ => {
            return Err(ParseError::InvalidOption(
                "watermark opacity must be in [0, 1]".into(),
            ));
        }
    };
    if opacity == 0 {
        return Ok(None);
    }
    let replicate = nonempty(args, 1) == Some("re");
    let position = match nonempty(args, 1) {
        None | Some("re") => Gravity::Center,
        Some(p) => match parse_gravity(&[p])?.0 {
            Gravity::Smart | Gravity::FocusPoint { .. } => {
                return Err(ParseError::InvalidOption(
                    "watermark position must be ce, a side or re".into(),
                ));
            }
            g => g,
        },
    };
    let x_offset = nonempty(args, 2).map_or(Ok(0), parse_offset)?;
    let y_offset = nonempty(args, 3).map_or(Ok(0), parse_offset)?;
    let scale_milli = match nonempty(args, 4).map(|s| parse_fixed(s, 3)) {
        None => 0,
        Some(Some(v)) if v <= 1000 => v as u16,
        Some(_) => {
            return Err(ParseError::InvalidOption(
                "watermark scale must be in [0, 1]".into(),
            ));
        }
    };
    Ok(Some(Watermark {
        opacity_milli: opacity,
        position,
        replicate,
        x_offset,
        y_offset,
        scale_milli,
    }))
}

fn nonempty<'a>(args: &[&'a str], i: usize) -> Option<&'a str> {
    args.get(i).copied().filter(|s| !s.is_empty())
}

fn parse_u64(s: &str, what: &str) -> Result<u64, ParseError> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::InvalidOption(format!(
            "{what} must be a non-negative integer"
        )));
    }
    s.parse()
        .map_err(|_| ParseError::InvalidOption(format!("{what} is out of range")))
}

fn parse_dimension(s: &str, max: u32) -> Result<u32, ParseError> {
    let v = parse_u64(s, "dimension")?;
    if v > u64::from(max) {
        return Err(ParseError::InvalidOption(format!(
            "dimension {v} is over the limit of {max}"
        )));
    }
    Ok(v as u32)
}

fn parse_bool(s: &str) -> Result<bool, ParseError> {
    // Go's strconv.ParseBool, as imgproxy (which takes anything else as false; refused here).
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ParseError::InvalidOption(format!(
            "`{}` is not a boolean",
            clip(s)
        ))),
    }
}

/// A decimal like `2` or `1.5`, kept in thousandths; 0 < dpr ≤ 8.
fn parse_dpr(s: &str) -> Result<u32, ParseError> {
    let milli = parse_fixed(s, 3)
        .ok_or_else(|| ParseError::InvalidOption("dpr must be a number".into()))?;
    if milli == 0 || milli > u64::from(MAX_DPR_MILLI) {
        return Err(ParseError::InvalidOption("dpr must be in (0, 8]".into()));
    }
    Ok(milli as u32)
}

/// Parses a non-negative decimal with at most `places` fractional digits into an integer
/// scaled by 10^places. No floats, so equal inputs give equal canonical forms.
fn parse_fixed(s: &str, places: u32) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) || int.len() > 6 || frac.len() > places as usize {
        return None;
    }
    let int_v: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut frac_v: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..places as usize {
        frac_v *= 10;
    }
    Some(int_v * 10u64.pow(places) + frac_v)
}

/// `type[:x:y]` (imgproxy): a gravity and its offsets. `fp` takes exactly its two coordinates
/// in [0, 1]; `sm` takes none; the others up to two [`Offset`] components (empty: 0).
fn parse_gravity(args: &[&str]) -> Result<(Gravity, Offset), ParseError> {
    let g = match args[0] {
        "ce" => Gravity::Center,
        "no" => Gravity::North,
        "so" => Gravity::South,
        "ea" => Gravity::East,
        "we" => Gravity::West,
        "noea" => Gravity::NorthEast,
        "nowe" => Gravity::NorthWest,
        "soea" => Gravity::SouthEast,
        "sowe" => Gravity::SouthWest,
        "fp" => {
            if args.len() != 3 {
                return Err(ParseError::InvalidOption("g:fp takes x and y".into()));
            }
            let coord = |s: &str| -> Result<u16, ParseError> {
                match parse_fixed(s, 4) {
                    Some(v) if v <= 10_000 => Ok(v as u16),
                    _ => Err(ParseError::InvalidOption(
                        "focus point coordinates must be in [0, 1] with up to 4 decimals".into(),
                    )),
                }
            };
            return Ok((
                Gravity::FocusPoint {
                    x: coord(args[1])?,
                    y: coord(args[2])?,
                },
                [0, 0],
            ));
        }
        "sm" => {
            if args.len() > 1 {
                return Err(ParseError::InvalidOption(
                    "smart gravity takes no offsets".into(),
                ));
            }
            return Ok((Gravity::Smart, [0, 0]));
        }
        other => {
            return Err(ParseError::InvalidOption(format!(
                "unknown gravity `{}`",
                clip(other)
            )));
        }
    };
    if args.len() > 3 {
        return Err(ParseError::InvalidOption(
            "a gravity takes at most two offsets".into(),
        ));
    }
    let x = nonempty(args, 1).map_or(Ok(0), parse_offset)?;
    let y = nonempty(args, 2).map_or(Ok(0), parse_offset)?;
    Ok((g, [x, y]))
}

/// A `c:` size: whole pixels (a fraction is dropped, as imgproxy's `int()`), or below 1 a
/// fraction of the source; in thousandths ([`Crop::width`]).
fn parse_crop_size(s: &str, max_dimension: u32) -> Result<u32, ParseError> {
    let bad = || {
        ParseError::InvalidOption(format!(
            "crop sizes are pixels up to {max_dimension} or fractions below 1"
        ))
    };
    let v = parse_fixed(s, 3).ok_or_else(bad)?;
    if v >= 1000 {
        let px = v / 1000;
        if px > u64::from(max_dimension) {
            return Err(bad());
        }
        return Ok((px * 1000) as u32);
    }
    Ok(v as u32)
}

/// Writes a thousandths value the way the URL grammar reads it (`12`, `0.5`, `-0.125`).
pub(crate) fn milli_text(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    if a.is_multiple_of(1000) {
        format!("{sign}{}", a / 1000)
    } else {
        let frac = format!("{:03}", a % 1000);
        format!("{sign}{}.{}", a / 1000, frac.trim_end_matches('0'))
    }
}

/// Bounds what user input may echo back into an error message.
fn clip(s: &str) -> String {
    s.chars()
        .take(32)
        .filter(|c| !c.is_control())
        .collect::<String>()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";
    const LIMITS: ParseLimits = ParseLimits {
        max_dimension: 16_383,
        presets: std::collections::BTreeMap::new(),
        presets_only: false,
    };

    fn parse(p: &str) -> Result<TransformRequest, ParseError> {
        parse_path(p, &LIMITS)
    }

    fn with_presets(only: bool) -> ParseLimits {
        let mut presets = std::collections::BTreeMap::new();
        presets.insert("thumb".to_owned(), "rs:fill:150:150/q:70".to_owned());
        presets.insert("gray".to_owned(), "fi:grayscale".to_owned());
        ParseLimits {
            presets,
            presets_only: only,
            ..LIMITS
        }
    }

    fn b64(id: &str) -> String {
        URL_SAFE_NO_PAD.encode(id)
    }

    #[test]
    fn plain_and_encoded_sources() {
        let r = parse(&format!("/rs:fit:300:200/plain/{ID}")).unwrap();
        assert_eq!(r.image.as_str(), ID);
        assert_eq!((r.spec.width, r.spec.height), (300, 200));
        assert_eq!(r.spec.format, None);

        let r = parse(&format!("/w:10/plain/{ID}@webp")).unwrap();
        assert_eq!(r.spec.format, Some(OutputFormat::Webp));

        let enc = b64(ID);
        let r = parse(&format!("/w:10/{enc}.png")).unwrap();
        assert_eq!(r.image.as_str(), ID);
        assert_eq!(r.spec.format, Some(OutputFormat::Png));

        // Split base64 source, as imgproxy clients produce.
        let (a, b) = enc.split_at(16);
        let r = parse(&format!("/w:10/{a}/{b}")).unwrap();
        assert_eq!(r.image.as_str(), ID);

        // No options at all is a valid re-encode.
        let r = parse(&format!("/plain/{ID}")).unwrap();
        assert_eq!(r.spec, TransformSpec::default());
    }

    #[test]
    fn every_option_parses() {
        let r = parse(&format!(
            "/rs:fill:300:400:1/g:noea/q:75/f:webp/exp:2000000000/cb:v2/dpr:1.5/plain/{ID}"
        ))
        .unwrap();
        let s = r.spec;
        assert_eq!(s.resizing_type, ResizingType::Fill);
        assert_eq!((s.width, s.height, s.enlarge), (300, 400, true));
        assert_eq!(s.gravity, Gravity::NorthEast);
        assert_eq!(s.quality, Some(75));
        assert_eq!(s.format, Some(OutputFormat::Webp));
        assert_eq!(s.expires, Some(2_000_000_000));
        assert_eq!(s.cachebuster.as_deref(), Some("v2"));
        assert_eq!(s.dpr_milli, 1500);
        assert_eq!(crate::image::plan(3000, 4000, &s).target, (450, 600));

        let r = parse(&format!(
            "/resizing_type:force/width:5/height:6/enlarge:t/gravity:fp:0.25:1/quality:0/format:jpg/plain/{ID}"
        ))
        .unwrap();
        assert_eq!(r.spec.resizing_type, ResizingType::Force);
        assert_eq!(r.spec.gravity, Gravity::FocusPoint { x: 2500, y: 10000 });
        assert_eq!(r.spec.quality, None);
        assert_eq!(r.spec.format, Some(OutputFormat::Jpeg));

        for t in ["fit", "fill", "fill-down", "force", "auto"] {
            parse(&format!("/rt:{t}/plain/{ID}")).unwrap();
        }
        for g in ["ce", "no", "so", "ea", "we", "noea", "nowe", "soea", "sowe"] {
            parse(&format!("/g:{g}/plain/{ID}")).unwrap();
        }
    }

    #[test]
    fn canonical_form_ignores_spelling() {
        let a = parse(&format!("/rs:fit:300:200/plain/{ID}")).unwrap().spec;
        let b = parse(&format!("/w:300/h:200/cb:xyz/plain/{ID}"))
            .unwrap()
            .spec;
        let c = parse(&format!("/resize::300:200:0/resizing_type:fit/plain/{ID}"))
            .unwrap()
            .spec;
        let d = parse(&format!("/s:300:200/dpr:1.000/{}", b64(ID)))
            .unwrap()
            .spec;
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(a.canonical(), c.canonical());
        assert_eq!(a.canonical(), d.canonical());
        let e = parse(&format!("/rs:fill:300:200/plain/{ID}")).unwrap().spec;
        assert_ne!(a.canonical(), e.canonical());
    }

    /// `bad` is refused as a bad option value (or an unsupported format), never as anything else.
    fn assert_option_refused(bad: &str) {
        let e = parse(&format!("/{bad}/plain/{ID}")).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::InvalidOption(_) | ParseError::UnsupportedFormat(_)
            ),
            "{bad}: {e:?}"
        );
    }

    #[test]
    fn filename_attachment_and_auto_format_leave_the_result_alone() {
        let plain = parse(&format!("/rs:fit:300:200/plain/{ID}")).unwrap().spec;
        let r = parse(&format!(
            "/rs:fit:300:200/fn:my%20cat%C3%A9/att:1/f:auto/plain/{ID}"
        ))
        .unwrap()
        .spec;
        assert_eq!(r.filename.as_deref(), Some("my caté"));
        assert!(r.attachment);
        assert_eq!(r.format, None);
        // Headers, not bytes: one cache entry for both.
        assert_eq!(r.canonical(), plain.canonical());
        let enc = parse(&format!(
            "/filename:{}:1/return_attachment:0/plain/{ID}",
            b64("Ünïcode name")
        ))
        .unwrap()
        .spec;
        assert_eq!(enc.filename.as_deref(), Some("Ünïcode name"));
        assert!(!enc.attachment);
        let long = "a".repeat(256);
        for bad in [
            "fn:a%00b".to_owned(),
            "fn:a%2Fb".to_owned(),
            "fn:a%5Cb".to_owned(),
            "fn:%zz".to_owned(),
            "fn:%FF".to_owned(),
            format!("fn:{long}"),
            "fn:!!!:1".to_owned(),
            "fn:a:maybe".to_owned(),
            "att:2".to_owned(),
            "f:best".to_owned(),
        ] {
            assert_option_refused(&bad);
        }
    }

    #[test]
    fn format_quality_overrides_quality_per_format() {
        let s = parse(&format!("/q:80/fq:webp:60:jpeg:70:webp:55/plain/{ID}"))
            .unwrap()
            .spec;
        assert_eq!(s.quality_for(OutputFormat::Webp, 90), 55);
        assert_eq!(s.quality_for(OutputFormat::Jpeg, 90), 70);
        assert_eq!(s.quality_for(OutputFormat::Avif, 90), 80);
        assert_eq!(s.format_quality_token(), "jpg:70:webp:55");
        // 0 falls back to q; no q: the default.
        let s = parse(&format!("/fq:jpg:70:jpg:0/plain/{ID}")).unwrap().spec;
        assert_eq!(s.quality_for(OutputFormat::Jpeg, 90), 90);
        assert_eq!(s.format_quality_token(), "");
        for bad in [
            "fq:webp",
            "fq:webp:101",
            "fq:bmp:50",
            "fq:webp:x",
            "fq:webp:-1",
        ] {
            assert_option_refused(bad);
        }
    }

    #[test]
    fn imgproxy_geometry_options_parse() {
        let s = parse(&format!(
            "/mw:150/min-height:90/z:1.5:2/g:no:0:10/c:0.5:0.25:ea:-0.1:12.5/ex:1:sowe:3:4\
             /exar:t:no/t:10:fff:1:0/mb:10000/sp:svg:jpeg/da:1/plain/{ID}"
        ))
        .unwrap()
        .spec;
        assert_eq!((s.min_width, s.min_height), (150, 90));
        assert_eq!(s.zoom_milli, [1500, 2000]);
        assert_eq!((s.gravity, s.gravity_offset), (Gravity::North, [0, 10_000]));
        assert_eq!(
            s.crop,
            Some(Crop {
                width: 500,
                height: 250,
                gravity: Some(Gravity::East),
                offset: [-100, 12_500],
            })
        );
        assert_eq!(
            (s.extend, s.extend_offset),
            (Some(Gravity::SouthWest), [3000, 4000])
        );
        assert_eq!(s.extend_aspect, Some(Gravity::North));
        assert_eq!(
            s.trim,
            Some(Trim {
                threshold: 10,
                color: Some([255, 255, 255]),
                equal_hor: true,
                equal_ver: false,
            })
        );
        assert_eq!(s.max_bytes, 10_000);
        assert_eq!(s.skip_processing, ["jpg", "svg"]);
        assert!(s.disable_animation && !s.raw);
        assert!(s.serves_original("jpg") && !s.serves_original("png"));
        assert_eq!(
            s.canonical(),
            "rt:fit/w:0/h:0/dpr:1000/el:0/g:no:0:10/mw:150/mh:90/z:1500:2000\
             /c:0.5:0.25:ea:-0.1:12.5/ex:sowe:3:4/exar:no/t:10:ffffff:1:0/mb:10000/da:1"
        );
        // One zoom factor zooms both axes; `z:1`, `t:` (empty threshold) and `exar:0` are off.
        let s = parse(&format!("/z:2/plain/{ID}")).unwrap().spec;
        assert_eq!(s.zoom_milli, [2000, 2000]);
        let off = parse(&format!("/z:1/t:/exar:0/mb:0/plain/{ID}"))
            .unwrap()
            .spec;
        assert_eq!(off.canonical(), TransformSpec::default().canonical());
        // Whole-pixel crops keep their canonical text (existing keys); imgproxy truncates.
        let c = parse(&format!("/c:400.9:300/plain/{ID}")).unwrap().spec;
        assert!(c.canonical().ends_with("/c:400:300:-"));
        // Watermark tiling, relative offsets; imgproxy's skp and the Node client's sp.
        let w = parse(&format!("/wm:0.5:re:10:0.1:0.2/skp:png/raw:1/plain/{ID}"))
            .unwrap()
            .spec;
        let wm = w.watermark.unwrap();
        assert!(wm.replicate && wm.x_offset == 10_000 && wm.y_offset == 100);
        assert!(w.canonical().ends_with("/wm:500:re:10:0.1:200"));
        assert!(w.raw && w.serves_original("gif"));
    }

    #[test]
    fn info_paths() {
        let r = parse_info_path(&format!("/d:t/exif:t:t/plain/{ID}"));
        assert_eq!(r, Err(ParseError::UnknownOption("exif".into())));
        let r =
            parse_info_path(&format!("/d:t/s:t/bh:4:3/exp:4102444800/cb:x/{}", b64(ID))).unwrap();
        assert_eq!(r.image.as_str(), ID);
        assert_eq!(r.expires, Some(4_102_444_800));
        assert!(parse_info_path(&format!("/plain/{ID}@png")).is_ok());
        for bad in [
            format!("/s:t/size:f/plain/{ID}"),
            format!("/exp:1/expires:2/plain/{ID}"),
            format!("/exp:x/plain/{ID}"),
            format!("/s:t:t:t/plain/{ID}"),
            format!("/rs:fit:1:1/plain/{ID}"),
            "/s:t".to_owned(),
            format!("//plain/{ID}"),
            "/plain/../x".to_owned(),
        ] {
            assert!(parse_info_path(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_and_malformed_paths_are_refused() {
        let enc = b64(ID);
        let cases: Vec<(String, &str)> = vec![
            (format!("/xx:1/plain/{ID}"), "unknown_option"),
            (format!("/extend:maybe/plain/{ID}"), "invalid_option"),
            (format!("/ex:1:sm/plain/{ID}"), "invalid_option"),
            (format!("/c:10/plain/{ID}"), "invalid_option"),
            (format!("/c:10:10:up/plain/{ID}"), "invalid_option"),
            (format!("/rot:45/plain/{ID}"), "invalid_option"),
            (format!("/rot:-90/plain/{ID}"), "invalid_option"),
            (format!("/fl:1:1:1/plain/{ID}"), "invalid_option"),
            (format!("/bg:ffff/plain/{ID}"), "invalid_option"),
            (format!("/bg:256:0:0/plain/{ID}"), "invalid_option"),
            (format!("/bg:1:2/plain/{ID}"), "invalid_option"),
            (format!("/bg:gggggg/plain/{ID}"), "invalid_option"),
            (format!("/pd:1:2:3:4:5/plain/{ID}"), "invalid_option"),
            (format!("/pd:99999/plain/{ID}"), "invalid_option"),
            (format!("/bl:101/plain/{ID}"), "invalid_option"),
            (format!("/bl:-1/plain/{ID}"), "invalid_option"),
            (format!("/bl:1.234/plain/{ID}"), "invalid_option"),
            (format!("/sh:11/plain/{ID}"), "invalid_option"),
            (format!("/fi:vintage/plain/{ID}"), "invalid_option"),
            (format!("/wm:2/plain/{ID}"), "invalid_option"),
            (format!("/wm:0.5:sm/plain/{ID}"), "invalid_option"),
            (format!("/wm:0.5:ce:99999/plain/{ID}"), "invalid_option"),
            (format!("/wm:0.5:ce:0:0:2/plain/{ID}"), "invalid_option"),
            (format!("/pr:nope/plain/{ID}"), "invalid_option"),
            (format!("/ar:2/plain/{ID}"), "invalid_option"),
            (format!("/w:abc/plain/{ID}"), "invalid_option"),
            (format!("/w:-1/plain/{ID}"), "invalid_option"),
            (format!("/w:+1/plain/{ID}"), "invalid_option"),
            (format!("/w:16384/plain/{ID}"), "invalid_option"),
            (
                format!("/w:99999999999999999999999/plain/{ID}"),
                "invalid_option",
            ),
            (format!("/w:1/w:2/plain/{ID}"), "invalid_option"),
            (format!("/w:1/width:2/plain/{ID}"), "invalid_option"),
            (format!("/w:/plain/{ID}"), "invalid_option"),
            (format!("/w/plain/{ID}"), "invalid_source"),
            (format!("/w:1:2/plain/{ID}"), "invalid_option"),
            (format!("/rs:squash:1:1/plain/{ID}"), "invalid_option"),
            (format!("/rs:fit:1:1:0:1:sm/plain/{ID}"), "invalid_option"),
            (format!("/rs:fit:1:1:0:0:9/plain/{ID}"), "invalid_option"),
            (
                format!("/rs:fit:1:1:0:0:ce:1:1:1/plain/{ID}"),
                "invalid_option",
            ),
            (format!("/el:maybe/plain/{ID}"), "invalid_option"),
            (format!("/g:ce:99999:0/plain/{ID}"), "invalid_option"),
            (format!("/g:ce:1e3:0/plain/{ID}"), "invalid_option"),
            (format!("/g:ce:0.0001:0/plain/{ID}"), "invalid_option"),
            (format!("/g:sm:1:1/plain/{ID}"), "invalid_option"),
            (format!("/g:no:1:2:3/plain/{ID}"), "invalid_option"),
            (format!("/g:fp:0.5:0.5:1/plain/{ID}"), "invalid_option"),
            (format!("/c:0.5:-1/plain/{ID}"), "invalid_option"),
            (format!("/c:16384:1/plain/{ID}"), "invalid_option"),
            (format!("/c:1:1:ce:x/plain/{ID}"), "invalid_option"),
            (format!("/z:0/plain/{ID}"), "invalid_option"),
            (format!("/z:101/plain/{ID}"), "invalid_option"),
            (format!("/z:1:2:3/plain/{ID}"), "invalid_option"),
            (format!("/mw:16384/plain/{ID}"), "invalid_option"),
            (format!("/mh:-5/plain/{ID}"), "invalid_option"),
            (format!("/exar:1:sm/plain/{ID}"), "invalid_option"),
            (format!("/exar:maybe/plain/{ID}"), "invalid_option"),
            (format!("/t:256/plain/{ID}"), "invalid_option"),
            (format!("/t:-1/plain/{ID}"), "invalid_option"),
            (format!("/t:10:zzzzzz/plain/{ID}"), "invalid_option"),
            (format!("/t:10::2/plain/{ID}"), "invalid_option"),
            (format!("/t:1:2:3:4:5/plain/{ID}"), "invalid_option"),
            (format!("/mb:-1/plain/{ID}"), "invalid_option"),
            (format!("/mb:1.5/plain/{ID}"), "invalid_option"),
            (format!("/sp:exe/plain/{ID}"), "unsupported_format"),
            (format!("/raw:2/plain/{ID}"), "invalid_option"),
            (format!("/da:maybe/plain/{ID}"), "invalid_option"),
            (format!("/wm:0.5:re:-99999/plain/{ID}"), "invalid_option"),
            (format!("/g:fp:1.5:0/plain/{ID}"), "invalid_option"),
            (format!("/g:up/plain/{ID}"), "invalid_option"),
            (format!("/q:101/plain/{ID}"), "invalid_option"),
            (format!("/dpr:0/plain/{ID}"), "invalid_option"),
            (format!("/dpr:9/plain/{ID}"), "invalid_option"),
            (format!("/dpr:1e3/plain/{ID}"), "invalid_option"),
            (format!("/dpr:NaN/plain/{ID}"), "invalid_option"),
            (format!("/exp:soon/plain/{ID}"), "invalid_option"),
            (format!("/cb:a%2Fb/plain/{ID}"), "invalid_option"),
            (format!("/f:heic/plain/{ID}"), "unsupported_format"),
            (format!("/plain/{ID}@tiff"), "unsupported_format"),
            (format!("/f:png/plain/{ID}@webp"), "invalid_option"),
            (format!("/plain/{ID}/extra"), "invalid_source"),
            ("/plain/../../etc/passwd".to_owned(), "invalid_source"),
            ("/plain/s3://bucket/key".to_owned(), "invalid_source"),
            ("/plain/".to_owned(), "invalid_source"),
            ("/w:10".to_owned(), "invalid_source"),
            ("/".to_owned(), "invalid_source"),
            ("w:1".to_owned(), "invalid_source"),
            (format!("/w:1//plain/{ID}"), "invalid_source"),
            (format!("/{enc}/w:10"), "invalid_source"),
            ("/aGVsbG8".to_owned(), "invalid_source"),
            ("/!!!!".to_owned(), "invalid_source"),
        ];
        for (path, code) in cases {
            match parse(&path) {
                Ok(r) => panic!("{path} parsed: {r:?}"),
                Err(e) => assert_eq!(
                    crate::http::error::Error::from(e.clone()).code(),
                    code,
                    "{path}: {e}"
                ),
            }
        }
    }

    #[test]
    fn geometry_and_effect_options_parse() {
        let s = parse(&format!(
            "/c:400:300:sowe/ar:0/rot:270/fl:1/bg:10:20:30/pd:5:6/ex:1:no/bl:1.5/sh:0.75/fi:sepia/wm:0.5:soea:10:-4:0.25/g:sm/plain/{ID}"
        ))
        .unwrap()
        .spec;
        assert_eq!(
            s.crop,
            Some(Crop {
                width: 400_000,
                height: 300_000,
                gravity: Some(Gravity::SouthWest),
                offset: [0, 0],
            })
        );
        assert!(!s.auto_rotate);
        assert_eq!(s.rotate, 270);
        assert!(s.flip_horizontal && !s.flip_vertical);
        assert_eq!(s.background, Some([10, 20, 30]));
        assert_eq!(s.padding, [5, 6, 5, 6]);
        assert_eq!(s.extend, Some(Gravity::North));
        assert_eq!((s.blur_centi, s.sharpen_centi), (150, 75));
        assert_eq!(s.filter, Some(Filter::Sepia));
        assert_eq!(
            s.watermark,
            Some(Watermark {
                opacity_milli: 500,
                position: Gravity::SouthEast,
                replicate: false,
                x_offset: 10_000,
                y_offset: -4000,
                scale_milli: 250
            })
        );
        assert_eq!(s.gravity, Gravity::Smart);
        // Every non-default option shows in the canonical form, hex and decimal bg agree.
        let c = s.canonical();
        for part in [
            "/c:400:300:sowe",
            "/ar:0",
            "/rot:270",
            "/fl:1:0",
            "/bg:0a141e",
            "/pd:5:6:5:6",
        ] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        let hex = parse(&format!("/bg:0A141E/plain/{ID}")).unwrap().spec;
        let dec = parse(&format!("/bg:10:20:30/plain/{ID}")).unwrap().spec;
        assert_eq!(hex.canonical(), dec.canonical());
        // Padding shorthands, extend through rs, crop with a focus point, wm:0 is off.
        assert_eq!(
            parse(&format!("/pd:1/plain/{ID}")).unwrap().spec.padding,
            [1; 4]
        );
        assert_eq!(
            parse(&format!("/pd:1:2:3/plain/{ID}"))
                .unwrap()
                .spec
                .padding,
            [1, 2, 3, 2]
        );
        let r = parse(&format!("/rs:fit:100:100:0:1:we/plain/{ID}"))
            .unwrap()
            .spec;
        assert_eq!(r.extend, Some(Gravity::West));
        let r = parse(&format!("/c:0:100:fp:0.5:0.25/plain/{ID}"))
            .unwrap()
            .spec;
        assert_eq!(
            r.crop.unwrap().gravity,
            Some(Gravity::FocusPoint { x: 5000, y: 2500 })
        );
        assert_eq!(
            parse(&format!("/wm:0/plain/{ID}")).unwrap().spec.watermark,
            None
        );
        // Defaults do not change the canonical form of a plain resize.
        let plain = parse(&format!("/w:10/plain/{ID}")).unwrap().spec;
        let defaults = parse(&format!(
            "/w:10/ar:1/rot:0/fl:0:0/bl:0/sh:0/fi:none/plain/{ID}"
        ))
        .unwrap()
        .spec;
        assert_eq!(plain.canonical(), defaults.canonical());
    }

    #[test]
    fn presets_expand_and_presets_only_refuses_the_rest() {
        let limits = with_presets(false);
        let s = parse_path(&format!("/pr:thumb:gray/plain/{ID}"), &limits)
            .unwrap()
            .spec;
        assert_eq!((s.width, s.height), (150, 150));
        assert_eq!(s.resizing_type, ResizingType::Fill);
        assert_eq!(s.quality, Some(70));
        assert_eq!(s.filter, Some(Filter::Grayscale));
        // The URL may override what a preset set.
        let s = parse_path(&format!("/pr:thumb/q:90/plain/{ID}"), &limits)
            .unwrap()
            .spec;
        assert_eq!(s.quality, Some(90));
        // A `default` preset applies to every URL.
        let mut with_default = with_presets(false);
        with_default
            .presets
            .insert("default".to_owned(), "q:55".to_owned());
        let s = parse_path(&format!("/w:10/plain/{ID}"), &with_default)
            .unwrap()
            .spec;
        assert_eq!(s.quality, Some(55));

        let only = with_presets(true);
        parse_path(&format!("/pr:thumb/f:webp/cb:1/plain/{ID}"), &only).unwrap();
        let e = parse_path(&format!("/pr:thumb/w:10/plain/{ID}"), &only).unwrap_err();
        assert!(matches!(e, ParseError::InvalidOption(_)), "{e}");
        let e = parse_path(&format!("/w:10/plain/{ID}"), &only).unwrap_err();
        assert!(matches!(e, ParseError::InvalidOption(_)), "{e}");

        // Configured presets are validated: no nesting, no garbage, not empty.
        assert!(validate_preset("t", "rs:fill:10:10/q:70", 16_383).is_ok());
        assert!(validate_preset("t", "pr:thumb", 16_383).is_err());
        assert!(validate_preset("t", "zz:1", 16_383).is_err());
        assert!(validate_preset("t", "w:1/w:2", 16_383).is_err());
        assert!(validate_preset("t", "", 16_383).is_err());
        assert!(validate_preset("t", "f:webp/exp:99", 16_383).is_ok());
        assert!(validate_preset("default", "f:webp", 16_383).is_err());
        assert!(validate_preset("default", "exp:99", 16_383).is_err());
    }

    #[test]
    fn error_messages_do_not_echo_long_or_control_input() {
        let e = parse(&format!("/{}:1/plain/{ID}", "a".repeat(500))).unwrap_err();
        assert!(e.to_string().len() < 100);
        let e = parse(&format!("/rt:a\u{7}b/plain/{ID}")).unwrap_err();
        assert!(!e.to_string().contains('\u{7}'));
    }
}
