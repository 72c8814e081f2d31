//! Encoders. Each is handed raw pixels only, so no source metadata (EXIF, GPS, XMP, ICC) can
//! reach an output.
//!
//! JPEG: jpeg-encoder (pure Rust, AVX2 when available). PNG: the `png` crate with fast
//! compression (results are small; encode time matters more than the last percent). WebP:
//! libwebp lossy through the `webp` crate.

use super::{Bitmap, ImageError};
use crate::options::OutputFormat;

/// Encodes `bitmap` as `format` at `quality` (1..=100; ignored by PNG).
pub fn encode(bitmap: &Bitmap, format: OutputFormat, quality: u8) -> Result<Vec<u8>, ImageError> {
    match format {
        OutputFormat::Jpeg => jpeg(bitmap, quality),
        OutputFormat::Png => png(bitmap),
        OutputFormat::Webp => webp(bitmap, quality),
    }
}

fn err(e: impl std::fmt::Display) -> ImageError {
    ImageError::Encode(e.to_string())
}

fn jpeg(bitmap: &Bitmap, quality: u8) -> Result<Vec<u8>, ImageError> {
    let w = u16::try_from(bitmap.width).map_err(err)?;
    let h = u16::try_from(bitmap.height).map_err(err)?;
    let rgb;
    let pixels: &[u8] = if bitmap.channels == 4 {
        // JPEG has no alpha: composite onto white, the usual page background.
        rgb = flatten_on_white(&bitmap.data);
        &rgb
    } else {
        &bitmap.data
    };
    let mut out = Vec::with_capacity(pixels.len() / 8);
    let encoder = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    encoder
        .encode(pixels, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(err)?;
    Ok(out)
}

fn flatten_on_white(rgba: &[u8]) -> Vec<u8> {
    rgba.chunks_exact(4)
        .flat_map(|p| {
            let a = u16::from(p[3]);
            let blend = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
            [blend(p[0]), blend(p[1]), blend(p[2])]
        })
        .collect()
}

fn png(bitmap: &Bitmap) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::with_capacity(bitmap.data.len() / 2);
    {
        let mut encoder = png::Encoder::new(&mut out, bitmap.width, bitmap.height);
        encoder.set_color(if bitmap.channels == 4 {
            png::ColorType::Rgba
        } else {
            png::ColorType::Rgb
        });
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().map_err(err)?;
        writer.write_image_data(&bitmap.data).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    Ok(out)
}

fn webp(bitmap: &Bitmap, quality: u8) -> Result<Vec<u8>, ImageError> {
    let encoder = if bitmap.channels == 4 {
        webp::Encoder::from_rgba(&bitmap.data, bitmap.width, bitmap.height)
    } else {
        webp::Encoder::from_rgb(&bitmap.data, bitmap.width, bitmap.height)
    };
    let mem = encoder
        .encode_simple(false, f32::from(quality.clamp(1, 100)))
        .map_err(|e| err(format!("{e:?}")))?;
    Ok(mem.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_blends_with_white() {
        let px = flatten_on_white(&[0, 0, 0, 0, 0, 0, 0, 255, 100, 100, 100, 128]);
        assert_eq!(&px[0..3], &[255, 255, 255]);
        assert_eq!(&px[3..6], &[0, 0, 0]);
        assert!((176..=178).contains(&px[6]));
    }
}
