//! Metadata in results, privacy first: none by default; `kcr:1` carries the source's copyright
//! and artist (EXIF Copyright/Artist, XMP dc:rights/dc:creator) and nothing else; `sm:0`, when
//! the operator allows it (`transform.allow_keep_metadata`), the source's EXIF and XMP without
//! location (GPS) unless `transform.keep_gps`; `scp:0` the source's ICC profile (instead of
//! converting the pixels to sRGB).
//!
//! Reading walks container structure only ([`read`]); EXIF is edited as TIFF with every
//! offset bounds-checked and IFD sizes capped; writing inserts segments or chunks into the
//! encoder's output ([`embed`]) without touching the compressed image. AVIF results carry no
//! metadata (the encoder has no place for it here).

use super::tiff::{MAX_ENTRIES, Tiff, entries_value};
use super::{ImageError, ImageFormat};
use crate::options::OutputFormat;

/// EXIF and XMP found in a source (EXIF as its TIFF structure).
#[derive(Debug, Default, Clone, Copy)]
pub struct SourceMeta<'a> {
    pub exif: Option<&'a [u8]>,
    pub xmp: Option<&'a [u8]>,
}

/// What goes into a result.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Embed {
    /// A TIFF structure (written as `Exif\0\0` + TIFF in JPEG, raw in PNG and WebP).
    pub exif: Option<Vec<u8>>,
    pub xmp: Option<Vec<u8>>,
    pub icc: Option<Vec<u8>>,
}

impl Embed {
    pub fn is_empty(&self) -> bool {
        self.exif.is_none() && self.xmp.is_none() && self.icc.is_none()
    }
}

const XMP_JPEG: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
const XMP_PNG: &[u8] = b"XML:com.adobe.xmp";
/// Largest XMP packet or EXIF block carried (one JPEG segment holds ~64 KiB).
const MAX_BLOCK: usize = 65_000;

const TAG_ORIENTATION: u16 = 0x0112;
const TAG_ARTIST: u16 = 0x013B;
const TAG_COPYRIGHT: u16 = 0x8298;
const TAG_GPS: u16 = 0x8825;

/// The EXIF (TIFF) and XMP of a source, if any.
pub fn read(bytes: &[u8], format: ImageFormat) -> SourceMeta<'_> {
    match format {
        ImageFormat::Jpeg => read_jpeg(bytes),
        ImageFormat::Png => read_png(bytes),
        ImageFormat::Webp => read_webp(bytes),
        ImageFormat::Gif
        | ImageFormat::Bmp
        | ImageFormat::Ico
        | ImageFormat::Tiff
        | ImageFormat::Jxl
        | ImageFormat::Svg
        | ImageFormat::Avif
        | ImageFormat::Heic => SourceMeta::default(),
    }
}

fn read_jpeg(b: &[u8]) -> SourceMeta<'_> {
    let mut m = SourceMeta::default();
    super::probe::walk_jpeg(b, |marker, seg| {
        if marker == 0xE1 {
            if let Some(tiff) = seg.strip_prefix(b"Exif\0\0") {
                m.exif.get_or_insert(tiff);
            } else if let Some(xmp) = seg.strip_prefix(XMP_JPEG) {
                m.xmp.get_or_insert(xmp);
            }
        }
        None::<()>
    });
    m
}

fn read_png(b: &[u8]) -> SourceMeta<'_> {
    let mut m = SourceMeta::default();
    for c in super::chunks::png(b).take_while(|c| c.kind != b"IDAT" && c.kind != b"IEND") {
        match c.kind {
            b"eXIf" => {
                m.exif.get_or_insert(c.data);
            }
            // Keyword, NUL, compression flag 0 (uncompressed only), method, language NUL,
            // translated keyword NUL, text.
            b"iTXt" if c.data.starts_with(XMP_PNG) && c.data.get(XMP_PNG.len()) == Some(&0) => {
                let rest = &c.data[XMP_PNG.len() + 1..];
                if rest.first() == Some(&0)
                    && let Some(text) = skip_nuls(rest.get(2..).unwrap_or_default(), 2)
                {
                    m.xmp.get_or_insert(text);
                }
            }
            _ => {}
        }
    }
    m
}

/// `data` after `n` NUL-terminated fields.
fn skip_nuls(mut data: &[u8], n: usize) -> Option<&[u8]> {
    for _ in 0..n {
        let nul = data.iter().position(|&c| c == 0)?;
        data = &data[nul + 1..];
    }
    Some(data)
}

fn read_webp(b: &[u8]) -> SourceMeta<'_> {
    let mut m = SourceMeta::default();
    for c in super::chunks::riff(b) {
        match c.kind {
            b"EXIF" => {
                m.exif
                    .get_or_insert(c.data.strip_prefix(b"Exif\0\0").unwrap_or(c.data));
            }
            b"XMP " => {
                m.xmp.get_or_insert(c.data);
            }
            _ => {}
        }
    }
    m
}

/// `kcr:1`: a new EXIF block with only the source's Artist and Copyright, and a new XMP packet
/// with only its dc:creator and dc:rights; `None` parts when the source has none.
pub fn copyright_only(src: SourceMeta<'_>) -> Embed {
    let exif = src.exif.and_then(|b| {
        let t = Tiff::new(b)?;
        let entries = t.entries(t.ifd0()?)?;
        let mut fields: Vec<(u16, &[u8])> = entries
            .iter()
            .filter(|e| matches!(e.tag, TAG_ARTIST | TAG_COPYRIGHT))
            .filter_map(|e| Some((e.tag, t.ascii(*e)?)))
            .collect();
        fields.sort_by_key(|(tag, _)| *tag);
        fields.dedup_by_key(|(tag, _)| *tag);
        (!fields.is_empty()).then(|| ascii_tiff(&fields))
    });
    let xmp = src.xmp.and_then(|x| {
        let elements: Vec<&[u8]> = [&b"dc:creator"[..], b"dc:rights"]
            .iter()
            .filter_map(|name| element(x, name))
            .collect();
        (!elements.is_empty()).then(|| xmp_packet(&elements))
    });
    Embed {
        exif,
        xmp,
        icc: None,
    }
}

/// A big-endian TIFF with one IFD of ASCII fields (sorted by tag).
fn ascii_tiff(fields: &[(u16, &[u8])]) -> Vec<u8> {
    let mut out = b"MM\0\x2a\0\0\0\x08".to_vec();
    out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    let mut data_at = 8 + 2 + 12 * fields.len() + 4;
    let mut data = Vec::new();
    for (tag, text) in fields {
        let count = text.len() + 1;
        out.extend_from_slice(&tag.to_be_bytes());
        out.extend_from_slice(&2u16.to_be_bytes());
        out.extend_from_slice(&(count as u32).to_be_bytes());
        if count <= 4 {
            let mut v = [0u8; 4];
            v[..text.len()].copy_from_slice(text);
            out.extend_from_slice(&v);
        } else {
            out.extend_from_slice(&(data_at as u32).to_be_bytes());
            data.extend_from_slice(text);
            data.push(0);
            if data.len() % 2 == 1 {
                data.push(0);
            }
            data_at = 8 + 2 + 12 * fields.len() + 4 + data.len();
        }
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&data);
    out
}

/// The first `<name …>…</name>` element of an XMP packet, at most 16 KiB.
fn element<'a>(xmp: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let open = [b"<", name].concat();
    let close = [b"</", name, b">"].concat();
    let start = find(xmp, &open, 0)?;
    // `<dc:creator>` or `<dc:creator attr…>`, not `<dc:creatorX>`.
    if !matches!(
        xmp.get(start + open.len()),
        Some(b'>' | b' ' | b'\t' | b'\n' | b'\r')
    ) {
        return None;
    }
    let end = find(xmp, &close, start)? + close.len();
    (end - start <= 16 << 10).then(|| &xmp[start..end])
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(hay.get(from..)?, needle).map(|i| i + from)
}

fn xmp_packet(elements: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\
         <x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF \
         xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\"><rdf:Description \
         rdf:about=\"\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\">"
            .as_bytes(),
    );
    for e in elements {
        out.extend_from_slice(e);
    }
    out.extend_from_slice(b"</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end=\"r\"?>");
    out
}

/// `sm:0`: the source's EXIF and XMP, upright (Orientation 1: the result's pixels are), without
/// the EXIF thumbnail (it shows the uncropped original), and without location unless
/// `keep_gps`: the GPS directory is emptied and its values zeroed, XMP `GPS…` properties
/// removed. Sizes are bounded ([`MAX_BLOCK`]); larger blocks are left out.
pub fn kept(src: SourceMeta<'_>, keep_gps: bool) -> Embed {
    let exif = src
        .exif
        .filter(|b| b.len() <= MAX_BLOCK)
        .and_then(|b| scrub_exif(b, keep_gps));
    let xmp = src.xmp.filter(|x| x.len() <= MAX_BLOCK).map(|x| {
        if keep_gps {
            x.to_vec()
        } else {
            without_xmp_gps(x)
        }
    });
    Embed {
        exif,
        xmp,
        icc: None,
    }
}

fn scrub_exif(b: &[u8], keep_gps: bool) -> Option<Vec<u8>> {
    let t = Tiff::new(b)?;
    let ifd0 = t.ifd0()?;
    let entries = t.entries(ifd0)?;
    let mut out = b.to_vec();
    let put16 = |out: &mut Vec<u8>, at: usize, v: u16| {
        let bytes = if t.le {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        };
        if let Some(dst) = out.get_mut(at..at + 2) {
            dst.copy_from_slice(&bytes);
        }
    };
    let zero = |out: &mut Vec<u8>, at: usize, len: usize| {
        if let Some(dst) = out.get_mut(at..at.saturating_add(len)) {
            dst.fill(0);
        }
    };
    for e in &entries {
        if e.tag == TAG_ORIENTATION && e.kind == 3 {
            put16(&mut out, e.at + 8, 1);
        }
        if e.tag == TAG_GPS && !keep_gps {
            let gps = t.u32(e.at + 8)?;
            for g in t.entries(gps).unwrap_or_default() {
                if let Some((at, len)) = t.value(g) {
                    zero(&mut out, at, len);
                }
                zero(&mut out, g.at, 12);
            }
            put16(&mut out, gps, 0);
        }
    }
    // IFD1 (the thumbnail) is cut off: its image shows what a crop removed.
    let next = ifd0 + 2 + 12 * entries.len();
    if let Some(ifd1) = t.u32(next).filter(|&o| o != 0) {
        for e in t.entries(ifd1).unwrap_or_default() {
            if let Some((at, len)) = t.value(e) {
                zero(&mut out, at, len);
            }
            // JPEGInterchangeFormat + length: the thumbnail's bytes.
            if e.tag == 0x0201
                && let (Some(at), Some(len)) = (t.u32(e.at + 8), entries_value(&t, ifd1, 0x0202))
            {
                zero(&mut out, at, len);
            }
        }
        zero(&mut out, next, 4);
    }
    Some(out)
}

/// An XMP packet without its `…:GPS…` properties (attribute and element forms).
fn without_xmp_gps(x: &[u8]) -> Vec<u8> {
    let mut out = x.to_vec();
    // Each pass removes one property; a packet holds a few dozen at most.
    for _ in 0..256 {
        let Some(i) = find(&out, b":GPS", 0) else {
            break;
        };
        // The qualified name starts after `<`, `/` or whitespace.
        let start = out[..i]
            .iter()
            .rposition(|&c| matches!(c, b'<' | b' ' | b'\t' | b'\n' | b'\r' | b'/'))
            .unwrap_or(0);
        let name_end = out[i..]
            .iter()
            .position(|&c| matches!(c, b'=' | b'>' | b' ' | b'\t' | b'\n' | b'\r' | b'/'))
            .map_or(out.len(), |p| i + p);
        let name = out[start + 1..name_end].to_vec();
        let range = if out[start] == b'<' {
            // Element: self-closing, or to its closing tag.
            let gt = find(&out, b">", name_end).unwrap_or(out.len() - 1);
            let close = [b"</", name.as_slice(), b">"].concat();
            if out[gt - 1] == b'/' {
                start..gt + 1
            } else {
                match find(&out, &close, gt) {
                    Some(c) => start..c + close.len(),
                    None => start..gt + 1,
                }
            }
        } else {
            // Attribute: name="value" or name='value'.
            let q = out.get(name_end + 1).copied().unwrap_or(b'"');
            let end = find(&out, &[q], name_end + 2).map_or(out.len(), |e| e + 1);
            start..end
        };
        out.drain(range);
    }
    out
}

/// The JPEG thumbnail of an EXIF block (IFD1's JPEGInterchangeFormat/Length), if any.
pub fn exif_thumbnail(exif: &[u8]) -> Option<&[u8]> {
    let t = Tiff::new(exif)?;
    let ifd0 = t.ifd0()?;
    let n = usize::from(t.u16(ifd0)?).min(MAX_ENTRIES);
    let ifd1 = t.u32(ifd0 + 2 + 12 * n).filter(|&o| o != 0)?;
    let at = entries_value(&t, ifd1, 0x0201)?;
    let len = entries_value(&t, ifd1, 0x0202)?;
    exif.get(at..at.checked_add(len)?)
}

/// Puts `e` into an encoded result of `format` (`size` and `alpha` describe its pixels).
pub fn embed(
    encoded: Vec<u8>,
    format: OutputFormat,
    e: &Embed,
    size: (u32, u32),
    alpha: bool,
) -> Result<Vec<u8>, ImageError> {
    if e.is_empty() {
        return Ok(encoded);
    }
    match format {
        OutputFormat::Jpeg => Ok(embed_jpeg(encoded, e)),
        OutputFormat::Png => embed_png(encoded, e),
        OutputFormat::Webp => embed_webp(&encoded, e, size, alpha),
        OutputFormat::Avif | OutputFormat::Gif => Ok(encoded),
    }
}

fn jpeg_segment(marker: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 2;
    let mut s = vec![0xFF, marker];
    s.extend_from_slice(&(len as u16).to_be_bytes());
    for p in parts {
        s.extend_from_slice(p);
    }
    s
}

fn embed_jpeg(encoded: Vec<u8>, e: &Embed) -> Vec<u8> {
    let mut segments = Vec::new();
    if let Some(x) = e.exif.as_deref().filter(|x| x.len() + 8 <= 65_535) {
        segments.extend(jpeg_segment(0xE1, &[b"Exif\0\0", x]));
    }
    if let Some(x) = e
        .xmp
        .as_deref()
        .filter(|x| x.len() + XMP_JPEG.len() + 2 <= 65_535)
    {
        segments.extend(jpeg_segment(0xE1, &[XMP_JPEG, x]));
    }
    if let Some(icc) = e.icc.as_deref() {
        let chunks: Vec<&[u8]> = icc.chunks(65_519).collect();
        if chunks.len() <= 255 {
            for (i, c) in chunks.iter().enumerate() {
                let seq = [i as u8 + 1, chunks.len() as u8];
                segments.extend(jpeg_segment(0xE2, &[b"ICC_PROFILE\0", &seq, c]));
            }
        }
    }
    // After SOI and the JFIF APP0 if there is one (JFIF must come first).
    let mut at = 2;
    if encoded.get(2..4) == Some(&[0xFF, 0xE0])
        && let Some(len) = encoded
            .get(4..6)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
    {
        at = (4 + len).min(encoded.len());
    }
    let mut out = Vec::with_capacity(encoded.len() + segments.len());
    out.extend_from_slice(&encoded[..at]);
    out.extend_from_slice(&segments);
    out.extend_from_slice(&encoded[at..]);
    out
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let crc = crc32fast::hash(&c[4..]);
    c.extend_from_slice(&crc.to_be_bytes());
    c
}

fn embed_png(encoded: Vec<u8>, e: &Embed) -> Result<Vec<u8>, ImageError> {
    // Signature (8) + IHDR (25): the new chunks follow IHDR, before any image data.
    const AFTER_IHDR: usize = 33;
    if encoded.get(12..16) != Some(b"IHDR") || encoded.len() < AFTER_IHDR {
        return Err(ImageError::Encode("PNG without IHDR".into()));
    }
    let mut chunks = Vec::new();
    if let Some(icc) = e.icc.as_deref() {
        let mut data = b"icc\0\0".to_vec();
        data.extend_from_slice(&fdeflate::compress_to_vec(icc));
        chunks.extend(png_chunk(b"iCCP", &data));
    }
    if let Some(x) = e.exif.as_deref() {
        chunks.extend(png_chunk(b"eXIf", x));
    }
    if let Some(x) = e.xmp.as_deref() {
        let mut data = XMP_PNG.to_vec();
        data.extend_from_slice(&[0, 0, 0, 0, 0]); // NUL, uncompressed, method, "" NUL, "" NUL
        data.extend_from_slice(x);
        chunks.extend(png_chunk(b"iTXt", &data));
    }
    let mut out = Vec::with_capacity(encoded.len() + chunks.len());
    out.extend_from_slice(&encoded[..AFTER_IHDR]);
    out.extend_from_slice(&chunks);
    out.extend_from_slice(&encoded[AFTER_IHDR..]);
    Ok(out)
}

fn riff_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = kind.to_vec();
    c.extend_from_slice(&(data.len() as u32).to_le_bytes());
    c.extend_from_slice(data);
    if data.len() % 2 == 1 {
        c.push(0);
    }
    c
}

/// The extended (VP8X) WebP container: VP8X, ICCP, the image chunks, EXIF, XMP.
fn embed_webp(
    encoded: &[u8],
    e: &Embed,
    (w, h): (u32, u32),
    alpha: bool,
) -> Result<Vec<u8>, ImageError> {
    if encoded.get(0..4) != Some(b"RIFF") || encoded.get(8..12) != Some(b"WEBP") {
        return Err(ImageError::Encode("not a WebP container".into()));
    }
    // The image chunks: everything after an existing VP8X, or the single VP8/VP8L chunk.
    let body = if encoded.get(12..16) == Some(b"VP8X") {
        encoded.get(30..).unwrap_or_default()
    } else {
        &encoded[12..]
    };
    let mut flags = 0u8;
    if alpha {
        flags |= 0x10;
    }
    if e.icc.is_some() {
        flags |= 0x20;
    }
    if e.exif.is_some() {
        flags |= 0x08;
    }
    if e.xmp.is_some() {
        flags |= 0x04;
    }
    let mut vp8x = vec![flags, 0, 0, 0];
    vp8x.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    let mut chunks = riff_chunk(b"VP8X", &vp8x);
    if let Some(icc) = e.icc.as_deref() {
        chunks.extend(riff_chunk(b"ICCP", icc));
    }
    chunks.extend_from_slice(body);
    if let Some(x) = e.exif.as_deref() {
        chunks.extend(riff_chunk(b"EXIF", x));
    }
    if let Some(x) = e.xmp.as_deref() {
        chunks.extend(riff_chunk(b"XMP ", x));
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((chunks.len() + 4) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&chunks);
    Ok(out)
}

/// Test support: the tags of an EXIF block's first directory (tag → ASCII text or number).
#[cfg(test)]
pub(crate) fn exif_fields(b: &[u8]) -> Vec<(u16, String)> {
    let Some(t) = Tiff::new(b) else {
        return Vec::new();
    };
    t.ifd0()
        .and_then(|i| t.entries(i))
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let v = t.ascii(e).map_or_else(
                || t.u16(e.at + 8).map_or(String::new(), |v| v.to_string()),
                |s| String::from_utf8_lossy(s).into_owned(),
            );
            (e.tag, v)
        })
        .collect()
}

/// Test support: the entry count of the GPS directory, if there is one.
#[cfg(test)]
pub(crate) fn gps_entries(b: &[u8]) -> Option<u16> {
    let t = Tiff::new(b)?;
    let e = t
        .entries(t.ifd0()?)?
        .into_iter()
        .find(|e| e.tag == TAG_GPS)?;
    t.u16(t.u32(e.at + 8)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A big-endian TIFF: IFD0 with Orientation 6, Artist, Copyright, Make and a GPS pointer;
    /// a GPS IFD with a latitude reference and a latitude (rationals out of line).
    pub(crate) fn sample_exif() -> Vec<u8> {
        let mut t = b"MM\0\x2a\0\0\0\x08".to_vec();
        // IFD0 at 8: 5 entries → 2 + 60 + 4 = 66 bytes; data from 74.
        let entry = |tag: u16, kind: u16, count: u32, value: [u8; 4]| {
            let mut e = tag.to_be_bytes().to_vec();
            e.extend_from_slice(&kind.to_be_bytes());
            e.extend_from_slice(&count.to_be_bytes());
            e.extend_from_slice(&value);
            e
        };
        let artist = b"Ada Lovelace\0";
        let copyright = b"(c) 2026 Ada\0";
        let make = b"SecretCam\0";
        let artist_at = 74u32;
        let copyright_at = artist_at + artist.len() as u32 + 1;
        let make_at = copyright_at + copyright.len() as u32 + 1;
        let gps_at = make_at + make.len() as u32 + 2;
        t.extend_from_slice(&5u16.to_be_bytes());
        t.extend(entry(0x010F, 2, make.len() as u32, make_at.to_be_bytes()));
        t.extend(entry(0x0112, 3, 1, [0, 6, 0, 0]));
        t.extend(entry(
            0x013B,
            2,
            artist.len() as u32,
            artist_at.to_be_bytes(),
        ));
        t.extend(entry(
            0x8298,
            2,
            copyright.len() as u32,
            copyright_at.to_be_bytes(),
        ));
        t.extend(entry(0x8825, 4, 1, gps_at.to_be_bytes()));
        t.extend_from_slice(&[0; 4]);
        for s in [&artist[..], &copyright[..], &make[..]] {
            t.extend_from_slice(s);
            t.push(0);
        }
        while t.len() < gps_at as usize {
            t.push(0);
        }
        // GPS IFD: LatitudeRef "N", Latitude 3 rationals at +30.
        let lat_at = gps_at + 2 + 24 + 4;
        t.extend_from_slice(&2u16.to_be_bytes());
        t.extend(entry(0x0001, 2, 2, *b"N\0\0\0"));
        t.extend(entry(0x0002, 5, 3, lat_at.to_be_bytes()));
        t.extend_from_slice(&[0; 4]);
        for v in [52u32, 1, 31, 1, 12, 1] {
            t.extend_from_slice(&v.to_be_bytes());
        }
        t
    }

    pub(crate) const SAMPLE_XMP: &[u8] = b"<x:xmpmeta><rdf:RDF><rdf:Description \
        exif:GPSLatitude=\"52,31.2N\" xmp:CreatorTool=\"Cam\">\
        <dc:creator><rdf:Seq><rdf:li>Ada Lovelace</rdf:li></rdf:Seq></dc:creator>\
        <dc:rights><rdf:Alt><rdf:li xml:lang=\"x-default\">(c) Ada</rdf:li></rdf:Alt></dc:rights>\
        <exif:GPSLongitude>13,24.3E</exif:GPSLongitude>\
        <exif:GPSAltitude/>\
        </rdf:Description></rdf:RDF></x:xmpmeta>";

    #[test]
    fn copyright_only_keeps_two_fields() {
        let exif = sample_exif();
        let e = copyright_only(SourceMeta {
            exif: Some(&exif),
            xmp: Some(SAMPLE_XMP),
        });
        let fields = exif_fields(e.exif.as_deref().unwrap());
        assert_eq!(
            fields,
            vec![
                (0x013B, "Ada Lovelace".to_owned()),
                (0x8298, "(c) 2026 Ada".to_owned())
            ]
        );
        let xmp = String::from_utf8(e.xmp.unwrap()).unwrap();
        assert!(xmp.contains("<dc:creator><rdf:Seq><rdf:li>Ada Lovelace"));
        assert!(xmp.contains("(c) Ada</rdf:li></rdf:Alt></dc:rights>"));
        assert!(!xmp.contains("GPS") && !xmp.contains("CreatorTool"));
        assert!(copyright_only(SourceMeta::default()).is_empty());
    }

    #[test]
    fn kept_metadata_loses_location_and_orientation_unless_asked() {
        let exif = sample_exif();
        let src = SourceMeta {
            exif: Some(&exif),
            xmp: Some(SAMPLE_XMP),
        };
        let e = kept(src, false);
        let x = e.exif.unwrap();
        assert_eq!(gps_entries(&x), Some(0));
        // The latitude's bytes are gone, not just unreferenced.
        assert!(!x.windows(4).any(|w| w == 31u32.to_be_bytes()));
        let fields = exif_fields(&x);
        assert!(fields.contains(&(0x0112, "1".to_owned())));
        assert!(fields.contains(&(0x010F, "SecretCam".to_owned())));
        let xmp = String::from_utf8(e.xmp.unwrap()).unwrap();
        assert!(!xmp.contains("GPS"), "{xmp}");
        assert!(xmp.contains("CreatorTool") && xmp.contains("dc:rights"));
        let with_gps = kept(src, true);
        assert_eq!(gps_entries(with_gps.exif.as_deref().unwrap()), Some(2));
        assert!(
            String::from_utf8(with_gps.xmp.unwrap())
                .unwrap()
                .contains("GPSLongitude")
        );
    }

    #[test]
    fn hostile_tiff_is_bounded() {
        // Offsets past the end, huge counts, loops: no panic, nothing kept that is not there.
        let mut t = b"II\x2a\0\x08\0\0\0\xff\xff".to_vec();
        t.extend_from_slice(&[0x3B, 0x01, 2, 0, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]);
        let e = copyright_only(SourceMeta {
            exif: Some(&t),
            xmp: Some(b"<dc:creator"),
        });
        assert!(e.is_empty());
        let _ = kept(
            SourceMeta {
                exif: Some(&t),
                xmp: Some(b"a:GPS b:GPS=\" <x:GPS"),
            },
            false,
        );
        for cut in 0..sample_exif().len() {
            let s = sample_exif();
            let _ = kept(
                SourceMeta {
                    exif: Some(&s[..cut]),
                    xmp: None,
                },
                false,
            );
        }
    }
}
