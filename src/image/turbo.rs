//! Shrink-on-load JPEG decoding with libjpeg-turbo (TurboJPEG 3 API).
//!
//! The only `unsafe` in pixgate. It is a thin, audited wrapper over five C calls:
//! `tj3Init`/`tj3Destroy` (owned by [`Handle`]), `tj3Set`, `tj3DecompressHeader`,
//! `tj3SetScalingFactor` and `tj3Decompress8`. Every pointer handed to C comes from a live Rust
//! slice whose length is passed alongside it, and the output buffer is sized from the header
//! libjpeg-turbo itself parsed *and* checked against our own header probe before the call.
//!
//! Why a C decoder beside zune-jpeg (see `docs/decoders.md`): zune-jpeg decodes only at full
//! size; libjpeg-turbo scales in the DCT domain (1/2, 1/4, 1/8), so a 12 MP photo becomes a
//! 0.75 MP bitmap without ever materialising the 12 MP one. Every stored original was first
//! fully decoded by the memory-safe zune-jpeg at upload, so libjpeg-turbo only ever parses files
//! a memory-safe parser already accepted. It runs strict: warnings (truncation, corrupt data)
//! are errors, progressive scans are capped and the pixel count is capped inside the library too.

use std::ffi::{CStr, c_int};

use turbojpeg::raw;

use super::{Bitmap, ImageError};

/// libjpeg-turbo's own scan limit, the same as [`super::MAX_JPEG_SCANS`] (which the probe
/// enforces for every decoder first).
const SCAN_LIMIT: c_int = super::MAX_JPEG_SCANS as c_int;

/// Scale factors libjpeg-turbo implements in the DCT domain that we use (denominators).
pub const SHRINKS: [u32; 4] = [8, 4, 2, 1];

/// An owned TurboJPEG decompressor instance.
struct Handle(raw::tjhandle);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from `tj3Init`, is non-null (checked in `new`), and is destroyed
        // exactly once here.
        unsafe { raw::tj3Destroy(self.0) }
    }
}

impl Handle {
    fn new() -> Result<Handle, ImageError> {
        // SAFETY: plain constructor call; a null result is handled.
        let h = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as c_int) };
        if h.is_null() {
            return Err(ImageError::Corrupt(
                "cannot initialise the JPEG decoder".into(),
            ));
        }
        Ok(Handle(h))
    }

    fn error(&self) -> ImageError {
        // SAFETY: the handle is live; tj3GetErrorStr returns a pointer to a NUL-terminated
        // string owned by the handle (or a static one), valid until the next call on it.
        let msg = unsafe {
            let p = raw::tj3GetErrorStr(self.0);
            if p.is_null() {
                "unknown error".to_owned()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        ImageError::Corrupt(format!("JPEG: {msg}"))
    }

    fn set(&self, param: raw::TJPARAM, value: c_int) -> Result<(), ImageError> {
        // SAFETY: live handle; parameters are plain integers.
        if unsafe { raw::tj3Set(self.0, param as c_int, value) } != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    fn get(&self, param: raw::TJPARAM) -> c_int {
        // SAFETY: live handle; plain getter.
        unsafe { raw::tj3Get(self.0, param as c_int) }
    }
}

/// What the JPEG header says, as libjpeg-turbo read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    width: u32,
    height: u32,
    /// CMYK and YCCK cannot be converted to RGB by TurboJPEG.
    cmyk: bool,
    /// Lossless (SOF3) files are decoded at full size whatever the scaling factor.
    lossless: bool,
    /// Bits per sample (8 for the JPEGs this path renders).
    precision: c_int,
}

/// Size of a `w`×`h` image decoded at 1/`shrink` (libjpeg rounds up).
pub fn scaled_size(w: u32, h: u32, shrink: u32) -> (u32, u32) {
    (w.div_ceil(shrink), h.div_ceil(shrink))
}

/// Decodes `bytes` at 1/`shrink` scale (1, 2, 4 or 8) into an RGB bitmap, refusing images over
/// `max_pixels` (full-size pixel count) inside the library as well. `Ok(None)`: a JPEG this
/// path does not render (CMYK/YCCK, lossless, not 8-bit) — the caller uses zune-jpeg. Errors
/// (corrupt or truncated data, too many scans) are final. A progressive file decoded at a
/// shrink stops after the scans [`super::progressive::needed_prefix`] names.
pub fn decode_scaled(
    bytes: &[u8],
    shrink: u32,
    max_pixels: u64,
    expected: (u32, u32),
) -> Result<Option<Bitmap>, ImageError> {
    if !SHRINKS.contains(&shrink) {
        return Err(ImageError::Corrupt(format!(
            "unsupported shrink 1/{shrink}"
        )));
    }
    let handle = Handle::new()?;
    handle.set(raw::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
    handle.set(raw::TJPARAM_TJPARAM_SCANLIMIT, SCAN_LIMIT)?;
    handle.set(
        raw::TJPARAM_TJPARAM_MAXPIXELS,
        c_int::try_from(max_pixels).unwrap_or(c_int::MAX),
    )?;
    let header = read_header(&handle, bytes)?;
    // CMYK/YCCK cannot be converted to RGB by TurboJPEG. Lossless JPEGs ignore the scaling
    // factor (libjpeg-turbo decodes them at full size) and 12/16-bit ones are not 8-bit
    // samples: the buffer below would be too small. All go to zune-jpeg.
    if header.cmyk || header.lossless || header.precision != 8 {
        return Ok(None);
    }
    if (header.width, header.height) != expected {
        return Err(ImageError::Corrupt(
            "JPEG header disagrees with the probe".into(),
        ));
    }
    let factor = raw::tjscalingfactor {
        num: 1,
        denom: shrink as c_int,
    };
    // SAFETY: live handle; the factor is one libjpeg-turbo supports (1/1, 1/2, 1/4, 1/8).
    if unsafe { raw::tj3SetScalingFactor(handle.0, factor) } != 0 {
        return Err(handle.error());
    }
    let (w, h) = scaled_size(header.width, header.height, shrink);
    let pitch = (w as usize)
        .checked_mul(3)
        .ok_or_else(|| ImageError::Corrupt("JPEG row too wide".into()))?;
    let len = pitch
        .checked_mul(h as usize)
        .ok_or_else(|| ImageError::Corrupt("JPEG too large".into()))?;
    let mut data = vec![0u8; len];
    // A progressive file scaled down: only the scans the scaled IDCT needs (issue 20).
    let prefix = super::progressive::needed_prefix(bytes, shrink)
        .map(|len| super::progressive::cut(bytes, len));
    let bytes = prefix.as_deref().unwrap_or(bytes);
    // SAFETY: `bytes` is a live slice of `bytes.len()` bytes; `data` is a live, initialised
    // buffer of exactly pitch × h bytes, and pitch × h is what tj3Decompress8 writes for a
    // lossy 8-bit JPEG of this size at this scale with TJPF_RGB (3 bytes per pixel); lossless
    // and other precisions (which ignore scaling) were refused above. The library re-reads the
    // header from the same bytes inside the call, so sizes cannot disagree.
    let rc = unsafe {
        raw::tj3Decompress8(
            handle.0,
            bytes.as_ptr(),
            bytes.len() as raw::size_t,
            data.as_mut_ptr(),
            pitch as c_int,
            raw::TJPF_TJPF_RGB as c_int,
        )
    };
    if rc != 0 {
        return Err(handle.error());
    }
    Ok(Some(Bitmap {
        width: w,
        height: h,
        channels: 3,
        data,
    }))
}

fn read_header(handle: &Handle, bytes: &[u8]) -> Result<Header, ImageError> {
    // SAFETY: `bytes` is a live slice and its exact length is passed.
    let rc =
        unsafe { raw::tj3DecompressHeader(handle.0, bytes.as_ptr(), bytes.len() as raw::size_t) };
    if rc != 0 {
        return Err(handle.error());
    }
    let width = handle.get(raw::TJPARAM_TJPARAM_JPEGWIDTH);
    let height = handle.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT);
    let colorspace = handle.get(raw::TJPARAM_TJPARAM_COLORSPACE);
    let lossless = handle.get(raw::TJPARAM_TJPARAM_LOSSLESS) != 0;
    let precision = handle.get(raw::TJPARAM_TJPARAM_PRECISION);
    let (Ok(width), Ok(height)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(ImageError::Corrupt("JPEG header has no size".into()));
    };
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt("zero-sized JPEG".into()));
    }
    Ok(Header {
        width,
        height,
        cmyk: colorspace == raw::TJCS_TJCS_CMYK as c_int
            || colorspace == raw::TJCS_TJCS_YCCK as c_int,
        lossless,
        precision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test photo re-encoded as a progressive JPEG by libjpeg-turbo (its standard ten-scan
    /// script, as jpegtran and most tools write).
    fn progressive_photo() -> (Vec<u8>, u32, u32) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/photo_320x240.jpg"
        );
        let image =
            turbojpeg::decompress(&std::fs::read(path).unwrap(), turbojpeg::PixelFormat::RGB)
                .unwrap();
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(90).unwrap();
        c.set_progressive(true).unwrap();
        let jpeg = c.compress_to_vec(image.as_deref()).unwrap();
        (jpeg, image.width as u32, image.height as u32)
    }

    /// Every scan, at 1/`shrink`, through the crate's own decompressor.
    fn all_scans(jpeg: &[u8], shrink: usize) -> Vec<u8> {
        let mut d = turbojpeg::Decompressor::new().unwrap();
        d.set_scaling_factor(turbojpeg::ScalingFactor::new(1, shrink))
            .unwrap();
        let h = d.read_header(jpeg).unwrap();
        let scaled = h.scaled(turbojpeg::ScalingFactor::new(1, shrink));
        let mut pixels = vec![0u8; scaled.width * scaled.height * 3];
        d.decompress(
            jpeg,
            turbojpeg::Image {
                pixels: &mut pixels[..],
                width: scaled.width,
                pitch: scaled.width * 3,
                height: scaled.height,
                format: turbojpeg::PixelFormat::RGB,
            },
        )
        .unwrap();
        pixels
    }

    fn psnr(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        let mse = a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10()
    }

    #[test]
    fn a_shrunk_progressive_decode_stops_early_and_stays_close() {
        let (jpeg, w, h) = progressive_photo();
        for shrink in [2u32, 4, 8] {
            let cut = super::super::progressive::needed_prefix(&jpeg, shrink);
            assert!(
                cut.is_some_and(|n| n < jpeg.len() / 2),
                "1/{shrink}: {cut:?}"
            );
            let early = decode_scaled(&jpeg, shrink, u64::MAX, (w, h))
                .unwrap()
                .unwrap();
            assert_eq!((early.width, early.height), scaled_size(w, h, shrink));
            let full = all_scans(&jpeg, shrink as usize);
            let p = psnr(&early.data, &full);
            eprintln!(
                "1/{shrink}: {} of {} bytes, {p:.2} dB",
                cut.unwrap_or(0),
                jpeg.len()
            );
            assert!(p > 33.0, "1/{shrink}: {p:.2} dB");
        }
        // At full size every scan is decoded: the same pixels as the crate's decoder.
        let whole = decode_scaled(&jpeg, 1, u64::MAX, (w, h)).unwrap().unwrap();
        assert_eq!(whole.data, all_scans(&jpeg, 1));
    }
}
