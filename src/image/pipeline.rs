//! The transform pipeline: probe → limits → plan → decode → resize → orient → encode.
//!
//! CPU-bound and synchronous by design: callers run it on the blocking pool.

use fast_image_resize as fir;

use super::encode::encode;
use super::geometry::plan;
use super::orient;
use super::probe::probe;
use super::{Bitmap, ImageError, ImageFormat, ImageLimits, Probe, decode};
use crate::options::{OutputFormat, TransformSpec};

/// An encoded result.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub format: OutputFormat,
    pub width: u32,
    pub height: u32,
}

/// Checks an upload completely: known format, declared pixel count within limits, and a full
/// decode that succeeds. Returns the probe (format, dimensions).
pub fn validate_upload(bytes: &[u8], limits: &ImageLimits) -> Result<Probe, ImageError> {
    let p = probe(bytes)?;
    limits.check_source(p.width, p.height)?;
    decode(bytes, &p)?;
    Ok(p)
}

/// Runs one transform.
pub fn transform(
    bytes: &[u8],
    spec: &TransformSpec,
    format: OutputFormat,
    quality: u8,
    limits: &ImageLimits,
) -> Result<Encoded, ImageError> {
    let p = probe(bytes)?;
    limits.check_source(p.width, p.height)?;
    let (ow, oh) = p.oriented_dimensions();
    let geometry = plan(ow, oh, spec);
    limits.check_result(geometry.out.0, geometry.out.1)?;

    let mut bitmap = decode(bytes, &p)?;
    if p.format == ImageFormat::Gif || bitmap.channels == 4 {
        bitmap = drop_opaque_alpha(bitmap);
    }
    let resized = if geometry.is_identity(ow, oh) {
        bitmap
    } else {
        let crop = clamp_crop(
            orient::crop_to_stored(
                p.orientation,
                f64::from(p.width),
                f64::from(p.height),
                geometry.crop,
            ),
            p.width,
            p.height,
        );
        let size = orient::size_to_stored(p.orientation, geometry.out);
        resize(&bitmap, crop, size)?
    };
    let oriented = orient::apply(p.orientation, resized);
    let bytes = encode(&oriented, format, quality)?;
    Ok(Encoded {
        bytes,
        format,
        width: oriented.width,
        height: oriented.height,
    })
}

/// Keeps a crop inside the source. Planning in floating point can overshoot an edge by an ulp
/// (e.g. 4032.0000000000005 on a 4032-wide image), and the resizer rightly refuses that.
fn clamp_crop((x, y, w, h): (f64, f64, f64, f64), sw: u32, sh: u32) -> (f64, f64, f64, f64) {
    let (sw, sh) = (f64::from(sw), f64::from(sh));
    let x = x.clamp(0.0, sw);
    let y = y.clamp(0.0, sh);
    (x, y, w.clamp(0.0, sw - x), h.clamp(0.0, sh - y))
}

/// An RGBA bitmap whose alpha is fully opaque carries no information in it: dropping it makes
/// resizing and encoding cheaper and JPEG/WebP output smaller.
fn drop_opaque_alpha(b: Bitmap) -> Bitmap {
    if b.channels != 4 || b.data.chunks_exact(4).any(|p| p[3] != 255) {
        return b;
    }
    let data = b
        .data
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    Bitmap {
        channels: 3,
        data,
        ..b
    }
}

fn resize(
    src: &Bitmap,
    (x, y, w, h): (f64, f64, f64, f64),
    (dw, dh): (u32, u32),
) -> Result<Bitmap, ImageError> {
    let pixel_type = if src.channels == 4 {
        fir::PixelType::U8x4
    } else {
        fir::PixelType::U8x3
    };
    let src_view = fir::images::ImageRef::new(src.width, src.height, &src.data, pixel_type)
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut dst = fir::images::Image::new(dw, dh, pixel_type);
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3))
        .crop(x, y, w, h);
    // Alpha is premultiplied around the convolution by default (no dark fringes).
    fir::Resizer::new()
        .resize(&src_view, &mut dst, &options)
        .map_err(|e| ImageError::Encode(format!("resize: {e}")))?;
    Ok(Bitmap {
        width: dw,
        height: dh,
        channels: src.channels,
        data: dst.into_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::ResizingType;

    const LIMITS: ImageLimits = ImageLimits {
        max_source_pixels: 1_000_000,
        max_result_pixels: 1_000_000,
        max_result_dimension: 4096,
    };

    /// A gradient test card: left half red-ish, right half blue-ish.
    pub(crate) fn card(w: u32, h: u32) -> Bitmap {
        let mut data = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let left = x < w / 2;
                data.extend_from_slice(&[
                    if left { 220 } else { 20 },
                    (y * 255 / h.max(1)) as u8,
                    if left { 20 } else { 220 },
                ]);
            }
        }
        Bitmap {
            width: w,
            height: h,
            channels: 3,
            data,
        }
    }

    fn spec(w: u32, h: u32, rt: ResizingType) -> TransformSpec {
        TransformSpec {
            resizing_type: rt,
            width: w,
            height: h,
            ..TransformSpec::default()
        }
    }

    #[test]
    fn every_format_round_trips_through_the_pipeline() {
        let src = card(64, 48);
        for input in [OutputFormat::Jpeg, OutputFormat::Png, OutputFormat::Webp] {
            let bytes = encode(&src, input, 90).unwrap();
            for output in [OutputFormat::Jpeg, OutputFormat::Png, OutputFormat::Webp] {
                let out = transform(&bytes, &spec(32, 0, ResizingType::Fit), output, 80, &LIMITS)
                    .unwrap();
                assert_eq!((out.width, out.height), (32, 24));
                let p = probe(&out.bytes).unwrap();
                assert_eq!((p.width, p.height), (32, 24));
                assert_eq!(p.format.mime(), output.mime());
            }
        }
    }

    #[test]
    fn limits_are_checked_before_decoding() {
        let bytes = encode(&card(64, 48), OutputFormat::Png, 90).unwrap();
        let tight = ImageLimits {
            max_source_pixels: 64 * 48 - 1,
            ..LIMITS
        };
        assert!(matches!(
            transform(
                &bytes,
                &TransformSpec::default(),
                OutputFormat::Png,
                80,
                &tight
            ),
            Err(ImageError::TooManyPixels { .. })
        ));
        let mut big = spec(4000, 4000, ResizingType::Force);
        big.enlarge = true;
        assert!(matches!(
            transform(&bytes, &big, OutputFormat::Png, 80, &LIMITS),
            Err(ImageError::ResultTooLarge { .. })
        ));
    }

    #[test]
    fn fill_keeps_the_gravity_side() {
        // 64x48 card, fill to 16x48 anchored west: the result is all from the red half.
        let bytes = encode(&card(64, 48), OutputFormat::Png, 90).unwrap();
        let mut s = spec(16, 48, ResizingType::Fill);
        s.gravity = crate::options::Gravity::West;
        let out = transform(&bytes, &s, OutputFormat::Png, 80, &LIMITS).unwrap();
        let p = probe(&out.bytes).unwrap();
        let bmp = decode(&out.bytes, &p).unwrap();
        assert_eq!((bmp.width, bmp.height), (16, 48));
        let red_dominant = bmp.data.chunks(3).all(|px| px[0] > px[2]);
        assert!(red_dominant);
    }

    #[test]
    fn planned_crops_always_fit_the_source() {
        use crate::image::plan;
        use crate::options::Gravity;
        let gravities = [
            Gravity::Center,
            Gravity::North,
            Gravity::South,
            Gravity::East,
            Gravity::West,
            Gravity::NorthEast,
            Gravity::NorthWest,
            Gravity::SouthEast,
            Gravity::SouthWest,
            Gravity::FocusPoint {
                x: 10_000,
                y: 10_000,
            },
        ];
        let sources = [
            (4032, 3024),
            (6000, 4000),
            (3024, 4032),
            (1999, 1001),
            (7, 3),
        ];
        let boxes = [(500, 500), (640, 480), (333, 777), (1, 1), (120, 90)];
        let mut checked = 0;
        let mut overshoots = 0;
        for (sw, sh) in sources {
            for orientation in 1..=8u8 {
                let (ow, oh) = if orientation >= 5 { (sh, sw) } else { (sw, sh) };
                for (bw, bh) in boxes {
                    for rt in [
                        ResizingType::Fill,
                        ResizingType::FillDown,
                        ResizingType::Auto,
                    ] {
                        for g in gravities {
                            let mut s = spec(bw, bh, rt);
                            s.gravity = g;
                            let geometry = plan(ow, oh, &s);
                            let raw = orient::crop_to_stored(
                                orientation,
                                f64::from(sw),
                                f64::from(sh),
                                geometry.crop,
                            );
                            // Planning is right up to rounding noise…
                            let eps = 1e-6;
                            assert!(raw.0 > -eps && raw.1 > -eps, "{raw:?}");
                            assert!(raw.0 + raw.2 < f64::from(sw) + eps, "{raw:?}");
                            assert!(raw.1 + raw.3 < f64::from(sh) + eps, "{raw:?}");
                            if raw.0 + raw.2 > f64::from(sw) || raw.1 + raw.3 > f64::from(sh) {
                                overshoots += 1;
                            }
                            // …and the clamp removes the noise.
                            let (x, y, w, h) = clamp_crop(raw, sw, sh);
                            assert!(x >= 0.0 && y >= 0.0 && w > 0.0 && h > 0.0);
                            assert!(x + w <= f64::from(sw) && y + h <= f64::from(sh));
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 5 * 8 * 5 * 3 * 10);
        assert!(
            overshoots > 0,
            "the sweep no longer exercises the overshoot it guards"
        );
        // And the resizer accepts the reviewer's failing case end to end.
        let bytes = encode(&card(403, 302), OutputFormat::Jpeg, 90).unwrap();
        for g in gravities {
            let mut s = spec(50, 50, ResizingType::Fill);
            s.gravity = g;
            transform(&bytes, &s, OutputFormat::Jpeg, 80, &LIMITS).unwrap();
        }
    }

    #[test]
    fn opaque_alpha_is_dropped_real_alpha_kept() {
        let opaque = Bitmap {
            width: 1,
            height: 2,
            channels: 4,
            data: vec![1, 2, 3, 255, 4, 5, 6, 255],
        };
        assert_eq!(drop_opaque_alpha(opaque).channels, 3);
        let clear = Bitmap {
            width: 1,
            height: 2,
            channels: 4,
            data: vec![1, 2, 3, 255, 4, 5, 6, 0],
        };
        assert_eq!(drop_opaque_alpha(clear).channels, 4);
    }

    #[test]
    fn corrupt_inputs_are_errors_not_panics() {
        let jpeg = encode(&card(64, 48), OutputFormat::Jpeg, 90).unwrap();
        for cut in [jpeg.len() / 2, jpeg.len() - 10, 200] {
            let r = validate_upload(&jpeg[..cut], &LIMITS);
            assert!(matches!(r, Err(ImageError::Corrupt(_))), "cut {cut}: {r:?}");
        }
        let png = encode(&card(64, 48), OutputFormat::Png, 90).unwrap();
        let r = validate_upload(&png[..png.len() / 2], &LIMITS);
        assert!(matches!(r, Err(ImageError::Corrupt(_))), "{r:?}");
        let webp = encode(&card(64, 48), OutputFormat::Webp, 90).unwrap();
        let r = validate_upload(&webp[..webp.len() / 2], &LIMITS);
        assert!(matches!(r, Err(ImageError::Corrupt(_))), "{r:?}");
        // Flipped bits in the entropy-coded data.
        let mut bad = jpeg.clone();
        for b in bad[300..400].iter_mut() {
            *b = 0xFF;
        }
        let r = validate_upload(&bad, &LIMITS);
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn outputs_carry_no_exif() {
        // A JPEG with an EXIF APP1 block (orientation 6 + a GPS-looking marker string).
        let plain = encode(&card(64, 48), OutputFormat::Jpeg, 90).unwrap();
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&super::super::exif::tests::tiff_with_orientation(6, true));
        app1.extend_from_slice(b"GPSLatitude=52.5");
        let mut with_exif = plain[..2].to_vec();
        with_exif.extend_from_slice(&[0xFF, 0xE1]);
        with_exif.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        with_exif.extend_from_slice(&app1);
        with_exif.extend_from_slice(&plain[2..]);
        for f in [OutputFormat::Jpeg, OutputFormat::Png, OutputFormat::Webp] {
            let out =
                transform(&with_exif, &spec(32, 0, ResizingType::Fit), f, 80, &LIMITS).unwrap();
            // Orientation 6 was applied: 64x48 stored → 48x64 shown → fit width 32 → 32x43.
            assert_eq!((out.width, out.height), (32, 43), "{f:?}");
            let hay = &out.bytes;
            for needle in [&b"Exif"[..], b"GPS", b"XMP", b"http://ns.adobe.com"] {
                assert!(
                    !hay.windows(needle.len()).any(|w| w == needle),
                    "{f:?} output contains {:?}",
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }
}
