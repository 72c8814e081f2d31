//! Configuration: one typed section per domain, each owned by its module (`[server]` in
//! `server::config`, `[storage]` in `storage::config`, …), assembled here.
//!
//! Loading goes defaults in code → TOML file → `PIXGATE__SECTION__KEY` environment
//! ([`load`](Config::load), in `load.rs`): every key has a default, so the type of an
//! environment override is known from it, and a key that does not exist is an error that
//! names it. Values parse into their types while loading (addresses, networks, enums, header
//! pairs); [`Config::validate`] then checks each section's bounds and the few rules that span
//! sections. A configuration that passed both is used as it is: no code downstream re-parses
//! or re-clamps it.
//!
//! With no file and no `PIXGATE__*` variable the server runs the *embedded default*: filesystem
//! storage under `./data`, in-process limits, and development secrets (see [`DevSecrets`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod load;
use load::{get_path, set_path};
pub mod types;

// Each section from its own file (not through its domain's `mod.rs`, which depends on the
// running application): loading configuration needs no more than the section types.
pub use crate::audit::config::AuditConfig;
pub use crate::auth::config::AuthConfig;
pub use crate::cache::config::CacheConfig;
pub use crate::cdn::config::CdnConfig;
pub use crate::fleet::config::FleetConfig;
pub use crate::import::config::SourcesConfig;
pub use crate::kv::config::RedisConfig;
pub use crate::limits::config::{LimitsConfig, PlanLimits};
pub use crate::options::presets::Presets;
pub use crate::render::config::{EncodeConfig, TransformConfig, WatermarkConfig};
pub use crate::server::config::ServerConfig;
pub use crate::signature::SigningConfig;
pub use crate::storage::config::StorageConfig;
pub use load::FILE_PREFIX;
pub use types::{ConfigError, ENV_PREFIX, env_name, parse_cidr};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub signing: SigningConfig,
    pub auth: AuthConfig,
    pub redis: RedisConfig,
    pub fleet: FleetConfig,
    pub limits: LimitsConfig,
    pub transform: TransformConfig,
    pub cache: CacheConfig,
    pub cdn: CdnConfig,
    pub audit: AuditConfig,
    pub log: LogConfig,
    pub encode: EncodeConfig,
    pub watermark: WatermarkConfig,
    /// `[sources]`: legacy `s3://` source URLs during a migration.
    pub sources: SourcesConfig,
    /// `presets.<name>` = option string; `presets.eager` = list of preset names.
    pub presets: Presets,
    /// True when neither a file nor an environment override was given.
    #[serde(skip)]
    pub embedded: bool,
}

/// `[log]`: the process's log stream (set up by the binary).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `pixgate=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// Keys whose values are secrets: redacted by `check-config`, never logged.
const SECRET_KEYS: &[&str] = &[
    "signing.keys",
    "signing.salts",
    "auth.jwt_hs256_secret",
    "cdn.purge_headers",
];

impl Config {
    /// Every section's own checks, then the rules that span sections; the first problem is
    /// returned with its key named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.storage.validate()?;
        self.signing.validate()?;
        self.auth.validate(self.embedded)?;
        self.redis.validate()?;
        self.fleet.validate()?;
        self.limits.validate()?;
        self.transform.validate()?;
        self.encode.validate()?;
        self.presets.validate(self.max_result_dimension())?;
        types::require(
            self.transform.presets_only && self.presets.named.is_empty(),
            "transform.presets_only",
            "needs at least one preset",
        )?;
        self.cache.validate()?;
        self.cdn.validate()?;
        self.sources.validate()?;
        types::require(
            self.sources.legacy_lazy && self.storage.backend != crate::storage::Backend::S3,
            "sources.legacy_lazy",
            "needs storage.backend = \"s3\" (legacy buckets are read from its service)",
        )?;
        let s = &self.storage;
        let own = [&s.s3_bucket, &s.s3_derived_bucket, &s.s3_audit_bucket];
        types::require(
            s.backend == crate::storage::Backend::S3
                && self
                    .sources
                    .resolved()?
                    .iter()
                    .any(|e| own.contains(&&e.bucket)),
            "sources.legacy",
            "names one of pixgate's own buckets (storage.s3_bucket, s3_derived_bucket, s3_audit_bucket)",
        )?;
        self.audit.validate()
    }

    /// `limits.max_result_dimension` (validated ≤ 16383).
    pub fn max_result_dimension(&self) -> u32 {
        u32::try_from(self.limits.max_result_dimension).unwrap_or(u32::MAX)
    }

    /// What the URL parser needs: the dimension bound and the named presets.
    pub fn parse_limits(&self) -> crate::options::ParseLimits {
        crate::options::ParseLimits {
            max_dimension: self.max_result_dimension(),
            presets: self.presets.named.clone(),
            presets_only: self.transform.presets_only,
        }
    }

    /// Installs development secrets (embedded default only).
    pub fn apply_dev_secrets(&mut self, dev: &DevSecrets) {
        self.signing.keys = vec![dev.signing_key.clone()];
        self.signing.salts = vec![dev.signing_salt.clone()];
        self.auth.jwt_hs256_secret = dev.jwt_secret.clone();
    }

    /// The effective configuration as TOML with secrets redacted.
    pub fn redacted_toml(&self) -> String {
        let mut value = match toml::Value::try_from(self) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render config: {e}\n"),
        };
        for key in SECRET_KEYS {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            let redacted = match get_path(&value, &path) {
                Some(toml::Value::String(s)) if !s.is_empty() => {
                    Some(toml::Value::String("<redacted>".into()))
                }
                Some(toml::Value::Array(a)) => Some(toml::Value::Array(
                    a.iter()
                        .map(|_| toml::Value::String("<redacted>".into()))
                        .collect(),
                )),
                _ => None,
            };
            if let Some(v) = redacted {
                set_path(&mut value, &path, v);
            }
        }
        // A Redis URL may carry a password.
        let redis_path = ["redis".to_owned(), "url".to_owned()];
        if let Some(toml::Value::String(url)) = get_path(&value, &redis_path) {
            let clean = redact_url_password(url);
            set_path(&mut value, &redis_path, toml::Value::String(clean));
        }
        let seeds_path = ["redis".to_owned(), "cluster_urls".to_owned()];
        if let Some(toml::Value::Array(seeds)) = get_path(&value, &seeds_path) {
            let clean = seeds
                .iter()
                .map(|u| toml::Value::String(redact_url_password(u.as_str().unwrap_or_default())))
                .collect();
            set_path(&mut value, &seeds_path, toml::Value::Array(clean));
        }
        toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Secrets for the embedded default: random once, kept beside the data so `pixgate sign` and
/// `pixgate token` agree with the running server. Never well-known constants, so an embedded
/// default accidentally exposed is not trivially forgeable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevSecrets {
    pub signing_key: String,
    pub signing_salt: String,
    pub jwt_secret: String,
}

impl DevSecrets {
    /// Path of the secrets file under the filesystem root (outside every bucket directory).
    pub fn path(fs_root: &str) -> PathBuf {
        Path::new(fs_root).join(".pixgate-dev-secrets.json")
    }

    /// Reads the secrets file, creating it (mode 0600) with fresh random values if absent.
    /// Start-up code: blocking I/O is fine here.
    pub fn load_or_create(fs_root: &str) -> std::io::Result<DevSecrets> {
        let path = Self::path(fs_root);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(fs_root)?;
                let secrets = DevSecrets {
                    signing_key: hex::encode(random_bytes::<32>()?),
                    signing_salt: hex::encode(random_bytes::<16>()?),
                    jwt_secret: hex::encode(random_bytes::<32>()?),
                };
                let json = serde_json::to_vec_pretty(&secrets).map_err(std::io::Error::other)?;
                write_private(&path, &json)?;
                Ok(secrets)
            }
            Err(e) => Err(e),
        }
    }
}

fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(b)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

fn redact_url_password(url: &str) -> String {
    // scheme://user:password@host → scheme://user:<redacted>@host
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    // A raw '@' may appear inside the password: the authority ends at the last one.
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    format!(
        "{}://{}:<redacted>@{}",
        &url[..scheme_end],
        user,
        &rest[at + 1..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn valid_env() -> Vec<(String, String)> {
        env(&[
            ("PIXGATE__SIGNING__KEYS", "736563726574"),
            ("PIXGATE__SIGNING__SALTS", "68656C6C6F"),
            (
                "PIXGATE__AUTH__JWT_HS256_SECRET",
                "0123456789abcdef0123456789abcdef",
            ),
            ("PIXGATE__AUTH__JWT_ISSUER", "https://idp.example"),
            ("PIXGATE__AUTH__JWT_AUDIENCE", "pixgate"),
        ])
    }

    #[test]
    fn no_file_and_no_env_is_the_embedded_default() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert!(c.embedded);
        assert_eq!(c.storage.backend, crate::storage::Backend::Fs);
        assert_eq!(c.storage.fs_root, "./data");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        // Without dev secrets it is not valid yet.
        assert_eq!(c.validate().unwrap_err().key, "signing.keys");
    }

    #[test]
    fn legacy_sources_never_name_pixgates_own_buckets() {
        let with = |legacy: &str| {
            let mut e = valid_env();
            e.extend(env(&[
                ("PIXGATE__STORAGE__BACKEND", "s3"),
                ("PIXGATE__STORAGE__S3_BUCKET", "px-originals"),
                ("PIXGATE__STORAGE__S3_DERIVED_BUCKET", "px-derived"),
                ("PIXGATE__SOURCES__LEGACY", legacy),
            ]));
            Config::load(None, e).unwrap().validate()
        };
        with("s3://photos/users/ owner_pattern=users/{owner}/**").unwrap();
        for own in [
            "s3://px-originals/images/ owner=a",
            "s3://px-derived/ owner=a",
        ] {
            assert_eq!(with(own).unwrap_err().key, "sources.legacy", "{own}");
        }
    }

    #[test]
    fn env_overrides_are_typed_by_the_default() {
        let mut e = valid_env();
        e.retain(|(k, _)| k != "PIXGATE__AUTH__JWT_AUDIENCE");
        e.extend(env(&[
            ("PIXGATE__SERVER__MAX_CONNECTIONS", "7"),
            ("PIXGATE__STORAGE__S3_FORCE_PATH_STYLE", "true"),
            // A string key keeps a numeric-looking value as a string.
            ("PIXGATE__AUTH__JWT_AUDIENCE", "12345"),
            ("PIXGATE__SERVER__TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
            ("OTHER_VAR", "ignored"),
        ]));
        let c = Config::load(None, e).unwrap();
        assert!(!c.embedded);
        assert_eq!(c.server.max_connections, 7);
        assert!(c.storage.s3_force_path_style);
        assert_eq!(c.auth.jwt_audience, "12345");
        assert_eq!(
            c.server
                .trusted_networks()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec!["10.0.0.0/8", "::1/128"]
        );
        c.validate().unwrap();
    }

    #[test]
    fn file_then_env_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:9000\"\nmax_connections = 5\n",
        )
        .unwrap();
        let mut e = valid_env();
        e.push(("PIXGATE__SERVER__MAX_CONNECTIONS".into(), "6".into()));
        let c = Config::load(Some(&path), e).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.server.max_connections, 6);
        assert!(!c.embedded);
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: Vec<(&str, &str, &str)> = vec![
            // Braces would change every key's Redis Cluster hash tag.
            ("PIXGATE__REDIS__KEY_PREFIX", "a{b}", "redis.key_prefix"),
            ("PIXGATE__REDIS__KEY_PREFIX", "", "redis.key_prefix"),
            (
                "PIXGATE__LIMITS__FALLBACK_SHARE_PERCENT",
                "0",
                "limits.fallback_share_percent",
            ),
            (
                "PIXGATE__LIMITS__FALLBACK_SHARE_PERCENT",
                "101",
                "limits.fallback_share_percent",
            ),
            // Quotas are never unlimited.
            (
                "PIXGATE__LIMITS__UPLOADS_PER_HOUR",
                "0",
                "limits.uploads_per_hour",
            ),
            (
                "PIXGATE__LIMITS__PLANS__PRO__TRANSFORMS_PER_HOUR",
                "0",
                "limits.plans.pro.transforms_per_hour",
            ),
            (
                "PIXGATE__LIMITS__PLANS__PRO__STORAGE_BYTES",
                "5",
                "limits.plans.pro.storage_bytes",
            ),
            (
                "PIXGATE__LIMITS__PLANS__PRO__UPLOADS_PER_HOUR",
                "many",
                "limits.plans.pro.uploads_per_hour",
            ),
            (
                "PIXGATE__LIMITS__QUOTA_WINDOW_SECS",
                "0",
                "limits.quota_window_secs",
            ),
            (
                "PIXGATE__AUTH__JWKS_URL",
                "http://localhost@evil.example/jwks.json",
                "auth.jwks_url",
            ),
            (
                "PIXGATE__AUTH__JWKS_URL",
                "http://idp.example/jwks.json",
                "auth.jwks_url",
            ),
            (
                "PIXGATE__AUTH__JWT_HS_ALGORITHM",
                "RS256",
                "auth.jwt_hs_algorithm",
            ),
            (
                "PIXGATE__AUTH__JWKS_ALGORITHMS",
                "HS256",
                "auth.jwks_algorithms",
            ),
            (
                "PIXGATE__AUTH__JWT_HS256_SECRET",
                "short",
                "auth.jwt_hs256_secret",
            ),
            (
                "PIXGATE__SERVER__CLIENT_IP_HEADER",
                "x-real-ip",
                "server.client_ip_header",
            ),
            (
                "PIXGATE__SERVER__CORS_ORIGINS",
                "https://a.example/path",
                "server.cors_origins",
            ),
            ("PIXGATE__STORAGE__S3_SSE", "aes", "storage.s3_sse"),
            (
                "PIXGATE__LIMITS__UPLOAD_FORMATS",
                "psd",
                "limits.upload_formats",
            ),
            (
                "PIXGATE__SERVER__TLS_CERT_FILE",
                "/x.pem",
                "server.tls_key_file",
            ),
            (
                "PIXGATE__SIGNING__DEFAULT_URL_TTL_SECS",
                "999999999",
                "signing.default_url_ttl_secs",
            ),
            (
                "PIXGATE__SERVER__MAX_CONNECTIONS",
                "many",
                "server.max_connections",
            ),
            ("PIXGATE__SERVER__NOPE", "1", "server.nope"),
            ("PIXGATE__SERVER__LISTEN", "localhost", "server.listen"),
            ("PIXGATE__STORAGE__BACKEND", "ftp", "storage.backend"),
            (
                "PIXGATE__SIGNING__SIGNATURE_SIZE",
                "33",
                "signing.signature_size",
            ),
            ("PIXGATE__SIGNING__SALTS", "aa,bb", "signing.salts"),
            ("PIXGATE__SIGNING__KEYS", "zz", "signing.keys"),
            (
                "PIXGATE__AUTH__JWT_HS256_SECRET",
                "short",
                "auth.jwt_hs256_secret",
            ),
            ("PIXGATE__AUTH__JWT_ISSUER", "", "auth.jwt_issuer"),
            (
                "PIXGATE__SERVER__TRUSTED_PROXIES",
                "not-a-net",
                "server.trusted_proxies",
            ),
            ("PIXGATE__LOG__FORMAT", "xml", "log.format"),
            (
                "PIXGATE__SERVER__IDLE_TIMEOUT_SECS",
                "99999999999",
                "server.idle_timeout_secs",
            ),
            (
                "PIXGATE__SERVER__SHUTDOWN_GRACE_SECS",
                "0",
                "server.shutdown_grace_secs",
            ),
            ("PIXGATE__REDIS__TIMEOUT_MS", "0", "redis.timeout_ms"),
            ("PIXGATE__REDIS__URL", "http://x", "redis.url"),
            ("PIXGATE__LIMITS__MAX_FRAMES", "0", "limits.max_frames"),
            (
                "PIXGATE__LIMITS__MAX_SOURCE_DIMENSION",
                "0",
                "limits.max_source_dimension",
            ),
            (
                "PIXGATE__LIMITS__MAX_SOURCE_DIMENSION",
                "65536",
                "limits.max_source_dimension",
            ),
            (
                "PIXGATE__SERVER__READINESS_TIMEOUT_MS",
                "0",
                "server.readiness_timeout_ms",
            ),
            (
                "PIXGATE__TRANSFORM__MEMORY_BUDGET_MB",
                "63",
                "transform.memory_budget_mb",
            ),
            (
                "PIXGATE__TRANSFORM__ORIGINALS_BUDGET_MB",
                "0",
                "transform.originals_budget_mb",
            ),
            (
                "PIXGATE__TRANSFORM__JPEG_DECODER",
                "libjpeg",
                "transform.jpeg_decoder",
            ),
            (
                "PIXGATE__TRANSFORM__AUTO_FORMATS",
                "webp,gif",
                "transform.auto_formats",
            ),
            (
                "PIXGATE__TRANSFORM__AVIF_WORKERS",
                "0",
                "transform.avif_workers",
            ),
            (
                "PIXGATE__TRANSFORM__AVIF_QUEUE_WAIT_MS",
                "600001",
                "transform.avif_queue_wait_ms",
            ),
            (
                "PIXGATE__TRANSFORM__PRESETS_ONLY",
                "true",
                "transform.presets_only",
            ),
            (
                "PIXGATE__ENCODE__JPEG_SUBSAMPLING",
                "422",
                "encode.jpeg_subsampling",
            ),
            (
                "PIXGATE__ENCODE__PNG_COMPRESSION",
                "max",
                "encode.png_compression",
            ),
            ("PIXGATE__ENCODE__WEBP_METHOD", "7", "encode.webp_method"),
            ("PIXGATE__ENCODE__AVIF_SPEED", "0", "encode.avif_speed"),
            ("PIXGATE__PRESETS__THUMB", "zz:1", "presets.thumb"),
            ("PIXGATE__PRESETS__DEFAULT", "f:webp", "presets.default"),
            ("PIXGATE__PRESETS__EAGER", "nothing", "presets.eager"),
            ("PIXGATE__PRESETS__BAD_NAME!", "q:1", "presets.bad_name!"),
            (
                "PIXGATE__CACHE__MAX_ITEM_BYTES",
                "999999999999",
                "cache.max_item_bytes",
            ),
        ];
        for (var, value, key) in cases {
            let mut e = valid_env();
            e.retain(|(k, _)| k != var);
            e.push((var.to_owned(), value.to_owned()));
            let err = Config::load(None, e).and_then(|c| c.validate().map(|_| c));
            let err = err.expect_err(var);
            assert_eq!(err.key, key, "{var}={value}: {err}");
            assert!(err.to_string().contains(&env_name(key)), "{err}");
        }
        // s3 needs its buckets
        let mut e = valid_env();
        e.push(("PIXGATE__STORAGE__BACKEND".into(), "s3".into()));
        let err = Config::load(None, e).unwrap().validate().unwrap_err();
        assert_eq!(err.key, "storage.s3_bucket");
    }

    #[test]
    fn audit_and_retention_settings_are_bounded() {
        let cases: Vec<(&str, &str, &str)> = vec![
            ("PIXGATE__AUDIT__FLUSH_SECONDS", "0", "audit.flush_seconds"),
            (
                "PIXGATE__AUDIT__FLUSH_SECONDS",
                "3601",
                "audit.flush_seconds",
            ),
            ("PIXGATE__AUDIT__BATCH_EVENTS", "0", "audit.batch_events"),
            (
                "PIXGATE__AUDIT__BATCH_EVENTS",
                "100001",
                "audit.batch_events",
            ),
            ("PIXGATE__AUDIT__QUEUE", "0", "audit.queue"),
            (
                "PIXGATE__AUDIT__SPOOL_MAX_BYTES",
                "0",
                "audit.spool_max_bytes",
            ),
            // A `-` would end the instance name early in batch keys.
            ("PIXGATE__AUDIT__INSTANCE", "web-1", "audit.instance"),
            ("PIXGATE__AUDIT__INSTANCE", "Web1", "audit.instance"),
            (
                "PIXGATE__AUDIT__RETENTION_DAYS",
                "0",
                "audit.retention_days",
            ),
            (
                "PIXGATE__AUDIT__RETENTION_DAYS",
                "36501",
                "audit.retention_days",
            ),
            (
                "PIXGATE__CACHE__DERIVED_TTL_DAYS",
                "36501",
                "cache.derived_ttl_days",
            ),
        ];
        for (var, value, key) in cases {
            let mut e = valid_env();
            e.push((var.to_owned(), value.to_owned()));
            let err = Config::load(None, e).and_then(|c| c.validate().map(|_| c));
            assert_eq!(err.expect_err(key).key, key, "{var}={value}");
        }
        let mut e = valid_env();
        e.push(("PIXGATE__AUDIT__INSTANCE".to_owned(), "web_1".to_owned()));
        Config::load(None, e).unwrap().validate().unwrap();
    }

    #[test]
    fn cache_and_cdn_hook_settings_are_checked_without_echoing_secrets() {
        let hook = (
            "PIXGATE__CDN__PURGE_URL",
            "https://api.fastly.com/service/s/purge/{key}",
        );
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("PIXGATE__CACHE__DERIVED_READ_CONCURRENCY", "0")],
                "cache.derived_read_concurrency",
            ),
            (
                vec![("PIXGATE__CACHE__DERIVED_MAX_BYTES", "0")],
                "cache.derived_max_bytes",
            ),
            (
                vec![("PIXGATE__CACHE__ERROR_MAX_AGE_SECS", "86401")],
                "cache.error_max_age_secs",
            ),
            // Plain http leaves the machine only to loopback; userinfo could hide the host.
            (
                vec![("PIXGATE__CDN__PURGE_URL", "http://cdn.example/purge/{key}")],
                "cdn.purge_url",
            ),
            (
                vec![(
                    "PIXGATE__CDN__PURGE_URL",
                    "https://localhost@evil.example/{key}",
                )],
                "cdn.purge_url",
            ),
            (
                vec![("PIXGATE__CDN__PURGE_URL", "ftp://cdn.example/{key}")],
                "cdn.purge_url",
            ),
            (
                vec![hook, ("PIXGATE__CDN__PURGE_METHOD", "PATCH")],
                "cdn.purge_method",
            ),
            (
                vec![hook, ("PIXGATE__CDN__PURGE_ATTEMPTS", "0")],
                "cdn.purge_attempts",
            ),
            (
                vec![hook, ("PIXGATE__CDN__PURGE_ATTEMPTS", "11")],
                "cdn.purge_attempts",
            ),
            (
                vec![hook, ("PIXGATE__CDN__PURGE_TIMEOUT_MS", "0")],
                "cdn.purge_timeout_ms",
            ),
            (
                vec![hook, ("PIXGATE__CDN__PURGE_QUEUE", "0")],
                "cdn.purge_queue",
            ),
            (
                vec![hook, ("PIXGATE__CDN__PURGE_CONCURRENCY", "0")],
                "cdn.purge_concurrency",
            ),
        ];
        for (vars, key) in cases {
            let mut e = valid_env();
            e.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            let err = Config::load(None, e).and_then(|c| c.validate().map(|_| c));
            assert_eq!(err.expect_err(key).key, key, "{vars:?}");
        }
        // A malformed header entry is named by position; its text (a token) never appears.
        let mut e = valid_env();
        e.extend(env(&[
            hook,
            (
                "PIXGATE__CDN__PURGE_HEADERS",
                "Fastly-Key: fine, sekrit-token-123",
            ),
        ]));
        // (Parsed while loading now: the header pair is typed.)
        let err = Config::load(None, e).unwrap_err();
        assert_eq!(err.key, "cdn.purge_headers");
        assert!(err.to_string().contains("entry 2"), "{err}");
        assert!(!err.to_string().contains("sekrit"), "{err}");
        // A loopback hook (tests, sidecars) and a full Cloudflare-style set-up are accepted.
        let mut e = valid_env();
        e.extend(env(&[
            ("PIXGATE__CDN__PURGE_URL", "http://127.0.0.1:9/purge"),
            (
                "PIXGATE__CDN__PURGE_HEADERS",
                "Authorization: Bearer t, Content-Type: application/json",
            ),
            ("PIXGATE__CDN__PURGE_BODY", r#"{"tags":["{key}"]}"#),
        ]));
        let c = Config::load(None, e).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cdn.purge_headers.len(), 2);
        assert!(!c.redacted_toml().contains("Bearer t"));
    }

    #[test]
    fn plans_come_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[limits.plans.pro]\nuploads_per_hour = 500\n[limits.plans.team]\nrequests_per_minute = 0\n",
        )
        .unwrap();
        let mut e = valid_env();
        e.extend(env(&[(
            "PIXGATE__LIMITS__PLANS__PRO__TRANSFORMS_PER_HOUR",
            "9000",
        )]));
        let c = Config::load(Some(&path), e).unwrap();
        c.validate().unwrap();
        let pro = &c.limits.plans["pro"];
        assert_eq!(pro.uploads_per_hour, Some(500));
        assert_eq!(pro.transforms_per_hour, Some(9000));
        assert_eq!(pro.requests_per_minute, None);
        assert_eq!(c.limits.plans["team"].requests_per_minute, Some(0));
        // A plan key the file misspells is named.
        std::fs::write(&path, "[limits.plans.pro]\nupload_per_hour = 5\n").unwrap();
        let err = Config::load(Some(&path), valid_env()).unwrap_err();
        assert_eq!(err.key, "limits.plans.pro.upload_per_hour");
        // Plan names are [A-Za-z0-9_-], like preset names.
        std::fs::write(&path, "[limits.plans.\"a b\"]\nuploads_per_hour = 5\n").unwrap();
        let c = Config::load(Some(&path), valid_env()).unwrap();
        assert_eq!(c.validate().unwrap_err().key, "limits.plans.a b");
    }

    #[test]
    fn file_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let cases = [
            ("[server]\nlisen = \"x\"\n", "server.lisen"),
            (
                "[server]\nmax_connections = \"many\"\n",
                "server.max_connections",
            ),
            ("[server]\nmax_connections = -1\n", "server.max_connections"),
            (
                "[storage]\ns3_force_path_style = \"yes\"\n",
                "storage.s3_force_path_style",
            ),
            ("[signing]\nkeys = \"aa\"\n", "signing.keys"),
            ("[signing]\nkeys = [1]\n", "signing.keys"),
            ("server = 5\n", "server"),
            ("[nope]\nx = 1\n", "nope"),
            // Values that cannot parse name their own key too.
            ("[server]\nlisten = \"localhost\"\n", "server.listen"),
            ("[storage]\nbackend = \"ftp\"\n", "storage.backend"),
            ("[presets]\nthumb = [\"x\"]\n", "presets.thumb"),
            ("[presets]\neager = \"thumb\"\n", "presets.eager"),
        ];
        for (text, key) in cases {
            std::fs::write(&path, text).unwrap();
            let err = Config::load(Some(&path), Vec::new()).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
        let err =
            Config::load(None, env(&[("PIXGATE__SERVER__MAX_CONNECTIONS", "-5")])).unwrap_err();
        assert_eq!(err.key, "server.max_connections");
    }

    #[test]
    fn redaction_hides_every_secret() {
        let mut e = valid_env();
        e.push((
            "PIXGATE__REDIS__URL".into(),
            "redis://user:hun@ter2@localhost:6379/0".into(),
        ));
        let c = Config::load(None, e).unwrap();
        let out = c.redacted_toml();
        for secret in [
            "736563726574",
            "68656C6C6F",
            "0123456789abcdef0123456789abcdef",
            "hun@ter2",
            "ter2",
        ] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        assert!(out.contains("<redacted>"));
        assert!(out.contains("localhost:6379"));
        // Cluster seeds carry the same password.
        let mut e = valid_env();
        e.push((
            "PIXGATE__REDIS__CLUSTER_URLS".into(),
            "rediss://default:s3cr3t-pw@n1:7000,redis://:s3cr3t-pw@n2:7001".into(),
        ));
        let c = Config::load(None, e).unwrap();
        assert_eq!(c.redis.cluster_urls.len(), 2);
        let out = c.redacted_toml();
        assert!(!out.contains("s3cr3t-pw"), "{out}");
        assert!(out.contains("n1:7000") && out.contains("n2:7001"), "{out}");
    }

    #[test]
    fn secrets_come_from_files_named_by_a_file_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            format!("{FILE_PREFIX}{}", p.display())
        };
        let key1 = write("k1", "aabbcc\n");
        let key2 = write("k2", "ddeeff");
        let jwt = write("jwt", "0123456789abcdef0123456789abcdef-from-file\r\n");
        let redis = write("redis", "redis://u:p4ss@localhost:6379/0\n");
        // valid_env() with `pairs` in place of its own values for those keys.
        let with = |pairs: &[(&str, &str)]| {
            let mut e = valid_env();
            e.retain(|(k, _)| !pairs.iter().any(|(p, _)| p == k));
            e.extend(env(pairs));
            e
        };
        let keys = format!("{key1},{key2}");
        let c = Config::load(
            None,
            with(&[
                ("PIXGATE__SIGNING__KEYS", &keys),
                ("PIXGATE__SIGNING__SALTS", "0a,0b"),
                ("PIXGATE__AUTH__JWT_HS256_SECRET", &jwt),
                ("PIXGATE__REDIS__URL", &redis),
            ]),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.signing.keys, vec!["aabbcc", "ddeeff"]);
        assert_eq!(
            c.auth.jwt_hs256_secret,
            "0123456789abcdef0123456789abcdef-from-file"
        );
        assert_eq!(c.redis.url, "redis://u:p4ss@localhost:6379/0");
        assert!(!c.redacted_toml().contains("from-file"));
        // A missing file names the key and the path, and the load fails.
        let gone = format!("{FILE_PREFIX}{}", dir.path().join("nope").display());
        let err =
            Config::load(None, with(&[("PIXGATE__AUTH__JWT_HS256_SECRET", &gone)])).unwrap_err();
        assert_eq!(err.key, "auth.jwt_hs256_secret");
        assert!(err.to_string().contains("nope"), "{err}");
        // A secret file is capped at 64 KiB (read no further).
        let huge = write("huge", &"a".repeat(64 * 1024 + 1));
        let err =
            Config::load(None, with(&[("PIXGATE__AUTH__JWT_HS256_SECRET", &huge)])).unwrap_err();
        assert_eq!(err.key, "auth.jwt_hs256_secret");
        assert!(err.to_string().contains("larger than 65536"), "{err}");
        assert!(!err.to_string().contains("aaaa"), "{err}");
        // Values of other keys are taken literally.
        let literal = Config::load(
            None,
            with(&[("PIXGATE__AUTH__JWT_ISSUER", "file:/etc/passwd")]),
        )
        .unwrap();
        assert_eq!(literal.auth.jwt_issuer, "file:/etc/passwd");
    }

    #[test]
    fn dev_secrets_persist_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let a = DevSecrets::load_or_create(root).unwrap();
        let b = DevSecrets::load_or_create(root).unwrap();
        assert_eq!(a.jwt_secret, b.jwt_secret);
        assert_eq!(a.jwt_secret.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(DevSecrets::path(root))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut c = Config::load(None, Vec::new()).unwrap();
        c.apply_dev_secrets(&a);
        c.validate().unwrap();
    }

    #[test]
    fn sample_config_file_documents_every_key() {
        let sample = include_str!("../../config/pixgate.toml");
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let toml::Value::Table(sections) = defaults else {
            panic!()
        };
        for (section, keys) in sections {
            let toml::Value::Table(keys) = keys else {
                continue;
            };
            for key in keys.keys() {
                let full = format!("{section}.{key}");
                assert!(
                    sample.contains(&env_name(&full)),
                    "config/pixgate.toml does not document {full}"
                );
            }
        }
        // And the sample itself parses into a config.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, sample).unwrap();
        Config::load(Some(&path), Vec::new()).unwrap();
    }
}
