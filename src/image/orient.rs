//! EXIF orientation: mapping between the stored pixel grid and what the viewer sees.
//!
//! The pipeline plans in oriented coordinates, maps the crop back to stored coordinates with
//! [`crop_to_stored`], resizes in the stored grid, and only then rotates the (small) result
//! with [`apply`].

use super::Bitmap;

/// Maps a crop rectangle from oriented coordinates to stored coordinates.
/// `w`×`h` is the *stored* size.
pub fn crop_to_stored(
    orientation: u8,
    w: f64,
    h: f64,
    (x, y, cw, ch): (f64, f64, f64, f64),
) -> (f64, f64, f64, f64) {
    match orientation {
        2 => (w - x - cw, y, cw, ch),
        3 => (w - x - cw, h - y - ch, cw, ch),
        4 => (x, h - y - ch, cw, ch),
        5 => (y, x, ch, cw),
        6 => (y, h - x - cw, ch, cw),
        7 => (w - y - ch, h - x - cw, ch, cw),
        8 => (w - y - ch, x, ch, cw),
        _ => (x, y, cw, ch),
    }
}

/// Output size in the stored grid for an oriented output size.
pub fn size_to_stored(orientation: u8, (w, h): (u32, u32)) -> (u32, u32) {
    if orientation >= 5 { (h, w) } else { (w, h) }
}

/// Rotates/flips a bitmap from the stored grid into the viewer's orientation.
pub fn apply(orientation: u8, src: Bitmap) -> Bitmap {
    if !(2..=8).contains(&orientation) {
        return src;
    }
    let (w, h) = (src.width as usize, src.height as usize);
    let c = usize::from(src.channels);
    let (ow, oh) = if orientation >= 5 { (h, w) } else { (w, h) };
    let mut out = vec![0u8; src.data.len()];
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = match orientation {
                2 => (w - 1 - x, y),
                3 => (w - 1 - x, h - 1 - y),
                4 => (x, h - 1 - y),
                5 => (y, x),
                6 => (h - 1 - y, x),
                7 => (h - 1 - y, w - 1 - x),
                _ => (y, w - 1 - x), // 8
            };
            let s = (y * w + x) * c;
            let d = (dy * ow + dx) * c;
            out[d..d + c].copy_from_slice(&src.data[s..s + c]);
        }
    }
    Bitmap {
        width: ow as u32,
        height: oh as u32,
        channels: src.channels,
        data: out,
    }
}

/// The single orientation (EXIF code 1..=8) equal to applying `exif`, then a clockwise
/// rotation by `rotate` degrees, then the flips. The eight orientations form a group (the
/// symmetries of a rectangle), so any such sequence is one of them; it is found by applying the
/// sequence to a 3×2 probe whose pixels are all distinct.
pub fn compose(exif: u8, rotate: u16, flip_horizontal: bool, flip_vertical: bool) -> u8 {
    let probe = Bitmap {
        width: 3,
        height: 2,
        channels: 1,
        data: (0..6).collect(),
    };
    let mut b = apply(exif, probe.clone());
    b = match rotate {
        90 => apply(6, b),
        180 => apply(3, b),
        270 => apply(8, b),
        _ => b,
    };
    if flip_horizontal {
        b = apply(2, b);
    }
    if flip_vertical {
        b = apply(4, b);
    }
    (1..=8u8)
        .find(|&o| {
            let c = apply(o, probe.clone());
            c.width == b.width && c.data == b.data
        })
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3x2 single-channel-like bitmap (3 channels, value in the first) laid out as
    /// 1 2 3
    /// 4 5 6
    fn sample() -> Bitmap {
        let data = (1..=6u8).flat_map(|v| [v, 0, 0]).collect();
        Bitmap {
            width: 3,
            height: 2,
            channels: 3,
            data,
        }
    }

    fn values(b: &Bitmap) -> Vec<u8> {
        b.data.chunks(3).map(|p| p[0]).collect()
    }

    #[test]
    fn every_orientation() {
        let expect: [(u8, (u32, u32), [u8; 6]); 8] = [
            (1, (3, 2), [1, 2, 3, 4, 5, 6]),
            (2, (3, 2), [3, 2, 1, 6, 5, 4]),
            (3, (3, 2), [6, 5, 4, 3, 2, 1]),
            (4, (3, 2), [4, 5, 6, 1, 2, 3]),
            (5, (2, 3), [1, 4, 2, 5, 3, 6]),
            (6, (2, 3), [4, 1, 5, 2, 6, 3]),
            (7, (2, 3), [6, 3, 5, 2, 4, 1]),
            (8, (2, 3), [3, 6, 2, 5, 1, 4]),
        ];
        for (o, size, vals) in expect {
            let b = apply(o, sample());
            assert_eq!((b.width, b.height), size, "orientation {o}");
            assert_eq!(values(&b), vals, "orientation {o}");
        }
    }

    #[test]
    fn composition_matches_applying_in_sequence() {
        for exif in 1..=8u8 {
            for rot in [0u16, 90, 180, 270] {
                for (fh, fv) in [(false, false), (true, false), (false, true), (true, true)] {
                    let o = compose(exif, rot, fh, fv);
                    let mut b = apply(exif, sample());
                    for _ in 0..rot / 90 {
                        b = apply(6, b);
                    }
                    if fh {
                        b = apply(2, b);
                    }
                    if fv {
                        b = apply(4, b);
                    }
                    let c = apply(o, sample());
                    assert_eq!((c.width, values(&c)), (b.width, values(&b)));
                }
            }
        }
        assert_eq!(compose(1, 90, false, false), 6);
        assert_eq!(compose(6, 270, false, false), 1);
    }

    #[test]
    fn crop_mapping_agrees_with_pixel_mapping() {
        // For every orientation, the oriented pixel at (x, y) of a 1x1 crop must come from the
        // stored pixel the crop maps to.
        let stored = sample();
        for o in 1..=8u8 {
            let oriented = apply(o, stored.clone());
            for y in 0..oriented.height {
                for x in 0..oriented.width {
                    let (sx, sy, sw, sh) =
                        crop_to_stored(o, 3.0, 2.0, (f64::from(x), f64::from(y), 1.0, 1.0));
                    assert_eq!((sw, sh), (1.0, 1.0));
                    let want = oriented.data[((y * oriented.width + x) * 3) as usize];
                    let got = stored.data[((sy as u32 * 3 + sx as u32) * 3) as usize];
                    assert_eq!(want, got, "orientation {o} at ({x},{y})");
                }
            }
        }
    }
}
