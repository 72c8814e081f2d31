//! Pixel effects applied to the (small) result: blur, sharpen, colour filters, canvas
//! extension and padding, watermark compositing and alpha flattening.
//!
//! All run after the resize, so their cost scales with the output, not the source. Alpha is
//! never blurred into colour: blur and sharpen work on premultiplied values.

use super::{Bitmap, ImageError};
use crate::options::{Filter, Gravity, Trim};

/// Gaussian blur approximated by three box blurs (error < 3 % of a true Gaussian), O(1) per
/// pixel whatever the sigma. Works in place, a row or a column at a time, so the extra memory is
/// two lines of floats, not a copy of the image.
pub fn blur(bitmap: &mut Bitmap, sigma: f32) {
    let (w, h) = (bitmap.width as usize, bitmap.height as usize);
    if sigma <= 0.0 || w == 0 || h == 0 {
        return;
    }
    let c = usize::from(bitmap.channels);
    let radii = box_radii(sigma);
    if c == 4 {
        premultiply(&mut bitmap.data);
    }
    let longest = w.max(h) * c;
    let mut line = vec![0f32; longest];
    let mut tmp = vec![0f32; longest];
    for row in bitmap.data.chunks_exact_mut(w * c) {
        for (d, s) in line.iter_mut().zip(row.iter()) {
            *d = f32::from(*s);
        }
        blur_line(&mut line[..w * c], &mut tmp[..w * c], c, radii);
        for (d, s) in row.iter_mut().zip(&line) {
            *d = s.round().clamp(0.0, 255.0) as u8;
        }
    }
    for x in 0..w {
        for y in 0..h {
            let src = (y * w + x) * c;
            for ch in 0..c {
                line[y * c + ch] = f32::from(bitmap.data[src + ch]);
            }
        }
        blur_line(&mut line[..h * c], &mut tmp[..h * c], c, radii);
        for y in 0..h {
            let dst = (y * w + x) * c;
            for ch in 0..c {
                bitmap.data[dst + ch] = line[y * c + ch].round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    if c == 4 {
        unpremultiply(&mut bitmap.data);
    }
}

/// Unsharp mask: `out = src + (src − blur(src, sigma))`, colour channels only. Holds one copy
/// of the result.
pub fn sharpen(bitmap: &mut Bitmap, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    let mut blurred = bitmap.clone();
    blur(&mut blurred, sigma);
    let c = usize::from(bitmap.channels);
    for (i, (dst, b)) in bitmap.data.iter_mut().zip(&blurred.data).enumerate() {
        if c == 4 && i % 4 == 3 {
            continue;
        }
        let v = 2.0 * f32::from(*dst) - f32::from(*b);
        *dst = v.round().clamp(0.0, 255.0) as u8;
    }
}

/// RGBA → premultiplied RGBA, in place.
/// Pixelation (imgproxy's `pix`): every `block`×`block` tile (the last row and column of tiles
/// may be smaller) becomes its mean colour — a box shrink and a nearest-neighbour zoom back,
/// as libvips does it. Alpha is averaged premultiplied, so transparent pixels add no colour.
pub fn pixelate(bitmap: &mut Bitmap, block: u32) {
    let (w, h, b) = (
        bitmap.width as usize,
        bitmap.height as usize,
        block as usize,
    );
    if b < 2 || w == 0 || h == 0 {
        return;
    }
    let c = usize::from(bitmap.channels);
    if c == 4 {
        premultiply(&mut bitmap.data);
    }
    let mut sums = vec![0u64; c];
    for ty in (0..h).step_by(b) {
        for tx in (0..w).step_by(b) {
            let (tw, th) = (b.min(w - tx), b.min(h - ty));
            sums.iter_mut().for_each(|s| *s = 0);
            for y in ty..ty + th {
                let row = &bitmap.data[(y * w + tx) * c..(y * w + tx + tw) * c];
                for px in row.chunks_exact(c) {
                    for (s, v) in sums.iter_mut().zip(px) {
                        *s += u64::from(*v);
                    }
                }
            }
            let n = (tw * th) as u64;
            let mean: Vec<u8> = sums.iter().map(|s| ((s + n / 2) / n) as u8).collect();
            for y in ty..ty + th {
                let row = &mut bitmap.data[(y * w + tx) * c..(y * w + tx + tw) * c];
                for px in row.chunks_exact_mut(c) {
                    px.copy_from_slice(&mean);
                }
            }
        }
    }
    if c == 4 {
        unpremultiply(&mut bitmap.data);
    }
}

fn premultiply(data: &mut [u8]) {
    for px in data.chunks_exact_mut(4) {
        let a = u16::from(px[3]);
        for v in &mut px[..3] {
            *v = ((u16::from(*v) * a + 127) / 255) as u8;
        }
    }
}

/// Premultiplied RGBA → RGBA, in place.
pub(super) fn unpremultiply(data: &mut [u8]) {
    for px in data.chunks_exact_mut(4) {
        let a = u16::from(px[3]);
        for v in &mut px[..3] {
            // Fully transparent pixels keep their (zero) colour.
            if let Some(c) = (u16::from(*v) * 255 + a / 2).checked_div(a) {
                *v = c.min(255) as u8;
            }
        }
    }
}

/// Three box passes over an interleaved line of `c` channels.
fn blur_line(line: &mut [f32], tmp: &mut [f32], c: usize, radii: [usize; 3]) {
    let n = line.len() / c;
    for r in radii {
        if r == 0 {
            continue;
        }
        let norm = 1.0 / (2 * r + 1) as f32;
        for ch in 0..c {
            let at = |i: isize| line[(i.clamp(0, n as isize - 1) as usize) * c + ch];
            let r = r as isize;
            let mut sum: f32 = (-r..=r).map(at).sum();
            for i in 0..n as isize {
                tmp[i as usize * c + ch] = sum * norm;
                sum += at(i + r + 1) - at(i - r);
            }
        }
        line.copy_from_slice(tmp);
    }
}

/// Radii of three box filters whose convolution approximates a Gaussian of `sigma`
/// (W. Jarosz / P. Kovesi, "boxes for Gauss").
fn box_radii(sigma: f32) -> [usize; 3] {
    let n = 3.0f32;
    let w_ideal = (12.0 * sigma * sigma / n + 1.0).sqrt();
    let mut wl = w_ideal.floor() as i64;
    if wl % 2 == 0 {
        wl -= 1;
    }
    let wl = wl.max(1);
    let wu = wl + 2;
    let wlf = wl as f32;
    let m_ideal =
        (12.0 * sigma * sigma - n * wlf * wlf - 4.0 * n * wlf - 3.0 * n) / (-4.0 * wlf - 4.0);
    let m = m_ideal.round() as i64;
    let mut out = [0usize; 3];
    for (i, r) in out.iter_mut().enumerate() {
        let w = if (i as i64) < m { wl } else { wu };
        *r = ((w - 1) / 2).max(0) as usize;
    }
    out
}

/// Grayscale (Rec. 709 luma) or sepia, colour channels only.
pub fn filter(bitmap: &mut Bitmap, f: Filter) {
    let c = usize::from(bitmap.channels);
    for px in bitmap.data.chunks_exact_mut(c) {
        let (r, g, b) = (f32::from(px[0]), f32::from(px[1]), f32::from(px[2]));
        let out = match f {
            Filter::Grayscale => {
                let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
                [y, y, y]
            }
            Filter::Sepia => [
                0.393 * r + 0.769 * g + 0.189 * b,
                0.349 * r + 0.686 * g + 0.168 * b,
                0.272 * r + 0.534 * g + 0.131 * b,
            ],
        };
        for (dst, v) in px.iter_mut().zip(out) {
            *dst = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// `t` (trim, [`Trim`]): what to cut off — pixels within `threshold` (per channel) of a
/// background colour, the given one or the top-left pixel's; with alpha and no colour given,
/// transparent pixels (alpha ≤ threshold). `equal_hor`/`equal_ver` cut the same amount from
/// both sides (the smaller). libvips smooths with a 3×3 median first; this does not, so a
/// lone speck in the border counts as content.
/// The region (x, y, w, h) of `bitmap` that `trim` keeps; the whole bitmap when everything is
/// background (libvips does the same: nothing to keep means nothing is cut). One pass over the
/// pixels, no allocation.
pub fn trim_region(bitmap: &Bitmap, trim: Trim) -> (u32, u32, u32, u32) {
    let (w, h) = (bitmap.width as usize, bitmap.height as usize);
    let c = usize::from(bitmap.channels);
    let whole = (0, 0, bitmap.width, bitmap.height);
    if w == 0 || h == 0 || bitmap.data.len() < w * h * c {
        return whole;
    }
    let t = i16::from(trim.threshold);
    let by_alpha = c == 4 && trim.color.is_none();
    let bg: [u8; 3] = trim
        .color
        .unwrap_or([bitmap.data[0], bitmap.data[1], bitmap.data[2]]);
    let content = |p: &[u8]| -> bool {
        if by_alpha {
            return i16::from(p[3]) > t;
        }
        (0..3).any(|i| (i16::from(p[i]) - i16::from(bg[i])).abs() > t)
            && (c < 4 || i16::from(p[3]) > t)
    };
    let (mut left, mut right, mut top, mut bottom) = (w, 0usize, h, 0usize);
    for (y, row) in bitmap.data.chunks_exact(w * c).take(h).enumerate() {
        let mut first = None;
        let mut last = 0;
        for (x, p) in row.chunks_exact(c).enumerate() {
            if content(p) {
                first.get_or_insert(x);
                last = x;
            }
        }
        if let Some(first) = first {
            left = left.min(first);
            right = right.max(last);
            top = top.min(y);
            bottom = y;
        }
    }
    if left > right || top > bottom {
        return whole;
    }
    if trim.equal_hor {
        let cut = left.min(w - 1 - right);
        (left, right) = (cut, w - 1 - cut);
    }
    if trim.equal_ver {
        let cut = top.min(h - 1 - bottom);
        (top, bottom) = (cut, h - 1 - cut);
    }
    (
        left as u32,
        top as u32,
        (right - left + 1) as u32,
        (bottom - top + 1) as u32,
    )
}

/// A copy of the `(x, y, w, h)` region of `src` (inside it).
pub fn cut(src: &Bitmap, (x, y, w, h): (u32, u32, u32, u32)) -> Bitmap {
    let c = usize::from(src.channels);
    let stride = src.width as usize * c;
    let mut data = Vec::with_capacity(w as usize * h as usize * c);
    for row in src
        .data
        .chunks_exact(stride)
        .skip(y as usize)
        .take(h as usize)
    {
        data.extend_from_slice(&row[x as usize * c..(x + w) as usize * c]);
    }
    Bitmap {
        width: w,
        height: h,
        channels: src.channels,
        data,
    }
}

/// A fill for new canvas area: an opaque colour, or transparent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    Color([u8; 3]),
    Transparent,
}

/// Places `src` on a `w`×`h` canvas at (`x`, `y`) filled with `fill`. A transparent fill gives an
/// RGBA canvas.
pub fn place(src: &Bitmap, w: u32, h: u32, x: u32, y: u32, fill: Fill) -> Bitmap {
    let channels = if fill == Fill::Transparent {
        4
    } else {
        src.channels
    };
    let c = usize::from(channels);
    let px: [u8; 4] = match fill {
        Fill::Color([r, g, b]) => [r, g, b, 255],
        Fill::Transparent => [0, 0, 0, 0],
    };
    let mut data = Vec::with_capacity(w as usize * h as usize * c);
    for _ in 0..(w as usize * h as usize) {
        data.extend_from_slice(&px[..c]);
    }
    let mut out = Bitmap {
        width: w,
        height: h,
        channels,
        data,
    };
    let sc = usize::from(src.channels);
    let rows = (src.height).min(h.saturating_sub(y)) as usize;
    let cols = (src.width).min(w.saturating_sub(x)) as usize;
    for row in 0..rows {
        for col in 0..cols {
            let s = (row * src.width as usize + col) * sc;
            let d = ((y as usize + row) * w as usize + x as usize + col) * c;
            out.data[d..d + 3].copy_from_slice(&src.data[s..s + 3]);
            if c == 4 {
                out.data[d + 3] = if sc == 4 { src.data[s + 3] } else { 255 };
            }
        }
    }
    out
}

/// Where a `cw`×`ch` box goes inside `w`×`h` under `g` and its imgproxy offsets (× `scale`,
/// or fractions of the outer size), clamped inside; whole pixels.
pub fn anchor_offset(
    g: Gravity,
    offset: [i32; 2],
    (w, h): (u32, u32),
    (cw, ch): (u32, u32),
    scale: f64,
) -> (u32, u32) {
    let (x, y) = super::geometry::place(
        g,
        offset,
        (f64::from(w), f64::from(h)),
        (f64::from(cw), f64::from(ch)),
        scale,
        false,
    );
    (x.floor() as u32, y.floor() as u32)
}

/// Alpha-blends `mark` (RGBA) onto `dst` at (`x`, `y`) (may be negative or overhang: clipped),
/// scaling the mark's alpha by `opacity` (0..=1).
pub fn composite(dst: &mut Bitmap, mark: &Bitmap, x: i64, y: i64, opacity: f32) {
    let (dw, dh) = (i64::from(dst.width), i64::from(dst.height));
    for my in 0..i64::from(mark.height) {
        let dy = y + my;
        if dy < 0 || dy >= dh {
            continue;
        }
        for mx in 0..i64::from(mark.width) {
            let dx = x + mx;
            if dx < 0 || dx >= dw {
                continue;
            }
            blend(
                dst,
                (dy * dw + dx) as usize,
                mark,
                (my * i64::from(mark.width) + mx) as usize,
                opacity,
            );
        }
    }
}

/// Porter-Duff "over" of mark pixel `m` onto destination pixel `d` (pixel indices): the
/// destination's own alpha weighs its colour, so a mark over transparent padding keeps its
/// colour instead of blending with black.
fn blend(dst: &mut Bitmap, d: usize, mark: &Bitmap, m: usize, opacity: f32) {
    let (dc, mc) = (usize::from(dst.channels), usize::from(mark.channels));
    let (d, m) = (d * dc, m * mc);
    let ma = if mc == 4 {
        f32::from(mark.data[m + 3]) / 255.0
    } else {
        1.0
    } * opacity;
    if ma <= 0.0 {
        return;
    }
    let da = if dc == 4 {
        f32::from(dst.data[d + 3]) / 255.0
    } else {
        1.0
    };
    let oa = ma + da * (1.0 - ma);
    for ch in 0..3 {
        let v = (f32::from(mark.data[m + ch]) * ma + f32::from(dst.data[d + ch]) * da * (1.0 - ma))
            / oa;
        dst.data[d + ch] = v.round().clamp(0.0, 255.0) as u8;
    }
    if dc == 4 {
        dst.data[d + 3] = (oa * 255.0).round() as u8;
    }
}

/// `wm:…:re` (imgproxy): `mark` repeated over all of `dst`, `gaps` (x, y) pixels apart, the
/// grid placed so one tile sits exactly at the centre. One pass over the destination (each
/// pixel finds its place in the tile grid), so the cost is the image's whatever the number of
/// tiles — a 1-pixel mark on a 16 MP result is not 16 M composites.
pub fn tile(dst: &mut Bitmap, mark: &Bitmap, (gx, gy): (u32, u32), opacity: f32) {
    let (mw, mh) = (u64::from(mark.width), u64::from(mark.height));
    let (tw, th) = (mw + u64::from(gx), mh + u64::from(gy));
    let odd = |n: u64| if n.is_multiple_of(2) { n + 1 } else { n };
    let across = odd(u64::from(dst.width).div_ceil(tw));
    let down = odd(u64::from(dst.height).div_ceil(th));
    // Where the destination starts inside the replicated grid (centred), and where the mark
    // starts inside its tile (the gap split around it).
    let (sx, sy) = (
        (across * tw - u64::from(dst.width)) / 2,
        (down * th - u64::from(dst.height)) / 2,
    );
    let (px, py) = (u64::from(gx / 2), u64::from(gy / 2));
    for y in 0..u64::from(dst.height) {
        let v = (y + sy) % th;
        if v < py || v >= py + mh {
            continue;
        }
        for x in 0..u64::from(dst.width) {
            let u = (x + sx) % tw;
            if u < px || u >= px + mw {
                continue;
            }
            let d = (y * u64::from(dst.width) + x) as usize;
            let m = ((v - py) * mw + (u - px)) as usize;
            blend(dst, d, mark, m, opacity);
        }
    }
}

/// Composites RGBA onto an opaque background, giving RGB.
pub fn flatten(bitmap: &Bitmap, [br, bg, bb]: [u8; 3]) -> Bitmap {
    if bitmap.channels != 4 {
        return bitmap.clone();
    }
    let data = super::map_pixels(&bitmap.data, 4, |p| {
        let a = u16::from(p[3]);
        let blend =
            |c: u8, back: u8| ((u16::from(c) * a + u16::from(back) * (255 - a) + 127) / 255) as u8;
        [blend(p[0], br), blend(p[1], bg), blend(p[2], bb)]
    });
    Bitmap {
        width: bitmap.width,
        height: bitmap.height,
        channels: 3,
        data,
    }
}

/// Checks a canvas size before allocating it.
pub fn check_canvas(
    w: u64,
    h: u64,
    max_pixels: u64,
    max_dim: u32,
) -> Result<(u32, u32), ImageError> {
    if w * h > max_pixels || w > u64::from(max_dim) || h > u64::from(max_dim) {
        return Err(ImageError::ResultTooLarge {
            width: w.min(u64::from(u32::MAX)) as u32,
            height: h.min(u64::from(u32::MAX)) as u32,
            limit: max_pixels,
        });
    }
    Ok((w as u32, h as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(w: u32, h: u32, px: &[u8]) -> Bitmap {
        Bitmap {
            width: w,
            height: h,
            channels: px.len() as u8,
            data: px.repeat((w * h) as usize),
        }
    }

    /// A `w`×`h` white canvas with a red `rw`×`rh` box at (`x`, `y`).
    fn boxed(w: u32, h: u32, (x, y, rw, rh): (u32, u32, u32, u32)) -> Bitmap {
        let mut b = solid(w, h, &[255, 255, 255]);
        for yy in y..y + rh {
            for xx in x..x + rw {
                let i = ((yy * w + xx) * 3) as usize;
                b.data[i..i + 3].copy_from_slice(&[200, 10, 10]);
            }
        }
        b
    }

    #[test]
    fn trim_finds_the_content_box() {
        let t = Trim {
            threshold: 10,
            color: None,
            equal_hor: false,
            equal_ver: false,
        };
        let b = boxed(40, 30, (5, 8, 10, 4));
        assert_eq!(trim_region(&b, t), (5, 8, 10, 4));
        // Equal cuts: 5 left / 25 right → 5 both; 8 top / 18 bottom → 8 both.
        let eq = Trim {
            equal_hor: true,
            equal_ver: true,
            ..t
        };
        assert_eq!(trim_region(&b, eq), (5, 8, 30, 14));
        // Near-white noise within the threshold is background.
        let mut noisy = b.clone();
        noisy.data[(29 * 40 + 39) * 3] = 250;
        assert_eq!(trim_region(&noisy, t), (5, 8, 10, 4));
        // A given colour: trimming red off keeps everything (the corner is white content).
        let red = Trim {
            color: Some([200, 10, 10]),
            ..t
        };
        assert_eq!(trim_region(&b, red), (0, 0, 40, 30));
        // All background: nothing is cut. One pixel: itself.
        assert_eq!(trim_region(&solid(7, 3, &[9, 9, 9]), t), (0, 0, 7, 3));
        assert_eq!(trim_region(&solid(1, 1, &[9, 9, 9]), t), (0, 0, 1, 1));
        // Transparent margins of an RGBA image.
        let mut rgba = solid(10, 10, &[0, 0, 0, 0]);
        let i = ((4 * 10 + 6) * 4) as usize;
        rgba.data[i..i + 4].copy_from_slice(&[1, 2, 3, 255]);
        assert_eq!(trim_region(&rgba, t), (6, 4, 1, 1));
        let kept = cut(&b, (5, 8, 10, 4));
        assert_eq!((kept.width, kept.height), (10, 4));
        assert!(kept.data.chunks_exact(3).all(|p| p == [200, 10, 10]));
    }

    #[test]
    fn pixelate_makes_tiles_of_their_mean_and_keeps_partial_tiles() {
        // 5x1 grey ramp, blocks of 2: [0,10 | 20,30 | 40] -> [5,5 | 25,25 | 40].
        let mut b = Bitmap {
            width: 5,
            height: 1,
            channels: 1,
            data: vec![0, 10, 20, 30, 40],
        };
        pixelate(&mut b, 2);
        assert_eq!(b.data, [5, 5, 25, 25, 40]);
        // A transparent pixel adds no colour to its tile.
        let mut a = Bitmap {
            width: 2,
            height: 1,
            channels: 4,
            data: vec![200, 0, 0, 255, 0, 255, 0, 0],
        };
        pixelate(&mut a, 2);
        assert_eq!(&a.data[..4], &a.data[4..]);
        assert!(a.data[0] >= 199 && a.data[1] == 0, "{:?}", a.data);
        assert_eq!(a.data[3], 128);
        // Blocks of 1 (or larger than the image) are well defined.
        let mut one = solid(3, 3, &[1, 2, 3]);
        pixelate(&mut one, 1);
        assert!(one.data.chunks(3).all(|p| p == [1, 2, 3]));
        pixelate(&mut one, 1024);
        assert!(one.data.chunks(3).all(|p| p == [1, 2, 3]));
    }

    #[test]
    fn blur_keeps_flat_areas_and_softens_edges() {
        let mut flat = solid(20, 10, &[10, 200, 30]);
        blur(&mut flat, 3.0);
        assert!(flat.data.chunks(3).all(|p| p == [10, 200, 30]));

        // A hard vertical edge gets intermediate values after blurring.
        let mut edge = solid(20, 4, &[0, 0, 0]);
        for y in 0..4 {
            for x in 10..20 {
                let i = (y * 20 + x) * 3;
                edge.data[i..i + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let before = edge.clone();
        blur(&mut edge, 2.0);
        let mid = edge.data[(2 * 20 + 10) * 3];
        assert!(mid > 60 && mid < 255, "{mid}");
        sharpen(&mut edge, 1.0);
        assert_ne!(edge.data, before.data);
    }

    #[test]
    fn blur_does_not_darken_transparent_edges() {
        // Opaque red next to fully transparent black: premultiplied blur keeps the red pure.
        let mut b = solid(10, 1, &[0, 0, 0, 0]);
        for x in 0..5 {
            b.data[x * 4..x * 4 + 4].copy_from_slice(&[255, 0, 0, 255]);
        }
        blur(&mut b, 1.5);
        for px in b.data.chunks(4).filter(|p| p[3] > 10) {
            assert!(px[0] >= 250, "dark fringe: {px:?}");
        }
    }

    #[test]
    fn filters() {
        let mut g = solid(1, 1, &[255, 0, 0]);
        filter(&mut g, Filter::Grayscale);
        assert_eq!(g.data, vec![54, 54, 54]);
        let mut s = solid(1, 1, &[100, 100, 100]);
        filter(&mut s, Filter::Sepia);
        assert!(s.data[0] > s.data[1] && s.data[1] > s.data[2]);
    }

    #[test]
    fn place_and_composite() {
        let src = solid(2, 2, &[9, 9, 9]);
        let out = place(&src, 4, 3, 1, 1, Fill::Color([1, 2, 3]));
        assert_eq!((out.width, out.height, out.channels), (4, 3, 3));
        assert_eq!(&out.data[0..3], &[1, 2, 3]);
        assert_eq!(&out.data[(4 + 1) * 3..(4 + 1) * 3 + 3], &[9, 9, 9]);
        let t = place(&src, 3, 3, 0, 0, Fill::Transparent);
        assert_eq!(t.channels, 4);
        assert_eq!(t.data[3], 255);
        assert_eq!(t.data[(3 * 3 - 1) * 4 + 3], 0);

        let mut dst = solid(3, 3, &[0, 0, 0]);
        let mark = solid(2, 2, &[255, 255, 255, 255]);
        composite(&mut dst, &mark, 2, -1, 0.5);
        assert_eq!(&dst.data[2 * 3..2 * 3 + 3], &[128, 128, 128]); // (2,0) covered
        assert_eq!(&dst.data[0..3], &[0, 0, 0]);
        assert_eq!(&dst.data[(3 + 2) * 3..(3 + 2) * 3 + 3], &[0, 0, 0]); // (2,1) not covered
        // Over transparent pixels the mark keeps its colour at its own opacity.
        let mut clear = solid(2, 2, &[0, 0, 0, 0]);
        composite(&mut clear, &mark, 0, 0, 0.5);
        assert_eq!(&clear.data[0..4], &[255, 255, 255, 128]);
    }

    #[test]
    fn flatten_blends_with_the_background() {
        let b = Bitmap {
            width: 3,
            height: 1,
            channels: 4,
            data: vec![0, 0, 0, 0, 0, 0, 0, 255, 100, 100, 100, 128],
        };
        let f = flatten(&b, [255, 255, 255]);
        assert_eq!(&f.data[0..3], &[255, 255, 255]);
        assert_eq!(&f.data[3..6], &[0, 0, 0]);
        assert!((176..=178).contains(&f.data[6]));
        let f = flatten(&b, [0, 0, 255]);
        assert_eq!(&f.data[0..3], &[0, 0, 255]);
    }
}
