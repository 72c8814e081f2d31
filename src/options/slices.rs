//! One slice per option of the URL grammar: its names, how many arguments it takes, how it
//! parses into the [`TransformSpec`], and how it writes its part of the canonical form. A new
//! option is one [`OptionName`] variant, one row of [`SLICES`] and its two functions here.
//!
//! The canonical form is written slice by slice in the order of [`SLICES`]; options that
//! share fields (`rs`, `s`, `w`, `h`, `rt`, `dpr`, `el`, `g` all set the resize box) leave the
//! writing to the first of them. The order and every writer's text are part of every cache
//! key: changing either changes the keys of existing URLs (bump `PIPELINE_VERSION` then).

use std::fmt::Write as _;

use super::{
    Crop, Filter, Gravity, MAX_BLUR_CENTI, MAX_CACHEBUSTER_LEN, MAX_PADDING, MAX_PIXELATE,
    MAX_PRESETS, MAX_SHARPEN_CENTI, MAX_ZOOM_MILLI, Offset, OutputFormat, ParseError, ParseLimits,
    ResizingType, TransformSpec, Trim, apply_preset_string, apply_size, clip, extend_gravity,
    milli_text, nonempty, parse_bool, parse_color, parse_crop_size, parse_dimension, parse_dpr,
    parse_fixed, parse_gravity, parse_sigma, parse_u64, parse_watermark,
};

/// Every option, by canonical name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionName {
    Resize,
    Size,
    ResizingType,
    Width,
    Height,
    MinWidth,
    MinHeight,
    Zoom,
    Dpr,
    Enlarge,
    Gravity,
    Quality,
    Format,
    Expires,
    Cachebuster,
    Crop,
    AutoRotate,
    Rotate,
    Flip,
    Background,
    Padding,
    Extend,
    ExtendAspectRatio,
    Trim,
    Blur,
    Sharpen,
    Pixelate,
    Filter,
    Watermark,
    Filename,
    ReturnAttachment,
    FormatQuality,
    MaxBytes,
    StripMetadata,
    KeepCopyright,
    StripColorProfile,
    EnforceThumbnail,
    SkipProcessing,
    Raw,
    DisableAnimation,
    Preset,
}

/// What an option's parser may consult.
pub(super) struct Cx<'a> {
    pub limits: &'a ParseLimits,
    /// Parsing a preset's own option string (presets cannot name presets).
    pub in_preset: bool,
}

type Apply = fn(&mut TransformSpec, &[&str], &Cx<'_>) -> Result<(), ParseError>;
type Write = fn(&TransformSpec, &mut String);

/// One option: names (canonical first), argument count, parser, canonical writer.
pub(super) struct Slice {
    pub name: OptionName,
    pub names: &'static [&'static str],
    pub max_args: usize,
    pub apply: Apply,
    /// `None`: another slice writes the fields this one sets (or none: quality, format,
    /// expiry and cachebuster are not part of the canonical transform).
    pub write: Option<Write>,
}

/// Every option, in canonical-form order.
pub(super) const SLICES: &[Slice] = &[
    slice(
        OptionName::Resize,
        &["resize", "rs"],
        8,
        resize,
        Some(write_box),
    ),
    slice(OptionName::Size, &["size", "s"], 7, size, None),
    slice(
        OptionName::ResizingType,
        &["resizing_type", "rt"],
        1,
        resizing_type,
        None,
    ),
    slice(OptionName::Width, &["width", "w"], 1, width, None),
    slice(OptionName::Height, &["height", "h"], 1, height, None),
    slice(
        OptionName::MinWidth,
        &["min-width", "min_width", "mw"],
        1,
        min_width,
        Some(write_min_width),
    ),
    slice(
        OptionName::MinHeight,
        &["min-height", "min_height", "mh"],
        1,
        min_height,
        Some(write_min_height),
    ),
    slice(OptionName::Zoom, &["zoom", "z"], 2, zoom, Some(write_zoom)),
    slice(OptionName::Dpr, &["dpr"], 1, dpr, None),
    slice(OptionName::Enlarge, &["enlarge", "el"], 1, enlarge, None),
    slice(OptionName::Gravity, &["gravity", "g"], 3, gravity, None),
    slice(OptionName::Quality, &["quality", "q"], 1, quality, None),
    slice(OptionName::Format, &["format", "f", "ext"], 1, format, None),
    slice(OptionName::Expires, &["expires", "exp"], 1, expires, None),
    slice(
        OptionName::Cachebuster,
        &["cachebuster", "cb"],
        1,
        cachebuster,
        None,
    ),
    slice(OptionName::Crop, &["crop", "c"], 5, crop, Some(write_crop)),
    slice(
        OptionName::AutoRotate,
        &["auto_rotate", "ar"],
        1,
        auto_rotate,
        Some(write_auto_rotate),
    ),
    slice(
        OptionName::Rotate,
        &["rotate", "rot"],
        1,
        rotate,
        Some(write_rotate),
    ),
    slice(OptionName::Flip, &["flip", "fl"], 2, flip, Some(write_flip)),
    slice(
        OptionName::Background,
        &["background", "bg"],
        3,
        background,
        Some(write_background),
    ),
    slice(
        OptionName::Padding,
        &["padding", "pd"],
        4,
        padding,
        Some(write_padding),
    ),
    slice(
        OptionName::Extend,
        &["extend", "ex"],
        4,
        extend,
        Some(write_extend),
    ),
    slice(
        OptionName::ExtendAspectRatio,
        &["extend_aspect_ratio", "extend_ar", "exar"],
        4,
        extend_aspect_ratio,
        Some(write_extend_aspect_ratio),
    ),
    slice(OptionName::Trim, &["trim", "t"], 4, trim, Some(write_trim)),
    slice(OptionName::Blur, &["blur", "bl"], 1, blur, Some(write_blur)),
    slice(
        OptionName::Sharpen,
        &["sharpen", "sh"],
        1,
        sharpen,
        Some(write_sharpen),
    ),
    slice(
        OptionName::Pixelate,
        &["pixelate", "pix"],
        1,
        pixelate,
        Some(write_pixelate),
    ),
    slice(
        OptionName::Filter,
        &["filter", "fi"],
        1,
        filter,
        Some(write_filter),
    ),
    slice(
        OptionName::Watermark,
        &["watermark", "wm"],
        5,
        watermark,
        Some(write_watermark),
    ),
    slice(OptionName::Filename, &["filename", "fn"], 2, filename, None),
    slice(
        OptionName::FormatQuality,
        &["format_quality", "fq"],
        8,
        format_quality,
        None,
    ),
    slice(
        OptionName::ReturnAttachment,
        &["return_attachment", "att"],
        1,
        return_attachment,
        None,
    ),
    slice(
        OptionName::MaxBytes,
        &["max_bytes", "mb"],
        1,
        max_bytes,
        Some(write_max_bytes),
    ),
    slice(
        OptionName::StripMetadata,
        &["strip_metadata", "sm"],
        1,
        strip_metadata,
        Some(write_strip_metadata),
    ),
    slice(
        OptionName::KeepCopyright,
        &["keep_copyright", "kcr"],
        1,
        keep_copyright,
        Some(write_keep_copyright),
    ),
    slice(
        OptionName::StripColorProfile,
        &["strip_color_profile", "scp"],
        1,
        strip_color_profile,
        Some(write_strip_color_profile),
    ),
    slice(
        OptionName::EnforceThumbnail,
        &["enforce_thumbnail", "eth"],
        1,
        enforce_thumbnail,
        Some(write_enforce_thumbnail),
    ),
    slice(
        OptionName::SkipProcessing,
        &["skip_processing", "skp", "sp"],
        MAX_SKIP_FORMATS,
        skip_processing,
        None,
    ),
    slice(OptionName::Raw, &["raw"], 1, raw, None),
    slice(
        OptionName::DisableAnimation,
        &["disable_animation", "da"],
        1,
        disable_animation,
        Some(write_disable_animation),
    ),
    slice(
        OptionName::Preset,
        &["preset", "pr"],
        MAX_PRESETS,
        preset,
        None,
    ),
];

const fn slice(
    name: OptionName,
    names: &'static [&'static str],
    max_args: usize,
    apply: Apply,
    write: Option<Write>,
) -> Slice {
    Slice {
        name,
        names,
        max_args,
        apply,
        write,
    }
}

impl OptionName {
    /// The option a URL name or alias denotes.
    pub(super) fn slice_of(name: &str) -> Option<&'static Slice> {
        SLICES.iter().find(|s| s.names.contains(&name))
    }

    /// The canonical (long) name.
    pub fn as_str(self) -> &'static str {
        SLICES
            .iter()
            .find(|s| s.name == self)
            .map_or("", |s| s.names[0])
    }

    /// Options allowed next to presets when `transform.presets_only` is set.
    pub(super) fn allowed_with_presets_only(self) -> bool {
        matches!(
            self,
            OptionName::Preset | OptionName::Format | OptionName::Expires | OptionName::Cachebuster
        )
    }
}

/// The canonical form: each slice's writer, in table order.
pub(super) fn write_canonical(spec: &TransformSpec) -> String {
    let mut out = String::new();
    for write in SLICES.iter().filter_map(|s| s.write) {
        write(spec, &mut out);
    }
    out
}

fn resize(spec: &mut TransformSpec, args: &[&str], cx: &Cx<'_>) -> Result<(), ParseError> {
    if let Some(t) = nonempty(args, 0) {
        spec.resizing_type = ResizingType::parse(t)?;
    }
    apply_size(spec, &args[1..], cx.limits)
}

/// The resize box, always present: `rt:…/w:…/h:…/dpr:…/el:…/g:…`.
fn write_box(spec: &TransformSpec, out: &mut String) {
    // `write!` into a String cannot fail.
    let _ = write!(
        out,
        "rt:{}/w:{}/h:{}/dpr:{}/el:{}/g:{}{}",
        spec.resizing_type.as_str(),
        spec.width,
        spec.height,
        spec.dpr_milli,
        u8::from(spec.enlarge),
        spec.gravity.canonical(),
        offset_text(spec.gravity_offset)
    );
}

/// `:x:y` of non-zero gravity offsets, empty otherwise (existing keys are unchanged).
fn offset_text([x, y]: Offset) -> String {
    if x == 0 && y == 0 {
        String::new()
    } else {
        format!(":{}:{}", milli_text(x.into()), milli_text(y.into()))
    }
}

fn min_width(spec: &mut TransformSpec, args: &[&str], cx: &Cx<'_>) -> Result<(), ParseError> {
    spec.min_width = parse_dimension(args[0], cx.limits.max_dimension)?;
    Ok(())
}

fn write_min_width(spec: &TransformSpec, out: &mut String) {
    if spec.min_width != 0 {
        let _ = write!(out, "/mw:{}", spec.min_width);
    }
}

fn min_height(spec: &mut TransformSpec, args: &[&str], cx: &Cx<'_>) -> Result<(), ParseError> {
    spec.min_height = parse_dimension(args[0], cx.limits.max_dimension)?;
    Ok(())
}

fn write_min_height(spec: &TransformSpec, out: &mut String) {
    if spec.min_height != 0 {
        let _ = write!(out, "/mh:{}", spec.min_height);
    }
}

/// `z:factor[:factor_y]` (imgproxy): > 0, up to 3 decimals; one factor zooms both axes.
fn zoom(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    let factor = |s: &str| match parse_fixed(s, 3) {
        Some(v) if v > 0 && v <= u64::from(MAX_ZOOM_MILLI) => Ok(v as u32),
        _ => Err(ParseError::InvalidOption(format!(
            "zoom must be in (0, {}] with up to 3 decimals",
            MAX_ZOOM_MILLI / 1000
        ))),
    };
    let x = factor(args[0])?;
    let y = match nonempty(args, 1) {
        Some(v) => factor(v)?,
        None => x,
    };
    spec.zoom_milli = [x, y];
    Ok(())
}

fn write_zoom(spec: &TransformSpec, out: &mut String) {
    if spec.zoom_milli != [1000, 1000] {
        let [x, y] = spec.zoom_milli;
        let _ = write!(out, "/z:{x}:{y}");
    }
}

fn size(spec: &mut TransformSpec, args: &[&str], cx: &Cx<'_>) -> Result<(), ParseError> {
    apply_size(spec, args, cx.limits)
}

fn resizing_type(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.resizing_type = ResizingType::parse(args[0])?;
    Ok(())
}

fn width(spec: &mut TransformSpec, args: &[&str], cx: &Cx<'_>) -> Result<(), ParseError> {
    spec.width = parse_dimension(args[0], cx.limits.max_dimension)?;
    Ok(())
}

fn height(spec: &mut TransformSpec, args: &[&str], cx: &Cx<'_>) -> Result<(), ParseError> {
    spec.height = parse_dimension(args[0], cx.limits.max_dimension)?;
    Ok(())
}

fn dpr(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.dpr_milli = parse_dpr(args[0])?;
    Ok(())
}

fn enlarge(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.enlarge = parse_bool(args[0])?;
    Ok(())
}

fn gravity(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    (spec.gravity, spec.gravity_offset) = parse_gravity(args)?;
    Ok(())
}

fn quality(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    let q = parse_u64(args[0], "quality")?;
    spec.quality = match q {
        0 => None, // imgproxy: 0 means "use the default"
        1..=100 => Some(q as u8),
        _ => return Err(ParseError::InvalidOption("quality must be 0..=100".into())),
    };
    Ok(())
}

/// `f:auto`: negotiated from `Accept`, as with no `f`.
fn format(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.format = match args[0] {
        "auto" => None,
        f => Some(OutputFormat::parse(f)?),
    };
    Ok(())
}

/// `fq:format:quality[:format:quality…]` (imgproxy): quality 1–100 for that output format, 0
/// to fall back to `q`; a later pair for the same format wins.
fn format_quality(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    if !args.len().is_multiple_of(2) {
        return Err(ParseError::InvalidOption(
            "format_quality takes format:quality pairs".into(),
        ));
    }
    for pair in args.chunks(2) {
        let format = OutputFormat::parse(pair[0])?;
        let q = parse_u64(pair[1], "format_quality")?;
        if q > 100 {
            return Err(ParseError::InvalidOption(
                "format_quality must be 0..=100".into(),
            ));
        }
        spec.format_quality.retain(|(f, _)| *f != format);
        if q > 0 {
            spec.format_quality.push((format, q as u8));
        }
    }
    spec.format_quality.sort_by_key(|(f, _)| f.extension());
    Ok(())
}

/// Longest `fn` name, in bytes (a file name, not a payload).
const MAX_FILENAME_BYTES: usize = 255;

/// `fn:%name[:%encoded]`: percent-encoded text, or base64url when `encoded` is true
/// (imgproxy). Control characters and path separators are refused: the name reaches a header.
fn filename(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    let bad = |m: &str| ParseError::InvalidOption(format!("filename: {m}"));
    let encoded = match nonempty(args, 1) {
        Some(e) => parse_bool(e)?,
        None => false,
    };
    let name = if encoded {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(args[0].trim_end_matches('='))
            .map_err(|_| bad("not base64url"))?;
        String::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?
    } else {
        super::percent_decode(args[0]).ok_or_else(|| bad("malformed percent-encoding"))?
    };
    if name.is_empty() || name.len() > MAX_FILENAME_BYTES {
        return Err(bad("1 to 255 bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, '/' | '\\'))
    {
        return Err(bad("no control characters or path separators"));
    }
    spec.filename = Some(name);
    Ok(())
}

fn return_attachment(
    spec: &mut TransformSpec,
    args: &[&str],
    _: &Cx<'_>,
) -> Result<(), ParseError> {
    spec.attachment = parse_bool(args[0])?;
    Ok(())
}

/// `mb:bytes` (imgproxy): lower the quality of JPEG, WebP and AVIF results until they fit;
/// 0 turns it off.
fn max_bytes(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.max_bytes = parse_u64(args[0], "max_bytes")?;
    Ok(())
}

fn write_max_bytes(spec: &TransformSpec, out: &mut String) {
    if spec.max_bytes != 0 {
        let _ = write!(out, "/mb:{}", spec.max_bytes);
    }
}

fn strip_metadata(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.strip_metadata = parse_bool(args[0])?;
    Ok(())
}

fn write_strip_metadata(spec: &TransformSpec, out: &mut String) {
    if !spec.strip_metadata {
        out.push_str("/sm:0");
    }
}

fn keep_copyright(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.keep_copyright = parse_bool(args[0])?;
    Ok(())
}

fn write_keep_copyright(spec: &TransformSpec, out: &mut String) {
    if spec.keep_copyright {
        out.push_str("/kcr:1");
    }
}

fn strip_color_profile(
    spec: &mut TransformSpec,
    args: &[&str],
    _: &Cx<'_>,
) -> Result<(), ParseError> {
    spec.strip_color_profile = parse_bool(args[0])?;
    Ok(())
}

fn write_strip_color_profile(spec: &TransformSpec, out: &mut String) {
    if !spec.strip_color_profile {
        out.push_str("/scp:0");
    }
}

fn enforce_thumbnail(
    spec: &mut TransformSpec,
    args: &[&str],
    _: &Cx<'_>,
) -> Result<(), ParseError> {
    spec.enforce_thumbnail = parse_bool(args[0])?;
    Ok(())
}

fn write_enforce_thumbnail(spec: &TransformSpec, out: &mut String) {
    if spec.enforce_thumbnail {
        out.push_str("/eth:1");
    }
}

/// Formats `sp` may name: pixgate's sources and the ones imgproxy templates name (`sp:svg` is
/// common), which match no stored image today.
const SKIP_FORMATS: &[&str] = &[
    "jpg", "png", "webp", "gif", "avif", "heic", "svg", "tiff", "bmp", "ico", "jxl",
];
const MAX_SKIP_FORMATS: usize = 16;

/// `sp:ext[:ext…]` (imgproxy): serve the original as stored (metadata removed losslessly)
/// when the source is in one of these formats.
fn skip_processing(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    let mut formats = Vec::new();
    for a in args {
        let f = match *a {
            "jpeg" => "jpg",
            "tif" => "tiff",
            "heif" => "heic",
            other => other,
        };
        if !SKIP_FORMATS.contains(&f) {
            return Err(ParseError::UnsupportedFormat(clip(a)));
        }
        if !formats.contains(&f) {
            formats.push(f);
        }
    }
    formats.sort_unstable();
    spec.skip_processing = formats.into_iter().map(str::to_owned).collect();
    Ok(())
}

/// `raw:1` (imgproxy): serve the original as stored (metadata removed losslessly).
fn raw(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.raw = parse_bool(args[0])?;
    Ok(())
}

/// `da:1` (imgproxy): the first frame of an animation, whatever the output format.
fn disable_animation(
    spec: &mut TransformSpec,
    args: &[&str],
    _: &Cx<'_>,
) -> Result<(), ParseError> {
    spec.disable_animation = parse_bool(args[0])?;
    Ok(())
}

fn write_disable_animation(spec: &TransformSpec, out: &mut String) {
    if spec.disable_animation {
        out.push_str("/da:1");
    }
}

fn expires(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.expires = Some(parse_u64(args[0], "expires")?);
    Ok(())
}

fn cachebuster(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    let cb = args[0];
    if cb.len() > MAX_CACHEBUSTER_LEN
        || !cb
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ParseError::InvalidOption(
            "cachebuster must be up to 128 of [A-Za-z0-9._-]".into(),
        ));
    }
    spec.cachebuster = Some(cb.to_owned());
    Ok(())
}

fn crop(spec: &mut TransformSpec, args: &[&str], cx: &Cx<'_>) -> Result<(), ParseError> {
    if args.len() < 2 {
        return Err(ParseError::InvalidOption(
            "`c` takes width and height".into(),
        ));
    }
    let (gravity, offset) = match nonempty(args, 2) {
        Some(_) => {
            let (g, o) = parse_gravity(&args[2..])?;
            (Some(g), o)
        }
        None => (None, [0, 0]),
    };
    spec.crop = Some(Crop {
        width: parse_crop_size(args[0], cx.limits.max_dimension)?,
        height: parse_crop_size(args[1], cx.limits.max_dimension)?,
        gravity,
        offset,
    });
    Ok(())
}

fn write_crop(spec: &TransformSpec, out: &mut String) {
    if let Some(c) = spec.crop {
        let g = c.gravity.map_or_else(|| "-".to_owned(), Gravity::canonical);
        let _ = write!(
            out,
            "/c:{}:{}:{g}{}",
            milli_text(c.width.into()),
            milli_text(c.height.into()),
            offset_text(c.offset)
        );
    }
}

fn auto_rotate(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.auto_rotate = parse_bool(args[0])?;
    Ok(())
}

fn write_auto_rotate(spec: &TransformSpec, out: &mut String) {
    if !spec.auto_rotate {
        out.push_str("/ar:0");
    }
}

fn rotate(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.rotate = match args[0] {
        "0" => 0,
        "90" => 90,
        "180" => 180,
        "270" => 270,
        _ => {
            return Err(ParseError::InvalidOption(
                "rotate takes 0, 90, 180 or 270".into(),
            ));
        }
    };
    Ok(())
}

fn write_rotate(spec: &TransformSpec, out: &mut String) {
    if spec.rotate != 0 {
        let _ = write!(out, "/rot:{}", spec.rotate);
    }
}

fn flip(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.flip_horizontal = parse_bool(args[0])?;
    spec.flip_vertical = match args.get(1) {
        Some(v) => parse_bool(v)?,
        None => false,
    };
    Ok(())
}

fn write_flip(spec: &TransformSpec, out: &mut String) {
    if spec.flip_horizontal || spec.flip_vertical {
        let _ = write!(
            out,
            "/fl:{}:{}",
            u8::from(spec.flip_horizontal),
            u8::from(spec.flip_vertical)
        );
    }
}

fn background(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.background = Some(parse_color(args)?);
    Ok(())
}

fn write_background(spec: &TransformSpec, out: &mut String) {
    if let Some([r, g, b]) = spec.background {
        let _ = write!(out, "/bg:{r:02x}{g:02x}{b:02x}");
    }
}

fn padding(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    let mut v = [0u32; 4];
    for (slot, a) in v.iter_mut().zip(args) {
        *slot = parse_dimension(a, MAX_PADDING)?;
    }
    // CSS shorthand: 1 → all; 2 → vertical, horizontal; 3 → top, horizontal, bottom.
    spec.padding = match args.len() {
        1 => [v[0]; 4],
        2 => [v[0], v[1], v[0], v[1]],
        3 => [v[0], v[1], v[2], v[1]],
        _ => v,
    };
    Ok(())
}

fn write_padding(spec: &TransformSpec, out: &mut String) {
    if spec.padding != [0; 4] {
        let [t, r, b, l] = spec.padding;
        let _ = write!(out, "/pd:{t}:{r}:{b}:{l}");
    }
}

fn extend(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    (spec.extend, spec.extend_offset) = if parse_bool(args[0])? {
        let (g, o) = extend_gravity(&args[1..])?;
        (Some(g), o)
    } else {
        (None, [0, 0])
    };
    Ok(())
}

fn write_extend(spec: &TransformSpec, out: &mut String) {
    if let Some(g) = spec.extend {
        let _ = write!(
            out,
            "/ex:{}{}",
            g.canonical(),
            offset_text(spec.extend_offset)
        );
    }
}

/// `exar:enabled[:gravity[:x:y]]` (imgproxy): grow one side so the result takes the
/// requested box's aspect ratio (only when both width and height are given).
fn extend_aspect_ratio(
    spec: &mut TransformSpec,
    args: &[&str],
    _: &Cx<'_>,
) -> Result<(), ParseError> {
    (spec.extend_aspect, spec.extend_aspect_offset) = if parse_bool(args[0])? {
        let (g, o) = extend_gravity(&args[1..])?;
        (Some(g), o)
    } else {
        (None, [0, 0])
    };
    Ok(())
}

fn write_extend_aspect_ratio(spec: &TransformSpec, out: &mut String) {
    if let Some(g) = spec.extend_aspect {
        let _ = write!(
            out,
            "/exar:{}{}",
            g.canonical(),
            offset_text(spec.extend_aspect_offset)
        );
    }
}

/// `t:threshold[:colour[:equal_hor[:equal_ver]]]` (imgproxy); an empty threshold turns it off.
/// Thresholds are per-channel differences, 0..=255 (decimals are rounded).
fn trim(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    let Some(threshold) = nonempty(args, 0) else {
        spec.trim = None;
        return Ok(());
    };
    let threshold = match parse_fixed(threshold, 3) {
        Some(v) if v <= 255_000 => ((v + 500) / 1000) as u8,
        _ => {
            return Err(ParseError::InvalidOption(
                "trim threshold must be in [0, 255]".into(),
            ));
        }
    };
    let color = match nonempty(args, 1) {
        Some(hex) => Some(parse_color(&[hex])?),
        None => None,
    };
    let flag = |i: usize| nonempty(args, i).map_or(Ok(false), parse_bool);
    spec.trim = Some(Trim {
        threshold,
        color,
        equal_hor: flag(2)?,
        equal_ver: flag(3)?,
    });
    Ok(())
}

fn write_trim(spec: &TransformSpec, out: &mut String) {
    if let Some(t) = spec.trim {
        let color = t.color.map_or_else(
            || "-".to_owned(),
            |[r, g, b]| format!("{r:02x}{g:02x}{b:02x}"),
        );
        let _ = write!(
            out,
            "/t:{}:{color}:{}:{}",
            t.threshold,
            u8::from(t.equal_hor),
            u8::from(t.equal_ver)
        );
    }
}

fn blur(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.blur_centi = parse_sigma(args[0], MAX_BLUR_CENTI, "blur")?;
    Ok(())
}

fn write_blur(spec: &TransformSpec, out: &mut String) {
    if spec.blur_centi != 0 {
        let _ = write!(out, "/bl:{}", spec.blur_centi);
    }
}

fn sharpen(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.sharpen_centi = parse_sigma(args[0], MAX_SHARPEN_CENTI, "sharpen")?;
    Ok(())
}

fn write_sharpen(spec: &TransformSpec, out: &mut String) {
    if spec.sharpen_centi != 0 {
        let _ = write!(out, "/sh:{}", spec.sharpen_centi);
    }
}

fn pixelate(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    let n = parse_u64(args[0], "pixelate")?;
    if n > u64::from(MAX_PIXELATE) {
        return Err(ParseError::InvalidOption(format!(
            "pixelate must be 0..={MAX_PIXELATE}"
        )));
    }
    spec.pixelate = if n <= 1 { 0 } else { n as u32 };
    Ok(())
}

fn write_pixelate(spec: &TransformSpec, out: &mut String) {
    if spec.pixelate != 0 {
        let _ = write!(out, "/pix:{}", spec.pixelate);
    }
}

fn filter(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.filter = match args[0] {
        "none" => None,
        "grayscale" | "greyscale" => Some(Filter::Grayscale),
        "sepia" => Some(Filter::Sepia),
        other => {
            return Err(ParseError::InvalidOption(format!(
                "unknown filter `{}`",
                clip(other)
            )));
        }
    };
    Ok(())
}

fn write_filter(spec: &TransformSpec, out: &mut String) {
    if let Some(f) = spec.filter {
        out.push_str(match f {
            Filter::Grayscale => "/fi:grayscale",
            Filter::Sepia => "/fi:sepia",
        });
    }
}

fn watermark(spec: &mut TransformSpec, args: &[&str], _: &Cx<'_>) -> Result<(), ParseError> {
    spec.watermark = parse_watermark(args)?;
    Ok(())
}

fn write_watermark(spec: &TransformSpec, out: &mut String) {
    if let Some(w) = spec.watermark {
        let position = if w.replicate {
            "re".to_owned()
        } else {
            w.position.canonical()
        };
        let _ = write!(
            out,
            "/wm:{}:{position}:{}:{}:{}",
            w.opacity_milli,
            milli_text(w.x_offset.into()),
            milli_text(w.y_offset.into()),
            w.scale_milli
        );
    }
}

fn preset(spec: &mut TransformSpec, args: &[&str], cx: &Cx<'_>) -> Result<(), ParseError> {
    if cx.in_preset {
        return Err(ParseError::InvalidOption(
            "presets cannot name other presets".into(),
        ));
    }
    for name in args {
        let options =
            cx.limits.presets.get(*name).ok_or_else(|| {
                ParseError::InvalidOption(format!("unknown preset `{}`", clip(name)))
            })?;
        apply_preset_string(spec, options, cx.limits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_and_alias_belongs_to_exactly_one_slice() {
        let mut all: Vec<&str> = SLICES
            .iter()
            .flat_map(|s| s.names.iter().copied())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a name is claimed twice");
        for s in SLICES {
            assert_eq!(
                OptionName::slice_of(s.names[0]).map(|x| x.name),
                Some(s.name)
            );
            assert_eq!(s.name.as_str(), s.names[0]);
            assert!(s.max_args >= 1);
        }
        assert!(OptionName::slice_of("nope").is_none());
    }
}

#[cfg(test)]
mod canonical_pin {
    use super::super::{ParseLimits, parse_path};

    /// The canonical form is part of every cache key and ETag: this pins its exact text for a
    /// URL using every option that changes pixels (a change here changes existing keys).
    #[test]
    fn the_canonical_form_of_every_option_is_stable() {
        let url = "/rs:fill:300:200:1/dpr:2/g:sm/c:400:300:so/ar:0/rot:90/fl:1:1/bg:0a141e\
                   /pd:1:2:3:4/ex:1:no/bl:1.5/sh:0.5/fi:sepia/wm:0.5:soea:10:-4:0.25\
                   /q:70/f:webp/exp:4102444800/cb:v1/plain/0123456789abcdef0123456789abcdef";
        let limits = ParseLimits {
            max_dimension: 16_383,
            ..ParseLimits::default()
        };
        let spec = parse_path(url, &limits).unwrap().spec;
        assert_eq!(
            spec.canonical(),
            "rt:fill/w:300/h:200/dpr:2000/el:1/g:sm/c:400:300:so/ar:0/rot:90/fl:1:1\
             /bg:0a141e/pd:1:2:3:4/ex:no/bl:150/sh:50/fi:sepia/wm:500:soea:10:-4:250"
        );
    }
}
