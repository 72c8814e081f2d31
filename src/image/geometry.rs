//! What to cut and how big to make it — imgproxy's resizing semantics as pure arithmetic.
//!
//! Works in *oriented* coordinates (as the viewer sees the image); the pipeline maps the crop
//! back to the stored pixel grid so that orientation is applied to the small result, never to
//! the full-size source.

use crate::options::{Gravity, ResizingType, TransformSpec};

/// A resize plan: crop `crop` (x, y, w, h in source pixels, fractional) and scale it to `out`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    pub crop: (f64, f64, f64, f64),
    pub out: (u32, u32),
    /// The box `ex` extends to, device pixels (imgproxy's TargetWidth/Height: CSS size ×
    /// `dpr_scale` × zoom); 0 keeps that side.
    pub target: (u32, u32),
    /// What CSS sizes (padding, offsets) are multiplied by: the `dpr`, less when the source is
    /// too small to honour it without enlarging (imgproxy's DprScale).
    pub dpr_scale: f64,
}

impl Geometry {
    /// True when the plan is the identity (no crop, no scale).
    pub fn is_identity(&self, width: u32, height: u32) -> bool {
        self.out == (width, height) && self.crop == (0.0, 0.0, f64::from(width), f64::from(height))
    }

    /// The canvas `exar` extends `frame` (the result, possibly extended by `ex`) to: one side
    /// grown so the result has the requested box's aspect ratio (imgproxy's calcSizes: from
    /// the un-extended result); `frame` itself when `exar` is off or does not apply.
    pub fn aspect_frame(&self, spec: &TransformSpec, frame: (u32, u32)) -> (u32, u32) {
        let (tw, th) = self.target;
        if spec.extend_aspect.is_none() || tw == 0 || th == 0 {
            return frame;
        }
        let (ow, oh) = (f64::from(self.out.0), f64::from(self.out.1));
        let (twf, thf) = (f64::from(tw), f64::from(th));
        let (dw, dh) = (twf / ow, thf / oh);
        let (w, h) = if dh > dw {
            (self.out.0, round_dim(ow * thf / twf))
        } else if dw > dh {
            (round_dim(oh * twf / thf), self.out.1)
        } else {
            return frame;
        };
        (frame.0.max(w), frame.1.max(h))
    }
}

/// Plans the resize of a `sw`×`sh` (oriented, already `c:`-cropped) source for `spec`, as
/// imgproxy's `calcScale` and `calcSizes` do: a shrink per axis from the box and resizing
/// type, divided by the zoom, clamped against enlarging (which also lowers the dpr that can be
/// honoured), raised by `mw`/`mh` (which may enlarge), then divided by the dpr; the scaled
/// image is cropped to the target box by the gravity and its offsets (`fill`, and `fit` with
/// `mw`/`mh` overflow).
pub fn plan(sw: u32, sh: u32, spec: &TransformSpec) -> Geometry {
    let (srcw, srch) = (f64::from(sw.max(1)), f64::from(sh.max(1)));
    let (w, h) = (f64::from(spec.width), f64::from(spec.height));
    let (zx, zy) = spec.zoom();
    let dst_w = if spec.width == 0 { srcw } else { w };
    let dst_h = if spec.height == 0 { srch } else { h };
    let mut wshrink = if dst_w == srcw { 1.0 } else { srcw / dst_w };
    let mut hshrink = if dst_h == srch { 1.0 } else { srch / dst_h };
    if wshrink != 1.0 || hshrink != 1.0 {
        let kind = match spec.resizing_type {
            ResizingType::Auto if (srcw >= srch) == (dst_w >= dst_h) => ResizingType::Fill,
            ResizingType::Auto => ResizingType::Fit,
            other => other,
        };
        let force = kind == ResizingType::Force;
        if spec.width == 0 && !force {
            wshrink = hshrink;
        } else if spec.height == 0 && !force {
            hshrink = wshrink;
        } else if kind == ResizingType::Fit {
            wshrink = wshrink.max(hshrink);
            hshrink = wshrink;
        } else if matches!(kind, ResizingType::Fill | ResizingType::FillDown) {
            wshrink = wshrink.min(hshrink);
            hshrink = wshrink;
        }
    }
    wshrink /= zx;
    hshrink /= zy;
    let mut dpr_scale = f64::from(spec.dpr_milli) / 1000.0;
    if !spec.enlarge {
        let min_shrink = wshrink.min(hshrink);
        if min_shrink < 1.0 {
            wshrink /= min_shrink;
            hshrink /= min_shrink;
            if spec.extend.is_none() {
                dpr_scale /= min_shrink;
            }
        }
        dpr_scale = dpr_scale.min(wshrink.min(hshrink));
    }
    if spec.min_width > 0 {
        let ms = srcw / f64::from(spec.min_width);
        if ms < wshrink {
            hshrink /= wshrink / ms;
            wshrink = ms;
        }
    }
    if spec.min_height > 0 {
        let ms = srch / f64::from(spec.min_height);
        if ms < hshrink {
            wshrink /= hshrink / ms;
            hshrink = ms;
        }
    }
    wshrink = (wshrink / dpr_scale).min(srcw);
    hshrink = (hshrink / dpr_scale).min(srch);
    let scaled = (round_dim(srcw / wshrink), round_dim(srch / hshrink));
    let target = (
        round_zero(w * dpr_scale * zx),
        round_zero(h * dpr_scale * zy),
    );
    let result_crop = result_crop(spec, scaled, target);
    crop_to_result(spec, (srcw, srch), scaled, result_crop, target, dpr_scale)
}

/// imgproxy's ResultCropWidth/Height: the target box, or for `fill-down` without enlarging a
/// smaller box of the target's aspect ratio when the scaled image cannot fill it.
fn result_crop(spec: &TransformSpec, scaled: (u32, u32), target: (u32, u32)) -> (u32, u32) {
    if spec.resizing_type != ResizingType::FillDown || spec.enlarge {
        return target;
    }
    let (sw, sh) = (f64::from(scaled.0), f64::from(scaled.1));
    let (tw, th) = (f64::from(target.0), f64::from(target.1));
    let (dw, dh) = (tw / sw, th / sh);
    if dw > dh && dw > 1.0 {
        (scaled.0, round_zero(sw * th / tw))
    } else if dh > dw && dh > 1.0 {
        (round_zero(sh * tw / th), scaled.1)
    } else {
        target
    }
}

/// The result crop of the scaled image (a 0 side or one larger than the image keeps the
/// image's), placed by the main gravity and its offsets (× `dpr_scale`), mapped back to source
/// coordinates.
fn crop_to_result(
    spec: &TransformSpec,
    (srcw, srch): (f64, f64),
    scaled: (u32, u32),
    (rw, rh): (u32, u32),
    target: (u32, u32),
    dpr_scale: f64,
) -> Geometry {
    let cw = if rw == 0 { scaled.0 } else { rw.min(scaled.0) };
    let ch = if rh == 0 { scaled.1 } else { rh.min(scaled.1) };
    let (sx, sy) = (f64::from(scaled.0) / srcw, f64::from(scaled.1) / srch);
    let (x, y) = place(
        spec.gravity,
        spec.gravity_offset,
        (f64::from(scaled.0), f64::from(scaled.1)),
        (f64::from(cw), f64::from(ch)),
        dpr_scale,
        false,
    );
    Geometry {
        crop: (x / sx, y / sy, f64::from(cw) / sx, f64::from(ch) / sy),
        out: (cw, ch),
        target,
        dpr_scale,
    }
}

fn round_dim(v: f64) -> u32 {
    // Dimensions are bounded by the source and the configured maximum, far below u32::MAX.
    (v.round() as u32).max(1)
}

/// imgproxy's `Scale`: rounded, 0 stays 0.
fn round_zero(v: f64) -> u32 {
    v.round().max(0.0) as u32
}

/// One offset component in pixels of a `outer`-sized space: thousandths of pixels × `scale`
/// from 1 up, a fraction of `outer` below (imgproxy's relative values).
pub(super) fn offset_px(milli: i32, outer: f64, scale: f64) -> f64 {
    let v = f64::from(milli) / 1000.0;
    if milli.abs() >= 1000 {
        (v * scale).round()
    } else {
        (v * outer).round()
    }
}

/// Top-left corner of an `inner`-sized box inside `outer` under gravity `g` with `offset`
/// (imgproxy's calcPosition): offsets push inwards from the anchored edge (`no`: +y down,
/// `ea`: +x left; free axes and `ce`: +x right, +y down). Clamped inside `outer` unless
/// `overflow` (watermarks may hang off the edge). Centring is exact (sub-pixel), where
/// imgproxy rounds to whole pixels.
pub(super) fn place(
    g: Gravity,
    offset: [i32; 2],
    (w, h): (f64, f64),
    (cw, ch): (f64, f64),
    scale: f64,
    overflow: bool,
) -> (f64, f64) {
    let (fx, fy) = (w - cw, h - ch);
    let (ox, oy) = (
        offset_px(offset[0], w, scale),
        offset_px(offset[1], h, scale),
    );
    let (x, y) = match g {
        // Smart gravity starts centred; the pipeline moves the window once pixels exist.
        Gravity::Center | Gravity::Smart => (fx / 2.0 + ox, fy / 2.0 + oy),
        Gravity::North => (fx / 2.0 + ox, oy),
        Gravity::South => (fx / 2.0 + ox, fy - oy),
        Gravity::East => (fx - ox, fy / 2.0 + oy),
        Gravity::West => (ox, fy / 2.0 + oy),
        Gravity::NorthEast => (fx - ox, oy),
        Gravity::NorthWest => (ox, oy),
        Gravity::SouthEast => (fx - ox, fy - oy),
        Gravity::SouthWest => (ox, fy - oy),
        Gravity::FocusPoint { x, y } => (
            f64::from(x) / 10_000.0 * w - cw / 2.0,
            f64::from(y) / 10_000.0 * h - ch / 2.0,
        ),
    };
    if overflow {
        (x.clamp(1.0 - cw, w - 1.0), y.clamp(1.0 - ch, h - 1.0))
    } else {
        (x.clamp(0.0, fx.max(0.0)), y.clamp(0.0, fy.max(0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rt: ResizingType, w: u32, h: u32, enlarge: bool) -> TransformSpec {
        TransformSpec {
            resizing_type: rt,
            width: w,
            height: h,
            enlarge,
            ..TransformSpec::default()
        }
    }

    #[test]
    fn table() {
        use ResizingType::*;
        // (source, type, box, enlarge) → out
        let cases = [
            ((4000, 3000), Fit, (800, 0), false, (800, 600)),
            ((4000, 3000), Fit, (0, 300), false, (400, 300)),
            ((4000, 3000), Fit, (800, 800), false, (800, 600)),
            ((4000, 3000), Fit, (8000, 8000), false, (4000, 3000)),
            ((400, 300), Fit, (800, 800), true, (800, 600)),
            ((4000, 3000), Fill, (300, 300), false, (300, 300)),
            ((4000, 3000), Fill, (300, 400), false, (300, 400)),
            ((200, 100), Fill, (300, 300), false, (200, 100)),
            ((200, 100), FillDown, (300, 300), false, (100, 100)),
            ((200, 100), Fill, (300, 300), true, (300, 300)),
            ((4000, 3000), Force, (100, 500), false, (100, 500)),
            // imgproxy: without enlarging, force keeps the box's shape at the largest scale
            // that does not enlarge either side.
            ((50, 50), Force, (100, 500), false, (10, 50)),
            ((4000, 3000), Auto, (400, 300), false, (400, 300)),
            ((4000, 3000), Auto, (300, 400), false, (300, 225)),
            ((4000, 3000), Fill, (300, 0), false, (300, 225)),
            ((3, 1), Fit, (1, 0), false, (1, 1)),
            ((4000, 3000), Fit, (0, 0), false, (4000, 3000)),
        ];
        for (src, rt, bx, el, out) in cases {
            let g = plan(src.0, src.1, &spec(rt, bx.0, bx.1, el));
            assert_eq!(g.out, out, "{src:?} {rt:?} {bx:?} el={el}");
        }
    }

    #[test]
    fn fill_crops_by_gravity() {
        let mut s = spec(ResizingType::Fill, 300, 300, false);
        // 4000x3000 → scale 0.1 → 400x300 scaled; 100 px of slack horizontally = 1000 source px.
        let g = plan(4000, 3000, &s);
        assert_eq!(g.crop, (500.0, 0.0, 3000.0, 3000.0));
        s.gravity = Gravity::West;
        assert_eq!(plan(4000, 3000, &s).crop.0, 0.0);
        s.gravity = Gravity::East;
        assert_eq!(plan(4000, 3000, &s).crop.0, 1000.0);
        s.gravity = Gravity::FocusPoint { x: 10_000, y: 0 };
        assert_eq!(plan(4000, 3000, &s).crop.0, 1000.0);
        s.gravity = Gravity::FocusPoint { x: 5000, y: 5000 };
        assert_eq!(plan(4000, 3000, &s).crop.0, 500.0);
    }

    use crate::image::pipeline::tests::spec_of as parsed;

    /// imgproxy's calcScale/calcSizes, case by case (worked through its Go code).
    #[test]
    fn imgproxy_min_size_zoom_and_dpr() {
        let cases = [
            // Fit into 300×300 is 300×225; mh:300 raises it to 400×300, then the box crops
            // the overflow to 300×300 ("cropped according to width").
            ("rs:fit:300:300/mh:300", (4000, 3000), (300, 300)),
            ("rs:fit:300:0/mh:300", (4000, 3000), (300, 300)),
            ("h:100/mw:800", (4000, 3000), (800, 100)),
            // min sizes may enlarge even without el (and a width still crops).
            ("mw:400", (200, 100), (400, 200)),
            ("w:100/mw:400", (200, 100), (100, 200)),
            // Zoom multiplies the result (and may stretch it); no enlarging past the source.
            ("w:400/z:2", (4000, 3000), (800, 600)),
            ("w:400/z:2:1", (4000, 3000), (800, 300)),
            ("w:400/z:20", (4000, 3000), (4000, 3000)),
            // dpr on a source too small to honour it: capped at the source size.
            ("w:400/dpr:2", (600, 450), (600, 450)),
            ("w:400/dpr:2", (4000, 3000), (800, 600)),
        ];
        for (path, (sw, sh), out) in cases {
            assert_eq!(plan(sw, sh, &parsed(path)).out, out, "{path} on {sw}x{sh}");
        }
        // The dpr that could be honoured is what padding and offsets scale by.
        assert_eq!(plan(600, 450, &parsed("w:400/dpr:2")).dpr_scale, 1.5);
        assert_eq!(plan(4000, 3000, &parsed("w:400/dpr:2")).dpr_scale, 2.0);
        // With ex, the box is kept in CSS pixels × the honoured dpr.
        let g = plan(300, 200, &parsed("rs:fit:400:400:0:1/dpr:2"));
        assert_eq!((g.out, g.target), ((300, 200), (400, 400)));
    }

    #[test]
    fn gravity_offsets_push_inwards_and_relative_values_are_fractions() {
        // Fill 4000×3000 into 300×300: scaled 400×300, 100 px of slack = 1000 source px.
        let x = |path: &str| plan(4000, 3000, &parsed(path)).crop.0;
        assert_eq!(x("rs:fill:300:300/g:we:20:0"), 200.0); // 20 px in from the west
        assert_eq!(x("rs:fill:300:300/g:ea:20:0"), 800.0); // 20 px in from the east
        assert_eq!(x("rs:fill:300:300/g:ce:-30:0"), 200.0); // centre moved left
        assert_eq!(x("rs:fill:300:300/g:we:0.1:0"), 400.0); // 0.1 × 400 = 40 px
        assert_eq!(x("rs:fill:300:300/g:we:2000:0"), 1000.0); // clamped inside
        assert_eq!(x("rs:fill:300:300/g:ea:2048:0"), 0.0);
        // Offsets are CSS pixels: × dpr.
        assert_eq!(x("rs:fill:150:150/dpr:2/g:we:10:0"), 200.0);
        // Vertical, with north: +y moves down.
        let y = plan(3000, 4000, &parsed("rs:fill:300:300/g:no:0:20"))
            .crop
            .1;
        assert_eq!(y, 200.0);
    }

    #[test]
    fn extend_aspect_ratio_grows_one_side() {
        // Fit 4000×3000 into 400×400 → 400×300; exar makes it 400×400 (the box's 1:1).
        let s = parsed("rs:fit:400:400/exar:1");
        let g = plan(4000, 3000, &s);
        assert_eq!(g.aspect_frame(&s, g.out), (400, 400));
        // Into 800×400 (2:1): 533×400 → width grows to 800.
        let s = parsed("rs:fit:800:400/exar:1");
        let g = plan(4000, 3000, &s);
        assert_eq!((g.out, g.aspect_frame(&s, g.out)), ((533, 400), (800, 400)));
        // Without both sides, or off: unchanged.
        let s = parsed("w:400/exar:1");
        let g = plan(4000, 3000, &s);
        assert_eq!(g.aspect_frame(&s, g.out), g.out);
    }

    #[test]
    fn dpr_scales_the_box() {
        let mut s = spec(ResizingType::Fit, 400, 0, false);
        s.dpr_milli = 2000;
        assert_eq!(plan(4000, 3000, &s).out, (800, 600));
    }

    #[test]
    fn identity() {
        let g = plan(10, 20, &TransformSpec::default());
        assert!(g.is_identity(10, 20));
        assert!(!plan(10, 20, &spec(ResizingType::Fit, 5, 0, false)).is_identity(10, 20));
    }
}
