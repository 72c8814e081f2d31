//! Encoders. Each is handed raw pixels only, so no source metadata (EXIF, GPS, XMP, ICC) can
//! reach an output.
//!
//! JPEG: libjpeg-turbo (SIMD; Huffman tables optimised per image by default). PNG: the `png` crate. WebP: libwebp
//! through the `webp` crate. AVIF: rav1e through `ravif` (pure Rust), one thread per encode.

use super::{Bitmap, ImageError};
use crate::options::OutputFormat;

/// JPEG chroma subsampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Subsampling {
    /// 4:2:0 — half-resolution colour, the web default (smaller files).
    #[serde(rename = "420")]
    S420,
    /// 4:4:4 — full-resolution colour (sharper red text and edges, ~30 % larger).
    #[serde(rename = "444")]
    S444,
}

/// PNG zlib effort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PngCompression {
    Fast,
    Balanced,
    High,
}

/// Encoder settings from configuration (`[encode]`).
#[derive(Debug, Clone, Copy)]
pub struct EncodeSettings {
    pub jpeg_progressive: bool,
    /// Huffman tables computed for each image (a second pass over the coefficients) instead
    /// of the standard ones: 5–8 % smaller JPEGs at the same pixels.
    pub jpeg_optimize_coding: bool,
    pub jpeg_subsampling: Subsampling,
    pub png_compression: PngCompression,
    /// libwebp method 0 (fastest) ..= 6 (smallest).
    pub webp_method: u8,
    pub webp_lossless: bool,
    /// rav1e speed 1 (slowest, smallest) ..= 10 (fastest).
    pub avif_speed: u8,
}

impl Default for EncodeSettings {
    fn default() -> Self {
        EncodeSettings {
            // Issue 20, measured at matched output against ipx and thumbor (benches/peers.sh):
            // progressive JPEG is 5.4 % smaller for ~3 ms at 800 px; WebP method 4 (libwebp's
            // own default) 2.3 % smaller and 0.2 dB better than 2 for ~30 ms.
            jpeg_progressive: true,
            jpeg_optimize_coding: true,
            jpeg_subsampling: Subsampling::S420,
            png_compression: PngCompression::Fast,
            webp_method: 4,
            webp_lossless: false,
            avif_speed: 9,
        }
    }
}

/// Encodes `bitmap` as `format` at `quality` (1..=100; ignored by PNG and lossless WebP).
pub fn encode(
    bitmap: &Bitmap,
    format: OutputFormat,
    quality: u8,
    settings: &EncodeSettings,
) -> Result<Vec<u8>, ImageError> {
    match format {
        OutputFormat::Jpeg => jpeg(bitmap, quality, settings),
        OutputFormat::Png => png(bitmap, settings),
        OutputFormat::Webp => webp(bitmap, quality, settings),
        OutputFormat::Avif => avif(bitmap, quality, settings),
        OutputFormat::Gif => gif(bitmap),
    }
}

/// A still GIF: NeuQuant to 256 colours (the `gif` crate); alpha below 128 becomes the
/// transparent index ([`gif_frame`]).
fn gif(bitmap: &Bitmap) -> Result<Vec<u8>, ImageError> {
    let w = u16::try_from(bitmap.width).map_err(err)?;
    let h = u16::try_from(bitmap.height).map_err(err)?;
    let frame = gif_frame(bitmap, (w, h))?;
    let mut out = Vec::with_capacity(bitmap.data.len() / 4);
    {
        let mut encoder = gif::Encoder::new(&mut out, w, h, &[]).map_err(err)?;
        encoder.write_frame(&frame).map_err(err)?;
    }
    Ok(out)
}

/// One GIF frame of `bitmap` (`size`): RGB is quantised as is; RGBA has alpha below 128
/// transparent and the rest opaque (GIF has one transparent index; the `gif` crate would make
/// every non-zero alpha opaque, leaving a fringe of resampled edge pixels).
pub(super) fn gif_frame(
    bitmap: &Bitmap,
    (w, h): (u16, u16),
) -> Result<gif::Frame<'static>, ImageError> {
    if (u32::from(w), u32::from(h)) != (bitmap.width, bitmap.height) {
        return Err(err("frame size differs from the animation"));
    }
    Ok(if bitmap.channels == 4 {
        let mut rgba = bitmap.data.clone();
        for px in rgba.chunks_exact_mut(4) {
            if px[3] < 128 {
                px.copy_from_slice(&[0; 4]);
            }
        }
        gif::Frame::from_rgba_speed(w, h, &mut rgba, GIF_QUANT_SPEED)
    } else {
        gif::Frame::from_rgb_speed(w, h, &bitmap.data, GIF_QUANT_SPEED)
    })
}

/// NeuQuant's sampling factor (1..=30): 10 is the crate's "good compromise".
const GIF_QUANT_SPEED: i32 = 10;

fn err(e: impl std::fmt::Display) -> ImageError {
    ImageError::Encode(e.to_string())
}

fn jpeg(bitmap: &Bitmap, quality: u8, settings: &EncodeSettings) -> Result<Vec<u8>, ImageError> {
    let w = u16::try_from(bitmap.width).map_err(err)?;
    let h = u16::try_from(bitmap.height).map_err(err)?;
    let rgb;
    let pixels: &[u8] = if bitmap.channels == 4 {
        // JPEG has no alpha: the pipeline flattens first; white is the safe fallback.
        rgb = super::effects::flatten(bitmap, [255, 255, 255]);
        &rgb.data
    } else {
        &bitmap.data
    };
    // libjpeg-turbo's compressor (SIMD colour conversion, DCT and Huffman coding) through the
    // turbojpeg crate's safe API: our own pixels, never untrusted bytes. Issue 20 replaced
    // jpeg-encoder 0.7, whose optimised Huffman tables decoded as garbage.
    let mut c = turbojpeg::Compressor::new().map_err(err)?;
    c.set_quality(i32::from(quality.clamp(1, 100)))
        .map_err(err)?;
    c.set_subsamp(match settings.jpeg_subsampling {
        Subsampling::S420 => turbojpeg::Subsamp::Sub2x2,
        Subsampling::S444 => turbojpeg::Subsamp::None,
    })
    .map_err(err)?;
    c.set_optimize(settings.jpeg_optimize_coding).map_err(err)?;
    c.set_progressive(settings.jpeg_progressive).map_err(err)?;
    let (w, h) = (usize::from(w), usize::from(h));
    c.compress_to_vec(turbojpeg::Image {
        pixels,
        width: w,
        pitch: w * 3,
        height: h,
        format: turbojpeg::PixelFormat::RGB,
    })
    .map_err(err)
}

fn png(bitmap: &Bitmap, settings: &EncodeSettings) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::with_capacity(bitmap.data.len() / 2);
    {
        let mut encoder = png::Encoder::new(&mut out, bitmap.width, bitmap.height);
        encoder.set_color(if bitmap.channels == 4 {
            png::ColorType::Rgba
        } else {
            png::ColorType::Rgb
        });
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(match settings.png_compression {
            PngCompression::Fast => png::Compression::Fast,
            PngCompression::Balanced => png::Compression::Balanced,
            PngCompression::High => png::Compression::High,
        });
        let mut writer = encoder.write_header().map_err(err)?;
        writer.write_image_data(&bitmap.data).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    Ok(out)
}

fn webp(bitmap: &Bitmap, quality: u8, settings: &EncodeSettings) -> Result<Vec<u8>, ImageError> {
    let encoder = if bitmap.channels == 4 {
        webp::Encoder::from_rgba(&bitmap.data, bitmap.width, bitmap.height)
    } else {
        webp::Encoder::from_rgb(&bitmap.data, bitmap.width, bitmap.height)
    };
    let mut config = webp::WebPConfig::new().map_err(|()| err("libwebp config"))?;
    configure_webp(&mut config, quality, settings);
    let mem = encoder
        .encode_advanced(&config)
        .map_err(|e| err(format!("{e:?}")))?;
    Ok(mem.to_vec())
}

/// libwebp settings for stills and animations alike.
pub(super) fn configure_webp(
    config: &mut webp::WebPConfig,
    quality: u8,
    settings: &EncodeSettings,
) {
    config.lossless = i32::from(settings.webp_lossless);
    config.quality = if settings.webp_lossless {
        // For lossless, "quality" is compression effort; keep it tied to the method.
        f32::from(settings.webp_method) * 100.0 / 6.0
    } else {
        f32::from(quality.clamp(1, 100))
    };
    config.method = i32::from(settings.webp_method.min(6));
}

fn avif(bitmap: &Bitmap, quality: u8, settings: &EncodeSettings) -> Result<Vec<u8>, ImageError> {
    use rgb::FromSlice;
    let (w, h) = (bitmap.width as usize, bitmap.height as usize);
    let q = f32::from(quality.clamp(1, 100));
    // One thread: the CPU pool (and the AVIF limit in front of it) decides the parallelism.
    let encoder = ravif::Encoder::new()
        .with_quality(q)
        .with_alpha_quality(q)
        .with_speed(settings.avif_speed.clamp(1, 10))
        .with_bit_depth(ravif::BitDepth::Eight)
        .with_num_threads(Some(1));
    let encoded = if bitmap.channels == 4 {
        encoder.encode_rgba(ravif::Img::new(bitmap.data.as_rgba(), w, h))
    } else {
        encoder.encode_rgb(ravif::Img::new(bitmap.data.as_rgb(), w, h))
    }
    .map_err(err)?;
    Ok(encoded.avif_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> Bitmap {
        Bitmap {
            width: 64,
            height: 48,
            channels: 3,
            data: (0..64 * 48 * 3).map(|i| (i % 251) as u8).collect(),
        }
    }

    #[test]
    fn settings_change_the_output() {
        let b = card();
        let base = EncodeSettings {
            jpeg_progressive: false,
            ..EncodeSettings::default()
        };
        let a = encode(&b, OutputFormat::Jpeg, 80, &base).unwrap();
        let progressive = EncodeSettings::default();
        assert!(progressive.jpeg_progressive, "the default since issue 20");
        let p = encode(&b, OutputFormat::Jpeg, 80, &progressive).unwrap();
        // SOF2 marks a progressive JPEG.
        assert!(p.windows(2).any(|w| w == [0xFF, 0xC2]));
        assert!(!a.windows(2).any(|w| w == [0xFF, 0xC2]));
        // Optimised Huffman tables: a smaller file with the same pixels.
        let standard = EncodeSettings {
            jpeg_optimize_coding: false,
            ..base
        };
        let s = encode(&b, OutputFormat::Jpeg, 80, &standard).unwrap();
        assert!(a.len() < s.len(), "{} >= {}", a.len(), s.len());
        let pixels = |j: &[u8]| {
            zune_jpeg::JpegDecoder::new(zune_core::bytestream::ZCursor::new(j))
                .decode()
                .unwrap()
        };
        assert_eq!(pixels(&a), pixels(&s));
        let lossless = EncodeSettings {
            webp_lossless: true,
            ..base
        };
        let l = encode(&b, OutputFormat::Webp, 80, &lossless).unwrap();
        assert!(l.windows(4).any(|w| w == b"VP8L"));
        let decoded = webp::Decoder::new(&l).decode().unwrap();
        assert_eq!(&*decoded, &b.data[..]);
    }

    #[test]
    fn avif_is_an_avif_file_with_and_without_alpha() {
        let b = card();
        let a = encode(&b, OutputFormat::Avif, 60, &EncodeSettings::default()).unwrap();
        assert_eq!(&a[4..12], b"ftypavif");
        let rgba = super::super::to_rgba(b);
        let a = encode(&rgba, OutputFormat::Avif, 60, &EncodeSettings::default()).unwrap();
        assert_eq!(&a[4..12], b"ftypavif");
        // No EXIF/XMP boxes are written.
        assert!(!a.windows(4).any(|w| w == b"Exif"));
    }
}
