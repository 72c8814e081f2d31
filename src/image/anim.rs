//! Animation, one frame at a time: [`Frames`] composites a GIF's or WebP's frames onto one
//! canvas and lends each in turn; [`Sink`] encodes result frames into an animated WebP
//! (libwebp's `WebPAnimEncoder`, [`super::webp_anim`]) or GIF (the `gif` crate) as they come.
//!
//! Memory is the point: a transform holds one source canvas (plus a saved copy only while a
//! GIF frame asks to be restored), one result frame and the encoder's state — never all the
//! frames. What is bounded where: frame count and frames × canvas from the header
//! ([`super::ImageLimits::check_frames`]), frames × result canvas in the plan, and the encoded
//! size as it grows ([`Sink::add`]).
//!
//! Timing and looping are kept in browsers' terms: delays in milliseconds (a GIF's
//! centiseconds × 10; a WebP's own), and `plays` — how many times the animation runs, 0 for
//! forever. GIF's loop extension counts *repeats* (absent: play once), WebP's ANIM chunk counts
//! plays: the mapping is gif2webp's.

use std::io::Cursor;

use super::encode::EncodeSettings;
use super::{Bitmap, ImageError, ImageFormat, Probe};
use crate::options::OutputFormat;

/// Longest frame delay kept, ms: GIF's maximum (65535 cs). Longer WebP durations are cut to it,
/// which keeps every timestamp of a [`super::ImageLimits::max_frames`]-long animation in range.
pub const MAX_DELAY_MS: u32 = 655_350;

/// The frames of a GIF or WebP, composited in order. A still source has one frame.
pub struct Frames<'a> {
    inner: Inner<'a>,
    plays: u32,
}

enum Inner<'a> {
    Gif(Box<GifFrames<'a>>),
    Webp(Box<WebpFrames<'a>>),
}

impl<'a> Frames<'a> {
    /// Opens `bytes` (probed as `p`, limits already checked). Other formats have no frames
    /// here: `Unsupported`.
    pub fn open(bytes: &'a [u8], p: &Probe) -> Result<Frames<'a>, ImageError> {
        match p.format {
            ImageFormat::Gif => {
                let frames = GifFrames::open(bytes, p)?;
                let plays = match frames.decoder.repeat() {
                    gif::Repeat::Infinite => 0,
                    gif::Repeat::Finite(n) => u32::from(n) + 1,
                };
                Ok(Frames {
                    inner: Inner::Gif(Box::new(frames)),
                    plays,
                })
            }
            ImageFormat::Webp => {
                let frames = WebpFrames::open(bytes, p)?;
                let plays = match frames.decoder.loop_count() {
                    image_webp::LoopCount::Forever => 0,
                    image_webp::LoopCount::Times(n) => u32::from(n.get()),
                };
                Ok(Frames {
                    inner: Inner::Webp(Box::new(frames)),
                    plays,
                })
            }
            other => Err(ImageError::Unsupported(format!(
                "{} has no animation frames",
                other.as_str()
            ))),
        }
    }

    /// The first frame alone, as a still decode (no copy of the canvas).
    pub fn first(bytes: &'a [u8], p: &Probe) -> Result<Bitmap, ImageError> {
        let mut frames = Frames::open(bytes, p)?;
        if frames.next_frame()?.is_none() {
            return Err(corrupt("no frames"));
        }
        Ok(match frames.inner {
            Inner::Gif(g) => g.canvas,
            Inner::Webp(w) => w.canvas,
        })
    }

    /// How many times the animation plays; 0: forever.
    pub fn plays(&self) -> u32 {
        self.plays
    }

    /// The next frame, composited on the canvas, and how long it shows (ms, at most
    /// [`MAX_DELAY_MS`]); `None` after the last.
    pub fn next_frame(&mut self) -> Result<Option<(&Bitmap, u32)>, ImageError> {
        let next = match &mut self.inner {
            Inner::Gif(g) => g.next_frame()?,
            Inner::Webp(w) => w.next_frame()?,
        };
        Ok(next.map(|(b, ms)| (b, ms.min(MAX_DELAY_MS))))
    }
}

fn corrupt(e: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(e.to_string())
}

/// A GIF's logical screen, RGBA, with the disposal of the frame last drawn still to do.
struct GifFrames<'a> {
    decoder: gif::Decoder<Cursor<&'a [u8]>>,
    canvas: Bitmap,
    /// The canvas before a frame whose disposal is "restore to previous".
    saved: Vec<u8>,
    /// The last frame's disposal and its rectangle (clipped to the screen).
    pending: Option<(gif::DisposalMethod, Clip)>,
}

/// A frame's rectangle clipped to the screen: x, y, visible width and height.
#[derive(Debug, Clone, Copy)]
struct Clip {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

impl<'a> GifFrames<'a> {
    fn open(bytes: &'a [u8], p: &Probe) -> Result<GifFrames<'a>, ImageError> {
        let mut options = gif::DecodeOptions::new();
        options.set_color_output(gif::ColorOutput::RGBA);
        let canvas_bytes = (p.width as usize)
            .saturating_mul(p.height as usize)
            .saturating_mul(4);
        // A frame's buffer is at most the 16-bit frame size × 4; the screen bounds what shows,
        // and a frame larger than the screen is refused by this limit before its pixels are.
        let budget = (canvas_bytes as u64).saturating_add(1 << 16);
        options.set_memory_limit(match std::num::NonZeroU64::new(budget) {
            Some(n) => gif::MemoryLimit::Bytes(n),
            None => gif::MemoryLimit::Unlimited,
        });
        let decoder = options.read_info(Cursor::new(bytes)).map_err(corrupt)?;
        if (u32::from(decoder.width()), u32::from(decoder.height())) != (p.width, p.height) {
            return Err(corrupt("GIF screen differs from its header"));
        }
        Ok(GifFrames {
            decoder,
            canvas: Bitmap {
                width: p.width,
                height: p.height,
                channels: 4,
                data: vec![0; canvas_bytes],
            },
            saved: Vec::new(),
            pending: None,
        })
    }

    fn next_frame(&mut self) -> Result<Option<(&Bitmap, u32)>, ImageError> {
        let cw = self.canvas.width as usize;
        match self.pending.take() {
            Some((gif::DisposalMethod::Background, c)) => {
                // Browsers clear to transparent, whatever the background colour index says.
                for row in c.y..c.y + c.h {
                    let start = (row * cw + c.x) * 4;
                    if let Some(px) = self.canvas.data.get_mut(start..start + c.w * 4) {
                        px.fill(0);
                    }
                }
            }
            Some((gif::DisposalMethod::Previous, _)) if !self.saved.is_empty() => {
                self.canvas.data.copy_from_slice(&self.saved);
            }
            _ => {}
        }
        let Some(frame) = self.decoder.read_next_frame().map_err(corrupt)? else {
            return Ok(None);
        };
        if frame.dispose == gif::DisposalMethod::Previous {
            self.saved.clear();
            self.saved.extend_from_slice(&self.canvas.data);
        }
        let (fx, fy) = (usize::from(frame.left), usize::from(frame.top));
        let (fw, fh) = (usize::from(frame.width), usize::from(frame.height));
        let ch = self.canvas.height as usize;
        // Frames may lie partly or wholly outside the screen (the decoder does not check by
        // default, and browsers just clip): draw only the visible part.
        let clip = Clip {
            x: fx.min(cw),
            y: fy.min(ch),
            w: fw.min(cw.saturating_sub(fx)),
            h: fh.min(ch.saturating_sub(fy)),
        };
        for row in 0..clip.h {
            let src_start = row * fw * 4;
            let dst_start = ((clip.y + row) * cw + clip.x) * 4;
            let (Some(src), Some(dst)) = (
                frame.buffer.get(src_start..src_start + clip.w * 4),
                self.canvas.data.get_mut(dst_start..dst_start + clip.w * 4),
            ) else {
                return Err(corrupt("GIF frame buffer is shorter than its size"));
            };
            // GIF transparency is one palette index (alpha 0 here): those pixels show what is
            // below.
            for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
                if s[3] != 0 {
                    d.copy_from_slice(s);
                }
            }
        }
        let delay = u32::from(frame.delay) * 10;
        self.pending = Some((frame.dispose, clip));
        Ok(Some((&self.canvas, delay)))
    }
}

/// A WebP through image-webp, which composites animation frames (blending and disposal) on
/// its own canvas; disposal clears to transparent, as browsers do.
struct WebpFrames<'a> {
    decoder: image_webp::WebPDecoder<Cursor<&'a [u8]>>,
    canvas: Bitmap,
    /// A still WebP's one frame has been read.
    done: bool,
}

impl<'a> WebpFrames<'a> {
    fn open(bytes: &'a [u8], p: &Probe) -> Result<WebpFrames<'a>, ImageError> {
        let mut decoder = image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(corrupt)?;
        if decoder.dimensions() != (p.width, p.height) {
            return Err(corrupt("WebP canvas differs from its header"));
        }
        if decoder.is_animated() {
            decoder
                .set_background_color([0; 4])
                .map_err(|e| corrupt(format!("{e:?}")))?;
        }
        let size = decoder
            .output_buffer_size()
            .ok_or_else(|| corrupt("WebP size overflows"))?;
        let channels = if decoder.has_alpha() { 4 } else { 3 };
        if size != p.width as usize * p.height as usize * channels {
            return Err(corrupt("WebP buffer size differs from its canvas"));
        }
        Ok(WebpFrames {
            decoder,
            canvas: Bitmap {
                width: p.width,
                height: p.height,
                channels: channels as u8,
                data: vec![0; size],
            },
            done: false,
        })
    }

    fn next_frame(&mut self) -> Result<Option<(&Bitmap, u32)>, ImageError> {
        if !self.decoder.is_animated() {
            if self.done {
                return Ok(None);
            }
            self.done = true;
            self.decoder
                .read_image(&mut self.canvas.data)
                .map_err(corrupt)?;
            return Ok(Some((&self.canvas, 0)));
        }
        match self.decoder.read_frame(&mut self.canvas.data) {
            Ok(ms) => Ok(Some((&self.canvas, ms))),
            Err(image_webp::DecodingError::NoMoreFrames) => Ok(None),
            Err(e) => Err(corrupt(e)),
        }
    }
}

/// An animated result being encoded, frame by frame.
pub enum Sink {
    Webp(super::webp_anim::WebpAnimation),
    Gif(Box<GifSink>),
}

impl Sink {
    /// A `width`×`height` animation in `format` (WebP or GIF) playing `plays` times (0:
    /// forever), refusing to grow past `max_bytes`.
    pub fn new(
        format: OutputFormat,
        (width, height): (u32, u32),
        plays: u32,
        quality: u8,
        settings: &EncodeSettings,
        max_bytes: u64,
    ) -> Result<Sink, ImageError> {
        match format {
            OutputFormat::Webp => Ok(Sink::Webp(super::webp_anim::WebpAnimation::new(
                (width, height),
                plays,
                quality,
                settings,
                max_bytes,
            )?)),
            OutputFormat::Gif => Ok(Sink::Gif(Box::new(GifSink::new(
                (width, height),
                plays,
                max_bytes,
            )?))),
            other => Err(ImageError::Unsupported(format!(
                "{} cannot animate",
                other.extension()
            ))),
        }
    }

    /// Encodes the next frame (the sink's size), shown for `delay_ms`.
    pub fn add(&mut self, frame: &Bitmap, delay_ms: u32) -> Result<(), ImageError> {
        match self {
            Sink::Webp(w) => w.add(frame, delay_ms),
            Sink::Gif(g) => g.add(frame, delay_ms),
        }
    }

    /// The encoded animation.
    pub fn finish(self) -> Result<Vec<u8>, ImageError> {
        match self {
            Sink::Webp(w) => w.finish(),
            Sink::Gif(g) => g.finish(),
        }
    }
}

/// The `gif` crate's streaming encoder: each frame quantised on its own (NeuQuant, 256 colours
/// with a transparent index), written as it comes.
pub struct GifSink {
    encoder: gif::Encoder<Vec<u8>>,
    size: (u16, u16),
    max_bytes: u64,
}

impl GifSink {
    fn new((width, height): (u32, u32), plays: u32, max_bytes: u64) -> Result<GifSink, ImageError> {
        let w = u16::try_from(width).map_err(encode_err)?;
        let h = u16::try_from(height).map_err(encode_err)?;
        let mut encoder = gif::Encoder::new(Vec::new(), w, h, &[]).map_err(encode_err)?;
        // gif2webp's mapping, reversed: 1 play is no loop extension at all.
        match plays {
            0 => encoder.set_repeat(gif::Repeat::Infinite),
            1 => Ok(()),
            n => encoder.set_repeat(gif::Repeat::Finite(
                u16::try_from(n - 1).unwrap_or(u16::MAX),
            )),
        }
        .map_err(encode_err)?;
        Ok(GifSink {
            encoder,
            size: (w, h),
            max_bytes,
        })
    }

    fn add(&mut self, frame: &Bitmap, delay_ms: u32) -> Result<(), ImageError> {
        let mut gif_frame = super::encode::gif_frame(frame, self.size)?;
        gif_frame.delay = u16::try_from(delay_ms.div_ceil(10)).unwrap_or(u16::MAX);
        // Every frame covers the whole screen; clearing first lets a transparent pixel show
        // through instead of the frame before.
        gif_frame.dispose = gif::DisposalMethod::Background;
        self.encoder.write_frame(&gif_frame).map_err(encode_err)?;
        let written = self.encoder.get_ref().len() as u64;
        if written > self.max_bytes {
            return Err(ImageError::OutputTooLarge {
                limit: self.max_bytes,
            });
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>, ImageError> {
        self.encoder.into_inner().map_err(encode_err)
    }
}

fn encode_err(e: impl std::fmt::Display) -> ImageError {
    ImageError::Encode(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::probe;

    /// A GIF of `frames`: (left, top, w, h, palette index, disposal, delay cs); palette
    /// 0 black, 1 white, 2 red, index 3 transparent.
    pub(crate) fn gif_of(
        screen: (u16, u16),
        repeat: Option<gif::Repeat>,
        frames: &[(u16, u16, u16, u16, u8, gif::DisposalMethod, u16)],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let palette = [0u8, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 0];
            let mut enc = gif::Encoder::new(&mut out, screen.0, screen.1, &palette).unwrap();
            if let Some(r) = repeat {
                enc.set_repeat(r).unwrap();
            }
            for &(left, top, w, h, index, dispose, delay) in frames {
                let frame = gif::Frame {
                    left,
                    top,
                    width: w,
                    height: h,
                    delay,
                    dispose,
                    transparent: Some(3),
                    buffer: std::borrow::Cow::Owned(vec![index; usize::from(w) * usize::from(h)]),
                    ..gif::Frame::default()
                };
                enc.write_frame(&frame).unwrap();
            }
        }
        out
    }

    fn px(b: &Bitmap, x: usize, y: usize) -> [u8; 4] {
        let i = (y * b.width as usize + x) * 4;
        [b.data[i], b.data[i + 1], b.data[i + 2], b.data[i + 3]]
    }

    #[test]
    fn gif_disposal_and_timing_follow_browsers() {
        use gif::DisposalMethod::*;
        let bytes = gif_of(
            (4, 4),
            Some(gif::Repeat::Finite(2)),
            &[
                (0, 0, 4, 4, 1, Keep, 5),       // white screen
                (0, 0, 2, 2, 2, Previous, 10),  // red corner, then restored
                (2, 2, 2, 2, 0, Background, 0), // black corner, then cleared
                (0, 0, 1, 1, 3, Keep, 7),       // transparent: changes nothing
            ],
        );
        let p = probe(&bytes).unwrap();
        let mut f = Frames::open(&bytes, &p).unwrap();
        assert_eq!(f.plays(), 3, "two repeats: three plays");
        let (b, ms) = f.next_frame().unwrap().unwrap();
        assert_eq!((px(b, 0, 0), ms), ([255, 255, 255, 255], 50));
        let (b, ms) = f.next_frame().unwrap().unwrap();
        assert_eq!(
            (px(b, 0, 0), px(b, 3, 3), ms),
            ([255, 0, 0, 255], [255; 4], 100)
        );
        let (b, _) = f.next_frame().unwrap().unwrap();
        // The red corner was restored to white; the black one drawn.
        assert_eq!((px(b, 0, 0), px(b, 3, 3)), ([255; 4], [0, 0, 0, 255]));
        let (b, ms) = f.next_frame().unwrap().unwrap();
        // The black corner was cleared to transparent; the transparent pixel kept white.
        assert_eq!((px(b, 0, 0), px(b, 3, 3), ms), ([255; 4], [0; 4], 70));
        assert!(f.next_frame().unwrap().is_none());
    }

    #[test]
    fn frames_outside_the_screen_are_clipped() {
        use gif::DisposalMethod::*;
        for (left, top) in [(10, 0), (0, 10), (3, 3), (100, 100), (4, 0)] {
            let bytes = gif_of((4, 4), None, &[(left, top, 2, 2, 1, Background, 0); 2]);
            let p = probe(&bytes).unwrap();
            let mut f = Frames::open(&bytes, &p).unwrap();
            assert_eq!(f.plays(), 1);
            while let Some((b, _)) = f.next_frame().unwrap() {
                assert_eq!((b.width, b.height), (4, 4));
            }
        }
    }

    #[test]
    fn gif_and_webp_sinks_keep_timing_and_loops() {
        let frame = |v: u8| Bitmap {
            width: 8,
            height: 6,
            channels: 4,
            data: [v, 0, 255 - v, 255].repeat(48),
        };
        for format in [OutputFormat::Gif, OutputFormat::Webp] {
            for plays in [0, 1, 3] {
                let mut sink = Sink::new(
                    format,
                    (8, 6),
                    plays,
                    80,
                    &EncodeSettings::default(),
                    1 << 20,
                )
                .unwrap();
                for (i, ms) in [(0u8, 100), (128, 250), (255, 40)] {
                    sink.add(&frame(i), ms).unwrap();
                }
                let bytes = sink.finish().unwrap();
                let p = probe(&bytes).unwrap();
                assert_eq!((p.width, p.height), (8, 6));
                let mut f = Frames::open(&bytes, &p).unwrap();
                assert_eq!(f.plays(), plays, "{format:?} {plays}");
                let mut delays = Vec::new();
                let mut reds = Vec::new();
                while let Some((b, ms)) = f.next_frame().unwrap() {
                    delays.push(ms);
                    reds.push(b.data[0]);
                }
                assert_eq!(delays, [100, 250, 40], "{format:?}");
                assert!(reds[0] < 20 && (100..160).contains(&reds[1]) && reds[2] > 235);
            }
        }
    }

    #[test]
    fn delays_are_capped_at_gifs_longest() {
        // WebP may store durations up to 2^24 - 1 ms; they are read back at most MAX_DELAY_MS.
        let frame = Bitmap {
            width: 4,
            height: 4,
            channels: 3,
            data: vec![9; 48],
        };
        let mut other = frame.clone();
        other.data.fill(200);
        let mut sink = Sink::new(
            OutputFormat::Webp,
            (4, 4),
            0,
            80,
            &EncodeSettings::default(),
            1 << 20,
        )
        .unwrap();
        sink.add(&frame, 1_000_000).unwrap();
        sink.add(&other, 100).unwrap();
        let bytes = sink.finish().unwrap();
        let mut f = Frames::open(&bytes, &probe(&bytes).unwrap()).unwrap();
        assert_eq!(f.next_frame().unwrap().unwrap().1, MAX_DELAY_MS);
        assert_eq!(f.next_frame().unwrap().unwrap().1, 100);
    }

    #[test]
    fn sinks_stop_at_the_byte_bound() {
        let noise = Bitmap {
            width: 64,
            height: 64,
            channels: 3,
            data: (0..64 * 64 * 3u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        };
        let mut gif = Sink::new(
            OutputFormat::Gif,
            (64, 64),
            0,
            80,
            &EncodeSettings::default(),
            2000,
        )
        .unwrap();
        assert!(matches!(
            gif.add(&noise, 10),
            Err(ImageError::OutputTooLarge { limit: 2000 })
        ));
        let mut webp = Sink::new(
            OutputFormat::Webp,
            (64, 64),
            0,
            100,
            &EncodeSettings::default(),
            2000,
        )
        .unwrap();
        let r = (|| {
            for _ in 0..4 {
                webp.add(&noise, 10)?;
            }
            Ok::<_, ImageError>(())
        })();
        let r = r.and_then(|()| webp.finish().map(|_| ()));
        assert!(matches!(r, Err(ImageError::OutputTooLarge { limit: 2000 })));
    }
}
