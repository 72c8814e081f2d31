//! HEIC pixels: libheif (C++, with libde265 for HEVC) from the Debian packages, called through a
//! handful of hand-declared functions of its C API (libheif 1.15's `heif.h`).
//!
//! No maintained memory-safe HEVC decoder exists, so this is the one C decoder that meets
//! untrusted bytes, and it does so only inside the sandboxed decoder child
//! (`super::isolated`; `docs/decoders.md` has the justification): the child's memory is capped
//! at the reservation the CPU pool took for it, its CPU time is capped, and a seccomp filter
//! leaves it no system call but memory management and its three pipes.
//!
//! The primary item is decoded at its coded size (`ispe`) with libheif's transformations
//! ignored: `irot`/`imir` are applied by pixgate's pipeline from the probe (`super::bmff`), like
//! EXIF orientation for JPEG; `clap` (a clean-aperture crop) is not applied. Grids (every
//! iPhone photo is a grid of 512² tiles) are assembled by libheif. HDR (10-bit) is converted to
//! 8 bits by libheif; alpha is kept (made straight when premultiplied).

use std::ffi::{c_char, c_int, c_void};

use super::{Bitmap, ImageError};

#[repr(C)]
struct HeifError {
    code: c_int,
    subcode: c_int,
    message: *const c_char,
}

/// The leading fields of libheif's `heif_decoding_options` (`heif.h`, versions 1 to 3); the
/// struct itself is allocated by libheif, which fills the rest.
#[repr(C)]
struct DecodingOptions {
    version: u8,
    ignore_transformations: u8,
    start_progress: *const c_void,
    on_progress: *const c_void,
    end_progress: *const c_void,
    progress_user_data: *mut c_void,
    convert_hdr_to_8bit: u8,
}

#[repr(C)]
struct Context {
    _opaque: [u8; 0],
}
#[repr(C)]
struct Handle {
    _opaque: [u8; 0],
}
#[repr(C)]
struct Image {
    _opaque: [u8; 0],
}

const COLORSPACE_RGB: c_int = 1;
const CHROMA_INTERLEAVED_RGB: c_int = 10;
const CHROMA_INTERLEAVED_RGBA: c_int = 11;
const CHANNEL_INTERLEAVED: c_int = 10;

#[link(name = "heif")]
unsafe extern "C" {
    fn heif_init(params: *const c_void) -> HeifError;
    fn heif_context_alloc() -> *mut Context;
    fn heif_context_free(ctx: *mut Context);
    fn heif_context_set_maximum_image_size_limit(ctx: *mut Context, maximum_width: c_int);
    fn heif_context_set_max_decoding_threads(ctx: *mut Context, max_threads: c_int);
    fn heif_context_read_from_memory_without_copy(
        ctx: *mut Context,
        mem: *const c_void,
        size: usize,
        options: *const c_void,
    ) -> HeifError;
    fn heif_context_get_primary_image_handle(
        ctx: *mut Context,
        handle: *mut *mut Handle,
    ) -> HeifError;
    fn heif_image_handle_release(handle: *const Handle);
    fn heif_image_handle_get_ispe_width(handle: *const Handle) -> c_int;
    fn heif_image_handle_get_ispe_height(handle: *const Handle) -> c_int;
    fn heif_image_handle_has_alpha_channel(handle: *const Handle) -> c_int;
    fn heif_image_handle_is_premultiplied_alpha(handle: *const Handle) -> c_int;
    fn heif_decoding_options_alloc() -> *mut DecodingOptions;
    fn heif_decoding_options_free(options: *mut DecodingOptions);
    fn heif_decode_image(
        handle: *const Handle,
        out: *mut *mut Image,
        colorspace: c_int,
        chroma: c_int,
        options: *const DecodingOptions,
    ) -> HeifError;
    fn heif_image_get_width(image: *const Image, channel: c_int) -> c_int;
    fn heif_image_get_height(image: *const Image, channel: c_int) -> c_int;
    fn heif_image_get_plane_readonly(
        image: *const Image,
        channel: c_int,
        stride: *mut c_int,
    ) -> *const u8;
    fn heif_image_release(image: *const Image);
}

/// Decoder memory per pixel, at most: libde265's decoded tiles and libheif's assembled YCbCr
/// copy at up to 16 bits per sample, 4:4:4 (6 + 6), its 4:4:4 conversion stage (6), an alpha
/// plane (2), the interleaved RGBA image (4) and our copy of it (4), rounded up for libde265's
/// per-picture metadata. Checked by `tests/bounds.rs`.
pub const MAX_BYTES_PER_PIXEL: u64 = 40;

fn corrupt(e: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(format!("HEIC: {e}"))
}

/// Loads libheif's built-in decoders; called by the child before its seccomp filter is in place
/// (plugin loading opens files).
pub fn init() {
    // SAFETY: a plain initialisation call with default parameters; the error is only "plugins
    // could not be loaded", which leaves the built-in HEVC decoder in place.
    let _ = unsafe { heif_init(std::ptr::null()) };
}

fn check(e: HeifError) -> Result<(), ImageError> {
    if e.code == 0 {
        return Ok(());
    }
    let message = if e.message.is_null() {
        String::new()
    } else {
        // SAFETY: libheif's messages are NUL-terminated static or context-owned strings that
        // live at least until the context is freed (the context outlives this call).
        unsafe { std::ffi::CStr::from_ptr(e.message) }
            .to_string_lossy()
            .chars()
            .take(200)
            .collect()
    };
    Err(corrupt(format!("{message} ({}.{})", e.code, e.subcode)))
}

struct Ctx(*mut Context);
impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: frees the context `heif_context_alloc` returned, once.
        unsafe { heif_context_free(self.0) }
    }
}
struct ImageHandle(*mut Handle);
impl Drop for ImageHandle {
    fn drop(&mut self) {
        // SAFETY: releases the handle libheif gave us, once (a null handle is accepted).
        unsafe { heif_image_handle_release(self.0) }
    }
}
struct Options(*mut DecodingOptions);
impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: frees the options `heif_decoding_options_alloc` returned, once.
        unsafe { heif_decoding_options_free(self.0) }
    }
}
struct Decoded(*mut Image);
impl Drop for Decoded {
    fn drop(&mut self) {
        // SAFETY: releases the image `heif_decode_image` returned, once (null accepted).
        unsafe { heif_image_release(self.0) }
    }
}

/// Decodes the primary item to 8-bit RGB or RGBA at its coded size, which must be
/// `(width, height)` (the probed `ispe`).
pub fn decode(bytes: &[u8], (width, height): (u32, u32)) -> Result<Bitmap, ImageError> {
    if width == 0 || height == 0 {
        return Err(corrupt("an empty image"));
    }
    // libheif 1.15 refuses a size whose side reaches this limit, and a grid's tiles may cover
    // more than its output (phones pad the last row and column): twice the probed side bounds
    // its intermediate images without refusing real grids. The probe's limits and the
    // child's memory cap are the real bounds.
    let side = c_int::try_from(u64::from(width.max(height)) * 2 + 64).map_err(corrupt)?;
    // SAFETY: allocation of an empty context; checked for null below.
    let ctx = Ctx(unsafe { heif_context_alloc() });
    if ctx.0.is_null() {
        return Err(corrupt("cannot allocate a context"));
    }
    // SAFETY: `ctx` is live; `bytes` outlives the context (dropped at the end of this
    // function, before `bytes` goes out of scope), as the no-copy read requires.
    unsafe {
        heif_context_set_maximum_image_size_limit(ctx.0, side);
        heif_context_set_max_decoding_threads(ctx.0, 0);
        check(heif_context_read_from_memory_without_copy(
            ctx.0,
            bytes.as_ptr().cast(),
            bytes.len(),
            std::ptr::null(),
        ))?;
    }
    let mut handle = ImageHandle(std::ptr::null_mut());
    // SAFETY: `ctx` is live; libheif writes a handle we release on drop.
    check(unsafe { heif_context_get_primary_image_handle(ctx.0, &mut handle.0) })?;
    if handle.0.is_null() {
        return Err(corrupt("no primary image"));
    }
    // SAFETY: `handle` is a live handle of `ctx`.
    let (iw, ih, alpha, premultiplied) = unsafe {
        (
            heif_image_handle_get_ispe_width(handle.0),
            heif_image_handle_get_ispe_height(handle.0),
            heif_image_handle_has_alpha_channel(handle.0) != 0,
            heif_image_handle_is_premultiplied_alpha(handle.0) != 0,
        )
    };
    if (i64::from(iw), i64::from(ih)) != (i64::from(width), i64::from(height)) {
        return Err(corrupt("the primary item's size differs from the header"));
    }
    // SAFETY: allocation of libheif's default options; checked for null.
    let options = Options(unsafe { heif_decoding_options_alloc() });
    if options.0.is_null() {
        return Err(corrupt("cannot allocate decoding options"));
    }
    // SAFETY: `options` points to a struct libheif allocated at its own version (≥ 1, which
    // has the first two fields; version 2 adds `convert_hdr_to_8bit`).
    unsafe {
        (*options.0).ignore_transformations = 1;
        if (*options.0).version >= 2 {
            (*options.0).convert_hdr_to_8bit = 1;
        }
    }
    let chroma = if alpha {
        CHROMA_INTERLEAVED_RGBA
    } else {
        CHROMA_INTERLEAVED_RGB
    };
    let mut image = Decoded(std::ptr::null_mut());
    // SAFETY: handle and options are live; libheif writes an image we release on drop.
    check(unsafe { heif_decode_image(handle.0, &mut image.0, COLORSPACE_RGB, chroma, options.0) })?;
    if image.0.is_null() {
        return Err(corrupt("no decoded image"));
    }
    copy_out(&image, (width, height), alpha, premultiplied)
}

/// Copies the interleaved plane of a decoded image into a tightly packed bitmap.
fn copy_out(
    image: &Decoded,
    (width, height): (u32, u32),
    alpha: bool,
    premultiplied: bool,
) -> Result<Bitmap, ImageError> {
    let channels: usize = if alpha { 4 } else { 3 };
    let mut stride: c_int = 0;
    // SAFETY: `image` is live; libheif reports its interleaved plane's size and row stride.
    let (pw, ph, base) = unsafe {
        (
            heif_image_get_width(image.0, CHANNEL_INTERLEAVED),
            heif_image_get_height(image.0, CHANNEL_INTERLEAVED),
            heif_image_get_plane_readonly(image.0, CHANNEL_INTERLEAVED, &mut stride),
        )
    };
    if (i64::from(pw), i64::from(ph)) != (i64::from(width), i64::from(height)) || base.is_null() {
        return Err(corrupt("the decoded image's size differs from the header"));
    }
    let row = width as usize * channels;
    let stride = usize::try_from(stride).map_err(corrupt)?;
    if stride < row {
        return Err(corrupt("plane stride shorter than a row"));
    }
    let rows = height as usize;
    // SAFETY: libheif allocated the plane with `stride` bytes for each of `height` rows; the
    // last row is read only up to its pixels.
    let len = stride
        .checked_mul(rows.saturating_sub(1))
        .and_then(|n| n.checked_add(row))
        .ok_or_else(|| corrupt("plane too large"))?;
    // SAFETY: as above; `rows` ≥ 1 (empty images are refused before decoding).
    let plane = unsafe { std::slice::from_raw_parts(base, len) };
    let mut data = Vec::with_capacity(row * rows);
    for y in 0..rows {
        data.extend_from_slice(&plane[y * stride..y * stride + row]);
    }
    if alpha && premultiplied {
        super::effects::unpremultiply(&mut data);
    }
    Ok(Bitmap {
        width,
        height,
        channels: channels as u8,
        data,
    })
}
