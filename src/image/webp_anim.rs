//! Animated WebP encoding through libwebp's `WebPAnimEncoder` (bundled by `libwebp-sys`, the
//! same library the still encoder uses; it only ever encodes our own pixels).
//!
//! `unsafe` lives here and in [`super::turbo`] only. The wrapper owns one encoder handle
//! (created in [`WebpAnimation::new`], deleted exactly once in `Drop`); each frame is imported
//! from a live Rust slice whose length matches the picture's declared size (checked), handed to
//! `WebPAnimEncoderAdd` (which copies it) and freed before `add` returns; the assembled bytes
//! are copied into a `Vec` and libwebp's buffer cleared. The `webp` crate's own `AnimEncoder`
//! holds every frame until the end, which is what streaming is here to avoid.

use std::ffi::{CStr, c_int};

use libwebp_sys as sys;

use super::encode::EncodeSettings;
use super::{Bitmap, ImageError};

/// An animated WebP being encoded.
pub struct WebpAnimation {
    encoder: *mut sys::WebPAnimEncoder,
    config: sys::WebPConfig,
    size: (u32, u32),
    /// The next frame's start, ms (libwebp takes wrapping 32-bit timestamps).
    timestamp: u32,
    max_bytes: u64,
}

// SAFETY: the handle is used by one thread at a time (`&mut self` for every call) and libwebp's
// encoder keeps no thread-local state; moving it between threads is sound.
unsafe impl Send for WebpAnimation {}

impl Drop for WebpAnimation {
    fn drop(&mut self) {
        // SAFETY: `encoder` came from `WebPAnimEncoderNewInternal`, is non-null (checked in
        // `new`), and is deleted exactly once, here.
        unsafe { sys::WebPAnimEncoderDelete(self.encoder) }
    }
}

fn err(e: impl std::fmt::Display) -> ImageError {
    ImageError::Encode(format!("animated WebP: {e}"))
}

impl WebpAnimation {
    pub fn new(
        (width, height): (u32, u32),
        plays: u32,
        quality: u8,
        settings: &EncodeSettings,
        max_bytes: u64,
    ) -> Result<WebpAnimation, ImageError> {
        let w = c_int::try_from(width).map_err(err)?;
        let h = c_int::try_from(height).map_err(err)?;
        let mut config = sys::WebPConfig::new().map_err(|()| err("config"))?;
        super::encode::configure_webp(&mut config, quality, settings);
        let mut options = std::mem::MaybeUninit::<sys::WebPAnimEncoderOptions>::uninit();
        // SAFETY: the init function fills every field of the options it is given.
        let options = unsafe {
            if sys::WebPAnimEncoderOptionsInitInternal(
                options.as_mut_ptr(),
                sys::WebPGetMuxABIVersion(),
            ) == 0
            {
                return Err(err("options (ABI mismatch)"));
            }
            options.assume_init()
        };
        let mut options = options;
        options.anim_params.loop_count = c_int::try_from(plays).unwrap_or(0);
        // Transparent, as browsers show what the page has below.
        options.anim_params.bgcolor = 0;
        // SAFETY: sizes are positive (checked by the caller's plan), `options` is initialised.
        let encoder =
            unsafe { sys::WebPAnimEncoderNewInternal(w, h, &options, sys::WebPGetMuxABIVersion()) };
        if encoder.is_null() {
            return Err(err("cannot create the encoder"));
        }
        Ok(WebpAnimation {
            encoder,
            config,
            size: (width, height),
            timestamp: 0,
            max_bytes,
        })
    }

    /// Encodes the next frame, shown for `delay_ms`.
    pub fn add(&mut self, frame: &Bitmap, delay_ms: u32) -> Result<(), ImageError> {
        if (frame.width, frame.height) != self.size {
            return Err(err("frame size differs from the animation"));
        }
        let channels = usize::from(frame.channels);
        let expected = frame.width as usize * frame.height as usize * channels;
        if frame.data.len() != expected || !(channels == 3 || channels == 4) {
            return Err(err("frame buffer does not match its size"));
        }
        let mut picture = sys::WebPPicture::new().map_err(|()| err("picture"))?;
        picture.use_argb = 1;
        picture.width = self.size.0 as c_int;
        picture.height = self.size.1 as c_int;
        let stride = (frame.width as usize * channels) as c_int;
        // SAFETY: `frame.data` is live for the call and holds height × stride bytes (checked
        // above); the import allocates the picture's own buffer and copies.
        let imported = unsafe {
            if channels == 4 {
                sys::WebPPictureImportRGBA(&mut picture, frame.data.as_ptr(), stride)
            } else {
                sys::WebPPictureImportRGB(&mut picture, frame.data.as_ptr(), stride)
            }
        };
        // SAFETY: the encoder is live; the picture was imported (or the call is skipped); the
        // config outlives the call. The picture is freed right after, whatever happened.
        let added = imported != 0
            && unsafe {
                sys::WebPAnimEncoderAdd(
                    self.encoder,
                    &mut picture,
                    self.timestamp as c_int,
                    &self.config,
                )
            } != 0;
        // SAFETY: frees only what the import allocated; safe on an empty picture.
        unsafe { sys::WebPPictureFree(&mut picture) };
        if !added {
            return Err(err(if imported == 0 {
                "out of memory importing a frame".to_owned()
            } else {
                self.error()
            }));
        }
        self.timestamp = self.timestamp.wrapping_add(delay_ms);
        Ok(())
    }

    /// Ends the animation (the last frame lasts until the current timestamp) and returns it.
    pub fn finish(self) -> Result<Vec<u8>, ImageError> {
        // SAFETY: a null frame ends the animation; the encoder is live.
        let ended = unsafe {
            sys::WebPAnimEncoderAdd(
                self.encoder,
                std::ptr::null_mut(),
                self.timestamp as c_int,
                std::ptr::null(),
            )
        };
        if ended == 0 {
            return Err(err(self.error()));
        }
        let mut data = sys::WebPData {
            bytes: std::ptr::null(),
            size: 0,
        };
        // SAFETY: the encoder is live and `data` is an empty WebPData it fills.
        if unsafe { sys::WebPAnimEncoderAssemble(self.encoder, &mut data) } == 0 {
            return Err(err(self.error()));
        }
        let bytes = if data.bytes.is_null() {
            Vec::new()
        } else {
            // SAFETY: libwebp allocated `data.size` bytes at `data.bytes` for us.
            unsafe { std::slice::from_raw_parts(data.bytes, data.size) }.to_vec()
        };
        // SAFETY: releases the buffer Assemble allocated, once.
        unsafe { sys::WebPDataClear(&mut data) };
        if bytes.is_empty() {
            return Err(err("empty animation"));
        }
        if bytes.len() as u64 > self.max_bytes {
            return Err(ImageError::OutputTooLarge {
                limit: self.max_bytes,
            });
        }
        Ok(bytes)
    }

    fn error(&self) -> String {
        // SAFETY: the encoder is live; the message is a static or encoder-owned C string,
        // copied before any further call.
        let msg = unsafe { sys::WebPAnimEncoderGetError(self.encoder) };
        if msg.is_null() {
            "unknown error".to_owned()
        } else {
            // SAFETY: non-null, NUL-terminated by libwebp.
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        }
    }
}
