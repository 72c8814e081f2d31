//! `[sources]`: imgproxy-style `s3://BUCKET/KEY` source URLs served during a migration.
//!
//! ```toml
//! [sources]
//! legacy = [{ bucket = "photos", prefix = "users/", owner_pattern = "users/{owner}/**" }]
//! legacy_lazy = false
//! legacy_failure_ttl_secs = 60
//! ```
//!
//! From the environment each entry is a string, entries comma-separated:
//! `PIXGATE__SOURCES__LEGACY="s3://photos/users/ owner_pattern=users/{owner}/**"` (or
//! `owner=ID`).

use serde::{Deserialize, Serialize};

use super::owners::{Owners, Pattern, valid_owner};
use crate::config::types::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesConfig {
    /// Buckets and prefixes whose `s3://` URLs are served, through the images imported from
    /// them.
    pub legacy: Vec<LegacyEntry>,
    /// An `s3://` URL under `legacy` whose object was not imported yet is imported on its
    /// first request (same checks as `pixgate import`), instead of `404`.
    pub legacy_lazy: bool,
    /// A lazy import's lasting refusal of an object (not an image, too large, no such key, no
    /// owner) is answered from memory for this long, instead of reading and decoding the
    /// object again on every request. 0 turns it off; at most a day.
    pub legacy_failure_ttl_secs: u64,
}

impl Default for SourcesConfig {
    fn default() -> SourcesConfig {
        SourcesConfig {
            legacy: Vec::new(),
            legacy_lazy: false,
            legacy_failure_ttl_secs: 60,
        }
    }
}

/// One `sources.legacy` entry, as a table (file) or a string (environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LegacyEntry {
    Table {
        bucket: String,
        #[serde(default)]
        prefix: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner_pattern: Option<String>,
    },
    Text(String),
}

/// A validated `sources.legacy` entry.
#[derive(Debug, Clone)]
pub struct LegacySource {
    pub bucket: String,
    pub prefix: String,
    pub owners: Owners,
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
}

impl LegacyEntry {
    fn resolve(&self) -> Result<LegacySource, String> {
        let (bucket, prefix, owner, pattern) = match self {
            LegacyEntry::Table {
                bucket,
                prefix,
                owner,
                owner_pattern,
            } => (
                bucket.clone(),
                prefix.clone(),
                owner.clone(),
                owner_pattern.clone(),
            ),
            LegacyEntry::Text(t) => {
                let mut parts = t.split_whitespace();
                let addr = parts.next().unwrap_or_default();
                let (bucket, prefix) = super::source::parse_s3(addr)
                    .ok_or_else(|| format!("`{addr}`: must start with s3://BUCKET/"))?;
                let (mut owner, mut pattern) = (None, None);
                for p in parts {
                    match p.split_once('=') {
                        Some(("owner", v)) => owner = Some(v.to_owned()),
                        Some(("owner_pattern", v)) => pattern = Some(v.to_owned()),
                        _ => return Err(format!("`{p}`: expected owner=ID or owner_pattern=PAT")),
                    }
                }
                (bucket, prefix, owner, pattern)
            }
        };
        if !valid_bucket(&bucket) {
            return Err(format!("`{bucket}` is not an S3 bucket name"));
        }
        let owners = match (owner, pattern) {
            (Some(o), None) if valid_owner(&o) => Owners::Fixed(o),
            (None, Some(p)) => Owners::Pattern(Pattern::parse(&p)?),
            _ => return Err("needs exactly one of owner or owner_pattern".into()),
        };
        Ok(LegacySource {
            bucket,
            prefix,
            owners,
        })
    }
}

impl SourcesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.legacy_failure_ttl_secs > 86_400 {
            return Err(ConfigError::new(
                "sources.legacy_failure_ttl_secs",
                "at most 86400 (a day)",
            ));
        }
        self.resolved().map(|_| ())
    }

    /// The entries, checked.
    pub fn resolved(&self) -> Result<Vec<LegacySource>, ConfigError> {
        self.legacy
            .iter()
            .map(|e| {
                e.resolve()
                    .map_err(|m| ConfigError::new("sources.legacy", m))
            })
            .collect()
    }
}

/// The entry that covers `bucket`/`key`, if any (the longest prefix wins).
pub fn covering<'a>(
    sources: &'a [LegacySource],
    bucket: &str,
    key: &str,
) -> Option<&'a LegacySource> {
    sources
        .iter()
        .filter(|s| s.bucket == bucket && key.starts_with(&s.prefix))
        .max_by_key(|s| s.prefix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_from_tables_and_strings() {
        let c: SourcesConfig = toml::from_str(
            "legacy = [{ bucket = \"photos\", prefix = \"users/\", owner_pattern = \"users/{owner}/**\" }, \
             \"s3://avatars/ owner=alice\"]",
        )
        .unwrap();
        let r = c.resolved().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].bucket, "avatars");
        assert_eq!(r[0].owners.assign("users/bob/x.jpg").unwrap().owner, "bob");
        assert_eq!(r[1].owners.assign("x.jpg").unwrap().owner, "alice");
        assert!(covering(&r, "photos", "users/bob/x.jpg").is_some());
        assert!(covering(&r, "photos", "other/x.jpg").is_none());
        assert!(covering(&r, "other", "users/bob/x.jpg").is_none());
        for bad in [
            "legacy = [\"s3://Photos/ owner=a\"]",
            "legacy = [\"photos/ owner=a\"]",
            "legacy = [\"s3://photos/ owner=a owner_pattern=x/{owner}\"]",
            "legacy = [\"s3://photos/\"]",
            "legacy = [{ bucket = \"photos\", owner_pattern = \"users/*\" }]",
        ] {
            let c: SourcesConfig = toml::from_str(bad).unwrap();
            assert_eq!(c.validate().unwrap_err().key, "sources.legacy", "{bad}");
        }
    }
}
