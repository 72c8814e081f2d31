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
}

impl Geometry {
    /// True when the plan is the identity (no crop, no scale).
    pub fn is_identity(&self, width: u32, height: u32) -> bool {
        self.out == (width, height) && self.crop == (0.0, 0.0, f64::from(width), f64::from(height))
    }
}

/// Plans the resize of a `sw`×`sh` (oriented) source for `spec`.
pub fn plan(sw: u32, sh: u32, spec: &TransformSpec) -> Geometry {
    let full = (0.0, 0.0, f64::from(sw), f64::from(sh));
    let (tw, th) = spec.target_box();
    if tw == 0 && th == 0 {
        return Geometry {
            crop: full,
            out: (sw, sh),
        };
    }
    let (swf, shf, twf, thf) = (f64::from(sw), f64::from(sh), f64::from(tw), f64::from(th));
    let one_side = tw == 0 || th == 0;
    let kind = match spec.resizing_type {
        _ if one_side => ResizingType::Fit,
        ResizingType::Auto if (sw >= sh) == (tw >= th) => ResizingType::Fill,
        ResizingType::Auto => ResizingType::Fit,
        other => other,
    };
    let clamp = |scale: f64| if spec.enlarge { scale } else { scale.min(1.0) };
    match kind {
        ResizingType::Force => {
            let (w, h) = if spec.enlarge {
                (tw, th)
            } else {
                (tw.min(sw), th.min(sh))
            };
            Geometry {
                crop: full,
                out: (w.max(1), h.max(1)),
            }
        }
        ResizingType::Fill | ResizingType::FillDown => {
            let scale = clamp((twf / swf).max(thf / shf));
            let (scaled_w, scaled_h) = (swf * scale, shf * scale);
            let (cw, ch) = if kind == ResizingType::FillDown && (scaled_w < twf || scaled_h < thf) {
                // Source too small to fill: keep the requested aspect ratio at a smaller size.
                let aspect = twf / thf;
                if scaled_w / scaled_h > aspect {
                    (scaled_h * aspect, scaled_h)
                } else {
                    (scaled_w, scaled_w / aspect)
                }
            } else {
                (twf.min(scaled_w), thf.min(scaled_h))
            };
            let out = (round_dim(cw), round_dim(ch));
            let (cx, cy) = anchor(spec.gravity, scaled_w, scaled_h, cw, ch);
            Geometry {
                crop: (cx / scale, cy / scale, cw / scale, ch / scale),
                out,
            }
        }
        // Fit (and Auto resolved to Fit).
        _ => {
            let scale = clamp(if tw == 0 {
                thf / shf
            } else if th == 0 {
                twf / swf
            } else {
                (twf / swf).min(thf / shf)
            });
            Geometry {
                crop: full,
                out: (round_dim(swf * scale), round_dim(shf * scale)),
            }
        }
    }
}

fn round_dim(v: f64) -> u32 {
    // Dimensions are bounded by the source and the configured maximum, far below u32::MAX.
    (v.round() as u32).max(1)
}

/// Top-left corner of a `cw`×`ch` crop inside a `w`×`h` image.
pub(super) fn anchor(g: Gravity, w: f64, h: f64, cw: f64, ch: f64) -> (f64, f64) {
    let (fx, fy) = ((w - cw).max(0.0), (h - ch).max(0.0));
    match g {
        // Smart gravity starts centred; the pipeline moves the window once pixels exist.
        Gravity::Center | Gravity::Smart => (fx / 2.0, fy / 2.0),
        Gravity::North => (fx / 2.0, 0.0),
        Gravity::South => (fx / 2.0, fy),
        Gravity::East => (fx, fy / 2.0),
        Gravity::West => (0.0, fy / 2.0),
        Gravity::NorthEast => (fx, 0.0),
        Gravity::NorthWest => (0.0, 0.0),
        Gravity::SouthEast => (fx, fy),
        Gravity::SouthWest => (0.0, fy),
        Gravity::FocusPoint { x, y } => {
            let px = f64::from(x) / 10_000.0 * w - cw / 2.0;
            let py = f64::from(y) / 10_000.0 * h - ch / 2.0;
            (px.clamp(0.0, fx), py.clamp(0.0, fy))
        }
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
            ((50, 50), Force, (100, 500), false, (50, 50)),
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
