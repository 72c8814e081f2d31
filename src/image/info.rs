//! Image facts and placeholders for `/info` and `GET /v1/images/{id}`: computed once, from the
//! decode an upload does anyway ([`analyze_upload`]), and stored with the image's metadata.
//!
//! Placeholders are made from a ≤100 px copy of the upright, sRGB image: a BlurHash (4×3 or 3×4
//! components, by orientation), a ThumbHash (base64), and an LQIP: a tiny WebP as a `data:` URI
//! of at most [`MAX_LQIP_BYTES`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::pipeline::{preview, resize_to};
use super::{Bitmap, ImageError, ImageLimits, Probe, icc, orient, probe};
use crate::options::OutputFormat;

/// Longest `lqip` data URI, bytes.
pub const MAX_LQIP_BYTES: usize = 1024;
/// Side of the copy placeholders are computed from (ThumbHash takes at most 100×100).
const SMALL_SIDE: u32 = 100;

/// What `/info` tells besides the metadata's size, format and byte count.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageInfo {
    /// EXIF orientation of the stored pixels (1..=8); width and height are already upright.
    pub orientation: u8,
    /// Some pixel is not fully opaque.
    pub has_alpha: bool,
    pub animated: bool,
    pub frames: u64,
    /// The embedded ICC profile's description, if any.
    pub color_profile: Option<String>,
    pub blurhash: String,
    /// Base64 (standard alphabet, padded), as ThumbHash's reference code prints it.
    pub thumbhash: String,
    /// `data:image/webp;base64,…`, at most [`MAX_LQIP_BYTES`].
    pub lqip: String,
}

/// An upload's full check ([`super::validate_upload`]) and its info, from one decode (and
/// one of each later frame of an animation).
pub fn analyze_upload(
    bytes: &[u8],
    limits: &ImageLimits,
) -> Result<(Probe, ImageInfo), ImageError> {
    super::pipeline::contained(|| {
        let p = probe(bytes)?;
        limits.check_source(p.width, p.height)?;
        limits.check_frames(bytes, &p)?;
        let (bitmap, profile) = super::decode::decode_with_icc(bytes, &p)?;
        let info = info_of(bytes, &p, bitmap, profile.as_deref(), limits)?;
        if info.animated {
            super::decode::check_all_frames(bytes, &p)?;
        }
        Ok((p, info))
    })
}

/// Facts and placeholders of a decoded source.
fn info_of(
    bytes: &[u8],
    p: &Probe,
    bitmap: Bitmap,
    profile: Option<&[u8]>,
    limits: &ImageLimits,
) -> Result<ImageInfo, ImageError> {
    let has_alpha = bitmap.channels == 4 && bitmap.data.chunks_exact(4).any(|px| px[3] != 255);
    let frames = super::frame_count(bytes, p.format, limits.max_frames);
    let (w, h) = (bitmap.width, bitmap.height);
    let scale = f64::from(SMALL_SIDE) / f64::from(w.max(h));
    let small_size = if scale < 1.0 {
        (
            ((f64::from(w) * scale).round() as u32).max(1),
            ((f64::from(h) * scale).round() as u32).max(1),
        )
    } else {
        (w, h)
    };
    let mut small = super::to_rgba(preview(&bitmap, small_size)?);
    drop(bitmap);
    if let Some(profile) = profile {
        icc::to_srgb(&mut small, profile);
    }
    let small = orient::apply(p.orientation, small);
    Ok(ImageInfo {
        orientation: p.orientation,
        has_alpha,
        animated: frames > 1,
        frames,
        color_profile: profile.and_then(icc::description),
        blurhash: blurhash(&small)?,
        thumbhash: STANDARD.encode(thumbhash::rgba_to_thumb_hash(
            small.width as usize,
            small.height as usize,
            &small.data,
        )),
        lqip: lqip(&small, has_alpha)?,
    })
}

fn blurhash(small: &Bitmap) -> Result<String, ImageError> {
    let (cx, cy) = if small.width >= small.height {
        (4, 3)
    } else {
        (3, 4)
    };
    blurhash::encode(cx, cy, small.width, small.height, &small.data)
        .map_err(|e| ImageError::Encode(format!("blurhash: {e}")))
}

/// The largest tiny WebP (32, 24, 16, 8 px on the long side) whose data URI fits.
fn lqip(small: &Bitmap, has_alpha: bool) -> Result<String, ImageError> {
    let settings = super::EncodeSettings::default();
    let mut last = String::new();
    for side in [32u32, 24, 16, 8] {
        let scale = f64::from(side) / f64::from(small.width.max(small.height));
        let size = (
            ((f64::from(small.width) * scale).round() as u32).clamp(1, small.width),
            ((f64::from(small.height) * scale).round() as u32).clamp(1, small.height),
        );
        let mut tiny = resize_to(small.clone(), size)?;
        if !has_alpha {
            tiny = super::effects::flatten(&tiny, [255, 255, 255]);
        }
        let webp = super::encode(&tiny, OutputFormat::Webp, 40, &settings)?;
        last = format!("data:image/webp;base64,{}", STANDARD.encode(webp));
        if last.len() <= MAX_LQIP_BYTES {
            return Ok(last);
        }
    }
    Err(ImageError::Encode(format!(
        "lqip of {} bytes is over {MAX_LQIP_BYTES}",
        last.len()
    )))
}

/// Info of a stored original (images uploaded before info existed): a full decode on the CPU
/// pool, the same computation as at upload.
pub fn analyze(bytes: &[u8], limits: &ImageLimits) -> Result<ImageInfo, ImageError> {
    analyze_upload(bytes, limits).map(|(_, info)| info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::OutputFormat;

    fn limits() -> ImageLimits {
        ImageLimits::default()
    }

    /// Mean colour of an RGBA buffer.
    fn mean(rgba: &[u8]) -> [f64; 3] {
        let n = (rgba.len() / 4) as f64;
        let mut m = [0.0; 3];
        for p in rgba.chunks_exact(4) {
            for c in 0..3 {
                m[c] += f64::from(p[c]) / n;
            }
        }
        m
    }

    #[test]
    fn placeholders_decode_to_the_sources_mean_colour() {
        let jpeg = include_bytes!("../../tests/fixtures/photo_320x240.jpg").to_vec();
        let p = crate::image::probe(&jpeg).unwrap();
        let photo = crate::image::decode(&jpeg, &p).unwrap();
        let src_mean = mean(&crate::image::to_rgba(photo.clone()).data);
        let png = crate::image::encode(
            &photo,
            OutputFormat::Png,
            90,
            &crate::image::EncodeSettings::default(),
        )
        .unwrap();
        let sources = [
            jpeg,
            png,
            include_bytes!("../../tests/fixtures/photo_320x240.webp").to_vec(),
            include_bytes!("../../tests/fixtures/photo_320x240.gif").to_vec(),
        ];
        for bytes in sources {
            let (p, info) = analyze_upload(&bytes, &limits()).unwrap();
            assert_eq!((p.width, p.height), (320, 240));
            assert!(!info.has_alpha && !info.animated && info.frames == 1);
            // The reference decoders of both crates.
            let b = blurhash::decode(&info.blurhash, 32, 24, 1.0).unwrap();
            let t =
                thumbhash::thumb_hash_to_rgba(&STANDARD.decode(&info.thumbhash).unwrap()).unwrap();
            for decoded in [mean(&b), mean(&t.2)] {
                for c in 0..3 {
                    assert!(
                        (decoded[c] - src_mean[c]).abs() <= 10.0,
                        "{:?} channel {c}: {decoded:?} vs {src_mean:?}",
                        p.format
                    );
                }
            }
            assert!(info.lqip.starts_with("data:image/webp;base64,"));
            assert!(info.lqip.len() <= MAX_LQIP_BYTES);
            let lqip = STANDARD
                .decode(info.lqip.trim_start_matches("data:image/webp;base64,"))
                .unwrap();
            let lp = crate::image::probe(&lqip).unwrap();
            assert_eq!((lp.width, lp.height), (32, 24));
        }
        let alpha = include_bytes!("../../tests/fixtures/alpha_320x240.png");
        let (_, info) = analyze_upload(alpha, &limits()).unwrap();
        assert!(info.has_alpha);
    }

    #[test]
    fn extreme_aspect_ratios_and_tiny_images_work() {
        for (w, h) in [(1, 1), (4000, 1), (1, 3000), (7, 300)] {
            let card = crate::image::pipeline::tests::card(w, h);
            let png = crate::image::encode(
                &card,
                OutputFormat::Png,
                90,
                &crate::image::EncodeSettings::default(),
            )
            .unwrap();
            let (_, info) = analyze_upload(&png, &limits()).unwrap();
            assert!(info.lqip.len() <= MAX_LQIP_BYTES, "{w}x{h}");
            assert!(!info.blurhash.is_empty());
        }
    }
}
