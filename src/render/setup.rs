//! Start-up: the image engine from configuration, and the fingerprint of everything in it that
//! changes rendered bytes.

use crate::config::Config;
use crate::image::{Bitmap, Engine, ImageLimits, MetadataPolicy};

/// The image engine as configured (start-up code: loads the watermark image).
pub fn engine(config: &Config, limits: ImageLimits) -> Result<Engine, String> {
    let watermark = if config.watermark.path.is_empty() {
        None
    } else {
        Some(load_watermark(&config.watermark.path, &limits)?)
    };
    Ok(Engine {
        limits,
        encode: config.encode.settings(),
        jpeg_decoder: config.transform.jpeg_decoder,
        watermark,
        metadata: MetadataPolicy {
            allow_keep: config.transform.allow_keep_metadata,
            keep_gps: config.transform.keep_gps,
        },
        animate: config.transform.animate,
    })
}

/// Hash of the engine's byte-changing settings (encoder, JPEG decoder, watermark pixels).
pub(super) fn fingerprint(engine: &Engine) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{:?}|{:?}", engine.encode, engine.jpeg_decoder).as_bytes());
    // Only `sm:0` results depend on it; the default leaves existing keys alone.
    if engine.metadata != MetadataPolicy::default() {
        h.update(format!("{:?}", engine.metadata).as_bytes());
    }
    // Off, animated sources render as stills under the same keys: a different print.
    if !engine.animate {
        h.update(b"stills");
    }
    if let Some(wm) = &engine.watermark {
        h.update(format!("{}x{}x{}", wm.width, wm.height, wm.channels).as_bytes());
        h.update(&wm.data);
    }
    hex::encode(&h.finalize()[..6])
}

/// Largest watermark image accepted (pixels): it is composited onto every `wm:` result.
const MAX_WATERMARK_PIXELS: u64 = 4_000_000;

fn load_watermark(path: &str, limits: &ImageLimits) -> Result<Bitmap, String> {
    let err = |m: String| format!("watermark.path: {path}: {m}");
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let probe = crate::image::probe(&bytes).map_err(|e| err(e.to_string()))?;
    let wm_limits = ImageLimits {
        max_source_pixels: MAX_WATERMARK_PIXELS.min(limits.max_source_pixels),
        ..*limits
    };
    wm_limits
        .check_source(probe.width, probe.height)
        .map_err(|e| err(e.to_string()))?;
    let bitmap = crate::image::decode(&bytes, &probe).map_err(|e| err(e.to_string()))?;
    Ok(crate::image::to_rgba(bitmap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::JpegDecoder;

    #[test]
    fn fingerprint_follows_the_byte_changing_config() {
        let limits = ImageLimits {
            max_source_pixels: 1_000,
            max_source_dimension: 1_000,
            max_result_pixels: 1_000,
            max_result_dimension: 100,
            max_frames: 1,
            max_animation_pixels: 200_000_000,
            max_result_bytes: 64 << 20,
        };
        let base = Engine::new(limits);
        let same = Engine::new(limits);
        assert_eq!(fingerprint(&base), fingerprint(&same));
        let mut encode = base.clone();
        encode.encode.webp_method = 2;
        let mut decoder = base.clone();
        decoder.jpeg_decoder = JpegDecoder::Zune;
        let mut marked = base.clone();
        marked.watermark = Some(Bitmap {
            width: 1,
            height: 1,
            channels: 4,
            data: vec![1, 2, 3, 4],
        });
        let mut other_mark = marked.clone();
        if let Some(w) = other_mark.watermark.as_mut() {
            w.data[0] = 9;
        }
        let mut keeping = base.clone();
        keeping.metadata.allow_keep = true;
        let mut stills = base.clone();
        stills.animate = false;
        let prints: Vec<String> = [
            &base,
            &encode,
            &decoder,
            &marked,
            &other_mark,
            &keeping,
            &stills,
        ]
        .iter()
        .map(|e| fingerprint(e))
        .collect();
        for (i, a) in prints.iter().enumerate() {
            for b in &prints[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Limits do not change bytes of results that pass them: not part of the print.
        let mut roomier = base.clone();
        roomier.limits.max_result_pixels = 2_000;
        assert_eq!(fingerprint(&base), fingerprint(&roomier));
    }
}
