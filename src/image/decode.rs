//! Full decoders, normalising every source to 8-bit RGB or RGBA.
//!
//! JPEG: zune-jpeg (memory-safe Rust) in strict mode, so a truncated or corrupt stream is an
//! error rather than a grey-filled picture. PNG: the `png` crate (palette, 16-bit, grey, alpha,
//! interlace expanded). WebP: `image-webp` (pure Rust; libwebp only encodes). GIF: the first frame composited
//! on a transparent canvas. Callers must have checked [`super::ImageLimits`] on the [`Probe`]
//! first; the decoders are additionally given the probed size so a stream cannot grow past it.

use std::io::Cursor;

use super::{Bitmap, ImageError, ImageFormat, Probe};

/// Decodes `bytes`, whose header was probed as `probe`.
pub fn decode(bytes: &[u8], probe: &Probe) -> Result<Bitmap, ImageError> {
    decode_with_icc(bytes, probe).map(|(bitmap, _)| bitmap)
}

/// Decodes `bytes` and returns the embedded ICC profile too ([`super::icc::extract`]).
pub fn decode_with_icc(
    bytes: &[u8],
    probe: &Probe,
) -> Result<(Bitmap, Option<Vec<u8>>), ImageError> {
    let (bitmap, icc) = match probe.format {
        ImageFormat::Jpeg => (
            jpeg(bytes, probe)?,
            super::icc::extract(bytes, probe.format),
        ),
        ImageFormat::Png => (png(bytes, probe)?, super::icc::extract(bytes, probe.format)),
        // image-webp (memory-safe Rust; libwebp only encodes our own pixels) and the `gif`
        // crate: the first frame of an animation, composited on a transparent canvas.
        ImageFormat::Webp => (
            super::anim::Frames::first(bytes, probe)?,
            super::icc::extract(bytes, probe.format),
        ),
        ImageFormat::Gif => (super::anim::Frames::first(bytes, probe)?, None),
        ImageFormat::Bmp | ImageFormat::Ico => (image_rs(bytes, probe)?, None),
        ImageFormat::Jxl => super::jxl::decode(
            bytes,
            (probe.width, probe.height),
            super::ImageLimits::default().max_frames,
        )?,
        // Drawn at the intrinsic size, or smaller when its layers need the memory.
        ImageFormat::Svg => {
            let b = super::svg::decode(bytes, (probe.width, probe.height))?;
            return Ok((b, None));
        }
        // In the sandboxed child: rav1d (AVIF) and libheif (HEIC).
        ImageFormat::Avif | ImageFormat::Heic => (
            super::isolated::decode(bytes, probe)?,
            super::icc::extract(bytes, probe.format),
        ),
        ImageFormat::Tiff => (
            image_rs(bytes, probe)?,
            super::icc::extract(bytes, probe.format),
        ),
    };
    if (bitmap.width, bitmap.height) != (probe.width, probe.height) {
        return Err(ImageError::Corrupt(
            "decoded size differs from the header".into(),
        ));
    }
    let expected = bitmap.width as usize * bitmap.height as usize * usize::from(bitmap.channels);
    if bitmap.data.len() != expected {
        return Err(ImageError::Corrupt("short pixel buffer".into()));
    }
    Ok((bitmap, icc))
}

/// BMP, ICO (the largest entry) and TIFF (the first page) through image-rs's pure-Rust codecs,
/// told the probed size and a matching allocation bound, then converted to 8-bit RGB or RGBA.
fn image_rs(bytes: &[u8], probe: &Probe) -> Result<Bitmap, ImageError> {
    let format = match probe.format {
        ImageFormat::Bmp => image::ImageFormat::Bmp,
        ImageFormat::Ico => image::ImageFormat::Ico,
        _ => image::ImageFormat::Tiff,
    };
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(probe.width);
    limits.max_image_height = Some(probe.height);
    // 16 bytes per pixel covers 16-bit RGBA and the decoder's strips.
    limits.max_alloc = Some(
        u64::from(probe.width)
            .saturating_mul(u64::from(probe.height))
            .saturating_mul(16)
            .saturating_add(1 << 20),
    );
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let img = reader.decode().map_err(corrupt)?;
    let (width, height) = (img.width(), img.height());
    Ok(if img.color().has_alpha() {
        Bitmap {
            width,
            height,
            channels: 4,
            data: img.into_rgba8().into_raw(),
        }
    } else {
        Bitmap {
            width,
            height,
            channels: 3,
            data: img.into_rgb8().into_raw(),
        }
    })
}

fn corrupt(e: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(e.to_string())
}

fn jpeg(bytes: &[u8], probe: &Probe) -> Result<Bitmap, ImageError> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;

    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(probe.width as usize)
        .set_max_height(probe.height as usize)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let data = decoder.decode().map_err(corrupt)?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| corrupt("no dimensions"))?;
    Ok(Bitmap {
        width: u32::try_from(w).map_err(corrupt)?,
        height: u32::try_from(h).map_err(corrupt)?,
        channels: 3,
        data,
    })
}

fn png(bytes: &[u8], probe: &Probe) -> Result<Bitmap, ImageError> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // The profile is read by `icc::extract` under a 4 MiB bound; the decoder's own bound would
    // be the image size.
    decoder.set_ignore_iccp_chunk(true);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    // Bound the decoder's own allocations to the probed size (RGBA at 16 bits, plus slack).
    let limit = (probe.width as usize)
        .saturating_mul(probe.height as usize)
        .saturating_mul(8)
        .saturating_add(1 << 20);
    decoder.set_limits(png::Limits { bytes: limit });
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| corrupt("image too large for this platform"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(corrupt)?;
    buf.truncate(info.buffer_size());
    let (channels, data) = match info.color_type {
        png::ColorType::Rgb => (3, buf),
        png::ColorType::Rgba => (4, buf),
        png::ColorType::Grayscale => (3, super::map_pixels(&buf, 1, |g| [g[0], g[0], g[0]])),
        png::ColorType::GrayscaleAlpha => {
            (4, super::map_pixels(&buf, 2, |p| [p[0], p[0], p[0], p[1]]))
        }
        png::ColorType::Indexed => return Err(corrupt("palette was not expanded")),
    };
    Ok(Bitmap {
        width: info.width,
        height: info.height,
        channels,
        data,
    })
}

/// Decodes every frame after the first of an animation (the first was decoded by the caller):
/// an upload is accepted only if all of them render.
pub fn check_all_frames(bytes: &[u8], probe: &Probe) -> Result<(), ImageError> {
    let mut frames = super::anim::Frames::open(bytes, probe)?;
    while frames.next_frame()?.is_some() {}
    Ok(())
}
