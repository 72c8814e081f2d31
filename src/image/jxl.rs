//! JPEG XL sources: a header probe of pixgate's own (size, orientation, animation: a few dozen
//! bits, no allocation) and the decode through jxl-oxide (pure Rust), single-threaded inside
//! the CPU pool, with an allocation tracker bounding its memory.
//!
//! jxl-oxide renders upright (orientation applied) in the image's own colour space; the probe
//! therefore reports the upright size with orientation 1, and the decode hands the rendered
//! ICC profile to the usual conversion to sRGB unless the output is sRGB already.

use std::io::Cursor;

use super::{Bitmap, ImageError};

/// The bare codestream's signature.
const CODESTREAM: [u8; 2] = [0xFF, 0x0A];
/// The ISO BMFF container's signature box.
const CONTAINER: [u8; 12] = [
    0, 0, 0, 0x0C, b'J', b'X', b'L', b' ', 0x0D, 0x0A, 0x87, 0x0A,
];

/// Whether `bytes` start like a JPEG XL file.
pub fn sniff(bytes: &[u8]) -> bool {
    bytes.starts_with(&CODESTREAM) || bytes.starts_with(&CONTAINER)
}

/// What the probe reads from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Upright size (orientation applied, as jxl-oxide renders).
    pub width: u32,
    pub height: u32,
    /// The header's orientation (1..=8), already applied to `width` × `height`.
    pub orientation: u8,
    pub animated: bool,
}

/// Reads the size header and the start of the image metadata: from the codestream, or from
/// the first `jxlc`/`jxlp` box of a container. `None` when it is not there or is malformed.
pub fn header(bytes: &[u8]) -> Option<Header> {
    let codestream = if bytes.starts_with(&CONTAINER) {
        first_codestream_box(bytes)?
    } else {
        bytes
    };
    let rest = codestream.strip_prefix(&CODESTREAM)?;
    let mut bits = Bits::new(rest);
    let (w, h) = size_header(&mut bits)?;
    // ImageMetadata: all_default, then (if extra_fields) orientation, intrinsic size, preview,
    // animation — the first fields of the bundle.
    let (mut orientation, mut animated) = (1u8, false);
    if !bits.flag()? && bits.flag()? {
        orientation = 1 + bits.take(3)? as u8;
        if bits.flag()? {
            size_header(&mut bits)?; // intrinsic size: a display hint, not the pixel grid
        }
        if bits.flag()? {
            preview_header(&mut bits)?;
        }
        animated = bits.flag()?;
    }
    let (width, height) = if orientation >= 5 { (h, w) } else { (w, h) };
    Some(Header {
        width,
        height,
        orientation,
        animated,
    })
}

/// The payload of the first `jxlc` box (or `jxlp`, past its 4-byte index) of a container.
fn first_codestream_box(bytes: &[u8]) -> Option<&[u8]> {
    let mut pos = 0usize;
    while pos + 8 <= bytes.len() {
        let size32 = u32::from_be_bytes(bytes[pos..pos + 4].try_into().ok()?);
        let kind = &bytes[pos + 4..pos + 8];
        let (header, size) = match size32 {
            1 => {
                let large = bytes.get(pos + 8..pos + 16)?;
                (
                    16,
                    usize::try_from(u64::from_be_bytes(large.try_into().ok()?)).ok()?,
                )
            }
            0 => (8, bytes.len() - pos), // to the end of the file
            n => (8, n as usize),
        };
        if size < header {
            return None;
        }
        let end = pos.checked_add(size)?.min(bytes.len());
        let payload = bytes.get(pos + header..end)?;
        match kind {
            b"jxlc" => return Some(payload),
            b"jxlp" => return payload.get(4..),
            _ => pos = pos.checked_add(size)?,
        }
    }
    None
}

/// `SizeHeader`: small sizes are multiples of 8; otherwise a 2-bit selector picks 9, 13, 18 or
/// 30 bits; the width may follow from a ratio instead.
fn size_header(bits: &mut Bits<'_>) -> Option<(u32, u32)> {
    let small = bits.flag()?;
    let dim = |bits: &mut Bits<'_>| -> Option<u32> {
        if small {
            Some((bits.take(5)? + 1) * 8)
        } else {
            let n = [9, 13, 18, 30][bits.take(2)? as usize];
            Some(bits.take(n)? + 1)
        }
    };
    let height = dim(bits)?;
    let ratio = bits.take(3)?;
    let width = if ratio == 0 {
        dim(bits)?
    } else {
        ratio_width(ratio, height)
    };
    Some((width, height))
}

/// The width a `SizeHeader` ratio gives for `height`.
fn ratio_width(ratio: u32, height: u32) -> u32 {
    let h = u64::from(height);
    let w = match ratio {
        1 => h,
        2 => h * 12 / 10,
        3 => h * 4 / 3,
        4 => h * 3 / 2,
        5 => h * 16 / 9,
        6 => h * 5 / 4,
        _ => h * 2,
    };
    u32::try_from(w).unwrap_or(u32::MAX)
}

/// `PreviewHeader` (skipped).
fn preview_header(bits: &mut Bits<'_>) -> Option<()> {
    let div8 = bits.flag()?;
    let dim = |bits: &mut Bits<'_>| -> Option<()> {
        if div8 {
            let n = [0, 0, 5, 9][bits.take(2)? as usize];
            bits.take(n)?;
        } else {
            let n = [6, 8, 10, 12][bits.take(2)? as usize];
            bits.take(n)?;
        }
        Some(())
    };
    dim(bits)?;
    if bits.take(3)? == 0 {
        dim(bits)?;
    }
    Some(())
}

/// Least-significant-bit-first reader (JPEG XL's order).
struct Bits<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(bytes: &'a [u8]) -> Bits<'a> {
        Bits { bytes, pos: 0 }
    }

    fn take(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for i in 0..n {
            let byte = *self.bytes.get(self.pos / 8)?;
            let bit = (byte >> (self.pos % 8)) & 1;
            v |= u32::from(bit) << i;
            self.pos += 1;
        }
        Some(v)
    }

    fn flag(&mut self) -> Option<bool> {
        self.take(1).map(|b| b == 1)
    }
}

/// Frames a JPEG XL may load to render its first picture: layers composited into it are
/// frames too, each decoded.
pub fn decode(
    bytes: &[u8],
    (width, height): (u32, u32),
    max_frames: u64,
) -> Result<(Bitmap, Option<Vec<u8>>), ImageError> {
    let corrupt = |e: &dyn std::fmt::Display| ImageError::Corrupt(format!("JPEG XL: {e}"));
    let pixels = u64::from(width) * u64::from(height);
    // jxl-oxide works in f32 planes: colour, alpha and its frame and group buffers.
    let limit = usize::try_from(
        pixels
            .saturating_mul(MAX_BYTES_PER_PIXEL)
            .saturating_add(16 << 20),
    )
    .unwrap_or(usize::MAX);
    let image = jxl_oxide::JxlImage::builder()
        .pool(jxl_oxide::JxlThreadPool::none())
        .alloc_tracker(jxl_oxide::AllocTracker::with_limit(limit))
        .read(Cursor::new(bytes))
        .map_err(|e| corrupt(&e))?;
    if (image.width(), image.height()) != (width, height) {
        // The probe reads the upright size; jxl-oxide's is the stored one.
        let (w, h) = (image.width(), image.height());
        if (h, w) != (width, height) {
            return Err(corrupt(&"the decoder's size differs from the header"));
        }
    }
    if image.num_loaded_frames() as u64 > max_frames {
        return Err(ImageError::TooManyFrames { limit: max_frames });
    }
    if image.num_loaded_keyframes() == 0 {
        return Err(corrupt(&"no complete frame"));
    }
    let render = image.render_frame(0).map_err(|e| corrupt(&e))?;
    let mut stream = render.stream();
    if (stream.width(), stream.height()) != (width, height) {
        return Err(corrupt(&"rendered size differs from the header"));
    }
    let channels = stream.channels() as usize;
    let mut samples = vec![0u8; width as usize * height as usize * channels];
    if stream.write_to_buffer(&mut samples) != samples.len() {
        return Err(corrupt(&"short render"));
    }
    drop(render);
    let bitmap = match channels {
        1 => Bitmap {
            width,
            height,
            channels: 3,
            data: super::map_pixels(&samples, 1, |g| [g[0], g[0], g[0]]),
        },
        2 => Bitmap {
            width,
            height,
            channels: 4,
            data: super::map_pixels(&samples, 2, |p| [p[0], p[0], p[0], p[1]]),
        },
        3 | 4 => Bitmap {
            width,
            height,
            channels: channels as u8,
            data: samples,
        },
        _ => return Err(corrupt(&"CMYK is not supported")),
    };
    // sRGB (CICP 1/13/0) needs no conversion; anything else goes through its profile.
    let srgb = image.rendered_cicp().is_some_and(|c| c[..3] == [1, 13, 0]);
    let icc = (!srgb).then(|| image.rendered_icc());
    Ok((bitmap, icc.filter(|p| !p.is_empty())))
}

/// jxl-oxide's allocations per pixel, at most (f32 planes for the colour channels and alpha,
/// the frame's and the render's copies); its tracker refuses beyond, so a file needing more is
/// `invalid_image` at upload and never stored. `tests/bounds.rs` measured 27 B/px in all for a
/// 49 MP lossy (VarDCT) file and 12 B/px for a lossless RGBA one.
pub const MAX_BYTES_PER_PIXEL: u64 = 28;

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes bits LSB-first.
    struct Writer {
        bytes: Vec<u8>,
        bit: usize,
    }

    impl Writer {
        fn put(&mut self, n: u32, v: u32) {
            for i in 0..n {
                if self.bit.is_multiple_of(8) {
                    self.bytes.push(0);
                }
                let last = self.bytes.len() - 1;
                self.bytes[last] |= (((v >> i) & 1) as u8) << (self.bit % 8);
                self.bit += 1;
            }
        }
    }

    fn codestream(small: bool, w: u32, h: u32, orientation: Option<u32>) -> Vec<u8> {
        let mut b = Writer {
            bytes: CODESTREAM.to_vec(),
            bit: 16,
        };
        b.put(1, u32::from(small));
        if small {
            b.put(5, h / 8 - 1);
            b.put(3, 0);
            b.put(5, w / 8 - 1);
        } else {
            b.put(2, 3);
            b.put(30, h - 1);
            b.put(3, 0);
            b.put(2, 3);
            b.put(30, w - 1);
        }
        match orientation {
            None => b.put(1, 1), // all_default
            Some(o) => {
                b.put(1, 0);
                b.put(1, 1); // extra_fields
                b.put(3, o - 1);
                b.put(1, 0); // no intrinsic size
                b.put(1, 0); // no preview
                b.put(1, 1); // animation
            }
        }
        b.bytes
    }

    #[test]
    fn size_headers_and_orientation() {
        let h = header(&codestream(true, 64, 48, None)).unwrap();
        assert_eq!(
            (h.width, h.height, h.orientation, h.animated),
            (64, 48, 1, false)
        );
        let h = header(&codestream(false, 100_000, 3, Some(6))).unwrap();
        assert_eq!(
            (h.width, h.height, h.orientation, h.animated),
            (3, 100_000, 6, true)
        );
        // Truncated: no header, no panic.
        let full = codestream(false, 5000, 4000, None);
        for cut in 0..full.len() - 1 {
            let _ = header(&full[..cut]);
        }
        assert_eq!(ratio_width(5, 900), 1600);
    }

    #[test]
    fn container_boxes_are_walked_safely() {
        let cs = codestream(true, 16, 8, None);
        let mut file = CONTAINER.to_vec();
        file.extend_from_slice(&20u32.to_be_bytes());
        file.extend_from_slice(b"ftypjxl \0\0\0\0jxl ");
        file.extend_from_slice(&((cs.len() + 12) as u32).to_be_bytes());
        file.extend_from_slice(b"jxlp\0\0\0\0");
        file.extend_from_slice(&cs);
        let h = header(&file).unwrap();
        assert_eq!((h.width, h.height), (16, 8));
        // A box claiming a size below its header, or past the end, is no header.
        let mut bad = CONTAINER.to_vec();
        bad.extend_from_slice(&[0, 0, 0, 4]);
        bad.extend_from_slice(b"jxlc");
        assert!(header(&bad).is_none());
        let mut huge = CONTAINER.to_vec();
        huge.extend_from_slice(&[0, 0, 0, 1]);
        huge.extend_from_slice(b"ftyp");
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(header(&huge).is_none());
    }
}
