//! What every configuration section shares: the error that names a key, bounded checks, and
//! value types that parse themselves while loading (so a loaded configuration holds no
//! unparsed strings). A leaf module: each domain's section imports it, it imports no domain.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "PIXGATE__";

/// A configuration problem, naming the key and its environment variable.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}` ({env}): {message}")]
pub struct ConfigError {
    pub key: String,
    pub env: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_owned(),
            env: env_name(key),
            message: message.into(),
        }
    }
}

/// `server.listen` → `PIXGATE__SERVER__LISTEN`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

/// Durations are bounded: absurd values would overflow `Instant` arithmetic.
pub const MAX_SECONDS: u64 = 86_400;

/// 1 second ..= a day.
pub fn seconds(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 || v > MAX_SECONDS {
        Err(ConfigError::new(
            key,
            format!("must be between 1 second and {MAX_SECONDS} seconds"),
        ))
    } else {
        Ok(())
    }
}

pub fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        Err(ConfigError::new(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

/// `v` within `range`, or an error that states the range.
pub fn within(key: &str, v: u64, range: std::ops::RangeInclusive<u64>) -> Result<(), ConfigError> {
    if range.contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("must be {}..={}", range.start(), range.end()),
        ))
    }
}

/// Fails with `message` on `key` when `bad`.
pub fn require(bad: bool, key: &str, message: &str) -> Result<(), ConfigError> {
    if bad {
        Err(ConfigError::new(key, message))
    } else {
        Ok(())
    }
}

/// Preset and plan names: `[A-Za-z0-9_-]+`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An outbound URL (JWKS, CDN purge) must be HTTPS, except on loopback (tests, sidecars).
pub fn outbound_url_allowed(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let Some(authority) = uri.authority() else {
        return false;
    };
    // No userinfo: `http://localhost@evil.example/` names evil.example.
    if authority.as_str().contains('@') {
        return false;
    }
    match uri.scheme_str() {
        Some("https") => true,
        Some("http") => matches!(authority.host(), "127.0.0.1" | "localhost" | "[::1]"),
        _ => false,
    }
}

/// Parses `a.b.c.d/n` or `::1/128`; a bare address means a single host.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("`{s}` is not a CIDR or IP address"))
}

/// A network from configuration (`10.0.0.0/8`, or a bare address for one host); written back
/// as the CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_cidr(&text)
            .map(Cidr)
            .map_err(serde::de::Error::custom)
    }
}

/// An optional listen address: the empty string is "not set" (so the key keeps a string type
/// for environment overrides).
pub mod opt_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("not address:port: {e}")))
    }
}

/// A listen address, with the same message as [`opt_addr`].
pub mod addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("not address:port: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_their_key_and_bound() {
        assert!(seconds("a.b", 0).is_err());
        assert!(seconds("a.b", MAX_SECONDS + 1).is_err());
        assert!(seconds("a.b", MAX_SECONDS).is_ok());
        let e = within("a.b", 7, 0..=6).unwrap_err();
        assert_eq!((e.key.as_str(), e.env.as_str()), ("a.b", "PIXGATE__A__B"));
        assert_eq!(e.message, "must be 0..=6");
        assert!(positive("x", 0).is_err() && positive("x", 1).is_ok());
        assert!(require(true, "x", "m").is_err() && require(false, "x", "m").is_ok());
    }

    #[test]
    fn outbound_urls_are_https_or_loopback_without_userinfo() {
        assert!(outbound_url_allowed("https://idp.example/jwks.json"));
        assert!(outbound_url_allowed("http://127.0.0.1:9/x"));
        assert!(!outbound_url_allowed("http://idp.example/jwks.json"));
        assert!(!outbound_url_allowed("http://localhost@evil.example/"));
        assert!(!outbound_url_allowed("ftp://x/"));
    }

    #[test]
    fn cidrs_take_bare_addresses_and_round_trip() {
        assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert!(parse_cidr("not-a-net").is_err());
        let c: Cidr = toml::Value::String("::1".into()).try_into().unwrap();
        assert_eq!(toml::Value::try_from(c).unwrap().as_str(), Some("::1/128"));
    }
}
