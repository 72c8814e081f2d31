//! The transform pipeline: probe → limits → plan → decode (shrink-on-load) → smart crop →
//! colour → resize → orient → effects → canvas → watermark → flatten → encode.
//!
//! CPU-bound and synchronous by design: callers run it on the blocking pool.

use fast_image_resize as fir;

use super::effects::{self, Fill};
use super::encode::{EncodeSettings, encode};
use super::geometry::plan;
use super::metadata::{self, Embed};
use super::probe::probe;
use super::{
    Bitmap, ImageError, ImageFormat, ImageLimits, Probe, decode, icc, orient, smart, turbo,
};
use crate::options::{Gravity, OutputFormat, TransformSpec};

/// An encoded result.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// Encodes it took: 1, more with `mb` (at most [`MAX_BYTES_ROUNDS`]).
    pub encodes: u32,
    pub format: OutputFormat,
    pub width: u32,
    pub height: u32,
}

/// Most encodes one `mb` result takes (from quality 100, ×0.75 per round reaches 10 in 9).
pub const MAX_BYTES_ROUNDS: u32 = 10;

/// Most encodes of a whole animation one `mb` result takes: each pass decodes and renders
/// every frame again.
pub const MAX_ANIMATED_BYTES_ROUNDS: u32 = 3;

/// Result side of a still transform, bytes per result pixel: the resized bitmap (≤ 4), a
/// canvas or flattening copy (≤ 4) and the encoder's working planes (libwebp's ARGB and YUV
/// copies, the PNG filter rows); `tests/bounds.rs` measured 25.5 for a 1 MP RGBA PNG enlarged
/// to a 36 MP WebP at method 2 (before this term, such a job reserved 24 MiB and peaked at 900)
/// and 30.5 at method 4, the default since issue 20 (its analysis keeps more per pixel).
pub const STILL_RESULT_BYTES_PER_PIXEL: u64 = 32;

/// Source side of an animated transform, bytes per canvas pixel: the canvas (4), a GIF's
/// saved canvas for "restore to previous" or image-webp's own canvas (4), the decoder's frame
/// buffer (≤ 4 plus a lossy frame's YUV planes) and the resizer's premultiplied copy (4);
/// `tests/bounds.rs` measured 20.5 for a 30-frame 2000² animated WebP.
pub const ANIMATED_SOURCE_BYTES_PER_PIXEL: u64 = 22;

/// Result side of an animated transform, bytes per result pixel: the frame and its effects'
/// copies, and libwebp's animation encoder (its current, previous and disposed canvases and
/// candidate sub-frames); measured by `tests/bounds.rs`.
pub const ANIMATED_RESULT_BYTES_PER_PIXEL: u64 = 48;

/// Largest AVIF result (pixels): rav1e is single-threaded here and slow.
pub const MAX_AVIF_PIXELS: u64 = 16_000_000;

/// Which JPEG decoder renders transforms (uploads are always validated by zune-jpeg).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JpegDecoder {
    /// libjpeg-turbo with DCT-domain shrink-on-load (fast; C).
    Turbo,
    /// zune-jpeg at full size (memory-safe Rust; ~2× slower on large downscales).
    Zune,
}

/// The engine: limits, encoder settings and the configured watermark. Immutable and shared.
#[derive(Debug, Clone)]
pub struct Engine {
    pub limits: ImageLimits,
    pub encode: EncodeSettings,
    pub jpeg_decoder: JpegDecoder,
    /// The `wm:` image, RGBA.
    pub watermark: Option<Bitmap>,
    /// What `sm:0` may keep (`transform.allow_keep_metadata`, `transform.keep_gps`).
    pub metadata: MetadataPolicy,
    /// Animated sources give animated results in formats that animate (`transform.animate`);
    /// off, or with `da:1`, the first frame.
    pub animate: bool,
}

/// The operator's metadata rules for `sm:0` (see [`super::metadata`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetadataPolicy {
    pub allow_keep: bool,
    pub keep_gps: bool,
}

/// Checks an upload completely: known format, declared pixel count within limits, and a full
/// decode that succeeds (of every frame of an animation). Returns the probe (format, dimensions).
pub fn validate_upload(bytes: &[u8], limits: &ImageLimits) -> Result<Probe, ImageError> {
    contained(|| {
        let p = probe(bytes)?;
        limits.check_source(p.width, p.height)?;
        limits.check_frames(bytes, &p)?;
        decode(bytes, &p)?;
        if super::frame_count(bytes, p.format, 2) > 1 {
            super::decode::check_all_frames(bytes, &p)?;
        }
        Ok(p)
    })
}

/// Runs engine work so that a panic inside a codec (a bug in third-party parsing code that a
/// hostile file reaches) is an `invalid_image` answer for that one input, not a 500 with a
/// backtrace. The engine holds no state a panic could leave half-updated: every call works on
/// its own buffers, and the shared [`Engine`] is immutable.
pub(super) fn contained<T>(f: impl FnOnce() -> Result<T, ImageError>) -> Result<T, ImageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        CAUGHT_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(ImageError::Corrupt(
            "the decoder failed on malformed data".into(),
        ))
    })
}

static CAUGHT_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Panics [`contained`] has turned into `invalid_image` since the process started. Each one
/// is a codec bug a hostile file reached: the fuzz targets fail on any increase.
pub fn caught_panics() -> u64 {
    CAUGHT_PANICS.load(std::sync::atomic::Ordering::Relaxed)
}

impl Engine {
    pub fn new(limits: ImageLimits) -> Engine {
        Engine {
            limits,
            encode: EncodeSettings::default(),
            jpeg_decoder: JpegDecoder::Turbo,
            watermark: None,
            metadata: MetadataPolicy::default(),
            animate: true,
        }
    }

    /// Peak memory to reserve for this transform on the CPU pool: [`super::memory_cost`] of
    /// the source plus the result side ([`STILL_RESULT_BYTES_PER_PIXEL`] of the planned result
    /// canvas: an enlargement's result can dwarf its source); for an animation, the source canvas and its per-frame copies
    /// ([`ANIMATED_SOURCE_BYTES_PER_PIXEL`]) plus the result side — a result frame, its
    /// effects and the encoder's canvases ([`ANIMATED_RESULT_BYTES_PER_PIXEL`] of the result
    /// canvas). 0 for bytes that do not probe (refused at once, nothing to reserve).
    pub fn memory_estimate(&self, bytes: &[u8], spec: &TransformSpec, format: OutputFormat) -> u64 {
        let Ok(p) = probe(bytes) else {
            return 0;
        };
        let result = self
            .plan(p, spec, format)
            .map_or(0, |plan| plan.canvas.0.saturating_mul(plan.canvas.1));
        if !self.animates(bytes, &p, spec, format) {
            return super::memory_cost(&p)
                .saturating_add(result.saturating_mul(STILL_RESULT_BYTES_PER_PIXEL));
        }
        let source = u64::from(p.width) * u64::from(p.height);
        source
            .saturating_mul(ANIMATED_SOURCE_BYTES_PER_PIXEL)
            .saturating_add(result.saturating_mul(ANIMATED_RESULT_BYTES_PER_PIXEL))
            .saturating_add(super::COST_BASE)
    }

    /// Whether this transform renders every frame: animation on, not `da:1`, an output format
    /// that animates, and a source with more than one frame.
    pub fn animates(
        &self,
        bytes: &[u8],
        p: &Probe,
        spec: &TransformSpec,
        format: OutputFormat,
    ) -> bool {
        self.animate
            && !spec.disable_animation
            && format.animates()
            && matches!(p.format, ImageFormat::Gif | ImageFormat::Webp)
            && super::frame_count(bytes, p.format, 2) > 1
    }

    /// Every frame through the same plan, one at a time: decoded onto the source canvas,
    /// cropped (smart gravity looks at the first frame only, so the window does not jump),
    /// resized, coloured, oriented, finished and encoded before the next is decoded. Frames ×
    /// result canvas is bounded like the source (`limits.max_animation_pixels`). `t` (trim) is
    /// not applied to animations, as in imgproxy; results carry no metadata. With `mb`, the
    /// whole animation is encoded again at a lower quality, at most
    /// [`MAX_ANIMATED_BYTES_ROUNDS`] times.
    fn transform_animation(
        &self,
        bytes: &[u8],
        p: Probe,
        spec: &TransformSpec,
        format: OutputFormat,
        mut quality: u8,
    ) -> Result<Encoded, ImageError> {
        let plan = self.plan(p, spec, format)?;
        let frames = super::frame_count(bytes, p.format, self.limits.max_frames);
        let canvas = plan.canvas.0.saturating_mul(plan.canvas.1).max(1);
        if frames.saturating_mul(canvas) > self.limits.max_animation_pixels {
            return Err(ImageError::TooManyFrames {
                limit: self.limits.max_animation_pixels / canvas,
            });
        }
        let profile = icc::extract(bytes, p.format);
        let mut rounds = 0;
        loop {
            let (out, size) =
                self.animate_once(bytes, &plan, spec, format, quality, profile.as_deref())?;
            rounds += 1;
            let next = next_quality(quality, out.len() as u64, spec.max_bytes, format, rounds)
                .filter(|_| rounds < MAX_ANIMATED_BYTES_ROUNDS);
            match next {
                Some(q) => quality = q,
                None => {
                    return Ok(Encoded {
                        bytes: out,
                        encodes: rounds,
                        format,
                        width: size.0,
                        height: size.1,
                    });
                }
            }
        }
    }

    /// One pass of [`Engine::transform_animation`]: the encoded animation and its size.
    fn animate_once(
        &self,
        bytes: &[u8],
        plan: &Plan,
        spec: &TransformSpec,
        format: OutputFormat,
        quality: u8,
        profile: Option<&[u8]>,
    ) -> Result<(Vec<u8>, (u32, u32)), ImageError> {
        let mut frames = super::anim::Frames::open(bytes, &plan.probe)?;
        let plays = frames.plays();
        let mut window = None;
        let mut sink = None;
        let mut size = (0, 0);
        while let Some((frame, delay)) = frames.next_frame()? {
            let w = *window.get_or_insert_with(|| self.window(frame, spec, plan));
            let whole = w == Rect::full(frame.width, frame.height);
            let mut image = if whole && plan.out_stored == (frame.width, frame.height) {
                frame.clone()
            } else {
                resize(frame, w.tuple(), plan.out_stored)?
            };
            if let Some(profile) = profile {
                icc::to_srgb(&mut image, profile);
            }
            let image = orient::apply(plan.orientation, image);
            let image = self.finish_pixels(image, spec, plan, format)?;
            size = (image.width, image.height);
            let sink = match &mut sink {
                Some(s) => s,
                None => sink.insert(super::anim::Sink::new(
                    format,
                    size,
                    plays,
                    quality,
                    &self.encode,
                    self.limits.max_result_bytes,
                )?),
            };
            sink.add(&image, delay)?;
        }
        let sink = sink.ok_or_else(|| ImageError::Corrupt("animation has no frames".into()))?;
        Ok((sink.finish()?, size))
    }

    /// Runs one transform.
    pub fn transform(
        &self,
        bytes: &[u8],
        spec: &TransformSpec,
        format: OutputFormat,
        quality: u8,
    ) -> Result<Encoded, ImageError> {
        contained(|| self.transform_inner(bytes, spec, format, quality))
    }

    /// The steps, in order: [`Engine::plan`] (no pixels yet) → [`Engine::decode_window`] →
    /// [`resize_oriented`] → [`Engine::finish_pixels`] → encode.
    fn transform_inner(
        &self,
        bytes: &[u8],
        spec: &TransformSpec,
        format: OutputFormat,
        quality: u8,
    ) -> Result<Encoded, ImageError> {
        let p = probe(bytes)?;
        self.limits.check_source(p.width, p.height)?;
        self.limits.check_frames(bytes, &p)?;
        if self.animates(bytes, &p, spec, format) {
            return self.transform_animation(bytes, p, spec, format, quality);
        }
        let mut embed = self.metadata_for(bytes, p.format, spec);
        // `eth`: the EXIF thumbnail stands for the source when it gives the same result.
        let (bytes, p) = match self.thumbnail_for(bytes, p, spec, format) {
            Some(thumb) => thumb,
            None => (bytes, p),
        };
        // `t`: trimmed on the full-size decode (no shrink-on-load, as libvips), which then
        // stands for the source: planning sees the trimmed size.
        let (p, trimmed) = match spec.trim {
            Some(t) => {
                let (bitmap, profile) = super::decode::decode_with_icc(bytes, &p)?;
                let region = effects::trim_region(&bitmap, t);
                let bitmap = if region == (0, 0, bitmap.width, bitmap.height) {
                    bitmap
                } else {
                    effects::cut(&bitmap, region)
                };
                let p = Probe {
                    width: bitmap.width,
                    height: bitmap.height,
                    ..p
                };
                (p, Some((bitmap, profile)))
            }
            None => (p, None),
        };
        let plan = self.plan(p, spec, format)?;
        let (bitmap, profile, window) = self.decode_window(bytes, spec, &plan, trimmed)?;
        // `scp:0`: the source's profile goes with its unconverted pixels (AVIF carries none:
        // converted as usual).
        let profile = if !spec.strip_color_profile && format.carries_metadata() {
            embed.icc = profile;
            None
        } else {
            profile
        };
        let image = resize_oriented(bitmap, window, &plan, profile)?;
        let image = self.finish_pixels(image, spec, &plan, format)?;
        let (bytes, encodes) =
            self.encode_within(&image, format, quality, spec.max_bytes, &embed)?;
        Ok(Encoded {
            bytes,
            encodes,
            format,
            width: image.width,
            height: image.height,
        })
    }

    /// Encodes; with `max_bytes` (`mb`), for formats with a quality, lowers the quality until
    /// the result fits, as imgproxy does: each round multiplies it by 0.25, 0.5 or 0.75 as the
    /// result is over 3×, over 1.5× or within 1.5× of the bound, and the round at quality 10 or
    /// below is returned whether it fits or not (the smallest this quality search makes; the
    /// bound is a wish, not a refusal). At most [`MAX_BYTES_ROUNDS`] encodes.
    fn encode_within(
        &self,
        image: &Bitmap,
        format: OutputFormat,
        mut quality: u8,
        max_bytes: u64,
        embed: &Embed,
    ) -> Result<(Vec<u8>, u32), ImageError> {
        let mut rounds = 0;
        loop {
            let bytes = encode(image, format, quality, &self.encode)?;
            let bytes = metadata::embed(
                bytes,
                format,
                embed,
                (image.width, image.height),
                image.channels == 4,
            )?;
            rounds += 1;
            match next_quality(quality, bytes.len() as u64, max_bytes, format, rounds) {
                Some(q) => quality = q,
                None => return self.within_bytes(bytes).map(|b| (b, rounds)),
            }
        }
    }

    /// Refuses a result over `limits.max_result_bytes`.
    fn within_bytes(&self, bytes: Vec<u8>) -> Result<Vec<u8>, ImageError> {
        if bytes.len() as u64 > self.limits.max_result_bytes {
            return Err(ImageError::OutputTooLarge {
                limit: self.limits.max_result_bytes,
            });
        }
        Ok(bytes)
    }

    /// The source metadata a result carries: `sm:0` (where allowed) keeps EXIF and XMP
    /// (scrubbed), `kcr:1` copyright and artist only, otherwise nothing.
    fn metadata_for(&self, bytes: &[u8], format: ImageFormat, spec: &TransformSpec) -> Embed {
        let keep_all = !spec.strip_metadata && self.metadata.allow_keep;
        if !keep_all && !spec.keep_copyright {
            return Embed::default();
        }
        let source = metadata::read(bytes, format);
        if keep_all {
            metadata::kept(source, self.metadata.keep_gps)
        } else {
            metadata::copyright_only(source)
        }
    }

    /// `eth`: a JPEG's EXIF thumbnail (a JPEG itself, same stored orientation) with the
    /// source's aspect ratio (within 1 %: letterboxed thumbnails are not used), when planning
    /// on it gives the same result size and canvas as the source would — large enough, so the
    /// result is the same size, computed from far fewer pixels.
    fn thumbnail_for<'a>(
        &self,
        bytes: &'a [u8],
        p: Probe,
        spec: &TransformSpec,
        format: OutputFormat,
    ) -> Option<(&'a [u8], Probe)> {
        if !spec.enforce_thumbnail || p.format != ImageFormat::Jpeg {
            return None;
        }
        let thumb = metadata::exif_thumbnail(metadata::read(bytes, p.format).exif?)?;
        let tp = probe(thumb)
            .ok()
            .filter(|t| t.format == ImageFormat::Jpeg)?;
        let ratio = |w: u32, h: u32| f64::from(w) / f64::from(h.max(1));
        if (ratio(tp.width, tp.height) / ratio(p.width, p.height) - 1.0).abs() > 0.01 {
            return None;
        }
        let tp = Probe {
            orientation: p.orientation,
            ..tp
        };
        let main = self.plan(p, spec, format).ok()?;
        let small = self.plan(tp, spec, format).ok()?;
        (main.canvas == small.canvas && main.out_stored == small.out_stored).then_some((thumb, tp))
    }

    /// Step 1: everything decided from the header and the spec, before any pixel is decoded:
    /// source limits, the composed orientation, the crop and output size in oriented
    /// coordinates, result and canvas limits, and their mapping to the stored grid.
    fn plan(
        &self,
        p: Probe,
        spec: &TransformSpec,
        format: OutputFormat,
    ) -> Result<Plan, ImageError> {
        let exif = if spec.auto_rotate { p.orientation } else { 1 };
        let o = orient::compose(exif, spec.rotate, spec.flip_horizontal, spec.flip_vertical);
        let (ow, oh) = if o >= 5 {
            (p.height, p.width)
        } else {
            (p.width, p.height)
        };
        let region = crop_region(spec, ow, oh);
        let geometry = plan(region.w as u32, region.h as u32, spec);
        let (tw, th) = geometry.target;
        let mut frame = geometry.out;
        if spec.extend.is_some() {
            frame = (frame.0.max(tw), frame.1.max(th));
        }
        let aspect_frame = geometry.aspect_frame(spec, frame);
        // imgproxy: padding × its DprScale, which is below the dpr when the source is too
        // small to honour it without enlarging.
        let padding = spec.padding.map(|v| {
            (f64::from(v) * geometry.dpr_scale)
                .round()
                .min(f64::from(u32::MAX)) as u32
        });
        let [pt, pr, pb, pl] = padding;
        let canvas = (
            u64::from(aspect_frame.0) + u64::from(pl) + u64::from(pr),
            u64::from(aspect_frame.1) + u64::from(pt) + u64::from(pb),
        );
        self.check_result(geometry.out, canvas, spec, format)?;
        let crop = Rect::from(geometry.crop);
        let crop_oriented = Rect {
            x: region.x + crop.x,
            y: region.y + crop.y,
            ..crop
        };
        let stored = |r: Rect| {
            Rect::from(orient::crop_to_stored(
                o,
                f64::from(p.width),
                f64::from(p.height),
                r.tuple(),
            ))
        };
        Ok(Plan {
            crop_stored: stored(crop_oriented).clamp(p.width, p.height),
            region_stored: stored(region),
            out_stored: orient::size_to_stored(o, geometry.out),
            orientation: o,
            frame,
            aspect_frame,
            dpr_scale: geometry.dpr_scale,
            padding,
            canvas,
            probe: p,
        })
    }

    /// Result and canvas limits, the AVIF size bound, and a watermark to apply.
    fn check_result(
        &self,
        out: (u32, u32),
        (canvas_w, canvas_h): (u64, u64),
        spec: &TransformSpec,
        format: OutputFormat,
    ) -> Result<(), ImageError> {
        self.limits.check_result(out.0, out.1)?;
        effects::check_canvas(
            canvas_w,
            canvas_h,
            self.limits.max_result_pixels,
            self.limits.max_result_dimension,
        )?;
        if format == OutputFormat::Avif && canvas_w * canvas_h > MAX_AVIF_PIXELS {
            // A single-threaded rav1e encode of tens of megapixels takes minutes.
            return Err(ImageError::ResultTooLarge {
                width: canvas_w as u32,
                height: canvas_h as u32,
                limit: MAX_AVIF_PIXELS,
            });
        }
        if spec.watermark.is_some() && self.watermark.is_none() {
            return Err(ImageError::Unsupported(
                "no watermark image is configured".into(),
            ));
        }
        Ok(())
    }

    /// Step 2: decode as small as the plan allows, then place the crop window in the decoded
    /// grid. Smart gravity moves the window to the most detailed position: anywhere in the
    /// image for `c:…:sm` (or `g:sm` without `c:`), inside the `c:` region otherwise.
    fn decode_window(
        &self,
        bytes: &[u8],
        spec: &TransformSpec,
        plan: &Plan,
        decoded: Option<(Bitmap, Option<Vec<u8>>)>,
    ) -> Result<(Bitmap, Option<Vec<u8>>, Rect), ImageError> {
        let p = &plan.probe;
        let (mut bitmap, profile) = match decoded {
            Some(d) => d,
            None => self.decode(bytes, p, plan.crop_stored.tuple(), plan.out_stored)?,
        };
        let window = self.window(&bitmap, spec, plan);
        if bitmap.channels == 4 {
            bitmap = drop_opaque_alpha(bitmap);
        }
        Ok((bitmap, profile, window))
    }

    /// The crop window in `bitmap`, a decode of the whole source (perhaps shrunk on load).
    /// Smart gravity moves it to the most detailed position: anywhere in the image for
    /// `c:…:sm` (or `g:sm` without `c:`), inside the `c:` region otherwise.
    fn window(&self, bitmap: &Bitmap, spec: &TransformSpec, plan: &Plan) -> Rect {
        let p = &plan.probe;
        let (sx, sy) = (
            f64::from(bitmap.width) / f64::from(p.width),
            f64::from(bitmap.height) / f64::from(p.height),
        );
        let mut window = plan
            .crop_stored
            .scaled(sx, sy)
            .clamp(bitmap.width, bitmap.height);
        let crop_gravity = spec.crop.map(|c| c.gravity.unwrap_or(spec.gravity));
        let smart_anywhere = crop_gravity.map_or(spec.gravity, |g| g) == Gravity::Smart;
        if smart_anywhere || spec.gravity == Gravity::Smart {
            let area = if smart_anywhere {
                Rect::full(bitmap.width, bitmap.height)
            } else {
                plan.region_stored.scaled(sx, sy)
            };
            let (x, y) = smart::best_window(
                bitmap,
                area.tuple(),
                window.w,
                window.h,
                (window.x, window.y),
            );
            window = Rect { x, y, ..window }.clamp(bitmap.width, bitmap.height);
        }
        window
    }

    /// Step 4: effects on the output-sized bitmap (filter, blur, sharpen), then the canvas
    /// (extend, padding), the watermark, and alpha flattened for formats or backgrounds that
    /// need it.
    fn finish_pixels(
        &self,
        mut image: Bitmap,
        spec: &TransformSpec,
        plan: &Plan,
        format: OutputFormat,
    ) -> Result<Bitmap, ImageError> {
        if let Some(f) = spec.filter {
            effects::filter(&mut image, f);
        }
        if spec.blur_centi > 0 {
            effects::blur(&mut image, spec.blur_centi as f32 / 100.0);
        }
        if spec.sharpen_centi > 0 {
            effects::sharpen(&mut image, spec.sharpen_centi as f32 / 100.0);
        }
        if spec.pixelate > 1 {
            // Blocks in CSS pixels, like every other size of the URL.
            let block = (u64::from(spec.pixelate) * u64::from(spec.dpr_milli) / 1000).max(1);
            effects::pixelate(&mut image, u32::try_from(block).unwrap_or(u32::MAX));
        }
        let fill = match spec.background {
            Some(c) => Fill::Color(c),
            None if format == OutputFormat::Jpeg => Fill::Color([255, 255, 255]),
            None => Fill::Transparent,
        };
        // `ex` to the box, then `exar` to its aspect ratio.
        for (gravity, offset, (w, h)) in [
            (spec.extend, spec.extend_offset, plan.frame),
            (
                spec.extend_aspect,
                spec.extend_aspect_offset,
                plan.aspect_frame,
            ),
        ] {
            if let Some(g) = gravity
                && (w, h) != (image.width, image.height)
            {
                let inner = (image.width, image.height);
                let (x, y) = effects::anchor_offset(g, offset, (w, h), inner, plan.dpr_scale);
                image = effects::place(&image, w, h, x, y, fill);
            }
        }
        let [pt, _, _, pl] = plan.padding;
        if plan.padding != [0; 4] {
            let (cw, ch) = plan.canvas;
            image = effects::place(&image, cw as u32, ch as u32, pl, pt, fill);
        }
        if let (Some(wm), Some(mark)) = (spec.watermark, &self.watermark) {
            self.apply_watermark(&mut image, mark, wm, plan.dpr_scale)?;
        }
        if image.channels == 4 {
            if let Some(bg) = spec.background {
                image = effects::flatten(&image, bg);
            } else if format == OutputFormat::Jpeg {
                image = effects::flatten(&image, [255, 255, 255]);
            }
        }
        Ok(image)
    }

    /// Decodes at the largest DCT shrink (1/8, 1/4, 1/2) that keeps the crop at least as large
    /// as the output in both directions, so the final Lanczos pass still only ever reduces.
    fn decode(
        &self,
        bytes: &[u8],
        p: &Probe,
        crop: (f64, f64, f64, f64),
        out: (u32, u32),
    ) -> Result<(Bitmap, Option<Vec<u8>>), ImageError> {
        if p.format == ImageFormat::Svg {
            // Vectors are drawn at the size the result needs (a crop drawn at least at the
            // output's scale), within the source limits; the resize then only fine-tunes.
            let scale =
                (f64::from(out.0) / crop.2.max(1e-9)).max(f64::from(out.1) / crop.3.max(1e-9));
            let pixels = f64::from(p.width) * f64::from(p.height) * scale * scale;
            let cap = (self.limits.max_source_pixels as f64 / pixels)
                .sqrt()
                .min(1.0);
            let size = |v: u32| {
                ((f64::from(v) * scale * cap).ceil() as u32)
                    .clamp(1, self.limits.max_source_dimension)
            };
            let bitmap = super::svg::decode(bytes, (size(p.width), size(p.height)))?;
            return Ok((bitmap, None));
        }
        if p.format == ImageFormat::Jpeg && self.jpeg_decoder == JpegDecoder::Turbo {
            let shrink = jpeg_shrink(crop, out);
            // `Ok(None)`: CMYK/YCCK, lossless or 12-bit, which TurboJPEG cannot render here.
            // `Err`: libjpeg-turbo, strict (warnings are errors), refused data that zune-jpeg
            // (strict too) accepted — extraneous bytes before a marker, a short final scan and
            // the like, common in real files. Either way zune-jpeg renders it: it is the decoder
            // that validated the upload, so whatever was accepted renders (issue 15 found
            // 30–40 % of accepted mutated JPEGs unrenderable without this fallback).
            if let Ok(Some(bitmap)) = turbo::decode_scaled(
                bytes,
                shrink,
                self.limits.max_source_pixels,
                (p.width, p.height),
            ) && (bitmap.width, bitmap.height) == turbo::scaled_size(p.width, p.height, shrink)
            {
                return Ok((bitmap, icc::extract(bytes, p.format)));
            }
        }
        super::decode::decode_with_icc(bytes, p)
    }

    /// The watermark (fitted inside `scale` × the result when scaled, its own pixels
    /// otherwise) at its position and offsets (× `dpr_scale`, or fractions of the result),
    /// or with `re` tiled over the result from a tile at the centre, the offsets being the
    /// gaps between tiles (imgproxy).
    fn apply_watermark(
        &self,
        image: &mut Bitmap,
        mark: &Bitmap,
        wm: crate::options::Watermark,
        dpr_scale: f64,
    ) -> Result<(), ImageError> {
        let scaled;
        let mark = if wm.scale_milli > 0 {
            let s = f64::from(wm.scale_milli) / 1000.0;
            let (bw, bh) = (f64::from(image.width) * s, f64::from(image.height) * s);
            let fit = (bw / f64::from(mark.width.max(1))).min(bh / f64::from(mark.height.max(1)));
            let w = (f64::from(mark.width) * fit).round().max(1.0) as u64;
            let h = (f64::from(mark.height) * fit).round().max(1.0) as u64;
            let (w, h) = effects::check_canvas(
                w,
                h,
                self.limits.max_result_pixels,
                self.limits.max_result_dimension,
            )?;
            scaled = resize(
                mark,
                (0.0, 0.0, f64::from(mark.width), f64::from(mark.height)),
                (w, h),
            )?;
            &scaled
        } else {
            mark
        };
        let opacity = f32::from(wm.opacity_milli) / 1000.0;
        if wm.replicate {
            let gap = |milli: i32, outer: u32| {
                super::geometry::offset_px(milli, f64::from(outer), dpr_scale).max(0.0) as u32
            };
            let gaps = (
                gap(wm.x_offset, image.width),
                gap(wm.y_offset, image.height),
            );
            effects::tile(image, mark, gaps, opacity);
            return Ok(());
        }
        let (x, y) = super::geometry::place(
            wm.position,
            [wm.x_offset, wm.y_offset],
            (f64::from(image.width), f64::from(image.height)),
            (f64::from(mark.width), f64::from(mark.height)),
            dpr_scale,
            true,
        );
        effects::composite(image, mark, x.floor() as i64, y.floor() as i64, opacity);
        Ok(())
    }
}

/// `mb`'s next quality after an encode of `size` bytes in round `rounds` (imgproxy's loop: ×0.25,
/// ×0.5 or ×0.75 as the result is over 3×, over 1.5× or within 1.5× of the bound), or `None`
/// when this result is the one: no bound, no quality in the format, it fits, the quality is 10
/// or below, or the rounds ([`MAX_BYTES_ROUNDS`]) are spent.
fn next_quality(
    quality: u8,
    size: u64,
    max_bytes: u64,
    format: OutputFormat,
    rounds: u32,
) -> Option<u8> {
    if max_bytes == 0
        || !format.has_quality()
        || size <= max_bytes
        || quality <= 10
        || rounds >= MAX_BYTES_ROUNDS
    {
        return None;
    }
    let delta = size as f64 / max_bytes as f64;
    let factor = if delta > 3.0 {
        0.25
    } else if delta > 1.5 {
        0.5
    } else {
        0.75
    };
    // imgproxy: max(1, min(q − 1, round(q × factor))).
    let next = (f64::from(quality) * factor).round() as u8;
    Some(next.min(quality - 1).max(1))
}

/// `c:` — the region of the oriented source kept before resizing (whole pixels).
/// Sizes are whole pixels or (below 1) fractions of the source; offsets are source pixels (not
/// × dpr) or fractions, as imgproxy's first crop.
fn crop_region(spec: &TransformSpec, ow: u32, oh: u32) -> Rect {
    match spec.crop {
        None => Rect::full(ow, oh),
        Some(c) => {
            let size = |milli: u32, full: u32| -> u32 {
                match milli {
                    0 => full,
                    1..=999 => ((f64::from(milli) / 1000.0 * f64::from(full)).round() as u32)
                        .clamp(1, full),
                    px => (px / 1000).min(full),
                }
            };
            let (w, h) = (size(c.width, ow), size(c.height, oh));
            let (g, offset) = match c.gravity {
                Some(g) => (g, c.offset),
                None => (spec.gravity, spec.gravity_offset),
            };
            let (x, y) = effects::anchor_offset(g, offset, (ow, oh), (w, h), 1.0);
            Rect {
                x: f64::from(x),
                y: f64::from(y),
                w: f64::from(w),
                h: f64::from(h),
            }
        }
    }
}

/// A rectangle of some pixel grid (oriented, stored or decoded); fractional for the sub-pixel
/// crops resampling takes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Rect {
    fn full(w: u32, h: u32) -> Rect {
        Rect {
            x: 0.0,
            y: 0.0,
            w: f64::from(w),
            h: f64::from(h),
        }
    }

    fn tuple(self) -> (f64, f64, f64, f64) {
        (self.x, self.y, self.w, self.h)
    }

    fn scaled(self, sx: f64, sy: f64) -> Rect {
        Rect {
            x: self.x * sx,
            y: self.y * sy,
            w: self.w * sx,
            h: self.h * sy,
        }
    }

    /// Kept inside a `sw`×`sh` grid. Planning in floating point can overshoot an edge by an
    /// ulp (e.g. 4032.0000000000005 on a 4032-wide image), and the resizer rightly refuses it.
    fn clamp(self, sw: u32, sh: u32) -> Rect {
        let (x, y, w, h) = clamp_crop(self.tuple(), sw, sh);
        Rect { x, y, w, h }
    }
}

impl From<(f64, f64, f64, f64)> for Rect {
    fn from((x, y, w, h): (f64, f64, f64, f64)) -> Rect {
        Rect { x, y, w, h }
    }
}

/// What [`Engine::plan`] decided.
struct Plan {
    probe: Probe,
    /// EXIF orientation composed with `rot`/`fl` (1..=8).
    orientation: u8,
    /// The crop to resample, in the stored (unrotated) grid.
    crop_stored: Rect,
    /// The `c:` region in the stored grid (where smart gravity may look).
    region_stored: Rect,
    /// The resized size in the stored grid (before orienting).
    out_stored: (u32, u32),
    /// The result's size once extended (`ex`), before padding.
    frame: (u32, u32),
    /// The frame once extended to the box's aspect ratio (`exar`).
    aspect_frame: (u32, u32),
    /// What CSS sizes (offsets) are multiplied by ([`super::Geometry::dpr_scale`]).
    dpr_scale: f64,
    /// Padding in device pixels: top, right, bottom, left.
    padding: [u32; 4],
    /// The final canvas: frame plus padding.
    canvas: (u64, u64),
}

/// Step 3: resample the window to the output size in the stored grid, convert colour on that
/// small bitmap (it still has every output pixel), then orient it.
fn resize_oriented(
    bitmap: Bitmap,
    window: Rect,
    plan: &Plan,
    profile: Option<Vec<u8>>,
) -> Result<Bitmap, ImageError> {
    let whole = window == Rect::full(bitmap.width, bitmap.height);
    let mut image = if whole && plan.out_stored == (bitmap.width, bitmap.height) {
        bitmap
    } else {
        resize_owned(bitmap, window.tuple(), plan.out_stored)?
    };
    if let Some(profile) = profile {
        icc::to_srgb(&mut image, &profile);
    }
    Ok(orient::apply(plan.orientation, image))
}

/// The DCT shrink denominator for a crop of the stored image that must yield `out` pixels.
pub fn jpeg_shrink(crop: (f64, f64, f64, f64), out: (u32, u32)) -> u32 {
    let (ow, oh) = (f64::from(out.0.max(1)), f64::from(out.1.max(1)));
    turbo::SHRINKS
        .into_iter()
        .find(|&s| crop.2 / f64::from(s) >= ow && crop.3 / f64::from(s) >= oh)
        .unwrap_or(1)
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
    let data = super::map_pixels(&b.data, 4, |p| [p[0], p[1], p[2]]);
    Bitmap {
        channels: 3,
        data,
        ..b
    }
}

/// The whole of `src` resampled to `size` (Lanczos3; alpha premultiplied around it).
pub(super) fn resize_to(src: Bitmap, size: (u32, u32)) -> Result<Bitmap, ImageError> {
    if (src.width, src.height) == size {
        return Ok(src);
    }
    let crop = (0.0, 0.0, f64::from(src.width), f64::from(src.height));
    resize_owned(src, crop, size)
}

/// A small preview of all of `src` (placeholders): nearest-neighbour to 4× `size`, then a box
/// filter (fast_image_resize's super-sampling) — a quarter of the Lanczos pass's time on a
/// 12 MP photo, and an average is all a placeholder keeps.
pub(super) fn preview(src: &Bitmap, size: (u32, u32)) -> Result<Bitmap, ImageError> {
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::SuperSampling(fir::FilterType::Box, 4));
    resample(src, size, &options)
}

/// [`resize`] of a bitmap the caller no longer needs: RGBA is premultiplied in place, so the
/// resizer does not allocate a premultiplied copy of the whole source (4 B/px: 200 MB for a
/// 50 MP RGBA source), then the small result is un-premultiplied. Same pixels as [`resize`].
fn resize_owned(
    mut src: Bitmap,
    crop: (f64, f64, f64, f64),
    (dw, dh): (u32, u32),
) -> Result<Bitmap, ImageError> {
    if src.channels != 4 {
        return resize(&src, crop, (dw, dh));
    }
    let err = |e: &dyn std::fmt::Display| ImageError::Encode(format!("resize: {e}"));
    let muldiv = fir::MulDiv::default();
    {
        let mut view = fir::images::Image::from_slice_u8(
            src.width,
            src.height,
            &mut src.data,
            fir::PixelType::U8x4,
        )
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
        muldiv
            .multiply_alpha_inplace(&mut view)
            .map_err(|e| err(&e))?;
    }
    let src_view =
        fir::images::ImageRef::new(src.width, src.height, &src.data, fir::PixelType::U8x4)
            .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut dst = fir::images::Image::new(dw, dh, fir::PixelType::U8x4);
    let (x, y, w, h) = crop;
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3))
        .crop(x, y, w, h)
        .use_alpha(false);
    fir::Resizer::new()
        .resize(&src_view, &mut dst, &options)
        .map_err(|e| err(&e))?;
    drop(src);
    muldiv.divide_alpha_inplace(&mut dst).map_err(|e| err(&e))?;
    Ok(Bitmap {
        width: dw,
        height: dh,
        channels: 4,
        data: dst.into_vec(),
    })
}

fn resize(
    src: &Bitmap,
    (x, y, w, h): (f64, f64, f64, f64),
    size: (u32, u32),
) -> Result<Bitmap, ImageError> {
    // Alpha is premultiplied around the convolution by default (no dark fringes).
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3))
        .crop(x, y, w, h);
    resample(src, size, &options)
}

/// `src` (RGB or RGBA) resampled to `size` by fast_image_resize with `options`.
fn resample(
    src: &Bitmap,
    (dw, dh): (u32, u32),
    options: &fir::ResizeOptions,
) -> Result<Bitmap, ImageError> {
    let pixel_type = if src.channels == 4 {
        fir::PixelType::U8x4
    } else {
        fir::PixelType::U8x3
    };
    let src_view = fir::images::ImageRef::new(src.width, src.height, &src.data, pixel_type)
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut dst = fir::images::Image::new(dw, dh, pixel_type);
    fir::Resizer::new()
        .resize(&src_view, &mut dst, options)
        .map_err(|e| ImageError::Encode(format!("resize: {e}")))?;
    Ok(Bitmap {
        width: dw,
        height: dh,
        channels: src.channels,
        data: dst.into_vec(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::options::ResizingType;

    fn transform(
        bytes: &[u8],
        spec: &TransformSpec,
        format: OutputFormat,
        quality: u8,
        limits: &ImageLimits,
    ) -> Result<Encoded, ImageError> {
        Engine::new(*limits).transform(bytes, spec, format, quality)
    }

    fn encode(b: &Bitmap, format: OutputFormat, quality: u8) -> Result<Vec<u8>, ImageError> {
        super::encode(b, format, quality, &EncodeSettings::default())
    }

    const LIMITS: ImageLimits = ImageLimits {
        max_source_pixels: 1_000_000,
        max_source_dimension: 4096,
        max_result_pixels: 1_000_000,
        max_result_dimension: 4096,
        max_frames: 10,
        max_animation_pixels: 200_000_000,
        max_result_bytes: 64 << 20,
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
        // (A scan short by its last few bytes is padded and accepted by zune-jpeg, as libjpeg
        // does with a warning: with Huffman-optimised output the last 10 bytes are such a tail.)
        for cut in [jpeg.len() / 2, jpeg.len() - 40, jpeg.len() - 20, 200] {
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

    /// 64x48 card with four flat quadrants: red (TL), green (TR), blue (BL), white (BR).
    fn quadrants(w: u32, h: u32) -> Bitmap {
        let mut data = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(match (x < w / 2, y < h / 2) {
                    (true, true) => &[230, 20, 20],
                    (false, true) => &[20, 230, 20],
                    (true, false) => &[20, 20, 230],
                    (false, false) => &[240, 240, 240],
                });
            }
        }
        Bitmap {
            width: w,
            height: h,
            channels: 3,
            data,
        }
    }

    /// Which quadrant colour dominates around (fx, fy) (fractions of the size).
    fn colour_at(b: &Bitmap, fx: f64, fy: f64) -> &'static str {
        let x = ((f64::from(b.width) * fx) as usize).min(b.width as usize - 1);
        let y = ((f64::from(b.height) * fy) as usize).min(b.height as usize - 1);
        let c = usize::from(b.channels);
        let i = (y * b.width as usize + x) * c;
        match (b.data[i] > 128, b.data[i + 1] > 128, b.data[i + 2] > 128) {
            (true, false, false) => "red",
            (false, true, false) => "green",
            (false, false, true) => "blue",
            (true, true, true) => "white",
            _ => "other",
        }
    }

    fn run(bytes: &[u8], path: &str, format: OutputFormat) -> Bitmap {
        let spec = crate::options::parse_path(
            &format!("/{path}/plain/0123456789abcdef0123456789abcdef"),
            &crate::options::ParseLimits {
                max_dimension: 16_383,
                ..Default::default()
            },
        )
        .unwrap()
        .spec;
        let out = transform(bytes, &spec, format, 95, &LIMITS).unwrap();
        let p = probe(&out.bytes).unwrap();
        assert_eq!((p.width, p.height), (out.width, out.height));
        decode(&out.bytes, &p).unwrap()
    }

    fn run_err(bytes: &[u8]) -> ImageError {
        let spec = TransformSpec {
            width: 16,
            ..TransformSpec::default()
        };
        Engine::new(LIMITS)
            .transform(bytes, &spec, OutputFormat::Png, 80)
            .unwrap_err()
    }

    /// Inserts an EXIF APP1 segment with `orientation` right after SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u8) -> Vec<u8> {
        let mut tiff = b"MM\0*\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes());
        tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, orientation, 0, 0]);
        tiff.extend_from_slice(&[0, 0, 0, 0]);
        let mut seg = b"Exif\0\0".to_vec();
        seg.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((seg.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&seg);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn all_eight_exif_orientations_come_out_upright() {
        let upright = quadrants(64, 48);
        for o in 1..=8u8 {
            // Store the pixels so that applying `o` gives the upright card.
            let inverse = (1..=8u8)
                .find(|&i| orient::apply(o, orient::apply(i, upright.clone())).data == upright.data)
                .unwrap();
            let stored = orient::apply(inverse, upright.clone());
            let jpeg = with_exif_orientation(&encode(&stored, OutputFormat::Jpeg, 95).unwrap(), o);
            let out = run(&jpeg, "w:32", OutputFormat::Png);
            assert_eq!((out.width, out.height), (32, 24), "orientation {o}");
            for (fx, fy, want) in [
                (0.2, 0.2, "red"),
                (0.8, 0.2, "green"),
                (0.2, 0.8, "blue"),
                (0.8, 0.8, "white"),
            ] {
                assert_eq!(
                    colour_at(&out, fx, fy),
                    want,
                    "orientation {o} at {fx},{fy}"
                );
            }
            // ar:0 ignores the tag: the stored grid comes out as stored.
            let raw = run(&jpeg, "ar:0", OutputFormat::Png);
            assert_eq!((raw.width, raw.height), (stored.width, stored.height));
        }
    }

    /// Deterministic noise: JPEG and WebP sizes fall steeply with quality.
    fn noise(w: u32, h: u32) -> Bitmap {
        let mut x = 0x2545_f491_u32;
        let data = (0..w * h * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        Bitmap {
            width: w,
            height: h,
            channels: 3,
            data,
        }
    }

    pub(crate) fn spec_of(path: &str) -> TransformSpec {
        crate::options::parse_path(
            &format!("/{path}/plain/0123456789abcdef0123456789abcdef"),
            &crate::options::ParseLimits {
                max_dimension: 16_383,
                ..Default::default()
            },
        )
        .unwrap()
        .spec
    }

    #[test]
    fn max_bytes_lowers_quality_until_the_result_fits() {
        let png = encode(&noise(160, 120), OutputFormat::Png, 100).unwrap();
        for format in [OutputFormat::Jpeg, OutputFormat::Webp] {
            let plain = transform(&png, &spec_of("q:90"), format, 90, &LIMITS).unwrap();
            let bound = plain.bytes.len() as u64 * 2 / 3;
            let fitted =
                transform(&png, &spec_of(&format!("mb:{bound}")), format, 90, &LIMITS).unwrap();
            assert!(fitted.bytes.len() as u64 <= bound, "{format:?}");
            assert_eq!((fitted.width, fitted.height), (160, 120));
            // A bound already met changes nothing.
            let roomy = plain.bytes.len() as u64;
            let same =
                transform(&png, &spec_of(&format!("mb:{roomy}")), format, 90, &LIMITS).unwrap();
            assert_eq!(same.bytes, plain.bytes);
            // Impossible: 90 → 23 → 6 (over 3× each time), then the quality-6 result is
            // returned although it does not fit — the smallest the search makes, as imgproxy.
            let tiny = transform(&png, &spec_of("mb:1"), format, 90, &LIMITS).unwrap();
            let q6 = transform(&png, &spec_of("q:6"), format, 6, &LIMITS).unwrap();
            assert_eq!(tiny.bytes, q6.bytes, "{format:?}");
        }
        // PNG has no quality: `mb` leaves it alone.
        let a = transform(&png, &spec_of("mb:1"), OutputFormat::Png, 80, &LIMITS).unwrap();
        let b = transform(&png, &spec_of("q:80"), OutputFormat::Png, 80, &LIMITS).unwrap();
        assert_eq!(a.bytes, b.bytes);
    }

    #[test]
    fn crop_rotate_flip_golden() {
        let png = encode(&quadrants(64, 48), OutputFormat::Png, 90).unwrap();
        let c = run(&png, "c:32:24:nowe", OutputFormat::Png);
        assert_eq!((c.width, c.height), (32, 24));
        assert_eq!(colour_at(&c, 0.5, 0.5), "red");
        let c = run(&png, "c:32:24:soea", OutputFormat::Png);
        assert_eq!(colour_at(&c, 0.5, 0.5), "white");
        // Crop, then resize the crop.
        let c = run(&png, "c:32:48:we/rs:fit:16:0", OutputFormat::Png);
        assert_eq!((c.width, c.height), (16, 24));
        assert_eq!(colour_at(&c, 0.5, 0.2), "red");
        assert_eq!(colour_at(&c, 0.5, 0.8), "blue");
        // Clockwise rotation: bottom-left comes to the top-left.
        let r = run(&png, "rot:90", OutputFormat::Png);
        assert_eq!((r.width, r.height), (48, 64));
        assert_eq!(colour_at(&r, 0.2, 0.2), "blue");
        assert_eq!(colour_at(&r, 0.8, 0.2), "red");
        // Width and height refer to the rotated image.
        let r = run(&png, "rot:270/w:24", OutputFormat::Png);
        assert_eq!((r.width, r.height), (24, 32));
        assert_eq!(colour_at(&r, 0.2, 0.2), "green");
        let f = run(&png, "fl:1", OutputFormat::Png);
        assert_eq!(colour_at(&f, 0.2, 0.2), "green");
        let f = run(&png, "fl:0:1", OutputFormat::Png);
        assert_eq!(colour_at(&f, 0.2, 0.2), "blue");
        let f = run(&png, "rot:180/fl:1:1", OutputFormat::Png);
        assert_eq!(colour_at(&f, 0.2, 0.2), "red");
    }

    #[test]
    fn padding_extend_and_background() {
        let png = encode(&quadrants(64, 48), OutputFormat::Png, 90).unwrap();
        let p = run(&png, "pd:5:10/bg:ff00ff", OutputFormat::Png);
        assert_eq!((p.width, p.height), (84, 58));
        assert_eq!(&p.data[0..3], &[255, 0, 255]);
        // dpr scales padding with the box.
        let p = run(&png, "w:32/dpr:2/pd:2", OutputFormat::Png);
        assert_eq!((p.width, p.height), (64 + 8, 48 + 8));
        // Extend without bg: transparent for PNG, white for JPEG.
        let e = run(&png, "rs:fit:100:100:0:1", OutputFormat::Png);
        assert_eq!((e.width, e.height, e.channels), (100, 100, 4));
        assert_eq!(e.data[3], 0);
        assert_eq!(e.data[(50 * 100 + 50) * 4 + 3], 255);
        let e = run(&png, "rs:fit:100:100/ex:1:no", OutputFormat::Jpeg);
        assert_eq!((e.width, e.height), (100, 100));
        assert_eq!(colour_at(&e, 0.5, 0.98), "white");
        assert_eq!(colour_at(&e, 0.2, 0.1), "red");
        // A canvas over the limits is refused before decoding.
        let spec = TransformSpec {
            padding: [2048; 4],
            ..TransformSpec::default()
        };
        let tight = ImageLimits {
            max_result_dimension: 2000,
            ..LIMITS
        };
        assert!(matches!(
            transform(&png, &spec, OutputFormat::Png, 80, &tight),
            Err(ImageError::ResultTooLarge { .. })
        ));
    }

    #[test]
    fn alpha_edges_have_no_dark_halo_and_flatten_onto_bg() {
        // Left half opaque red, right half fully transparent *black*.
        let (w, h) = (64u32, 32u32);
        let mut data = Vec::new();
        for _ in 0..h {
            for x in 0..w {
                data.extend_from_slice(if x < w / 2 {
                    &[255, 0, 0, 255]
                } else {
                    &[0, 0, 0, 0]
                });
            }
        }
        let src = Bitmap {
            width: w,
            height: h,
            channels: 4,
            data,
        };
        let png = encode(&src, OutputFormat::Png, 90).unwrap();
        for path in ["w:21", "w:21/bl:1", "w:21/sh:1"] {
            let out = run(&png, path, OutputFormat::Png);
            assert_eq!(out.channels, 4);
            for px in out.data.chunks(4).filter(|p| p[3] >= 16) {
                assert!(
                    px[0] >= 230 && px[1] <= 25 && px[2] <= 25,
                    "{path}: halo {px:?}"
                );
            }
        }
        let jpeg = run(&png, "w:32/bg:0:0:255", OutputFormat::Jpeg);
        assert_eq!(colour_at(&jpeg, 0.1, 0.5), "red");
        assert_eq!(colour_at(&jpeg, 0.9, 0.5), "blue");
        let white = run(&png, "w:32", OutputFormat::Jpeg);
        assert_eq!(colour_at(&white, 0.9, 0.5), "white");
    }

    #[test]
    fn filters_blur_sharpen_change_pixels_not_size() {
        let png = encode(&card(64, 48), OutputFormat::Png, 90).unwrap();
        let base = run(&png, "w:32", OutputFormat::Png);
        let g = run(&png, "w:32/fi:grayscale", OutputFormat::Png);
        assert!(g.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        let s = run(&png, "w:32/fi:sepia", OutputFormat::Png);
        assert!(s.data.chunks(3).all(|p| p[0] >= p[1] && p[1] >= p[2]));
        for path in ["w:32/bl:2", "w:32/sh:1"] {
            let o = run(&png, path, OutputFormat::Png);
            assert_eq!((o.width, o.height), (32, 24));
            assert_ne!(o.data, base.data, "{path}");
        }
    }

    #[test]
    fn watermark_is_composited_where_asked() {
        let png = encode(&quadrants(64, 48), OutputFormat::Png, 90).unwrap();
        let spec = |path: &str| {
            crate::options::parse_path(
                &format!("/{path}/plain/0123456789abcdef0123456789abcdef"),
                &crate::options::ParseLimits {
                    max_dimension: 100,
                    ..Default::default()
                },
            )
            .unwrap()
            .spec
        };
        // No watermark configured: a clear 400-class error.
        let none = Engine::new(LIMITS);
        assert!(matches!(
            none.transform(&png, &spec("wm:1"), OutputFormat::Png, 80),
            Err(ImageError::Unsupported(_))
        ));
        let mut engine = Engine::new(LIMITS);
        engine.watermark = Some(Bitmap {
            width: 8,
            height: 8,
            channels: 4,
            data: [0u8, 0, 0, 255].repeat(64),
        });
        let out = engine
            .transform(&png, &spec("wm:1:nowe:2:2"), OutputFormat::Png, 80)
            .unwrap();
        let b = decode(&out.bytes, &probe(&out.bytes).unwrap()).unwrap();
        let px = |x: usize, y: usize| &b.data[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3];
        assert_eq!(px(0, 0), &[230, 20, 20]); // offset keeps the corner free
        assert_eq!(px(3, 3), &[0, 0, 0]);
        assert_eq!(px(12, 12), &[230, 20, 20]);
        // Half opacity, scaled to a quarter of the width, bottom-right.
        let out = engine
            .transform(&png, &spec("wm:0.5:soea:0:0:0.25"), OutputFormat::Png, 80)
            .unwrap();
        let b = decode(&out.bytes, &probe(&out.bytes).unwrap()).unwrap();
        let px = |x: usize, y: usize| &b.data[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3];
        assert_eq!(px(63, 47), &[120, 120, 120]);
        assert_eq!(px(63 - 17, 47), &[240, 240, 240]);
    }

    #[test]
    fn smart_gravity_follows_the_detail() {
        // Flat grey with a high-contrast pattern on the right third.
        let (w, h) = (96u32, 32u32);
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let v = if x >= 64 && (x / 2 + y / 2) % 2 == 0 {
                    0
                } else if x >= 64 {
                    255
                } else {
                    128
                };
                data.extend_from_slice(&[v, v, v]);
            }
        }
        let png = encode(
            &Bitmap {
                width: w,
                height: h,
                channels: 3,
                data,
            },
            OutputFormat::Png,
            90,
        )
        .unwrap();
        let centre = run(&png, "rs:fill:32:32", OutputFormat::Png);
        let smart = run(&png, "rs:fill:32:32/g:sm", OutputFormat::Png);
        let spread = |b: &Bitmap| {
            let (lo, hi) = b
                .data
                .iter()
                .fold((255u8, 0u8), |(l, h), &v| (l.min(v), h.max(v)));
            hi - lo
        };
        assert!(spread(&centre) < 10, "centre crop is the flat part");
        assert!(spread(&smart) > 200, "smart crop found the pattern");
        // Smart crop via c: too.
        let c = run(&png, "c:32:32:sm", OutputFormat::Png);
        assert!(spread(&c) > 200);
    }

    #[test]
    fn avif_results_are_capped_before_decoding() {
        let png = encode(&card(64, 48), OutputFormat::Png, 90).unwrap();
        let roomy = ImageLimits {
            max_result_pixels: 40_000_000,
            max_result_dimension: 16_383,
            ..LIMITS
        };
        let big = TransformSpec {
            resizing_type: ResizingType::Force,
            width: 5000,
            height: 4000,
            enlarge: true,
            ..TransformSpec::default()
        };
        let engine = Engine::new(roomy);
        assert!(matches!(
            engine.transform(&png, &big, OutputFormat::Avif, 60),
            Err(ImageError::ResultTooLarge {
                limit: MAX_AVIF_PIXELS,
                ..
            })
        ));
        // The same size is fine for a fast encoder.
        let webp = engine
            .transform(&png, &big, OutputFormat::Webp, 60)
            .unwrap();
        assert_eq!((webp.width, webp.height), (5000, 4000));
    }

    #[test]
    fn shrink_on_load_is_chosen_to_stay_above_the_target() {
        let crop = (0.0, 0.0, 4000.0, 3000.0);
        assert_eq!(jpeg_shrink(crop, (800, 600)), 4);
        assert_eq!(jpeg_shrink(crop, (300, 300)), 8);
        assert_eq!(jpeg_shrink(crop, (1000, 750)), 4);
        assert_eq!(jpeg_shrink(crop, (1001, 750)), 2);
        assert_eq!(jpeg_shrink(crop, (2500, 1875)), 1);
        assert_eq!(jpeg_shrink((0.0, 0.0, 3000.0, 3000.0), (300, 300)), 8);
    }

    #[test]
    fn shrink_on_load_matches_a_full_decode() {
        // A smooth gradient card, 1/4-scaled decode vs. zune full decode, same resize.
        let jpeg = encode(&card(800, 600), OutputFormat::Jpeg, 95).unwrap();
        let spec = TransformSpec {
            width: 160,
            ..TransformSpec::default()
        };
        let turbo = Engine::new(LIMITS);
        let zune = Engine {
            jpeg_decoder: JpegDecoder::Zune,
            ..Engine::new(LIMITS)
        };
        let a = turbo
            .transform(&jpeg, &spec, OutputFormat::Png, 80)
            .unwrap();
        let b = zune.transform(&jpeg, &spec, OutputFormat::Png, 80).unwrap();
        let da = decode(&a.bytes, &probe(&a.bytes).unwrap()).unwrap();
        let db = decode(&b.bytes, &probe(&b.bytes).unwrap()).unwrap();
        assert_eq!((da.width, da.height), (db.width, db.height));
        let mse: f64 = da
            .data
            .iter()
            .zip(&db.data)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>()
            / da.data.len() as f64;
        let psnr = 10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10();
        assert!(psnr > 30.0, "psnr {psnr}");
    }

    #[test]
    fn jpegs_libjpeg_turbo_refuses_but_zune_accepted_still_render() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/photo_320x240.jpg"
        );
        let mut jpeg = std::fs::read(path).unwrap();
        let eoi = jpeg.len() - 2;
        jpeg.splice(eoi..eoi, [0x12, 0x34, 0x56]);
        let p = validate_upload(&jpeg, &LIMITS).unwrap();
        // The strict libjpeg-turbo path refuses it ("extraneous bytes before marker")...
        assert!(
            turbo::decode_scaled(&jpeg, 2, LIMITS.max_source_pixels, (p.width, p.height)).is_err()
        );
        // ...and the transform renders it through zune-jpeg, as at upload.
        let out = transform(
            &jpeg,
            &spec(100, 100, ResizingType::Fit),
            OutputFormat::Png,
            80,
            &LIMITS,
        )
        .unwrap();
        assert_eq!((out.width, out.height), (100, 75));
    }

    #[test]
    fn jpeg_variants_decode_grayscale_cmyk_progressive() {
        let rgb = card(64, 48);
        // Grayscale.
        let luma: Vec<u8> = rgb.data.chunks(3).map(|p| p[1]).collect();
        let mut gray = Vec::new();
        jpeg_encoder::Encoder::new(&mut gray, 90)
            .encode(&luma, 64, 48, jpeg_encoder::ColorType::Luma)
            .unwrap();
        let g = run(&gray, "w:32", OutputFormat::Png);
        assert_eq!((g.width, g.height, g.channels), (32, 24, 3));
        // CMYK: TurboJPEG cannot give RGB, the zune fallback does.
        let cmyk_px: Vec<u8> = rgb
            .data
            .chunks(3)
            .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], 0])
            .collect();
        let mut cmyk = Vec::new();
        jpeg_encoder::Encoder::new(&mut cmyk, 90)
            .encode(&cmyk_px, 64, 48, jpeg_encoder::ColorType::Cmyk)
            .unwrap();
        let c = run(&cmyk, "w:32", OutputFormat::Png);
        assert_eq!((c.width, c.height), (32, 24));
        // Progressive, with restart markers.
        let mut prog = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut prog, 90);
        enc.set_progressive(true);
        enc.set_restart_interval(2);
        enc.encode(&rgb.data, 64, 48, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let p = run(&prog, "w:16", OutputFormat::Png);
        assert_eq!((p.width, p.height), (16, 12));
        // A progressive-scan bomb is refused before either decoder runs.
        let mut bomb = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut bomb, 90);
        enc.set_progressive(true);
        enc.set_progressive_scans(64);
        enc.encode(&rgb.data, 64, 48, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let r = run_err(&bomb);
        assert!(
            matches!(r, ImageError::Corrupt(ref m) if m.contains("scans")),
            "{r:?}"
        );
        assert!(validate_upload(&bomb, &LIMITS).is_err());
        // Truncated and corrupt data fail on the shrink-on-load path too (strict mode).
        let big = encode(&card(256, 192), OutputFormat::Jpeg, 90).unwrap();
        for bad in [big[..big.len() / 2].to_vec(), {
            let mut b = big.clone();
            let n = b.len();
            b[n / 2..n / 2 + 64].fill(0xFF);
            b
        }] {
            let spec = TransformSpec {
                width: 32,
                ..TransformSpec::default()
            };
            let r = Engine::new(LIMITS).transform(&bad, &spec, OutputFormat::Png, 80);
            assert!(matches!(r, Err(ImageError::Corrupt(_))), "{r:?}");
        }
    }

    #[test]
    fn embedded_icc_profiles_are_converted_to_srgb() {
        let colour = [200u8, 120, 60];
        let flat = Bitmap {
            width: 32,
            height: 32,
            channels: 3,
            data: colour.repeat(32 * 32),
        };
        let mut jpeg = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, 100);
        enc.add_icc_profile(&icc::testing::display_p3()).unwrap();
        enc.encode(&flat.data, 32, 32, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let want = icc::testing::p3_to_srgb(colour);
        for (path, format) in [
            ("w:16", OutputFormat::Png),
            ("w:16/rot:90", OutputFormat::Webp),
        ] {
            let out = run(&jpeg, path, format);
            let px = &out.data[(8 * 16 + 8) * usize::from(out.channels)..][..3];
            for (got, want) in px.iter().zip(want) {
                assert!(
                    (f64::from(*got) - want).abs() <= 4.0,
                    "{path}: {px:?} vs {want:?}"
                );
            }
        }
        // Without the profile the same pixels pass through unchanged (±JPEG error).
        let mut plain = Vec::new();
        jpeg_encoder::Encoder::new(&mut plain, 100)
            .encode(&flat.data, 32, 32, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let out = run(&plain, "w:16", OutputFormat::Png);
        for (got, want) in out.data[..3].iter().zip(colour) {
            assert!(got.abs_diff(want) <= 3);
        }
    }

    /// A 64×48 JPEG of `colour` carrying `exif` (TIFF), XMP and the test P3 profile.
    fn tagged_jpeg(colour: [u8; 3], exif: &[u8]) -> Vec<u8> {
        let flat = Bitmap {
            width: 64,
            height: 48,
            channels: 3,
            data: colour.repeat(64 * 48),
        };
        let mut jpeg = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, 95);
        enc.add_app_segment(1, [b"Exif\0\0".as_slice(), exif].concat())
            .unwrap();
        enc.add_app_segment(
            1,
            [
                b"http://ns.adobe.com/xap/1.0/\0".as_slice(),
                super::metadata::tests::SAMPLE_XMP,
            ]
            .concat(),
        )
        .unwrap();
        enc.add_icc_profile(&icc::testing::display_p3()).unwrap();
        enc.encode(&flat.data, 64, 48, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        jpeg
    }

    fn output_meta(out: &[u8]) -> (Vec<(u16, String)>, String, Option<Vec<u8>>) {
        let p = probe(out).unwrap();
        let m = super::metadata::read(out, p.format);
        (
            m.exif.map(super::metadata::exif_fields).unwrap_or_default(),
            m.xmp
                .map(|x| String::from_utf8_lossy(x).into_owned())
                .unwrap_or_default(),
            icc::extract(out, p.format),
        )
    }

    #[test]
    fn metadata_is_stripped_kept_for_copyright_or_kept_when_allowed() {
        let exif = super::metadata::tests::sample_exif();
        let src = tagged_jpeg([200, 120, 60], &exif);
        let engine = Engine::new(LIMITS);
        let mut allowed = Engine::new(LIMITS);
        allowed.metadata.allow_keep = true;
        for format in [OutputFormat::Jpeg, OutputFormat::Png, OutputFormat::Webp] {
            let out =
                |e: &Engine, path: &str| e.transform(&src, &spec_of(path), format, 90).unwrap();
            // Default: nothing.
            let (fields, xmp, icc) = output_meta(&out(&engine, "w:32").bytes);
            assert!(
                fields.is_empty() && xmp.is_empty() && icc.is_none(),
                "{format:?}"
            );
            // kcr: copyright and artist only.
            let (fields, xmp, _) = output_meta(&out(&engine, "w:32/kcr:1").bytes);
            let tags: Vec<u16> = fields.iter().map(|(t, _)| *t).collect();
            assert_eq!(tags, [0x013B, 0x8298], "{format:?}");
            assert!(xmp.contains("dc:rights") && xmp.contains("dc:creator"));
            assert!(!xmp.contains("GPS") && !xmp.contains("CreatorTool"));
            // sm:0 without the operator's consent: still nothing.
            let (fields, xmp, _) = output_meta(&out(&engine, "w:32/sm:0").bytes);
            assert!(fields.is_empty() && xmp.is_empty(), "{format:?}");
            // With it: everything but location, upright.
            let kept = out(&allowed, "w:32/sm:0").bytes;
            let (fields, xmp, _) = output_meta(&kept);
            assert!(
                fields.contains(&(0x010F, "SecretCam".to_owned())),
                "{format:?}"
            );
            assert!(fields.contains(&(0x0112, "1".to_owned())));
            let p = probe(&kept).unwrap();
            let m = super::metadata::read(&kept, p.format);
            assert_eq!(super::metadata::gps_entries(m.exif.unwrap()), Some(0));
            assert!(xmp.contains("CreatorTool") && !xmp.contains("GPS"));
            // Upright pixels (the source's orientation 6 applied: 48×64 shown, 32 wide), and
            // Orientation 1 says so.
            let b = decode(&kept, &p).unwrap();
            assert_eq!((b.width, b.height, p.orientation), (32, 43, 1));
        }
    }

    #[test]
    fn scp_0_embeds_the_source_profile_instead_of_converting() {
        let exif = super::metadata::tests::sample_exif();
        let src = tagged_jpeg([200, 120, 60], &exif);
        let engine = Engine::new(LIMITS);
        for format in [OutputFormat::Jpeg, OutputFormat::Png, OutputFormat::Webp] {
            let kept = engine
                .transform(&src, &spec_of("w:32/scp:0"), format, 95)
                .unwrap();
            let converted = engine
                .transform(&src, &spec_of("w:32"), format, 95)
                .unwrap();
            let (_, _, icc) = output_meta(&kept.bytes);
            assert_eq!(icc, Some(icc::testing::display_p3()), "{format:?}");
            let a = decode(&kept.bytes, &probe(&kept.bytes).unwrap()).unwrap();
            let b = decode(&converted.bytes, &probe(&converted.bytes).unwrap()).unwrap();
            // Unconverted: the source's numbers (±codec error), not the sRGB ones.
            assert!(
                a.data[0].abs_diff(200) <= 4,
                "{format:?} {:?}",
                &a.data[..3]
            );
            assert!(a.data[0].abs_diff(b.data[0]) > 10, "{format:?}");
        }
        // AVIF carries no profile here: converted as usual.
        let avif = engine
            .transform(&src, &spec_of("w:32/scp:0"), OutputFormat::Avif, 80)
            .unwrap();
        assert!(icc::extract(&avif.bytes, ImageFormat::Webp).is_none());
    }

    /// EXIF with IFD1 holding `thumb` (a JPEG) as its thumbnail.
    fn exif_with_thumbnail(thumb: &[u8]) -> Vec<u8> {
        let mut t = b"MM\0\x2a\0\0\0\x08\0\0\0\0\0\x0e".to_vec(); // IFD0: no entries, next at 14
        let data_at = 14 + 2 + 24 + 4;
        t.extend_from_slice(&2u16.to_be_bytes());
        t.extend_from_slice(&[0x02, 0x01, 0, 4, 0, 0, 0, 1]);
        t.extend_from_slice(&(data_at as u32).to_be_bytes());
        t.extend_from_slice(&[0x02, 0x02, 0, 4, 0, 0, 0, 1]);
        t.extend_from_slice(&(thumb.len() as u32).to_be_bytes());
        t.extend_from_slice(&[0; 4]);
        t.extend_from_slice(thumb);
        t
    }

    #[test]
    fn enforce_thumbnail_uses_a_large_enough_exif_thumbnail() {
        let green = Bitmap {
            width: 32,
            height: 24,
            channels: 3,
            data: [20u8, 200, 20].repeat(32 * 24),
        };
        let thumb = encode(&green, OutputFormat::Jpeg, 90).unwrap();
        let src = tagged_jpeg([200, 20, 20], &exif_with_thumbnail(&thumb));
        let colour = |path: &str| run(&src, path, OutputFormat::Png).data[..3].to_vec();
        // 16 px wide: the 32-px thumbnail is large enough (green); 48: it is not (red).
        assert!(colour("w:16/eth:1")[1] > 150);
        assert!(colour("w:48/eth:1")[0] > 150);
        assert!(colour("w:16")[0] > 150);
        // A letterboxed thumbnail (another aspect ratio) is never used.
        let square = Bitmap {
            width: 24,
            height: 24,
            channels: 3,
            data: [20u8, 200, 20].repeat(24 * 24),
        };
        let boxed = tagged_jpeg(
            [200, 20, 20],
            &exif_with_thumbnail(&encode(&square, OutputFormat::Jpeg, 90).unwrap()),
        );
        assert!(run(&boxed, "w:16/eth:1", OutputFormat::Png).data[0] > 150);
        // A hostile thumbnail pointer is ignored, never a failure.
        let mut bad = exif_with_thumbnail(&thumb);
        bad[30..34].copy_from_slice(&u32::MAX.to_be_bytes());
        let src = tagged_jpeg([200, 20, 20], &bad);
        assert!(run(&src, "w:16/eth:1", OutputFormat::Png).data[0] > 150);
    }
}
