//! The transform URL grammar (imgproxy-compatible) → a typed, bounded [`TransformSpec`].
//!
//! `/{option}/{option}/…/{source}` where an option is `name:arg:arg…` and the source is
//! `plain/ID[@ext]` or base64url(ID)[.ext] (possibly split by `/`). Parsing is strict: unknown
//! options, repeated options, malformed or out-of-range arguments and stray segments are errors.
//! Two spellings of one transform produce the same [`TransformSpec::canonical`] string, which is
//! what caches key on. This module is pure: no clock, no I/O.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::Error;
use crate::id::ImageId;

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
}

/// Output encodings this build produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Jpeg,
    Png,
    Webp,
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
    /// 1..=100; `None` means the configured default.
    pub quality: Option<u8>,
    /// `None` means negotiated from `Accept`.
    pub format: Option<OutputFormat>,
    /// Unix seconds after which the URL is refused.
    pub expires: Option<u64>,
    /// Changes the URL (so CDNs refetch) but not the result; not part of the canonical form.
    pub cachebuster: Option<String>,
}

/// Bounds applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_dimension: u32,
}

/// A parsed transform path: what to do, and to which image.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformRequest {
    pub spec: TransformSpec,
    pub image: ImageId,
}

const MAX_DPR_MILLI: u32 = 8000;
const MAX_CACHEBUSTER_LEN: usize = 128;

impl Default for TransformSpec {
    fn default() -> Self {
        TransformSpec {
            resizing_type: ResizingType::Fit,
            width: 0,
            height: 0,
            dpr_milli: 1000,
            enlarge: false,
            gravity: Gravity::Center,
            quality: None,
            format: None,
            expires: None,
            cachebuster: None,
        }
    }
}

impl ResizingType {
    fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "fit" => ResizingType::Fit,
            "fill" => ResizingType::Fill,
            "fill-down" => ResizingType::FillDown,
            "force" => ResizingType::Force,
            "auto" => ResizingType::Auto,
            other => {
                return Err(Error::InvalidOption(format!(
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
        }
    }
}

impl OutputFormat {
    /// Parses an extension or format name (`jpg`, `jpeg`, `png`, `webp`).
    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "jpg" | "jpeg" => OutputFormat::Jpeg,
            "png" => OutputFormat::Png,
            "webp" => OutputFormat::Webp,
            other => return Err(Error::UnsupportedFormat(clip(other))),
        })
    }

    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
            OutputFormat::Webp => "image/webp",
        }
    }
}

impl TransformSpec {
    /// The canonical form of everything that changes the output pixels, except the output
    /// format and quality (resolved later, from `Accept` and config). Equal transforms written
    /// differently (aliases, `rs` vs `w`+`h`, arguments left at their defaults) map to one string.
    pub fn canonical(&self) -> String {
        format!(
            "rt:{}/w:{}/h:{}/dpr:{}/el:{}/g:{}",
            self.resizing_type.as_str(),
            self.width,
            self.height,
            self.dpr_milli,
            u8::from(self.enlarge),
            self.gravity.canonical()
        )
    }

    /// Requested box in device pixels (CSS size × dpr), rounded.
    pub fn target_box(&self) -> (u32, u32) {
        let scale = |v: u32| -> u32 {
            let scaled = (u64::from(v) * u64::from(self.dpr_milli) + 500) / 1000;
            u32::try_from(scaled).unwrap_or(u32::MAX)
        };
        (scale(self.width), scale(self.height))
    }
}

/// Parses the path after the signature segment (it starts with `/`).
pub fn parse_path(path: &str, limits: ParseLimits) -> Result<TransformRequest, Error> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| Error::InvalidSource("path must start with /".into()))?;
    let segments: Vec<&str> = rest.split('/').collect();
    let mut spec = TransformSpec::default();
    let mut seen: Vec<&'static str> = Vec::new();
    let mut source_ext: Option<OutputFormat> = None;
    let mut image: Option<ImageId> = None;

    let mut i = 0;
    while i < segments.len() {
        let seg = segments[i];
        if seg.is_empty() {
            return Err(Error::InvalidSource("empty path segment".into()));
        }
        if seg == "plain" {
            let raw = segments[i + 1..].join("/");
            let (id, ext) = split_plain(&raw)?;
            image = Some(id);
            source_ext = ext;
            break;
        }
        if seg.contains(':') {
            apply_option(&mut spec, seg, &mut seen, limits)?;
            i += 1;
            continue;
        }
        // First segment without ':' starts a base64url source, which may be split by '/'.
        let raw = segments[i..].concat();
        let (id, ext) = split_encoded(&raw)?;
        image = Some(id);
        source_ext = ext;
        break;
    }

    let image = image.ok_or_else(|| Error::InvalidSource("no source given".into()))?;
    if let Some(ext) = source_ext {
        match spec.format {
            Some(f) if f != ext => {
                return Err(Error::InvalidOption(
                    "format option and source extension disagree".into(),
                ));
            }
            _ => spec.format = Some(ext),
        }
    }
    Ok(TransformRequest { spec, image })
}

fn split_plain(raw: &str) -> Result<(ImageId, Option<OutputFormat>), Error> {
    let (id, ext) = match raw.rsplit_once('@') {
        Some((id, ext)) => (id, Some(OutputFormat::parse(ext)?)),
        None => (raw, None),
    };
    let id = ImageId::parse(id)
        .ok_or_else(|| Error::InvalidSource("plain source must be an image id".into()))?;
    Ok((id, ext))
}

fn split_encoded(raw: &str) -> Result<(ImageId, Option<OutputFormat>), Error> {
    let (enc, ext) = match raw.split_once('.') {
        Some((enc, ext)) => (enc, Some(OutputFormat::parse(ext)?)),
        None => (raw, None),
    };
    let bad = || Error::InvalidSource("source is not base64url of an image id".into());
    let bytes = URL_SAFE_NO_PAD
        .decode(enc.trim_end_matches('='))
        .map_err(|_| bad())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    let id = ImageId::parse(text).ok_or_else(bad)?;
    Ok((id, ext))
}

fn apply_option(
    spec: &mut TransformSpec,
    seg: &str,
    seen: &mut Vec<&'static str>,
    limits: ParseLimits,
) -> Result<(), Error> {
    let mut parts = seg.split(':');
    let name = parts.next().unwrap_or_default();
    let args: Vec<&str> = parts.collect();
    let canonical: &'static str = match name {
        "rs" | "resize" => "resize",
        "s" | "size" => "size",
        "rt" | "resizing_type" => "resizing_type",
        "w" | "width" => "width",
        "h" | "height" => "height",
        "dpr" => "dpr",
        "el" | "enlarge" => "enlarge",
        "g" | "gravity" => "gravity",
        "q" | "quality" => "quality",
        "f" | "format" | "ext" => "format",
        "exp" | "expires" => "expires",
        "cb" | "cachebuster" => "cachebuster",
        other => return Err(Error::UnknownOption(clip(other))),
    };
    if seen.contains(&canonical) {
        return Err(Error::InvalidOption(format!(
            "option `{canonical}` given more than once"
        )));
    }
    seen.push(canonical);
    let arity = |max: usize| -> Result<(), Error> {
        if args.is_empty() || args.len() > max {
            Err(Error::InvalidOption(format!(
                "`{name}` takes 1 to {max} arguments"
            )))
        } else {
            Ok(())
        }
    };
    let dim = |s: &str| parse_dimension(s, limits.max_dimension);
    match canonical {
        "resize" => {
            arity(5)?;
            if let Some(t) = nonempty(&args, 0) {
                spec.resizing_type = ResizingType::parse(t)?;
            }
            apply_size(spec, &args[1..], limits)?;
        }
        "size" => {
            arity(4)?;
            apply_size(spec, &args, limits)?;
        }
        "resizing_type" => {
            arity(1)?;
            spec.resizing_type = ResizingType::parse(args[0])?;
        }
        "width" => {
            arity(1)?;
            spec.width = dim(args[0])?;
        }
        "height" => {
            arity(1)?;
            spec.height = dim(args[0])?;
        }
        "dpr" => {
            arity(1)?;
            spec.dpr_milli = parse_dpr(args[0])?;
        }
        "enlarge" => {
            arity(1)?;
            spec.enlarge = parse_bool(args[0])?;
        }
        "gravity" => {
            arity(3)?;
            spec.gravity = parse_gravity(&args)?;
        }
        "quality" => {
            arity(1)?;
            let q = parse_u64(args[0], "quality")?;
            spec.quality = match q {
                0 => None, // imgproxy: 0 means "use the default"
                1..=100 => Some(q as u8),
                _ => return Err(Error::InvalidOption("quality must be 0..=100".into())),
            };
        }
        "format" => {
            arity(1)?;
            spec.format = Some(OutputFormat::parse(args[0])?);
        }
        "expires" => {
            arity(1)?;
            spec.expires = Some(parse_u64(args[0], "expires")?);
        }
        "cachebuster" => {
            arity(1)?;
            let cb = args[0];
            if cb.len() > MAX_CACHEBUSTER_LEN
                || !cb
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(Error::InvalidOption(
                    "cachebuster must be up to 128 of [A-Za-z0-9._-]".into(),
                ));
            }
            spec.cachebuster = Some(cb.to_owned());
        }
        _ => return Err(Error::UnknownOption(clip(name))),
    }
    Ok(())
}

/// `width:height:enlarge:extend`, each optional.
fn apply_size(spec: &mut TransformSpec, args: &[&str], limits: ParseLimits) -> Result<(), Error> {
    if let Some(w) = nonempty(args, 0) {
        spec.width = parse_dimension(w, limits.max_dimension)?;
    }
    if let Some(h) = nonempty(args, 1) {
        spec.height = parse_dimension(h, limits.max_dimension)?;
    }
    if let Some(e) = nonempty(args, 2) {
        spec.enlarge = parse_bool(e)?;
    }
    if let Some(x) = nonempty(args, 3)
        && parse_bool(x)?
    {
        return Err(Error::InvalidOption("extend is not supported".into()));
    }
    Ok(())
}

fn nonempty<'a>(args: &[&'a str], i: usize) -> Option<&'a str> {
    args.get(i).copied().filter(|s| !s.is_empty())
}

fn parse_u64(s: &str, what: &str) -> Result<u64, Error> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidOption(format!(
            "{what} must be a non-negative integer"
        )));
    }
    s.parse()
        .map_err(|_| Error::InvalidOption(format!("{what} is out of range")))
}

fn parse_dimension(s: &str, max: u32) -> Result<u32, Error> {
    let v = parse_u64(s, "dimension")?;
    if v > u64::from(max) {
        return Err(Error::InvalidOption(format!(
            "dimension {v} is over the limit of {max}"
        )));
    }
    Ok(v as u32)
}

fn parse_bool(s: &str) -> Result<bool, Error> {
    match s {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(Error::InvalidOption(format!(
            "`{}` is not a boolean",
            clip(s)
        ))),
    }
}

/// A decimal like `2` or `1.5`, kept in thousandths; 0 < dpr ≤ 8.
fn parse_dpr(s: &str) -> Result<u32, Error> {
    let milli =
        parse_fixed(s, 3).ok_or_else(|| Error::InvalidOption("dpr must be a number".into()))?;
    if milli == 0 || milli > u64::from(MAX_DPR_MILLI) {
        return Err(Error::InvalidOption("dpr must be in (0, 8]".into()));
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

fn parse_gravity(args: &[&str]) -> Result<Gravity, Error> {
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
                return Err(Error::InvalidOption("g:fp takes x and y".into()));
            }
            let coord = |s: &str| -> Result<u16, Error> {
                match parse_fixed(s, 4) {
                    Some(v) if v <= 10_000 => Ok(v as u16),
                    _ => Err(Error::InvalidOption(
                        "focus point coordinates must be in [0, 1] with up to 4 decimals".into(),
                    )),
                }
            };
            return Ok(Gravity::FocusPoint {
                x: coord(args[1])?,
                y: coord(args[2])?,
            });
        }
        "sm" => {
            return Err(Error::InvalidOption(
                "smart gravity (g:sm) is not supported by this build".into(),
            ));
        }
        other => {
            return Err(Error::InvalidOption(format!(
                "unknown gravity `{}`",
                clip(other)
            )));
        }
    };
    if args.len() > 1 {
        return Err(Error::InvalidOption(
            "gravity offsets are not supported by this build".into(),
        ));
    }
    Ok(g)
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
    };

    fn parse(p: &str) -> Result<TransformRequest, Error> {
        parse_path(p, LIMITS)
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
        assert_eq!(s.target_box(), (450, 600));

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

    #[test]
    fn hostile_and_malformed_paths_are_refused() {
        let enc = b64(ID);
        let cases: Vec<(String, &str)> = vec![
            (format!("/xx:1/plain/{ID}"), "unknown_option"),
            (format!("/extend:1/plain/{ID}"), "unknown_option"),
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
            (format!("/rs:fit:1:1:0:1/plain/{ID}"), "invalid_option"),
            (format!("/rs:fit:1:1:0:0:9/plain/{ID}"), "invalid_option"),
            (format!("/el:maybe/plain/{ID}"), "invalid_option"),
            (format!("/g:sm/plain/{ID}"), "invalid_option"),
            (format!("/g:ce:10:10/plain/{ID}"), "invalid_option"),
            (format!("/g:fp:1.5:0/plain/{ID}"), "invalid_option"),
            (format!("/g:up/plain/{ID}"), "invalid_option"),
            (format!("/q:101/plain/{ID}"), "invalid_option"),
            (format!("/dpr:0/plain/{ID}"), "invalid_option"),
            (format!("/dpr:9/plain/{ID}"), "invalid_option"),
            (format!("/dpr:1e3/plain/{ID}"), "invalid_option"),
            (format!("/dpr:NaN/plain/{ID}"), "invalid_option"),
            (format!("/exp:soon/plain/{ID}"), "invalid_option"),
            (format!("/cb:a%2Fb/plain/{ID}"), "invalid_option"),
            (format!("/f:avif/plain/{ID}"), "unsupported_format"),
            (format!("/f:gif/plain/{ID}"), "unsupported_format"),
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
                Err(e) => assert_eq!(e.code(), code, "{path}: {e}"),
            }
        }
    }

    #[test]
    fn error_messages_do_not_echo_long_or_control_input() {
        let e = parse(&format!("/{}:1/plain/{ID}", "a".repeat(500))).unwrap_err();
        assert!(e.to_string().len() < 100);
        let e = parse(&format!("/rt:a\u{7}b/plain/{ID}")).unwrap_err();
        assert!(!e.to_string().contains('\u{7}'));
    }
}
