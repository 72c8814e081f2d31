//! `[server]`: listeners, connection and request bounds, TLS, CORS, trusted proxies.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::types::{Cidr, ConfigError, addr, opt_addr, positive, require, seconds, within};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(with = "addr")]
    pub listen: SocketAddr,
    /// Separate listener for `/metrics`; empty means `/metrics` is served on `listen`.
    #[serde(with = "opt_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Networks whose forwarding header is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// The header those proxies write: `x-forwarded-for` or `forwarded` (RFC 7239).
    pub client_ip_header: ClientIpHeader,
    pub max_connections: u64,
    /// Time allowed for a client to send a complete request head (slowloris guard).
    pub header_read_timeout_secs: u64,
    /// Time allowed for a whole request, body and processing included.
    pub request_timeout_secs: u64,
    /// A connection with no request in flight for this long is closed (HTTP/2 has no other
    /// idle limit; HTTP/1 keep-alives are also bounded by the header-read timeout).
    pub idle_timeout_secs: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take before the process exits anyway.
    pub shutdown_grace_secs: u64,
    /// Body cap for every route except uploads (which use `limits.max_source_bytes`).
    pub max_body_bytes: u64,
    pub http2_max_concurrent_streams: u64,
    /// Origins allowed to call the API from a browser (exact `scheme://host[:port]`), or `*`.
    pub cors_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` to allowed origins (never with `*`).
    pub cors_allow_credentials: bool,
    /// PEM certificate chain and private key: when both are set, `listen` serves HTTPS only.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// `max-age` of `Strict-Transport-Security` on HTTPS responses.
    pub hsts_max_age_secs: u64,
    /// `/readyz` answers within this many milliseconds: a storage check still running then
    /// reads as unready (load balancers and Kubernetes probes give up after ~1 s).
    pub readiness_timeout_ms: u64,
}

/// Where trusted proxies put the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientIpHeader {
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    #[serde(rename = "forwarded")]
    Forwarded,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            trusted_proxies: Vec::new(),
            client_ip_header: ClientIpHeader::XForwardedFor,
            max_connections: 1024,
            header_read_timeout_secs: 10,
            request_timeout_secs: 30,
            idle_timeout_secs: 60,
            shutdown_grace_secs: 25,
            max_body_bytes: 64 * 1024,
            http2_max_concurrent_streams: 100,
            cors_origins: Vec::new(),
            cors_allow_credentials: false,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            hsts_max_age_secs: 31_536_000,
            readiness_timeout_ms: 800,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("server.max_connections", self.max_connections)?;
        for (key, v) in [
            (
                "server.header_read_timeout_secs",
                self.header_read_timeout_secs,
            ),
            ("server.request_timeout_secs", self.request_timeout_secs),
            ("server.idle_timeout_secs", self.idle_timeout_secs),
            ("server.shutdown_grace_secs", self.shutdown_grace_secs),
        ] {
            seconds(key, v)?;
        }
        positive("server.max_body_bytes", self.max_body_bytes)?;
        within(
            "server.readiness_timeout_ms",
            self.readiness_timeout_ms,
            1..=60_000,
        )?;
        positive(
            "server.http2_max_concurrent_streams",
            self.http2_max_concurrent_streams,
        )?;
        self.validate_cors()?;
        require(
            self.tls_cert_file.is_empty() != self.tls_key_file.is_empty(),
            "server.tls_key_file",
            "server.tls_cert_file and server.tls_key_file are set together",
        )
    }

    fn validate_cors(&self) -> Result<(), ConfigError> {
        for origin in &self.cors_origins {
            if origin == "*" {
                require(
                    self.cors_allow_credentials,
                    "server.cors_allow_credentials",
                    "cannot be true when server.cors_origins contains `*`",
                )?;
            } else if !valid_origin(origin) {
                return Err(ConfigError::new(
                    "server.cors_origins",
                    format!("`{origin}` is not an origin (scheme://host[:port], no path)"),
                ));
            }
        }
        Ok(())
    }

    /// The trusted proxy networks.
    pub fn trusted_networks(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies.iter().map(|c| c.0).collect()
    }
}

/// `scheme://host[:port]` with nothing after it (what a browser sends in `Origin`).
fn valid_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_checks_bounds_cors_and_tls_pairs() {
        assert!(ServerConfig::default().validate().is_ok());
        let bad = |f: fn(&mut ServerConfig)| {
            let mut c = ServerConfig::default();
            f(&mut c);
            c.validate().unwrap_err().key
        };
        assert_eq!(bad(|c| c.max_connections = 0), "server.max_connections");
        assert_eq!(bad(|c| c.idle_timeout_secs = 0), "server.idle_timeout_secs");
        assert_eq!(
            bad(|c| c.readiness_timeout_ms = 60_001),
            "server.readiness_timeout_ms"
        );
        assert_eq!(
            bad(|c| c.cors_origins = vec!["https://a.example/x".into()]),
            "server.cors_origins"
        );
        assert_eq!(
            bad(|c| {
                c.cors_origins = vec!["*".into()];
                c.cors_allow_credentials = true;
            }),
            "server.cors_allow_credentials"
        );
        assert_eq!(
            bad(|c| c.tls_cert_file = "/c.pem".into()),
            "server.tls_key_file"
        );
    }

    #[test]
    fn addresses_and_headers_parse_while_loading() {
        let c: ServerConfig = toml::from_str(
            "listen = \"0.0.0.0:9\"\nmetrics_listen = \"\"\ntrusted_proxies = [\"10.0.0.1\"]\nclient_ip_header = \"forwarded\"",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9);
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.trusted_networks()[0].to_string(), "10.0.0.1/32");
        assert_eq!(c.client_ip_header, ClientIpHeader::Forwarded);
        assert!(toml::from_str::<ServerConfig>("listen = \"localhost\"").is_err());
        assert!(toml::from_str::<ServerConfig>("client_ip_header = \"x-real-ip\"").is_err());
    }
}
