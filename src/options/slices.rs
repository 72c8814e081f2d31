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
    MAX_PRESETS, MAX_SHARPEN_CENTI, OutputFormat, ParseError, ParseLimits, ResizingType,
    TransformSpec, apply_preset_string, apply_size, clip, nonempty, parse_bool, parse_color,
    parse_dimension, parse_dpr, parse_gravity, parse_sigma, parse_u64, parse_watermark,
};

/// Every option, by canonical name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionName {
    Resize,
    Size,
    ResizingType,
    Width,
    Height,
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
    Blur,
    Sharpen,
    Pixelate,
    Filter,
    Watermark,
    Filename,
    ReturnAttachment,
    FormatQuality,
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
        "rt:{}/w:{}/h:{}/dpr:{}/el:{}/g:{}",
        spec.resizing_type.as_str(),
        spec.width,
        spec.height,
        spec.dpr_milli,
        u8::from(spec.enlarge),
        spec.gravity.canonical()
    );
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
    spec.gravity = parse_gravity(args)?;
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
    let gravity = match args.get(2) {
        Some(_) => Some(parse_gravity(&args[2..])?),
        None => None,
    };
    spec.crop = Some(Crop {
        width: parse_dimension(args[0], cx.limits.max_dimension)?,
        height: parse_dimension(args[1], cx.limits.max_dimension)?,
        gravity,
    });
    Ok(())
}

fn write_crop(spec: &TransformSpec, out: &mut String) {
    if let Some(c) = spec.crop {
        let g = c.gravity.map_or_else(|| "-".to_owned(), Gravity::canonical);
        let _ = write!(out, "/c:{}:{}:{g}", c.width, c.height);
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
    spec.extend = if parse_bool(args[0])? {
        let g = if args.len() > 1 {
            parse_gravity(&args[1..])?
        } else {
            Gravity::Center
        };
        if g == Gravity::Smart {
            return Err(ParseError::InvalidOption(
                "extend cannot use smart gravity".into(),
            ));
        }
        Some(g)
    } else {
        None
    };
    Ok(())
}

fn write_extend(spec: &TransformSpec, out: &mut String) {
    if let Some(g) = spec.extend {
        let _ = write!(out, "/ex:{}", g.canonical());
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
        let _ = write!(
            out,
            "/wm:{}:{}:{}:{}:{}",
            w.opacity_milli,
            w.position.canonical(),
            w.x_offset,
            w.y_offset,
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
