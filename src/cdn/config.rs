//! `[cdn]`: the purge hook's request (URL template, method, secret headers, body) and its
//! retry and concurrency bounds. Method and headers are parsed while loading.

use http::Method;
use http::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::types::{ConfigError, outbound_url_allowed, positive, require, within};

/// Methods the hook may use (`PURGE` is Fastly's single-URL purge).
pub const METHODS: &[&str] = &["POST", "PUT", "DELETE", "GET", "PURGE"];

/// The CDN purge hook, called after an image's delete (and on account erasure).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdnConfig {
    /// Empty: no hook. `{key}`, `{image_id}` and `{nonce}` are substituted.
    pub purge_url: String,
    pub purge_method: PurgeMethod,
    /// `Name: value` headers (a secret: API tokens live here).
    pub purge_headers: Vec<PurgeHeader>,
    /// Request body template (same placeholders); empty for none.
    pub purge_body: String,
    /// Per-attempt deadline.
    pub purge_timeout_ms: u64,
    /// Attempts per purge (1 = no retry); backoff 0.25 s, 1 s, 4 s, …
    pub purge_attempts: u64,
    /// Purges waiting; beyond this a purge is dropped (counted, logged).
    pub purge_queue: u64,
    /// Purge requests in flight at once.
    pub purge_concurrency: u64,
}

/// One of [`METHODS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeMethod(pub Method);

impl Serialize for PurgeMethod {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for PurgeMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        METHODS
            .iter()
            .find(|m| **m == text)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .map(PurgeMethod)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("must be one of: {}", METHODS.join(", ")))
            })
    }
}

/// A `Name: value` header of the hook. The value is a secret: marked sensitive, and a
/// malformed entry's error never repeats its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeHeader {
    pub name: HeaderName,
    pub value: HeaderValue,
}

/// `Name: value` → a header pair, if both parts are valid.
pub fn parse_header(line: &str) -> Option<PurgeHeader> {
    let (name, value) = line.split_once(':')?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
    let mut value = HeaderValue::from_str(value.trim()).ok()?;
    value.set_sensitive(true);
    Some(PurgeHeader { name, value })
}

impl Serialize for PurgeHeader {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let value = String::from_utf8_lossy(self.value.as_bytes());
        s.collect_str(&format_args!("{}: {value}", self.name))
    }
}

impl<'de> Deserialize<'de> for PurgeHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_header(&text).ok_or_else(|| {
            serde::de::Error::custom(
                "not a valid `Name: value` header (through the environment, values cannot contain commas)",
            )
        })
    }
}

impl Default for CdnConfig {
    fn default() -> Self {
        CdnConfig {
            purge_url: String::new(),
            purge_method: PurgeMethod(Method::POST),
            purge_headers: Vec::new(),
            purge_body: String::new(),
            purge_timeout_ms: 5_000,
            purge_attempts: 4,
            purge_queue: 1_024,
            purge_concurrency: 4,
        }
    }
}

impl CdnConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.purge_url.is_empty() {
            return Ok(());
        }
        let sample = super::expand(&self.purge_url, "0123456789abcdef0123456789abcdef", "n");
        require(
            !outbound_url_allowed(&sample),
            "cdn.purge_url",
            "must be an https URL (http only to loopback), without userinfo",
        )?;
        within("cdn.purge_attempts", self.purge_attempts, 1..=10)?;
        within("cdn.purge_timeout_ms", self.purge_timeout_ms, 1..=60_000)?;
        positive("cdn.purge_queue", self.purge_queue)?;
        positive("cdn.purge_concurrency", self.purge_concurrency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_and_headers_parse_while_loading_without_echoing_values() {
        let c: CdnConfig = toml::from_str(
            "purge_method = \"PURGE\"\npurge_headers = [\"Fastly-Key: sekrit\", \"X-A: b\"]",
        )
        .unwrap();
        assert_eq!(c.purge_method.0.as_str(), "PURGE");
        assert_eq!(c.purge_headers[0].name.as_str(), "fastly-key");
        assert!(c.purge_headers[0].value.is_sensitive());
        let back = toml::Value::try_from(&c).unwrap();
        assert_eq!(back["purge_headers"][1].as_str(), Some("x-a: b"));
        assert!(toml::from_str::<CdnConfig>("purge_method = \"PATCH\"").is_err());
        let doc: toml::Value = toml::from_str("purge_headers = [\"sekrit\"]").unwrap();
        let err = doc.try_into::<CdnConfig>().unwrap_err();
        assert!(err.to_string().contains("not a valid"), "{err}");
        assert!(!err.to_string().contains("sekrit"), "{err}");
    }

    #[test]
    fn validate_checks_the_url_and_bounds_only_when_a_hook_is_set() {
        let off = CdnConfig {
            purge_attempts: 0,
            ..CdnConfig::default()
        };
        assert!(off.validate().is_ok());
        let on = |url: &str| CdnConfig {
            purge_url: url.into(),
            ..CdnConfig::default()
        };
        assert!(on("https://cdn.example/purge/{key}").validate().is_ok());
        assert_eq!(
            on("http://cdn.example/{key}").validate().unwrap_err().key,
            "cdn.purge_url"
        );
        let zero = CdnConfig {
            purge_attempts: 0,
            ..on("https://cdn.example/{key}")
        };
        assert_eq!(zero.validate().unwrap_err().key, "cdn.purge_attempts");
    }
}
