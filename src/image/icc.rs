//! Colour management: sources with an embedded ICC profile are converted to sRGB.
//!
//! Outputs carry no profile (metadata-free by design), so they are in sRGB, the colour space a
//! browser assumes for untagged images. A Display P3 or Adobe RGB photo therefore has its pixels
//! converted with qcms (Firefox's colour management, pure Rust) instead of being reinterpreted,
//! which would shift every colour. Profiles that do not parse, are not RGB, or already describe
//! sRGB leave the pixels untouched.
//!
//! Extraction reads container structure only: JPEG APP2 `ICC_PROFILE` chunks (reassembled in
//! sequence order), the WebP `ICCP` chunk and PNG's compressed `iCCP` (inflated with a bound).

use super::{Bitmap, ImageFormat};

/// Profiles larger than this are ignored (real ones are a few KiB; the JPEG format caps one at
/// 255 chunks of 64 KiB).
const MAX_PROFILE_BYTES: usize = 4 << 20;

/// Returns the embedded ICC profile of a JPEG or WebP, if any.
pub fn extract(bytes: &[u8], format: ImageFormat) -> Option<Vec<u8>> {
    match format {
        ImageFormat::Jpeg => jpeg(bytes),
        ImageFormat::Webp => webp(bytes),
        ImageFormat::Png => png(bytes),
        ImageFormat::Tiff => tiff(bytes),
        ImageFormat::Avif | ImageFormat::Heic => super::bmff::icc(bytes),
        // JPEG XL's profile is the one its render is in: returned by its decode.
        ImageFormat::Gif
        | ImageFormat::Bmp
        | ImageFormat::Ico
        | ImageFormat::Jxl
        | ImageFormat::Svg => None,
    }
}

/// PNG `iCCP`: name, NUL, method 0, zlib data — inflated here with a hard output bound (the PNG
/// decoder is told to skip the chunk, since its own bound is the image size: a small file with
/// a deflate-bomb profile would otherwise inflate hundreds of MB on every transform).
fn png(b: &[u8]) -> Option<Vec<u8>> {
    let chunk = super::chunks::png(b)
        .take_while(|c| c.kind != b"IDAT" && c.kind != b"IEND")
        .find(|c| c.kind == b"iCCP")?;
    let data = chunk.data;
    let nul = data.iter().take(80).position(|&c| c == 0)?;
    if *data.get(nul + 1)? != 0 {
        return None; // unknown compression method
    }
    fdeflate::decompress_to_vec_bounded(data.get(nul + 2..)?, MAX_PROFILE_BYTES).ok()
}

/// TIFF: IFD0's InterColorProfile (tag 34675, UNDEFINED bytes).
fn tiff(b: &[u8]) -> Option<Vec<u8>> {
    let t = super::tiff::Tiff::new(b)?;
    let e = t
        .entries(t.ifd0()?)?
        .into_iter()
        .find(|e| e.tag == 34675 && e.kind == 7)?;
    let (at, len) = t.value(e)?;
    (len <= MAX_PROFILE_BYTES).then(|| b[at..at + len].to_vec())
}

fn jpeg(b: &[u8]) -> Option<Vec<u8>> {
    let mut chunks: Vec<(u8, &[u8])> = Vec::new();
    // Profiles precede the first scan.
    super::probe::walk_jpeg(b, |marker, seg| {
        if marker == 0xE2 && seg.len() > 14 && seg.starts_with(b"ICC_PROFILE\0") {
            chunks.push((seg[12], &seg[14..]));
        }
        None::<()>
    })?;
    if chunks.is_empty() {
        return None;
    }
    chunks.sort_by_key(|(seq, _)| *seq);
    let total: usize = chunks.iter().map(|(_, c)| c.len()).sum();
    if total > MAX_PROFILE_BYTES {
        return None;
    }
    let mut out = Vec::with_capacity(total);
    for (_, c) in chunks {
        out.extend_from_slice(c);
    }
    Some(out)
}

fn webp(b: &[u8]) -> Option<Vec<u8>> {
    if b.get(12..16)? != b"VP8X" {
        return None;
    }
    super::chunks::riff(b)
        .find(|c| c.kind == b"ICCP")
        .filter(|c| c.data.len() <= MAX_PROFILE_BYTES)
        .map(|c| c.data.to_vec())
}

/// Converts `bitmap` from the colour space `profile` describes to sRGB, in place. Returns true
/// when pixels were converted.
pub fn to_srgb(bitmap: &mut Bitmap, profile: &[u8]) -> bool {
    // Only RGB profiles describe our RGB pixels (bytes 16..20: the data colour space).
    if profile.get(16..20) != Some(b"RGB ".as_slice()) {
        return false;
    }
    let Some(input) = qcms::Profile::new_from_slice(profile, false) else {
        return false;
    };
    if input.is_sRGB() {
        return false;
    }
    let mut srgb = qcms::Profile::new_sRGB();
    srgb.precache_output_transform();
    let ty = if bitmap.channels == 4 {
        qcms::DataType::RGBA8
    } else {
        qcms::DataType::RGB8
    };
    // None for profiles qcms cannot use (CMYK, Lab, broken curves): keep the pixels as they are.
    let Some(transform) = qcms::Transform::new(&input, &srgb, ty, qcms::Intent::Perceptual) else {
        return false;
    };
    // The buffer is a whole number of pixels (a Bitmap invariant), as `apply` requires.
    transform.apply(&mut bitmap.data);
    true
}

/// Longest profile description reported, characters.
const MAX_DESCRIPTION: usize = 64;

/// The profile's description (`desc` tag: ICC v2 `desc` ASCII or v4 `mluc`, first record),
/// printable characters only, at most 64; `None` when absent or malformed.
pub fn description(profile: &[u8]) -> Option<String> {
    let be32 = |off: usize| -> Option<usize> {
        let b = profile.get(off..off.checked_add(4)?)?;
        usize::try_from(u32::from_be_bytes(b.try_into().ok()?)).ok()
    };
    // Tag table at 128: count, then (signature, offset, size) entries.
    let count = be32(128)?.min(256);
    let (offset, size) = (0..count).find_map(|i| {
        let entry = 132 + i * 12;
        (profile.get(entry..entry + 4)? == b"desc")
            .then(|| Some((be32(entry + 4)?, be32(entry + 8)?)))?
    })?;
    let tag = profile.get(offset..offset.checked_add(size)?)?;
    let text: String = match tag.get(0..4)? {
        b"desc" => {
            let n = be32(offset + 8)?.min(size.saturating_sub(12));
            tag.get(12..12 + n)?
                .iter()
                .map(|&b| char::from(b))
                .collect()
        }
        b"mluc" => {
            let len =
                usize::try_from(u32::from_be_bytes(tag.get(20..24)?.try_into().ok()?)).ok()?;
            let at = usize::try_from(u32::from_be_bytes(tag.get(24..28)?.try_into().ok()?)).ok()?;
            let units: Vec<u16> = tag
                .get(at..at.checked_add(len)?)?
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            char::decode_utf16(units).filter_map(Result::ok).collect()
        }
        _ => return None,
    };
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DESCRIPTION)
        .collect::<String>()
        .trim()
        .to_owned();
    (!clean.is_empty()).then_some(clean)
}

/// Test support: a minimal ICC v2 matrix/TRC display profile (Display P3 primaries adapted to
/// D50, gamma 2.2), and images that carry it.
#[cfg(test)]
pub(crate) mod testing {
    fn s15(v: f64) -> [u8; 4] {
        ((v * 65536.0).round() as i32).to_be_bytes()
    }

    fn xyz(x: f64, y: f64, z: f64) -> Vec<u8> {
        let mut t = b"XYZ \0\0\0\0".to_vec();
        for v in [x, y, z] {
            t.extend_from_slice(&s15(v));
        }
        t
    }

    /// Display P3 (D50-adapted primaries as in Apple's profile) with a 2.2 gamma curve.
    pub fn display_p3() -> Vec<u8> {
        let mut desc = b"desc\0\0\0\0".to_vec();
        let name = b"Test Display P3\0";
        desc.extend_from_slice(&(name.len() as u32).to_be_bytes());
        desc.extend_from_slice(name);
        desc.extend_from_slice(&[0; 4 + 4 + 2 + 1 + 67]);
        let curve = {
            let mut c = b"curv\0\0\0\0".to_vec();
            c.extend_from_slice(&1u32.to_be_bytes());
            c.extend_from_slice(&[0x02, 0x33]); // 2.2 in u8Fixed8
            c.extend_from_slice(&[0, 0]);
            c
        };
        let tags: Vec<(&[u8; 4], Vec<u8>)> = vec![
            (b"desc", desc),
            (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(0.5151, 0.2412, -0.0011)),
            (b"gXYZ", xyz(0.2920, 0.6922, 0.0419)),
            (b"bXYZ", xyz(0.1571, 0.0666, 0.7841)),
            (b"rTRC", curve.clone()),
            (b"gTRC", curve.clone()),
            (b"bTRC", curve),
        ];
        let table_len = 4 + 12 * tags.len();
        let mut offset = 128 + table_len;
        let mut table = (tags.len() as u32).to_be_bytes().to_vec();
        let mut data = Vec::new();
        for (sig, body) in &tags {
            while !(offset + data.len()).is_multiple_of(4) {
                data.push(0);
            }
            let at = offset + data.len();
            table.extend_from_slice(*sig);
            table.extend_from_slice(&(at as u32).to_be_bytes());
            table.extend_from_slice(&(body.len() as u32).to_be_bytes());
            data.extend_from_slice(body);
        }
        offset += data.len();
        let mut h = vec![0u8; 128];
        h[0..4].copy_from_slice(&(offset as u32).to_be_bytes());
        h[8..12].copy_from_slice(&[2, 0x10, 0, 0]);
        h[12..16].copy_from_slice(b"mntr");
        h[16..20].copy_from_slice(b"RGB ");
        h[20..24].copy_from_slice(b"XYZ ");
        h[36..40].copy_from_slice(b"acsp");
        h[68..72].copy_from_slice(&s15(0.9642));
        h[72..76].copy_from_slice(&s15(1.0));
        h[76..80].copy_from_slice(&s15(0.8249));
        let mut out = h;
        out.extend_from_slice(&table);
        out.extend_from_slice(&data);
        out
    }

    /// What a P3 (gamma 2.2) colour looks like in sRGB, by the textbook matrix.
    pub fn p3_to_srgb(rgb: [u8; 3]) -> [f64; 3] {
        let lin = rgb.map(|v| (f64::from(v) / 255.0).powf(2.2));
        let m = [
            [1.2249, -0.2247, 0.0],
            [-0.0420, 1.0419, 0.0],
            [-0.0197, -0.0786, 1.0979],
        ];
        let mut out = [0.0; 3];
        for (o, row) in out.iter_mut().zip(m) {
            let l: f64 = row
                .iter()
                .zip(lin)
                .map(|(a, b)| a * b)
                .sum::<f64>()
                .clamp(0.0, 1.0);
            let e = if l <= 0.003_130_8 {
                12.92 * l
            } else {
                1.055 * l.powf(1.0 / 2.4) - 0.055
            };
            *o = e * 255.0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_p3_colour_is_converted_not_reinterpreted() {
        let profile = testing::display_p3();
        let colour = [200u8, 120, 60];
        let mut b = Bitmap {
            width: 2,
            height: 1,
            channels: 3,
            data: colour.repeat(2),
        };
        assert!(to_srgb(&mut b, &profile));
        let want = testing::p3_to_srgb(colour);
        for (got, want) in b.data[0..3].iter().zip(want) {
            assert!(
                (f64::from(*got) - want).abs() <= 3.0,
                "{:?} vs {want:?}",
                &b.data[0..3]
            );
        }
        assert_ne!(&b.data[0..3], &colour);
        // Garbage and non-RGB profiles leave pixels alone.
        let mut c = b.clone();
        assert!(!to_srgb(&mut c, b"not a profile"));
        let mut gray = profile.clone();
        gray[16..20].copy_from_slice(b"GRAY");
        assert!(!to_srgb(&mut c, &gray));
        assert_eq!(c.data, b.data);
    }

    #[test]
    fn jpeg_profile_chunks_are_reassembled_in_order() {
        // Two APP2 chunks, stored out of order.
        let mut jpeg = vec![0xFF, 0xD8];
        for (seq, body) in [(2u8, b"WORLD".as_slice()), (1u8, b"HELLO ".as_slice())] {
            let mut seg = b"ICC_PROFILE\0".to_vec();
            seg.extend_from_slice(&[seq, 2]);
            seg.extend_from_slice(body);
            jpeg.extend_from_slice(&[0xFF, 0xE2]);
            jpeg.extend_from_slice(&((seg.len() + 2) as u16).to_be_bytes());
            jpeg.extend_from_slice(&seg);
        }
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0, 2, 0xFF, 0xD9]);
        assert_eq!(
            extract(&jpeg, ImageFormat::Jpeg).as_deref(),
            Some(b"HELLO WORLD".as_slice())
        );
        // Truncated segment: no profile, no panic.
        assert_eq!(extract(&jpeg[..10], ImageFormat::Jpeg), None);
    }

    #[test]
    fn profile_descriptions_are_read_bounded_and_clean() {
        let p3 = testing::display_p3();
        assert_eq!(description(&p3).as_deref(), Some("Test Display P3"));
        assert_eq!(description(&p3[..140]), None);
        assert_eq!(description(b"short"), None);
        // A v4 `mluc` description, and one with a hostile length.
        let mut v4 = p3[..128].to_vec();
        v4.extend_from_slice(&1u32.to_be_bytes());
        v4.extend_from_slice(b"desc");
        v4.extend_from_slice(&144u32.to_be_bytes());
        v4.extend_from_slice(&36u32.to_be_bytes());
        v4.extend_from_slice(b"mluc\0\0\0\0\0\0\0\x01\0\0\0\x0cenUS");
        v4.extend_from_slice(&8u32.to_be_bytes());
        v4.extend_from_slice(&28u32.to_be_bytes());
        v4.extend_from_slice(&[0, b's', 0, b'R', 0, b'G', 0, b'B']);
        assert_eq!(description(&v4).as_deref(), Some("sRGB"));
        v4[164..168].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(description(&v4), None);
    }

    #[test]
    fn tiff_profile_is_read_from_ifd0() {
        let profile = testing::display_p3();
        let mut t = b"II\x2a\0\x08\0\0\0\x01\0".to_vec();
        t.extend_from_slice(&34675u16.to_le_bytes());
        t.extend_from_slice(&7u16.to_le_bytes());
        t.extend_from_slice(&(profile.len() as u32).to_le_bytes());
        t.extend_from_slice(&26u32.to_le_bytes());
        t.extend_from_slice(&[0; 4]);
        t.extend_from_slice(&profile);
        assert_eq!(extract(&t, ImageFormat::Tiff), Some(profile.clone()));
        // A length past the end: none.
        t[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(extract(&t, ImageFormat::Tiff), None);
    }

    #[test]
    fn webp_profile_is_read_from_the_iccp_chunk() {
        let profile = testing::display_p3();
        let mut riff = b"WEBPVP8X".to_vec();
        riff.extend_from_slice(&10u32.to_le_bytes());
        riff.extend_from_slice(&[0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        riff.extend_from_slice(b"ICCP");
        riff.extend_from_slice(&(profile.len() as u32).to_le_bytes());
        riff.extend_from_slice(&profile);
        let mut webp = b"RIFF".to_vec();
        webp.extend_from_slice(&(riff.len() as u32).to_le_bytes());
        webp.extend_from_slice(&riff);
        assert_eq!(extract(&webp, ImageFormat::Webp), Some(profile.clone()));
        // A chunk claiming more bytes than the file has: no profile, no panic.
        let cut = webp.len() - 10;
        assert_eq!(extract(&webp[..cut], ImageFormat::Webp), None);
    }

    fn png_with_iccp(profile_zlib: &[u8]) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&[0, 0, 0, 0]); // CRC is not checked here
        };
        chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
        let mut iccp = b"icc\0\0".to_vec();
        iccp.extend_from_slice(profile_zlib);
        chunk(b"iCCP", &iccp);
        chunk(b"IDAT", &[]);
        out
    }

    #[test]
    fn png_profiles_are_inflated_with_a_bound() {
        let profile = testing::display_p3();
        let small = miniz_oxide::deflate::compress_to_vec_zlib(&profile, 6);
        assert_eq!(
            extract(&png_with_iccp(&small), ImageFormat::Png),
            Some(profile)
        );
        // A deflate bomb: 64 MiB of zeros in a few KiB. Refused, not inflated.
        let bomb = miniz_oxide::deflate::compress_to_vec_zlib(&vec![0u8; 64 << 20], 9);
        assert!(bomb.len() < 1 << 20);
        assert_eq!(extract(&png_with_iccp(&bomb), ImageFormat::Png), None);
        // Garbage after the name: no profile, no panic.
        assert_eq!(extract(&png_with_iccp(b"\x01\x02"), ImageFormat::Png), None);
    }
}
