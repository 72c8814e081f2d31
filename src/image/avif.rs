//! AVIF pixels: avif-parse (Rust) for the items' AV1 data and rav1d — the Rust port of dav1d,
//! with dav1d's assembly kernels — for the AV1 decode, single-threaded, told the frame size it
//! may produce. YUV is converted to RGB here (BT.601/709/2020 matrices, limited or full range,
//! 8 to 12 bits; chroma upsampled by replication); an alpha item is decoded the same way. The
//! container's size, orientation and profile come from `super::bmff`.
//!
//! Runs only inside the sandboxed decoder child (`super::isolated`): rav1d's C API panics on
//! some malformed streams, and a panic cannot unwind out of an `extern "C"` function — it
//! aborts the process it runs in.
//!
//! Not supported (refused as `invalid_image`): grid images (tiles); image sequences beyond the
//! first frame are not rendered (the primary item is a still). `nclx` primaries other than
//! BT.709 are not converted (an ICC profile in `colr` is).

use std::ffi::c_int;
use std::io::Cursor;
use std::ptr::NonNull;

use rav1d::include::dav1d::data::Dav1dData;
use rav1d::include::dav1d::dav1d::{Dav1dContext, Dav1dSettings};
use rav1d::include::dav1d::picture::Dav1dPicture;

use super::{Bitmap, ImageError};

fn corrupt(e: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(format!("AVIF: {e}"))
}

/// Decodes the primary item (and its alpha item) to 8-bit RGB or RGBA at its coded size.
pub fn decode(bytes: &[u8], (width, height): (u32, u32)) -> Result<Bitmap, ImageError> {
    let h = super::bmff::header(bytes).ok_or_else(|| corrupt("unreadable header"))?;
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
    Ok(color.to_rgb(alpha.as_ref(), super::bmff::premultiplied(bytes)))
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
