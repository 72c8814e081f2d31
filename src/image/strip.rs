//! Lossless metadata removal for originals served by `raw` and `sp` (no re-encode).
//!
//! The stored original is copied container piece by container piece, leaving out what can
//! identify a person, a place or a device, and keeping what the picture needs to display the
//! same: compressed image data, tables, the ICC profile and the EXIF orientation.
//!
//! - JPEG: APP1 (EXIF, XMP), APP3–APP13 (IPTC, Photoshop, maker data), APP15, COM, APP2 other
//!   than `ICC_PROFILE` (FlashPix, MPF) are dropped; APP0 (JFIF) and APP14 (Adobe: colour
//!   transform) stay. Bytes after the end-of-image marker (MPF secondary images, gain maps,
//!   depth maps, which carry their own metadata) are dropped. A non-default EXIF orientation
//!   is written back as a minimal EXIF block with only that tag, so the image is still shown
//!   upright.
//! - PNG: `eXIf`, `tEXt`, `zTXt`, `iTXt` and `tIME` chunks are dropped (chunk CRCs are per
//!   chunk, so the rest is byte-identical).
//! - WebP: `EXIF` and `XMP ` chunks are dropped and their VP8X flags cleared; the RIFF size is
//!   rewritten.
//! - GIF: comment extensions and application extensions other than the looping ones
//!   (`NETSCAPE2.0`, `ANIMEXTS1.0`) — XMP lives in one — are dropped.
//!
//! Input is untrusted but was validated at upload; every walk is linear and bounds-checked, the
//! output is never larger than the input plus a 34-byte orientation block, and a structure that
//! does not parse is an error, never a partial copy.

use super::{ImageError, ImageFormat};

/// The original without its metadata (see the module documentation).
pub fn strip_metadata(bytes: &[u8], format: ImageFormat) -> Result<Vec<u8>, ImageError> {
    let out = match format {
        ImageFormat::Jpeg => jpeg(bytes),
        ImageFormat::Png => png(bytes),
        ImageFormat::Webp => webp(bytes),
        ImageFormat::Gif => gif(bytes),
        // Nothing to remove: no metadata in the format (ICO entries are BMP or PNG images;
        // a PNG entry's text chunks are left, within the 256×256 icon).
        ImageFormat::Bmp | ImageFormat::Ico => Some(bytes.to_vec()),
        // Tags anywhere in the IFD chain, pointed to by offsets: no lossless removal here.
        ImageFormat::Tiff => {
            return Err(ImageError::Unsupported(
                "originals of TIFF sources are not served: their metadata cannot be removed \
                 without re-encoding"
                    .into(),
            ));
        }
        // A bare codestream has no metadata boxes; a container's boxes (Exif, xml, jumb,
        // brob-compressed ones) are not stripped here.
        ImageFormat::Jxl if bytes.starts_with(&[0xFF, 0x0A]) => Some(bytes.to_vec()),
        ImageFormat::Avif | ImageFormat::Heic => {
            return Err(ImageError::Unsupported(
                "originals of AVIF and HEIC sources are not served: their Exif and XMP items are not \
                 removed here"
                    .into(),
            ));
        }
        // An SVG served from this origin could run scripts in its context: never.
        ImageFormat::Svg => {
            return Err(ImageError::Unsupported(
                "originals of SVG sources are never served: they are rasterised".into(),
            ));
        }
        ImageFormat::Jxl => {
            return Err(ImageError::Unsupported(
                "originals of JPEG XL container files are not served: their metadata boxes \
                 are not removed here"
                    .into(),
            ));
        }
    };
    out.ok_or_else(|| ImageError::Corrupt("the container structure does not parse".into()))
}

fn be16(b: &[u8], off: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    )))
}

/// A minimal EXIF APP1 segment holding only IFD0 Orientation (big-endian TIFF).
fn orientation_segment(orientation: u8) -> Vec<u8> {
    let mut tiff: Vec<u8> = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]); // Orientation, SHORT, 1
    tiff.extend_from_slice(&[0, orientation, 0, 0]);
    tiff.extend_from_slice(&[0, 0, 0, 0]); // no next IFD
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((tiff.len() + 2) as u16).to_be_bytes());
    seg.extend_from_slice(&tiff);
    seg
}

/// Whether a JPEG marker segment is kept.
fn keep_jpeg_segment(marker: u8, payload: &[u8]) -> bool {
    match marker {
        0xE0 | 0xEE => true,                           // JFIF, Adobe
        0xE2 => payload.starts_with(b"ICC_PROFILE\0"), // colour, not FlashPix/MPF
        0xE1 | 0xE3..=0xED | 0xEF | 0xFE => false,     // EXIF, XMP, IPTC, maker, COM
        _ => true,                                     // tables, frame, scan headers
    }
}

fn jpeg(b: &[u8]) -> Option<Vec<u8>> {
    if b.get(0..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&[0xFF, 0xD8]);
    let mut orientation = 1u8;
    let mut wrote_orientation = false;
    let mut pos = 2usize;
    loop {
        if *b.get(pos)? != 0xFF {
            return None;
        }
        while *b.get(pos)? == 0xFF {
            pos += 1;
        }
        let marker = *b.get(pos)?;
        pos += 1;
        match marker {
            0xD9 => {
                out.extend_from_slice(&[0xFF, 0xD9]);
                return Some(out); // anything after EOI is dropped
            }
            0x01 | 0xD0..=0xD7 => {
                out.extend_from_slice(&[0xFF, marker]);
                continue;
            }
            _ => {}
        }
        let len = be16(b, pos)?;
        if len < 2 {
            return None;
        }
        let end = pos.checked_add(len)?;
        let payload = b.get(pos + 2..end)?;
        if marker == 0xE1 && payload.starts_with(b"Exif\0\0") {
            orientation = super::exif::orientation(&payload[6..]);
        }
        // The orientation block goes just before the first frame or table segment that
        // follows the APPn run (JFIF requires APP0 first).
        if !wrote_orientation && !(0xE0..=0xEF).contains(&marker) && marker != 0xFE {
            if orientation != 1 {
                out.extend_from_slice(&orientation_segment(orientation));
            }
            wrote_orientation = true;
        }
        if keep_jpeg_segment(marker, payload) {
            out.extend_from_slice(&[0xFF, marker]);
            out.extend_from_slice(b.get(pos..end)?);
        }
        pos = end;
        if marker == 0xDA {
            let start = pos;
            pos = skip_entropy(b, pos);
            out.extend_from_slice(&b[start..pos]);
        }
    }
}

/// Past entropy-coded data: to the next `FF` that is neither a stuffed byte nor a restart.
pub(super) fn skip_entropy(b: &[u8], mut pos: usize) -> usize {
    loop {
        match memchr::memchr(0xFF, b.get(pos..).unwrap_or_default()) {
            Some(i) => pos += i,
            None => return b.len(),
        }
        match b.get(pos + 1) {
            Some(0x00 | 0xD0..=0xD7) => pos += 2,
            _ => return pos,
        }
    }
}

fn png(b: &[u8]) -> Option<Vec<u8>> {
    if b.get(0..8)? != b"\x89PNG\r\n\x1a\n" {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..8]);
    for c in super::chunks::png(b) {
        if !matches!(c.kind, b"eXIf" | b"tEXt" | b"zTXt" | b"iTXt" | b"tIME") {
            out.extend_from_slice(b.get(c.at..c.end)?);
        }
        if c.kind == b"IEND" {
            return Some(out);
        }
    }
    None // no IEND: truncated
}

fn webp(b: &[u8]) -> Option<Vec<u8>> {
    if b.get(0..4)? != b"RIFF" || b.get(8..12)? != b"WEBP" {
        return None;
    }
    let riff_end = usize::try_from(u32::from_le_bytes(b.get(4..8)?.try_into().ok()?))
        .ok()?
        .checked_add(8)?
        .min(b.len());
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..12]);
    let mut pos = 12usize;
    let mut vp8x_flags_at = None;
    while pos + 8 <= riff_end {
        let kind = b.get(pos..pos + 4)?;
        let len = usize::try_from(u32::from_le_bytes(
            b.get(pos + 4..pos + 8)?.try_into().ok()?,
        ))
        .ok()?;
        let end = pos.checked_add(8)?.checked_add(len)?.checked_add(len & 1)?;
        let chunk = b.get(pos..end.min(riff_end))?;
        if kind == b"VP8X" {
            vp8x_flags_at = Some(out.len() + 8);
        }
        if kind != b"EXIF" && kind != b"XMP " {
            out.extend_from_slice(chunk);
        }
        pos = end;
    }
    if let Some(at) = vp8x_flags_at {
        *out.get_mut(at)? &= !0x0C; // EXIF (0x08) and XMP (0x04) flags
    }
    let size = u32::try_from(out.len() - 8).ok()?;
    out[4..8].copy_from_slice(&size.to_le_bytes());
    Some(out)
}

fn gif(b: &[u8]) -> Option<Vec<u8>> {
    fn sub_blocks_end(b: &[u8], mut pos: usize) -> Option<usize> {
        loop {
            let len = usize::from(*b.get(pos)?);
            pos = pos.checked_add(1 + len)?;
            if len == 0 {
                return Some(pos);
            }
        }
    }
    let table = |flags: u8| {
        if flags & 0x80 != 0 {
            3usize << ((flags & 7) + 1)
        } else {
            0
        }
    };
    if !matches!(b.get(0..6)?, b"GIF87a" | b"GIF89a") {
        return None;
    }
    let mut pos = 13 + table(*b.get(10)?);
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(b.get(..pos)?);
    loop {
        match *b.get(pos)? {
            0x2C => {
                let data = pos + 10 + table(*b.get(pos + 9)?) + 1;
                let end = sub_blocks_end(b, data)?;
                out.extend_from_slice(b.get(pos..end)?);
                pos = end;
            }
            0x21 => {
                let label = *b.get(pos + 1)?;
                let end = sub_blocks_end(b, pos + 2)?;
                let looping = label == 0xFF
                    && matches!(
                        b.get(pos + 3..pos + 14),
                        Some(b"NETSCAPE2.0" | b"ANIMEXTS1.0")
                    );
                if label != 0xFE && (label != 0xFF || looping) {
                    out.extend_from_slice(b.get(pos..end)?);
                }
                pos = end;
            }
            0x3B => {
                out.push(0x3B);
                return Some(out);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut s = vec![0xFF, marker];
        s.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        s.extend_from_slice(payload);
        s
    }

    /// A real JPEG with EXIF (orientation 6 + a GPS-looking string), XMP, a comment, an ICC
    /// chunk and trailing bytes after EOI.
    fn tagged_jpeg() -> (Vec<u8>, Vec<u8>) {
        let bitmap = crate::image::pipeline::tests::card(16, 8);
        let plain = crate::image::encode(
            &bitmap,
            crate::options::OutputFormat::Jpeg,
            80,
            &crate::image::EncodeSettings::default(),
        )
        .unwrap();
        let mut exif =
            b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0".to_vec();
        exif.extend_from_slice(b"GPS 52.5200N 13.4050E");
        let mut tagged = plain[..2].to_vec();
        tagged.extend(segment(0xE1, &exif));
        tagged.extend(segment(
            0xE1,
            b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>secret</x:xmpmeta>",
        ));
        tagged.extend(segment(0xFE, b"shot by alice"));
        tagged.extend(segment(0xE2, b"ICC_PROFILE\0\x01\x01profilebytes"));
        tagged.extend_from_slice(&plain[2..]);
        tagged.extend_from_slice(b"\xFF\xD8trailing MPF image with its own EXIF GPS");
        (tagged, plain)
    }

    #[test]
    fn jpeg_loses_metadata_keeps_pixels_icc_and_orientation() {
        let (tagged, plain) = tagged_jpeg();
        let out = strip_metadata(&tagged, ImageFormat::Jpeg).unwrap();
        for secret in [&b"GPS"[..], b"secret", b"alice", b"trailing"] {
            assert!(!out.windows(secret.len()).any(|w| w == secret));
        }
        assert!(out.windows(12).any(|w| w == b"ICC_PROFILE\0"));
        let p = crate::image::probe(&out).unwrap();
        assert_eq!(p.orientation, 6);
        // Same pixels: the entropy-coded data is untouched.
        let a = crate::image::decode(&out, &p).unwrap();
        let b = crate::image::decode(&plain, &crate::image::probe(&plain).unwrap()).unwrap();
        assert_eq!(a.data, b.data);
        // A file without metadata comes out byte-identical.
        assert_eq!(strip_metadata(&plain, ImageFormat::Jpeg).unwrap(), plain);
    }

    fn png_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let crc = crc32fast::hash(&c[4..]);
        c.extend_from_slice(&crc.to_be_bytes());
        c
    }

    #[test]
    fn png_text_and_exif_chunks_are_dropped() {
        let bitmap = crate::image::pipeline::tests::card(8, 8);
        let plain = crate::image::encode(
            &bitmap,
            crate::options::OutputFormat::Png,
            80,
            &crate::image::EncodeSettings::default(),
        )
        .unwrap();
        let mut tagged = plain[..33].to_vec(); // signature + IHDR
        tagged.extend(png_chunk(b"tEXt", b"Author\0alice"));
        tagged.extend(png_chunk(b"eXIf", b"MM\0\x2aGPS"));
        tagged.extend(png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0secret"));
        tagged.extend_from_slice(&plain[33..]);
        let out = strip_metadata(&tagged, ImageFormat::Png).unwrap();
        assert_eq!(out, plain);
    }

    #[test]
    fn webp_exif_and_xmp_chunks_and_flags_are_dropped() {
        // VP8X with EXIF + XMP flags, a tiny VP8L payload, then EXIF and XMP chunks.
        let lossless = webp::Encoder::from_rgb(&[255, 0, 0, 0, 255, 0], 2, 1).encode_lossless();
        let body = &lossless[12..];
        let mut chunks = b"VP8X\x0a\0\0\0\x0c\0\0\0\x01\0\0\0\0\0".to_vec();
        chunks.extend_from_slice(body);
        chunks.extend_from_slice(b"EXIF\x04\0\0\0GPS!XMP \x06\0\0\0secret");
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&((chunks.len() + 4) as u32).to_le_bytes());
        file.extend_from_slice(b"WEBP");
        file.extend_from_slice(&chunks);
        let out = strip_metadata(&file, ImageFormat::Webp).unwrap();
        assert!(!out.windows(3).any(|w| w == b"GPS"));
        assert!(!out.windows(6).any(|w| w == b"secret"));
        assert_eq!(out[20] & 0x0C, 0);
        let riff = u32::from_le_bytes(out[4..8].try_into().unwrap()) as usize;
        assert_eq!(riff + 8, out.len());
        let p = crate::image::probe(&out).unwrap();
        assert_eq!((p.width, p.height), (2, 1));
        crate::image::decode(&out, &p).unwrap();
    }

    #[test]
    fn gif_comments_and_xmp_go_looping_stays() {
        let mut g = b"GIF89a\x01\0\x01\0\0\0\0".to_vec();
        g.extend_from_slice(b"\x21\xFF\x0bNETSCAPE2.0\x03\x01\0\0\0");
        g.extend_from_slice(b"\x21\xFE\x05alice\0");
        g.extend_from_slice(b"\x21\xFF\x0bXMP DataXMP\x06secret\0");
        g.extend_from_slice(b"\x2C\0\0\0\0\x01\0\x01\0\0\x02\x02\x44\x01\0\x3B");
        let out = strip_metadata(&g, ImageFormat::Gif).unwrap();
        assert!(out.windows(11).any(|w| w == b"NETSCAPE2.0"));
        assert!(!out.windows(5).any(|w| w == b"alice"));
        assert!(!out.windows(6).any(|w| w == b"secret"));
        assert_eq!(*out.last().unwrap(), 0x3B);
    }

    #[test]
    fn truncated_containers_are_errors() {
        let (tagged, _) = tagged_jpeg();
        for cut in [3, 10, 40, tagged.len() / 2] {
            for f in [
                ImageFormat::Jpeg,
                ImageFormat::Png,
                ImageFormat::Webp,
                ImageFormat::Gif,
            ] {
                // Never a panic; a cut JPEG before its EOI does not parse.
                let _ = strip_metadata(&tagged[..cut], f);
            }
            assert!(strip_metadata(&tagged[..cut], ImageFormat::Jpeg).is_err());
        }
    }
}
