//! AVIF sources: a header reader of pixgate's own (the primary item's `ispe` size, `irot`/
//! `imir` orientation and `colr` profile, walked with bounds checks and no allocation beyond
//! the profile), avif-parse (Rust) for the items' AV1 data, and rav1d — the Rust port of dav1d,
//! with dav1d's assembly kernels — for the AV1 decode, single-threaded, told the frame size it
//! may produce. YUV is converted to RGB here (BT.601/709/2020 matrices, limited or full range,
//! 8 to 12 bits; chroma upsampled by replication); an alpha item is decoded the same way.
//!
//! Not supported (refused as `invalid_image`): grid images (tiles), image sequences beyond the
//! first frame are not rendered (the primary item is a still). `nclx` primaries other than
//! BT.709 are not converted (an ICC profile in `colr` is).

use std::ffi::c_int;
use std::io::Cursor;
use std::ptr::NonNull;

use rav1d::include::dav1d::data::Dav1dData;
use rav1d::include::dav1d::dav1d::{Dav1dContext, Dav1dSettings};
use rav1d::include::dav1d::picture::Dav1dPicture;

use super::{Bitmap, ImageError};

/// Whether `bytes` start with an ISO BMFF `ftyp` naming an AVIF brand.
pub fn sniff(bytes: &[u8]) -> bool {
    let Some((kind, payload, _)) = next_box(bytes) else {
        return false;
    };
    kind == *b"ftyp"
        && payload.len() >= 8
        && (payload[..4].chunks(4).chain(payload[8..].chunks_exact(4)))
            .any(|b| b == b"avif" || b == b"avis")
}

/// What the header says about the primary item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The coded size (`ispe`), before orientation.
    pub width: u32,
    pub height: u32,
    /// `irot` then `imir` as an EXIF orientation (1..=8).
    pub orientation: u8,
    /// The primary item is a grid of tiles.
    pub grid: bool,
}

/// One box: type, payload, total length.
fn next_box(b: &[u8]) -> Option<([u8; 4], &[u8], usize)> {
    let size32 = u32::from_be_bytes(b.get(0..4)?.try_into().ok()?);
    let kind: [u8; 4] = b.get(4..8)?.try_into().ok()?;
    let (header, size) = match size32 {
        0 => (8, b.len()),
        1 => (
            16,
            usize::try_from(u64::from_be_bytes(b.get(8..16)?.try_into().ok()?)).ok()?,
        ),
        n => (8, n as usize),
    };
    if size < header || size > b.len() {
        return None;
    }
    Some((kind, &b[header..size], size))
}

/// The boxes of `b`, in order, stopping at the first malformed one.
fn boxes(mut b: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let (kind, payload, len) = next_box(b)?;
        b = &b[len..];
        Some((kind, payload))
    })
}

fn find_box<'a>(b: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(b).find(|(k, _)| k == kind).map(|(_, p)| p)
}

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the primary item's size, orientation and kind from `meta`.
pub fn header(bytes: &[u8]) -> Option<Header> {
    if !sniff(bytes) {
        return None;
    }
    // `meta` is a full box: version and flags first.
    let meta = find_box(bytes, b"meta")?.get(4..)?;
    let pitm = find_box(meta, b"pitm")?;
    let primary = if pitm.first()? == &0 {
        be16(pitm, 4)?
    } else {
        be32(pitm, 4)?
    };
    let grid = item_type(meta, primary)? == *b"grid";
    let iprp = find_box(meta, b"iprp")?;
    let properties: Vec<([u8; 4], &[u8])> = boxes(find_box(iprp, b"ipco")?).collect();
    let (mut size, mut rotation, mut mirror) = (None, 0u16, None);
    for index in associations(find_box(iprp, b"ipma")?, primary)? {
        let Some((kind, p)) = index.checked_sub(1).and_then(|i| properties.get(i)) else {
            continue;
        };
        match kind {
            b"ispe" => size = Some((be32(p, 4)?, be32(p, 8)?)),
            b"irot" => rotation = u16::from(p.first()? & 3),
            b"imir" => mirror = Some(p.first()? & 1),
            _ => {}
        }
    }
    let (width, height) = size?;
    // `irot` turns anticlockwise; `imir` mode 0 exchanges top and bottom (EXIF 4), mode 1
    // left and right (EXIF 2) — ISO/IEC 23008-12:2022 6.5.12; rotation comes first.
    let clockwise = (4 - rotation) % 4 * 90;
    let orientation = super::orient::compose(1, clockwise, mirror == Some(1), mirror == Some(0));
    Some(Header {
        width,
        height,
        orientation,
        grid,
    })
}

/// The 4CC type of item `id` from `iinf`/`infe` (versions 2 and 3).
fn item_type(meta: &[u8], id: u32) -> Option<[u8; 4]> {
    let iinf = find_box(meta, b"iinf")?;
    let skip = if iinf.first()? == &0 { 6 } else { 8 };
    for (kind, infe) in boxes(iinf.get(skip..)?) {
        if kind != *b"infe" {
            continue;
        }
        let (item, at) = match infe.first()? {
            2 => (be16(infe, 4)?, 8),
            3 => (be32(infe, 4)?, 10),
            _ => continue,
        };
        if item == id {
            return infe.get(at..at + 4)?.try_into().ok();
        }
    }
    None
}

/// Property indices (1-based) associated with `item` in `ipma`.
fn associations(ipma: &[u8], item: u32) -> Option<Vec<usize>> {
    let version = *ipma.first()?;
    let wide = ipma.get(3)? & 1 == 1;
    let count = be32(ipma, 4)?;
    let mut at = 8usize;
    for _ in 0..count {
        let id = if version < 1 {
            at += 2;
            be16(ipma, at - 2)?
        } else {
            at += 4;
            be32(ipma, at - 4)?
        };
        let n = usize::from(*ipma.get(at)?);
        at += 1;
        let mut found = Vec::with_capacity(n);
        for _ in 0..n {
            let index = if wide {
                at += 2;
                be16(ipma, at - 2)? & 0x7FFF
            } else {
                at += 1;
                u32::from(*ipma.get(at - 1)? & 0x7F)
            };
            found.push(index as usize);
        }
        if id == item {
            return Some(found);
        }
    }
    Some(Vec::new())
}

/// The primary item's ICC profile (`colr` of type `prof` or `rICC`), if any.
pub fn icc(bytes: &[u8]) -> Option<Vec<u8>> {
    let meta = find_box(bytes, b"meta")?.get(4..)?;
    let ipco = find_box(find_box(meta, b"iprp")?, b"ipco")?;
    boxes(ipco)
        .filter(|(k, _)| k == b"colr")
        .find_map(|(_, p)| {
            (p.get(..4) == Some(b"prof") || p.get(..4) == Some(b"rICC")).then(|| p[4..].to_vec())
        })
        .filter(|p| p.len() <= 4 << 20)
}

fn corrupt(e: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(format!("AVIF: {e}"))
}

/// Decodes the primary item (and its alpha item) to 8-bit RGB or RGBA at its coded size.
pub fn decode(bytes: &[u8], (width, height): (u32, u32)) -> Result<Bitmap, ImageError> {
    let h = header(bytes).ok_or_else(|| corrupt("unreadable header"))?;
    if h.grid {
        return Err(corrupt("grid (tiled) images are not supported"));
    }
    let data = avif_parse::read_avif(&mut Cursor::new(bytes)).map_err(corrupt)?;
    let pixels = u64::from(width) * u64::from(height);
    let color = Planes::decode(&data.primary_item, pixels)?;
    if (color.width, color.height) != (width, height) {
        return Err(corrupt("the AV1 frame's size differs from ispe"));
    }
    let alpha = match data.alpha_item.as_deref() {
        Some(a) => {
            let a = Planes::decode(a, pixels)?;
            if (a.width, a.height) != (width, height) {
                return Err(corrupt("the alpha frame's size differs from the image"));
            }
            Some(a)
        }
        None => None,
    };
    drop(data);
    Ok(color.to_rgb(alpha.as_ref(), h_premultiplied(bytes)))
}

/// avif-parse's `prem` reading, without keeping its item copies alive.
fn h_premultiplied(bytes: &[u8]) -> bool {
    let Some(meta) = find_box(bytes, b"meta").and_then(|m| m.get(4..)) else {
        return false;
    };
    find_box(meta, b"iref")
        .is_some_and(|iref| boxes(iref.get(4..).unwrap_or(&[])).any(|(k, _)| k == *b"prem"))
}

/// One decoded AV1 frame: planes copied out of the decoder, with what converting them needs.
struct Planes {
    width: u32,
    height: u32,
    bits: u32,
    /// Chroma subsampling shifts (x, y); `None` for monochrome.
    chroma: Option<(u32, u32)>,
    full_range: bool,
    /// Kr, Kb of the matrix; `None` for identity (GBR).
    matrix: Option<(f32, f32)>,
    /// Samples as u16 (whatever the bit depth), planes Y, U, V.
    y: Vec<u16>,
    u: Vec<u16>,
    v: Vec<u16>,
}

/// An open rav1d decoder, closed once on drop.
struct Decoder(Option<Dav1dContext>);

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: closes the context `dav1d_open` created (a no-op on `None`), once.
        unsafe { rav1d::src::lib::dav1d_close(NonNull::new(&mut self.0)) }
    }
}

/// A picture the decoder returned, released once on drop.
struct Picture(Dav1dPicture);

impl Drop for Picture {
    fn drop(&mut self) {
        // SAFETY: releases the references `dav1d_get_picture` gave us (safe on a default one).
        unsafe { rav1d::src::lib::dav1d_picture_unref(NonNull::new(&mut self.0)) }
    }
}

/// dav1d's "try again" (-EAGAIN).
const EAGAIN: c_int = -11;

impl Planes {
    /// Decodes one AV1 still (an item's OBUs), refusing frames over `max_pixels`.
    fn decode(obus: &[u8], max_pixels: u64) -> Result<Planes, ImageError> {
        use rav1d::src::lib as dav1d;
        let mut settings = std::mem::MaybeUninit::<Dav1dSettings>::uninit();
        // SAFETY: fills every field of the settings.
        let mut settings = unsafe {
            dav1d::dav1d_default_settings(NonNull::new_unchecked(settings.as_mut_ptr()));
            settings.assume_init()
        };
        // One thread in our pool; no frame delay: a still comes out as soon as it is decoded.
        settings.n_threads = 1;
        settings.max_frame_delay = 1;
        settings.frame_size_limit = u32::try_from(max_pixels.max(1)).unwrap_or(u32::MAX);
        let mut decoder = Decoder(None);
        // SAFETY: both pointers are to live locals.
        let r =
            unsafe { dav1d::dav1d_open(NonNull::new(&mut decoder.0), NonNull::new(&mut settings)) };
        if r.0 != 0 || decoder.0.is_none() {
            return Err(corrupt("cannot open the AV1 decoder"));
        }
        let mut data = Dav1dData::default();
        // SAFETY: allocates `obus.len()` bytes owned by `data`; copied into at once.
        let buf = unsafe { dav1d::dav1d_data_create(NonNull::new(&mut data), obus.len()) };
        if buf.is_null() {
            return Err(corrupt("empty or oversized AV1 data"));
        }
        // SAFETY: `buf` points to `obus.len()` writable bytes just allocated for `data`.
        unsafe { std::slice::from_raw_parts_mut(buf, obus.len()) }.copy_from_slice(obus);
        let mut picture = Picture(Dav1dPicture::default());
        let got = loop {
            // SAFETY: the context is open; `data` is live (consumed as it is sent).
            let sent = unsafe { dav1d::dav1d_send_data(decoder.0, NonNull::new(&mut data)) };
            if sent.0 != 0 && sent.0 != EAGAIN {
                break sent.0;
            }
            // SAFETY: the context is open; `picture` is a default picture to fill.
            let r = unsafe { dav1d::dav1d_get_picture(decoder.0, NonNull::new(&mut picture.0)) };
            if r.0 != EAGAIN || data.sz == 0 {
                break r.0;
            }
        };
        // SAFETY: releases what is left of the data (nothing once it was all sent).
        unsafe { dav1d::dav1d_data_unref(NonNull::new(&mut data)) };
        if got != 0 {
            return Err(corrupt(format!("AV1 decode failed ({got})")));
        }
        Planes::copy(&picture)
    }

    /// Copies the planes out of a decoded picture.
    fn copy(picture: &Picture) -> Result<Planes, ImageError> {
        let p = &picture.0;
        let (w, h) = (
            u32::try_from(p.p.w).map_err(corrupt)?,
            u32::try_from(p.p.h).map_err(corrupt)?,
        );
        let bits = u32::try_from(p.p.bpc).map_err(corrupt)?;
        if w == 0 || h == 0 || !matches!(bits, 8 | 10 | 12) {
            return Err(corrupt("unexpected picture"));
        }
        let layout = p.p.layout;
        use rav1d::include::dav1d::headers as hdr;
        let chroma = match layout {
            l if l == hdr::DAV1D_PIXEL_LAYOUT_I400 => None,
            l if l == hdr::DAV1D_PIXEL_LAYOUT_I420 => Some((1, 1)),
            l if l == hdr::DAV1D_PIXEL_LAYOUT_I422 => Some((1, 0)),
            _ => Some((0, 0)),
        };
        // SAFETY: the sequence header lives as long as the picture holds its reference.
        let seq = p.seq_hdr.map(|s| unsafe { s.as_ref() });
        let full_range = seq.is_some_and(|s| s.color_range != 0);
        let matrix = match seq.map(|s| s.mtrx) {
            Some(m) if m == hdr::DAV1D_MC_IDENTITY => None,
            Some(m) if m == hdr::DAV1D_MC_BT709 => Some((0.2126, 0.0722)),
            Some(m) if m == hdr::DAV1D_MC_BT2020_NCL || m == hdr::DAV1D_MC_BT2020_CL => {
                Some((0.2627, 0.0593))
            }
            Some(m) if m == hdr::DAV1D_MC_SMPTE240 => Some((0.212, 0.087)),
            // BT.601 / BT.470BG / unspecified: libavif's default too.
            _ => Some((0.299, 0.114)),
        };
        let plane = |index: usize, pw: u32, ph: u32| -> Result<Vec<u16>, ImageError> {
            let stride = p.stride[index.min(1)];
            let base = p.data[index].ok_or_else(|| corrupt("missing plane"))?;
            let bytes_per = if bits > 8 { 2 } else { 1 };
            let row = pw as usize * bytes_per;
            let stride = usize::try_from(stride).map_err(|_| corrupt("negative stride"))?;
            if stride < row {
                return Err(corrupt("stride shorter than a row"));
            }
            let len = stride * (ph as usize - 1) + row;
            // SAFETY: dav1d allocated each plane with `stride` bytes per row for `ph` rows.
            let raw = unsafe { std::slice::from_raw_parts(base.as_ptr().cast::<u8>(), len) };
            let mut out = Vec::with_capacity(pw as usize * ph as usize);
            for y in 0..ph as usize {
                let r = &raw[y * stride..y * stride + row];
                if bytes_per == 2 {
                    out.extend(r.chunks_exact(2).map(|s| u16::from_ne_bytes([s[0], s[1]])));
                } else {
                    out.extend(r.iter().map(|&s| u16::from(s)));
                }
            }
            Ok(out)
        };
        let y = plane(0, w, h)?;
        let (u, v) = match chroma {
            Some((sx, sy)) => {
                let (cw, ch) = ((w + sx) >> sx, (h + sy) >> sy);
                (plane(1, cw, ch)?, plane(2, cw, ch)?)
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok(Planes {
            width: w,
            height: h,
            bits,
            chroma,
            full_range,
            matrix,
            y,
            u,
            v,
        })
    }

    /// 8-bit RGB (or RGBA with `alpha`, made straight if `premultiplied`).
    fn to_rgb(&self, alpha: Option<&Planes>, premultiplied: bool) -> Bitmap {
        let (w, h) = (self.width as usize, self.height as usize);
        let max = ((1u32 << self.bits) - 1) as f32;
        let scale = (1u32 << (self.bits - 8)) as f32;
        let (y_off, y_span, c_span) = if self.full_range {
            (0.0, max, max)
        } else {
            (16.0 * scale, 219.0 * scale, 224.0 * scale)
        };
        let c_mid = (1u32 << (self.bits - 1)) as f32;
        let channels = if alpha.is_some() { 4 } else { 3 };
        let mut out = Vec::with_capacity(w * h * channels);
        let to8 = |v: f32| (v * 255.0).round().clamp(0.0, 255.0) as u8;
        for y in 0..h {
            for x in 0..w {
                let luma = (f32::from(self.y[y * w + x]) - y_off) / y_span;
                let (r, g, b) = match self.chroma {
                    None => (luma, luma, luma),
                    Some((sx, sy)) => {
                        let cw = (self.width as usize + sx as usize) >> sx;
                        let i = (y >> sy) * cw + (x >> sx);
                        let cb = (f32::from(self.u[i]) - c_mid) / c_span;
                        let cr = (f32::from(self.v[i]) - c_mid) / c_span;
                        match self.matrix {
                            // Identity: G, B, R in Y, U, V.
                            None => (
                                (f32::from(self.v[i]) - y_off) / y_span,
                                luma,
                                (f32::from(self.u[i]) - y_off) / y_span,
                            ),
                            Some((kr, kb)) => {
                                let r = luma + 2.0 * (1.0 - kr) * cr;
                                let b = luma + 2.0 * (1.0 - kb) * cb;
                                let g = (luma - kr * r - kb * b) / (1.0 - kr - kb);
                                (r, g, b)
                            }
                        }
                    }
                };
                let (mut r, mut g, mut b) = (to8(r), to8(g), to8(b));
                if let Some(a) = alpha {
                    let amax = ((1u32 << a.bits) - 1) as f32;
                    let raw = f32::from(a.y[y * w + x]);
                    let av = if a.full_range {
                        raw / amax
                    } else {
                        let s = (1u32 << (a.bits - 8)) as f32;
                        (raw - 16.0 * s) / (219.0 * s)
                    };
                    let a8 = to8(av);
                    if premultiplied && a8 > 0 && a8 < 255 {
                        let un = |c: u8| {
                            ((u32::from(c) * 255 + u32::from(a8) / 2) / u32::from(a8)).min(255)
                                as u8
                        };
                        (r, g, b) = (un(r), un(g), un(b));
                    }
                    out.extend_from_slice(&[r, g, b, a8]);
                } else {
                    out.extend_from_slice(&[r, g, b]);
                }
            }
        }
        Bitmap {
            width: self.width,
            height: self.height,
            channels: channels as u8,
            data: out,
        }
    }
}

/// Decoder memory per pixel, at most: the decoder's frame (≤ 2 B per sample at 10 and 12 bits,
/// 3 planes at 4:4:4: 6) with film grain's copy (6), our u16 planes (6), an alpha item (4) and
/// the 8-bit output (4).
pub const MAX_BYTES_PER_PIXEL: u64 = 26;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_walk_survives_truncation_and_bogus_sizes() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/photo_160x120.avif"
        ))
        .unwrap();
        let h = header(&bytes).unwrap();
        assert_eq!(
            (h.width, h.height, h.orientation, h.grid),
            (160, 120, 1, false)
        );
        for cut in 0..bytes.len().min(600) {
            let _ = header(&bytes[..cut]);
        }
        let mut bogus = bytes.clone();
        bogus[3] = 0xFF; // ftyp claims more than the file
        assert!(header(&bogus).is_none());
    }
}
