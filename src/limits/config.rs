//! `[limits]`: source and result bounds, quotas, rate limits, plans. (`[redis]`, where the
//! shared counters live, is `kv::config`.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::types::{ConfigError, positive, require, seconds, valid_name, within};
use crate::image::ImageFormat;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Upload body cap and read cap for originals.
    pub max_source_bytes: u64,
    /// Pixel cap of a source image, checked from its header before any decode.
    pub max_source_pixels: u64,
    /// Longest side of a source image (width or height), from its header: bounds resampling
    /// cost, which grows with the longer side, for shapes like 50,000,000×1.
    pub max_source_dimension: u64,
    /// Pixel cap of a transform result.
    pub max_result_pixels: u64,
    /// Largest width or height a URL may ask for (libwebp's own ceiling is 16383).
    pub max_result_dimension: u64,
    pub max_frames: u64,
    /// Pixels of all frames of an animation together (frames × canvas), checked from the
    /// header before decoding: bounds what a many-frame animation costs once frames are
    /// rendered (imgproxy's `max_animation_frame_resolution`).
    pub max_animation_pixels: u64,
    /// Largest encoded result, bytes: an animation's encoder stops as its output passes it
    /// (`422 result_too_large`); a still is checked once encoded.
    pub max_result_bytes: u64,
    /// Formats accepted for upload (`jpeg`, `png`, `webp`, `gif`, `bmp`, `ico`, `tiff`).
    pub upload_formats: Vec<ImageFormat>,
    /// Per-user quotas per rolling hour (the free tier and plans without an override).
    pub uploads_per_hour: u64,
    pub transforms_per_hour: u64,
    /// The rolling window of both quotas: 3600 (an hour) unless testing or tuning.
    pub quota_window_secs: u64,
    /// Authenticated requests per user per rolling minute; 0: not limited.
    pub requests_per_minute: u64,
    /// Signed-URL requests per client IP per rolling minute; 0: not limited.
    pub ip_requests_per_minute: u64,
    /// Failed authentications an IP may make per window before it gets 429; 0: off.
    pub auth_failures_per_ip: u64,
    pub auth_failure_window_secs: u64,
    /// Admins are not charged quotas.
    pub admin_bypass: bool,
    /// While Redis is unreachable, each instance enforces this share of every limit.
    pub fallback_share_percent: u64,
    /// Subjects (users, IPs) the in-process limiter tracks at most.
    pub local_max_keys: u64,
    /// `limits.plans.<plan>.*`: overrides chosen by the plan claim.
    pub plans: BTreeMap<String, PlanLimits>,
}

/// `limits.plans.<plan>`: any key left out takes the top-level value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploads_per_hour: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transforms_per_hour: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
}

/// Keys a `limits.plans.<plan>` table may hold.
pub const PLAN_KEYS: &[&str] = &[
    "uploads_per_hour",
    "transforms_per_hour",
    "requests_per_minute",
];

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_source_bytes: 25 * 1024 * 1024,
            max_source_pixels: 50_000_000,
            max_source_dimension: 32_768,
            max_result_pixels: 40_000_000,
            max_result_dimension: 16_383,
            max_frames: 1000,
            max_animation_pixels: 200_000_000,
            max_result_bytes: 64 << 20,
            upload_formats: vec![
                ImageFormat::Jpeg,
                ImageFormat::Png,
                ImageFormat::Webp,
                ImageFormat::Gif,
                ImageFormat::Bmp,
                ImageFormat::Ico,
                ImageFormat::Tiff,
                ImageFormat::Jxl,
                ImageFormat::Avif,
                ImageFormat::Heic,
            ],
            uploads_per_hour: 100,
            transforms_per_hour: 1000,
            quota_window_secs: 3600,
            requests_per_minute: 300,
            ip_requests_per_minute: 1200,
            auth_failures_per_ip: 5,
            auth_failure_window_secs: 900,
            admin_bypass: true,
            fallback_share_percent: 100,
            local_max_keys: 100_000,
            plans: BTreeMap::new(),
        }
    }
}

impl LimitsConfig {
    /// The engine's bounds (validated: the sides fit in `u32`).
    pub fn image_limits(&self) -> crate::image::ImageLimits {
        crate::image::ImageLimits {
            max_source_pixels: self.max_source_pixels,
            max_source_dimension: u32::try_from(self.max_source_dimension).unwrap_or(u32::MAX),
            max_result_pixels: self.max_result_pixels,
            max_result_dimension: u32::try_from(self.max_result_dimension).unwrap_or(u32::MAX),
            max_frames: self.max_frames,
            max_animation_pixels: self.max_animation_pixels,
            max_result_bytes: self.max_result_bytes,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("limits.max_source_bytes", self.max_source_bytes)?;
        positive("limits.max_source_pixels", self.max_source_pixels)?;
        require(
            !(1..=65_535).contains(&self.max_source_dimension),
            "limits.max_source_dimension",
            "must be 1..=65535 (no JPEG, WebP or GIF side can be longer)",
        )?;
        positive("limits.max_result_pixels", self.max_result_pixels)?;
        positive("limits.max_frames", self.max_frames)?;
        positive("limits.max_animation_pixels", self.max_animation_pixels)?;
        positive("limits.max_result_bytes", self.max_result_bytes)?;
        require(
            self.upload_formats.is_empty(),
            "limits.upload_formats",
            "at least one format is required",
        )?;
        positive("limits.uploads_per_hour", self.uploads_per_hour)?;
        positive("limits.transforms_per_hour", self.transforms_per_hour)?;
        seconds(
            "limits.auth_failure_window_secs",
            self.auth_failure_window_secs,
        )?;
        seconds("limits.quota_window_secs", self.quota_window_secs)?;
        within(
            "limits.fallback_share_percent",
            self.fallback_share_percent,
            1..=100,
        )?;
        positive("limits.local_max_keys", self.local_max_keys)?;
        self.validate_plans()?;
        require(
            !(1..=16_383).contains(&self.max_result_dimension),
            "limits.max_result_dimension",
            "must be between 1 and 16383 (the WebP ceiling)",
        )
    }

    fn validate_plans(&self) -> Result<(), ConfigError> {
        for (name, plan) in &self.plans {
            require(
                !valid_name(name),
                &format!("limits.plans.{name}"),
                "plan names are [A-Za-z0-9_-]",
            )?;
            // Quotas are never unlimited.
            for (key, v) in [
                ("uploads_per_hour", plan.uploads_per_hour),
                ("transforms_per_hour", plan.transforms_per_hour),
            ] {
                require(
                    v == Some(0),
                    &format!("limits.plans.{name}.{key}"),
                    "must be greater than 0",
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_validate_bounds_and_plans() {
        assert!(LimitsConfig::default().validate().is_ok());
        let bad = |f: fn(&mut LimitsConfig)| {
            let mut c = LimitsConfig::default();
            f(&mut c);
            c.validate().unwrap_err().key
        };
        assert_eq!(
            bad(|c| c.max_source_dimension = 65_536),
            "limits.max_source_dimension"
        );
        assert_eq!(bad(|c| c.upload_formats.clear()), "limits.upload_formats");
        assert_eq!(
            bad(|c| c.fallback_share_percent = 0),
            "limits.fallback_share_percent"
        );
        assert_eq!(
            bad(|c| {
                c.plans.insert(
                    "pro".into(),
                    PlanLimits {
                        uploads_per_hour: Some(0),
                        ..PlanLimits::default()
                    },
                );
            }),
            "limits.plans.pro.uploads_per_hour"
        );
        assert_eq!(
            bad(|c| {
                c.plans.insert("a b".into(), PlanLimits::default());
            }),
            "limits.plans.a b"
        );
        assert!(toml::from_str::<LimitsConfig>("upload_formats = [\"psd\"]").is_err());
    }
}
