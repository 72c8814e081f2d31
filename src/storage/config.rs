//! `[storage]`: which backend holds originals, derived objects and the audit archive.

use serde::{Deserialize, Serialize};

use crate::config::types::{ConfigError, require, seconds, within};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: Backend,
    pub fs_root: String,
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_bucket: String,
    pub s3_derived_bucket: String,
    /// The audit archive's bucket; empty: the originals bucket (keys under `audit/`).
    pub s3_audit_bucket: String,
    pub s3_force_path_style: bool,
    /// Server-side encryption of every object written: empty (bucket default), `AES256`
    /// (SSE-S3) or `aws:kms` (SSE-KMS with `s3_sse_kms_key_id`).
    pub s3_sse: Sse,
    pub s3_sse_kms_key_id: String,
    /// Each storage operation is abandoned after this long (all its attempts together).
    pub timeout_secs: u64,
    /// Attempts per S3 operation (the SDK's standard retry: throttling, 5xx, timeouts and
    /// connection errors, with jittered backoff). 1: no retry.
    pub s3_max_attempts: u64,
    /// Deadline of one S3 attempt; 0: none (only `timeout_secs`). Set it below
    /// `timeout_secs` so a request stuck on a dying node is retried within the operation.
    pub s3_attempt_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A directory (the embedded default).
    Fs,
    S3,
}

/// S3 server-side encryption asked for on every PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sse {
    /// The bucket's default.
    #[serde(rename = "")]
    BucketDefault,
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    Kms,
}

impl Sse {
    /// The header value, `None` for the bucket default.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Sse::BucketDefault => None,
            Sse::Aes256 => Some("AES256"),
            Sse::Kms => Some("aws:kms"),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::Fs,
            fs_root: "./data".into(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_bucket: String::new(),
            s3_derived_bucket: String::new(),
            s3_audit_bucket: String::new(),
            s3_force_path_style: false,
            s3_sse: Sse::BucketDefault,
            s3_sse_kms_key_id: String::new(),
            timeout_secs: 10,
            s3_max_attempts: 3,
            s3_attempt_timeout_ms: 0,
        }
    }
}

impl StorageConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.backend {
            Backend::Fs => require(
                self.fs_root.is_empty(),
                "storage.fs_root",
                "must not be empty",
            )?,
            Backend::S3 => {
                for (key, v) in [
                    ("storage.s3_region", &self.s3_region),
                    ("storage.s3_bucket", &self.s3_bucket),
                    ("storage.s3_derived_bucket", &self.s3_derived_bucket),
                ] {
                    require(v.is_empty(), key, "required when storage.backend = s3")?;
                }
            }
        }
        seconds("storage.timeout_secs", self.timeout_secs)?;
        within("storage.s3_max_attempts", self.s3_max_attempts, 1..=10)?;
        require(
            self.s3_attempt_timeout_ms >= self.timeout_secs * 1000,
            "storage.s3_attempt_timeout_ms",
            "must be below storage.timeout_secs (0: no per-attempt deadline)",
        )?;
        require(
            self.s3_sse != Sse::Kms && !self.s3_sse_kms_key_id.is_empty(),
            "storage.s3_sse_kms_key_id",
            "only used with storage.s3_sse = \"aws:kms\"",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_what_s3_needs() {
        assert!(StorageConfig::default().validate().is_ok());
        let s3 = StorageConfig {
            backend: Backend::S3,
            ..StorageConfig::default()
        };
        assert_eq!(s3.validate().unwrap_err().key, "storage.s3_bucket");
        let kms_key_alone = StorageConfig {
            s3_sse_kms_key_id: "k".into(),
            ..StorageConfig::default()
        };
        assert_eq!(
            kms_key_alone.validate().unwrap_err().key,
            "storage.s3_sse_kms_key_id"
        );
        let no_root = StorageConfig {
            fs_root: String::new(),
            ..StorageConfig::default()
        };
        assert_eq!(no_root.validate().unwrap_err().key, "storage.fs_root");
        let slow_attempt = StorageConfig {
            s3_attempt_timeout_ms: 10_000,
            ..StorageConfig::default()
        };
        assert_eq!(
            slow_attempt.validate().unwrap_err().key,
            "storage.s3_attempt_timeout_ms"
        );
        let no_attempt = StorageConfig {
            s3_max_attempts: 0,
            ..StorageConfig::default()
        };
        assert_eq!(
            no_attempt.validate().unwrap_err().key,
            "storage.s3_max_attempts"
        );
    }

    #[test]
    fn sse_values_parse_while_loading() {
        let c: StorageConfig = toml::from_str("s3_sse = \"aws:kms\"").unwrap();
        assert_eq!(c.s3_sse.header(), Some("aws:kms"));
        assert_eq!(StorageConfig::default().s3_sse.header(), None);
        assert!(toml::from_str::<StorageConfig>("s3_sse = \"aes\"").is_err());
        assert!(toml::from_str::<StorageConfig>("backend = \"ftp\"").is_err());
    }
}
