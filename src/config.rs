//! Typed configuration: defaults in code → TOML file → `PIXGATE__SECTION__KEY` environment.
//!
//! Every key has a default here (an empty string means "unset"), so the type of an environment
//! override is always known from the default: strings stay strings even when they look like
//! numbers, lists are comma-separated, and a key that does not exist is an error that names it.
//! [`Config::validate`] runs at start and fails with the offending key named.
//!
//! With no file and no `PIXGATE__*` variable the server runs the *embedded default*: filesystem
//! storage under `./data`, in-process limits, and development secrets (see [`DevSecrets`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub signing: SigningConfig,
    pub auth: AuthConfig,
    pub redis: RedisConfig,
    pub limits: LimitsConfig,
    pub transform: TransformConfig,
    pub cache: CacheConfig,
    pub cdn: CdnConfig,
    pub audit: AuditConfig,
    pub log: LogConfig,
    pub encode: EncodeConfig,
    pub watermark: WatermarkConfig,
    /// `presets.<name>` = option string; `presets.eager` = list of preset names.
    pub presets: std::collections::BTreeMap<String, toml::Value>,
    /// True when neither a file nor an environment override was given.
    #[serde(skip)]
    pub embedded: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    /// Separate listener for `/metrics`; empty means `/metrics` is served on `listen`.
    pub metrics_listen: String,
    /// CIDRs whose forwarding header is believed.
    pub trusted_proxies: Vec<String>,
    /// The header those proxies write: `x-forwarded-for` or `forwarded` (RFC 7239).
    pub client_ip_header: String,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `fs` or `s3`.
    pub backend: String,
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
    pub s3_sse: String,
    pub s3_sse_kms_key_id: String,
    /// Each storage operation is abandoned after this long.
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {
    /// Hex keys, paired by position with `salts`; the first pair signs, every pair verifies.
    pub keys: Vec<String>,
    pub salts: Vec<String>,
    pub signature_size: u64,
    /// Longest lifetime `POST /v1/images/{id}/url` grants, and its default.
    pub max_url_ttl_secs: u64,
    pub default_url_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret (at least 32 bytes); its algorithm is `jwt_hs_algorithm`.
    pub jwt_hs256_secret: String,
    /// `HS256`, `HS384` or `HS512`.
    pub jwt_hs_algorithm: String,
    /// PEM public key, its pinned algorithm, and optionally the `kid` it answers to.
    pub jwt_public_key_file: String,
    pub jwt_public_key_algorithm: String,
    pub jwt_public_key_kid: String,
    /// JWKS document on disk and/or at a URL (https, or http to a loopback address).
    pub jwks_file: String,
    pub jwks_url: String,
    /// Algorithms a JWKS key may be used with.
    pub jwks_algorithms: Vec<String>,
    pub jwks_timeout_ms: u64,
    /// An unknown `kid` refetches the JWKS at most this often.
    pub jwks_refresh_min_secs: u64,
    /// Keys older than this are refreshed in the background.
    pub jwks_max_age_secs: u64,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// Required `typ` header (e.g. `at+jwt`); empty: not checked.
    pub jwt_typ: String,
    pub role_claim: String,
    pub plan_claim: String,
    pub leeway_secs: u64,
    /// How long an instance may keep using a cached API key lookup or token revocation record:
    /// the bound on how late a revocation made on another instance takes effect.
    pub revocation_cache_secs: u64,
    pub max_api_keys_per_user: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Empty: no Redis (in-process limits).
    pub url: String,
    /// Deadline of every limiter call; slower answers fall back to the in-process limiter.
    pub timeout_ms: u64,
    pub pool_size: u64,
    /// Prefix of every key pixgate writes (several deployments can share one Redis).
    pub key_prefix: String,
}

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
    /// Formats accepted for upload (`jpeg`, `png`, `webp`, `gif`).
    pub upload_formats: Vec<String>,
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
    pub plans: std::collections::BTreeMap<String, PlanLimits>,
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
const PLAN_KEYS: &[&str] = &[
    "uploads_per_hour",
    "transforms_per_hour",
    "requests_per_minute",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformConfig {
    /// Concurrent CPU transforms; 0 means one per core.
    pub workers: u64,
    /// Transforms allowed to wait for a worker before new ones get 503.
    pub queue_len: u64,
    pub default_quality: u64,
    /// `turbo` (libjpeg-turbo, shrink-on-load) or `zune` (pure Rust, full-size decode).
    pub jpeg_decoder: String,
    /// Only `pr:` (plus `f`, `exp`, `cb`) may appear in URLs.
    pub presets_only: bool,
    /// Accepted output formats in order of preference for `f:auto` / no format, when the
    /// request's `Accept` allows them.
    pub auto_formats: Vec<String>,
    /// AVIF encodes allowed at once (they are slow); others wait their turn.
    pub avif_workers: u64,
    /// Process-wide budget for the decode memory of jobs on the CPU pool, MiB: each transform
    /// and upload validation reserves its estimated peak (see `image::memory_cost`) before it
    /// runs, so N concurrent worst cases stay under this total instead of N × 0.5 GB.
    pub memory_budget_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncodeConfig {
    pub jpeg_progressive: bool,
    /// `420` or `444`.
    pub jpeg_subsampling: String,
    /// `fast`, `balanced` or `high`.
    pub png_compression: String,
    /// libwebp method 0..=6 (speed/size trade-off).
    pub webp_method: u64,
    pub webp_lossless: bool,
    /// rav1e speed 1 (slowest) ..= 10 (fastest).
    pub avif_speed: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatermarkConfig {
    /// Image (PNG, WebP, JPEG or GIF) composited by `wm:`; empty disables `wm:`.
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory LRU budget in bytes of encoded results.
    pub memory_bytes: u64,
    /// Results larger than this are not kept in memory.
    pub max_item_bytes: u64,
    /// `max-age` of transform responses (never beyond a signed URL's `exp`).
    pub max_age_secs: u64,
    /// Keep results in the derived bucket (read on a memory miss, written in the background).
    pub derived: bool,
    /// Results larger than this are not stored in (or read from) the derived bucket.
    pub derived_max_bytes: u64,
    /// Derived-store reads in flight at once (each holds up to `derived_max_bytes`).
    pub derived_read_concurrency: u64,
    /// Background derived-store writes in flight at once.
    pub derived_write_concurrency: u64,
    /// Background derived-store writes waiting beyond those; more are dropped (counted).
    pub derived_write_queue: u64,
    /// Uploads whose eager presets (`presets.eager`) may wait to be rendered; beyond this an
    /// upload's eager renders are skipped (counted), never its `201`.
    pub eager_queue: u64,
    /// `max-age` of a signed URL's `404` (0: `no-store`); every other error is `no-store`.
    pub error_max_age_secs: u64,
    /// `Surrogate-Key` and `Cache-Tag` headers (the image id) on transform responses.
    pub surrogate_keys: bool,
    /// Derived objects unused for this many days expire (`pixgate sweep` or a lifecycle
    /// rule); a derived hit refreshes its object. 0: kept until their image is deleted.
    pub derived_ttl_days: u64,
}

/// The CDN purge hook, called after an image's delete (and on account erasure).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdnConfig {
    /// Empty: no hook. `{key}`, `{image_id}` and `{nonce}` are substituted.
    pub purge_url: String,
    pub purge_method: String,
    /// `Name: value` headers (a secret: API tokens live here).
    pub purge_headers: Vec<String>,
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

/// The audit trail (`src/audit/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// A batch is sealed and archived at least this often (seconds).
    pub flush_seconds: u64,
    /// … or as soon as it holds this many events.
    pub batch_events: u64,
    /// Events waiting for the writer; beyond this an event reaches the log stream only
    /// (counted in `pixgate_audit_dropped_total`).
    pub queue: u64,
    /// Local directory for sealed batches until the archive has them, and the chain state.
    /// Empty: `<storage.fs_root>/audit-spool`. One per instance; keep it on a persistent disk.
    pub spool_dir: String,
    /// Spooled bytes beyond which new batches are dropped (counted, logged).
    pub spool_max_bytes: u64,
    /// Name of this instance's chain (`[a-z0-9_]`, ≤ 64); empty: random, kept in the spool.
    pub instance: String,
    /// Days of audit records kept (`pixgate sweep`, or the lifecycle rule in `deploy/`).
    pub retention_days: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `pixgate=debug,info`.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: String::new(),
            trusted_proxies: Vec::new(),
            client_ip_header: "x-forwarded-for".into(),
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

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: "fs".into(),
            fs_root: "./data".into(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_bucket: String::new(),
            s3_derived_bucket: String::new(),
            s3_audit_bucket: String::new(),
            s3_force_path_style: false,
            s3_sse: String::new(),
            s3_sse_kms_key_id: String::new(),
            timeout_secs: 10,
        }
    }
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            keys: Vec::new(),
            salts: Vec::new(),
            signature_size: 32,
            max_url_ttl_secs: 7 * 86_400,
            default_url_ttl_secs: 3_600,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_hs256_secret: String::new(),
            jwt_hs_algorithm: "HS256".into(),
            jwt_public_key_file: String::new(),
            jwt_public_key_algorithm: "RS256".into(),
            jwt_public_key_kid: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            jwks_algorithms: ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
                .map(String::from)
                .to_vec(),
            jwks_timeout_ms: 3_000,
            jwks_refresh_min_secs: 60,
            jwks_max_age_secs: 3_600,
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_typ: String::new(),
            role_claim: "role".into(),
            plan_claim: "plan".into(),
            leeway_secs: 30,
            revocation_cache_secs: 30,
            max_api_keys_per_user: 25,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            timeout_ms: 50,
            pool_size: 16,
            key_prefix: "pixgate".into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_source_bytes: 25 * 1024 * 1024,
            max_source_pixels: 50_000_000,
            max_source_dimension: 32_768,
            max_result_pixels: 40_000_000,
            max_result_dimension: 16_383,
            max_frames: 1000,
            upload_formats: ["jpeg", "png", "webp", "gif"].map(String::from).to_vec(),
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
            plans: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for TransformConfig {
    fn default() -> Self {
        TransformConfig {
            workers: 0,
            queue_len: 64,
            default_quality: 80,
            jpeg_decoder: "turbo".into(),
            presets_only: false,
            auto_formats: vec!["webp".into()],
            avif_workers: 1,
            memory_budget_mb: 2048,
        }
    }
}

impl Default for EncodeConfig {
    fn default() -> Self {
        EncodeConfig {
            jpeg_progressive: false,
            jpeg_subsampling: "420".into(),
            png_compression: "fast".into(),
            webp_method: 2,
            webp_lossless: false,
            avif_speed: 8,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: 256 * 1024 * 1024,
            max_item_bytes: 8 * 1024 * 1024,
            max_age_secs: 31_536_000,
            derived: true,
            derived_max_bytes: 16 * 1024 * 1024,
            derived_read_concurrency: 16,
            derived_write_concurrency: 4,
            derived_write_queue: 256,
            eager_queue: 32,
            error_max_age_secs: 10,
            surrogate_keys: true,
            derived_ttl_days: 0,
        }
    }
}

impl Default for CdnConfig {
    fn default() -> Self {
        CdnConfig {
            purge_url: String::new(),
            purge_method: "POST".into(),
            purge_headers: Vec::new(),
            purge_body: String::new(),
            purge_timeout_ms: 5_000,
            purge_attempts: 4,
            purge_queue: 1_024,
            purge_concurrency: 4,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            flush_seconds: 5,
            batch_events: 10_000,
            queue: 65_536,
            spool_dir: String::new(),
            spool_max_bytes: 1 << 30,
            instance: String::new(),
            retention_days: 365,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "pretty".into(),
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
    /// Loads defaults, then `file` (if any), then the `PIXGATE__*` entries of `env`.
    /// Does not validate: call [`Config::validate`] (after dev secrets, if embedded).
    pub fn load<I>(file: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let defaults = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::new("<defaults>", e.to_string()))?;
        let mut merged = defaults.clone();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("<file>", format!("cannot read {}: {e}", path.display()))
            })?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| ConfigError::new("<file>", format!("{}: {e}", path.display())))?;
            merge(&mut merged, toml::Value::Table(table));
        }
        let mut env_seen = false;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Deterministic order, so a failing key is reported the same way every time.
        overrides.sort();
        for (name, raw) in overrides {
            env_seen = true;
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_lowercase)
                .collect();
            let key = path.join(".");
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::new(&key, format!("malformed variable {name}")));
            }
            let value = typed_env_value(&defaults, &path, &raw)?;
            set_path(&mut merged, &path, value);
        }
        check_types(&defaults, &merged, &mut Vec::new())?;
        let mut config: Config = merged
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::new("<config>", e.message().to_owned()))?;
        config.embedded = file.is_none() && !env_seen;
        Ok(config)
    }

    /// Checks every key; the first problem is returned with the key named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        s.listen
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::new("server.listen", format!("not address:port: {e}")))?;
        if !s.metrics_listen.is_empty() {
            s.metrics_listen.parse::<SocketAddr>().map_err(|e| {
                ConfigError::new("server.metrics_listen", format!("not address:port: {e}"))
            })?;
        }
        for cidr in &s.trusted_proxies {
            parse_cidr(cidr).map_err(|m| ConfigError::new("server.trusted_proxies", m))?;
        }
        if !matches!(s.client_ip_header.as_str(), "x-forwarded-for" | "forwarded") {
            return Err(ConfigError::new(
                "server.client_ip_header",
                "must be x-forwarded-for or forwarded",
            ));
        }
        positive("server.max_connections", s.max_connections)?;
        for (key, v) in [
            (
                "server.header_read_timeout_secs",
                s.header_read_timeout_secs,
            ),
            ("server.request_timeout_secs", s.request_timeout_secs),
            ("server.idle_timeout_secs", s.idle_timeout_secs),
            ("server.shutdown_grace_secs", s.shutdown_grace_secs),
        ] {
            seconds(key, v)?;
        }
        positive("server.max_body_bytes", s.max_body_bytes)?;
        if !(1..=60_000).contains(&s.readiness_timeout_ms) {
            return Err(ConfigError::new(
                "server.readiness_timeout_ms",
                "must be 1..=60000",
            ));
        }
        positive(
            "server.http2_max_concurrent_streams",
            s.http2_max_concurrent_streams,
        )?;
        for origin in &s.cors_origins {
            if origin == "*" {
                if s.cors_allow_credentials {
                    return Err(ConfigError::new(
                        "server.cors_allow_credentials",
                        "cannot be true when server.cors_origins contains `*`",
                    ));
                }
            } else if !valid_origin(origin) {
                return Err(ConfigError::new(
                    "server.cors_origins",
                    format!("`{origin}` is not an origin (scheme://host[:port], no path)"),
                ));
            }
        }
        if s.tls_cert_file.is_empty() != s.tls_key_file.is_empty() {
            return Err(ConfigError::new(
                "server.tls_key_file",
                "server.tls_cert_file and server.tls_key_file are set together",
            ));
        }

        let st = &self.storage;
        match st.backend.as_str() {
            "fs" => {
                if st.fs_root.is_empty() {
                    return Err(ConfigError::new("storage.fs_root", "must not be empty"));
                }
            }
            "s3" => {
                for (key, v) in [
                    ("storage.s3_region", &st.s3_region),
                    ("storage.s3_bucket", &st.s3_bucket),
                    ("storage.s3_derived_bucket", &st.s3_derived_bucket),
                ] {
                    if v.is_empty() {
                        return Err(ConfigError::new(key, "required when storage.backend = s3"));
                    }
                }
            }
            other => {
                return Err(ConfigError::new(
                    "storage.backend",
                    format!("`{other}` is not one of: fs, s3"),
                ));
            }
        }
        seconds("storage.timeout_secs", st.timeout_secs)?;
        match (st.s3_sse.as_str(), st.s3_sse_kms_key_id.is_empty()) {
            ("", true) | ("AES256", true) | ("aws:kms", _) => {}
            ("", false) | ("AES256", false) => {
                return Err(ConfigError::new(
                    "storage.s3_sse_kms_key_id",
                    "only used with storage.s3_sse = \"aws:kms\"",
                ));
            }
            (other, _) => {
                return Err(ConfigError::new(
                    "storage.s3_sse",
                    format!("`{other}` is not one of: AES256, aws:kms (or empty)"),
                ));
            }
        }

        let sg = &self.signing;
        if sg.keys.is_empty() {
            return Err(ConfigError::new(
                "signing.keys",
                "at least one hex key is required",
            ));
        }
        if sg.keys.len() != sg.salts.len() {
            return Err(ConfigError::new(
                "signing.salts",
                format!(
                    "{} salts for {} keys: keys and salts pair by position",
                    sg.salts.len(),
                    sg.keys.len()
                ),
            ));
        }
        for (key, list) in [("signing.keys", &sg.keys), ("signing.salts", &sg.salts)] {
            for (i, v) in list.iter().enumerate() {
                match hex::decode(v) {
                    Ok(b) if !b.is_empty() => {}
                    _ => {
                        return Err(ConfigError::new(
                            key,
                            format!("entry {i} is not non-empty hex"),
                        ));
                    }
                }
            }
        }
        if !(1..=32).contains(&sg.signature_size) {
            return Err(ConfigError::new(
                "signing.signature_size",
                "must be between 1 and 32",
            ));
        }

        for (key, v) in [
            ("signing.max_url_ttl_secs", sg.max_url_ttl_secs),
            ("signing.default_url_ttl_secs", sg.default_url_ttl_secs),
        ] {
            positive(key, v)?;
        }
        if sg.default_url_ttl_secs > sg.max_url_ttl_secs {
            return Err(ConfigError::new(
                "signing.default_url_ttl_secs",
                "must not exceed signing.max_url_ttl_secs",
            ));
        }

        let a = &self.auth;
        if a.jwt_hs256_secret.is_empty()
            && a.jwt_public_key_file.is_empty()
            && a.jwks_file.is_empty()
            && a.jwks_url.is_empty()
        {
            return Err(ConfigError::new(
                "auth.jwt_hs256_secret",
                "no token verification key: set auth.jwt_hs256_secret, auth.jwt_public_key_file, auth.jwks_file or auth.jwks_url",
            ));
        }
        if !a.jwt_hs256_secret.is_empty() && a.jwt_hs256_secret.len() < 32 {
            return Err(ConfigError::new(
                "auth.jwt_hs256_secret",
                "at least 32 bytes are required for HMAC (RFC 7518 §3.2)",
            ));
        }
        if !matches!(a.jwt_hs_algorithm.as_str(), "HS256" | "HS384" | "HS512") {
            return Err(ConfigError::new(
                "auth.jwt_hs_algorithm",
                "must be HS256, HS384 or HS512",
            ));
        }
        let asymmetric =
            |alg: &str| crate::auth::jwt::parse_algorithm(alg).is_some() && !alg.starts_with("HS");
        if !a.jwt_public_key_file.is_empty() && !asymmetric(&a.jwt_public_key_algorithm) {
            return Err(ConfigError::new(
                "auth.jwt_public_key_algorithm",
                "must be one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
            ));
        }
        for alg in &a.jwks_algorithms {
            if !asymmetric(alg) {
                return Err(ConfigError::new(
                    "auth.jwks_algorithms",
                    format!("`{alg}` is not an asymmetric JWS algorithm"),
                ));
            }
        }
        if !a.jwks_url.is_empty() && !outbound_url_allowed(&a.jwks_url) {
            return Err(ConfigError::new(
                "auth.jwks_url",
                "must be https:// (http:// only to a loopback address)",
            ));
        }
        seconds("auth.jwks_timeout_ms", a.jwks_timeout_ms.div_ceil(1000))?;
        seconds("auth.jwks_refresh_min_secs", a.jwks_refresh_min_secs)?;
        seconds("auth.jwks_max_age_secs", a.jwks_max_age_secs)?;
        seconds("auth.revocation_cache_secs", a.revocation_cache_secs)?;
        positive("auth.max_api_keys_per_user", a.max_api_keys_per_user)?;
        if a.leeway_secs > 300 {
            return Err(ConfigError::new(
                "auth.leeway_secs",
                "must be at most 300 seconds",
            ));
        }
        if !self.embedded {
            if a.jwt_issuer.is_empty() {
                return Err(ConfigError::new(
                    "auth.jwt_issuer",
                    "required outside the embedded default",
                ));
            }
            if a.jwt_audience.is_empty() {
                return Err(ConfigError::new(
                    "auth.jwt_audience",
                    "required outside the embedded default",
                ));
            }
        }
        if a.role_claim.is_empty() {
            return Err(ConfigError::new("auth.role_claim", "must not be empty"));
        }
        if a.plan_claim.is_empty() {
            return Err(ConfigError::new("auth.plan_claim", "must not be empty"));
        }

        let r = &self.redis;
        if !(r.url.is_empty() || r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
            return Err(ConfigError::new(
                "redis.url",
                "must start with redis:// or rediss://",
            ));
        }
        seconds("redis.timeout_ms", r.timeout_ms.div_ceil(1000))?;
        positive("redis.pool_size", r.pool_size)?;
        if r.key_prefix.is_empty()
            || r.key_prefix.len() > 64
            || !r
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            // Braces would change the Redis Cluster hash tag of every key.
            return Err(ConfigError::new(
                "redis.key_prefix",
                "1 to 64 characters of [A-Za-z0-9-_.:]",
            ));
        }

        let l = &self.limits;
        positive("limits.max_source_bytes", l.max_source_bytes)?;
        positive("limits.max_source_pixels", l.max_source_pixels)?;
        if !(1..=65_535).contains(&l.max_source_dimension) {
            return Err(ConfigError::new(
                "limits.max_source_dimension",
                "must be 1..=65535 (no JPEG, WebP or GIF side can be longer)",
            ));
        }
        positive("limits.max_result_pixels", l.max_result_pixels)?;
        positive("limits.max_frames", l.max_frames)?;
        if l.upload_formats.is_empty() {
            return Err(ConfigError::new(
                "limits.upload_formats",
                "at least one format is required",
            ));
        }
        for f in &l.upload_formats {
            if !matches!(f.as_str(), "jpeg" | "png" | "webp" | "gif") {
                return Err(ConfigError::new(
                    "limits.upload_formats",
                    format!("`{f}` is not one of: jpeg, png, webp, gif"),
                ));
            }
        }
        positive("limits.uploads_per_hour", l.uploads_per_hour)?;
        positive("limits.transforms_per_hour", l.transforms_per_hour)?;
        seconds(
            "limits.auth_failure_window_secs",
            l.auth_failure_window_secs,
        )?;
        seconds("limits.quota_window_secs", l.quota_window_secs)?;
        if !(1..=100).contains(&l.fallback_share_percent) {
            return Err(ConfigError::new(
                "limits.fallback_share_percent",
                "must be between 1 and 100",
            ));
        }
        positive("limits.local_max_keys", l.local_max_keys)?;
        for (name, plan) in &l.plans {
            if !valid_name(name) {
                return Err(ConfigError::new(
                    &format!("limits.plans.{name}"),
                    "plan names are [A-Za-z0-9_-]",
                ));
            }
            for (key, v) in [
                ("uploads_per_hour", plan.uploads_per_hour),
                ("transforms_per_hour", plan.transforms_per_hour),
            ] {
                if v == Some(0) {
                    return Err(ConfigError::new(
                        &format!("limits.plans.{name}.{key}"),
                        "must be greater than 0",
                    ));
                }
            }
        }
        if !(1..=16_383).contains(&l.max_result_dimension) {
            return Err(ConfigError::new(
                "limits.max_result_dimension",
                "must be between 1 and 16383 (the WebP ceiling)",
            ));
        }

        let t = &self.transform;
        if !(1..=100).contains(&t.default_quality) {
            return Err(ConfigError::new(
                "transform.default_quality",
                "must be between 1 and 100",
            ));
        }

        match t.jpeg_decoder.as_str() {
            "turbo" | "zune" => {}
            other => {
                return Err(ConfigError::new(
                    "transform.jpeg_decoder",
                    format!("`{other}` is not one of: turbo, zune"),
                ));
            }
        }
        for f in &t.auto_formats {
            if !matches!(f.as_str(), "webp" | "avif") {
                return Err(ConfigError::new(
                    "transform.auto_formats",
                    format!("`{f}` is not a negotiable format (avif, webp)"),
                ));
            }
        }
        let e = &self.encode;
        if !matches!(e.jpeg_subsampling.as_str(), "420" | "444") {
            return Err(ConfigError::new(
                "encode.jpeg_subsampling",
                "must be 420 or 444",
            ));
        }
        if !matches!(e.png_compression.as_str(), "fast" | "balanced" | "high") {
            return Err(ConfigError::new(
                "encode.png_compression",
                "must be fast, balanced or high",
            ));
        }
        if e.webp_method > 6 {
            return Err(ConfigError::new("encode.webp_method", "must be 0..=6"));
        }
        if !(1..=10).contains(&e.avif_speed) {
            return Err(ConfigError::new("encode.avif_speed", "must be 1..=10"));
        }
        positive("transform.avif_workers", t.avif_workers)?;
        if !(64..=1_048_576).contains(&t.memory_budget_mb) {
            return Err(ConfigError::new(
                "transform.memory_budget_mb",
                "must be 64..=1048576",
            ));
        }
        for (name, value) in &self.presets {
            let key = format!("presets.{name}");
            if name == "eager" {
                let Some(list) = value.as_array() else {
                    return Err(ConfigError::new(&key, "must be a list of preset names"));
                };
                for n in list {
                    let known = n
                        .as_str()
                        .is_some_and(|n| n != "eager" && self.presets.contains_key(n));
                    if !known {
                        return Err(ConfigError::new(&key, format!("{n} is not a preset")));
                    }
                }
                continue;
            }
            if !valid_name(name) {
                return Err(ConfigError::new(&key, "preset names are [A-Za-z0-9_-]"));
            }
            let Some(options) = value.as_str() else {
                return Err(ConfigError::new(&key, "must be an option string"));
            };
            crate::options::validate_preset(name, options, l.max_result_dimension as u32)
                .map_err(|e| ConfigError::new(&key, e.to_string()))?;
        }
        if t.presets_only && self.presets.keys().all(|k| k == "eager") {
            return Err(ConfigError::new(
                "transform.presets_only",
                "needs at least one preset",
            ));
        }

        let c = &self.cache;
        if c.max_item_bytes > c.memory_bytes {
            return Err(ConfigError::new(
                "cache.max_item_bytes",
                "must not exceed cache.memory_bytes",
            ));
        }
        positive("cache.derived_max_bytes", c.derived_max_bytes)?;
        positive("cache.derived_read_concurrency", c.derived_read_concurrency)?;
        positive(
            "cache.derived_write_concurrency",
            c.derived_write_concurrency,
        )?;
        if c.derived_ttl_days > 36_500 {
            return Err(ConfigError::new(
                "cache.derived_ttl_days",
                "must be at most 36500",
            ));
        }
        if c.error_max_age_secs > MAX_SECONDS {
            return Err(ConfigError::new(
                "cache.error_max_age_secs",
                format!("must be at most {MAX_SECONDS} seconds"),
            ));
        }
        self.cdn.validate()?;
        let a = &self.audit;
        if !(1..=3600).contains(&a.flush_seconds) {
            return Err(ConfigError::new("audit.flush_seconds", "must be 1..=3600"));
        }
        if !(1..=100_000).contains(&a.batch_events) {
            return Err(ConfigError::new("audit.batch_events", "must be 1..=100000"));
        }
        if !(1..=10_000_000).contains(&a.queue) {
            return Err(ConfigError::new("audit.queue", "must be 1..=10000000"));
        }
        positive("audit.spool_max_bytes", a.spool_max_bytes)?;
        if !a.instance.is_empty() && !crate::audit::chain::valid_instance(&a.instance) {
            return Err(ConfigError::new(
                "audit.instance",
                "1 to 64 of a-z, 0-9 and _",
            ));
        }
        if !(1..=36_500).contains(&a.retention_days) {
            return Err(ConfigError::new(
                "audit.retention_days",
                "must be 1..=36500",
            ));
        }

        match self.log.format.as_str() {
            "pretty" | "json" => {}
            other => {
                return Err(ConfigError::new(
                    "log.format",
                    format!("`{other}` is not one of: pretty, json"),
                ));
            }
        }
        Ok(())
    }

    /// What the URL parser needs: the dimension bound and the named presets.
    pub fn parse_limits(&self) -> crate::options::ParseLimits {
        crate::options::ParseLimits {
            max_dimension: self.limits.max_result_dimension as u32,
            presets: self
                .presets
                .iter()
                .filter(|(k, _)| k.as_str() != "eager")
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect(),
            presets_only: self.transform.presets_only,
        }
    }

    /// Installs development secrets (embedded default only).
    pub fn apply_dev_secrets(&mut self, dev: &DevSecrets) {
        self.signing.keys = vec![dev.signing_key.clone()];
        self.signing.salts = vec![dev.signing_salt.clone()];
        self.auth.jwt_hs256_secret = dev.jwt_secret.clone();
    }

    /// Number of CPU workers after resolving `0` to the core count.
    pub fn workers(&self) -> usize {
        match self.transform.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
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

/// Parses `a.b.c.d/n` or `::1/128`; a bare address means a single host.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("`{s}` is not a CIDR or IP address"))
}

/// Preset and plan names: `[A-Za-z0-9_-]+`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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

impl CdnConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.purge_url.is_empty() {
            return Ok(());
        }
        let sample = crate::cdn::expand(&self.purge_url, "0123456789abcdef0123456789abcdef", "n");
        if !outbound_url_allowed(&sample) {
            return Err(ConfigError::new(
                "cdn.purge_url",
                "must be an https URL (http only to loopback), without userinfo",
            ));
        }
        if !crate::cdn::METHODS.contains(&self.purge_method.as_str()) {
            return Err(ConfigError::new(
                "cdn.purge_method",
                format!("must be one of: {}", crate::cdn::METHODS.join(", ")),
            ));
        }
        for (i, h) in self.purge_headers.iter().enumerate() {
            // Entries hold secrets: the error names the position only, never the text.
            if crate::cdn::parse_header(h).is_none() {
                return Err(ConfigError::new(
                    "cdn.purge_headers",
                    format!(
                        "entry {} is not a valid `Name: value` header (through the environment, values cannot contain commas)",
                        i + 1
                    ),
                ));
            }
        }
        if !(1..=10).contains(&self.purge_attempts) {
            return Err(ConfigError::new("cdn.purge_attempts", "must be 1..=10"));
        }
        if self.purge_timeout_ms == 0 || self.purge_timeout_ms > 60_000 {
            return Err(ConfigError::new(
                "cdn.purge_timeout_ms",
                "must be 1..=60000",
            ));
        }
        positive("cdn.purge_queue", self.purge_queue)?;
        positive("cdn.purge_concurrency", self.purge_concurrency)
    }
}

/// An outbound URL (JWKS, CDN purge) must be HTTPS, except on loopback (tests, sidecars).
fn outbound_url_allowed(url: &str) -> bool {
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

/// Durations are bounded: absurd values would overflow `Instant` arithmetic.
const MAX_SECONDS: u64 = 86_400;

fn seconds(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 || v > MAX_SECONDS {
        Err(ConfigError::new(
            key,
            format!("must be between 1 second and {MAX_SECONDS} seconds"),
        ))
    } else {
        Ok(())
    }
}

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        Err(ConfigError::new(key, "must be greater than 0"))
    } else {
        Ok(())
    }
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

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn get_path<'a>(v: &'a toml::Value, path: &[String]) -> Option<&'a toml::Value> {
    path.iter().try_fold(v, |cur, seg| cur.get(seg.as_str()))
}

fn set_path(root: &mut toml::Value, path: &[String], value: toml::Value) {
    let mut cur = root;
    for (i, seg) in path.iter().enumerate() {
        let toml::Value::Table(t) = cur else { return };
        if i + 1 == path.len() {
            t.insert(seg.clone(), value);
            return;
        }
        cur = t
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
}

/// Checks every value of the merged configuration against the type of its default, so a
/// wrong type in the file is reported with its key (serde's message would not name it).
fn check_types(
    defaults: &toml::Value,
    merged: &toml::Value,
    path: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let toml::Value::Table(table) = merged else {
        return Ok(());
    };
    for (k, v) in table {
        path.push(k.clone());
        let key = path.join(".");
        if path.len() == 2 && path[0] == "presets" {
            // Free-form names; values are checked by `validate`.
            if !(v.is_str() || v.is_array()) {
                return Err(ConfigError::new(&key, "must be a string or a list"));
            }
            path.pop();
            continue;
        }
        if path.len() == 3 && path[0] == "limits" && path[1] == "plans" {
            // Free-form plan names, each a table of known integer keys.
            let toml::Value::Table(plan) = v else {
                return Err(ConfigError::new(&key, "must be a table"));
            };
            for (k, pv) in plan {
                let full = format!("{key}.{k}");
                if !PLAN_KEYS.contains(&k.as_str()) {
                    return Err(ConfigError::new(&full, "unknown configuration key"));
                }
                if !matches!(pv, toml::Value::Integer(i) if *i >= 0) {
                    return Err(ConfigError::new(&full, "must be a non-negative integer"));
                }
            }
            path.pop();
            continue;
        }
        let Some(default) = get_path(defaults, path) else {
            return Err(ConfigError::new(&key, "unknown configuration key"));
        };
        let expected = match (default, v) {
            (toml::Value::Table(_), toml::Value::Table(_)) => {
                check_types(defaults, v, &mut path.clone())?;
                None
            }
            (toml::Value::Table(_), _) => Some("a section"),
            (toml::Value::String(_), toml::Value::String(_)) => None,
            (toml::Value::String(_), _) => Some("a string"),
            (toml::Value::Integer(_), toml::Value::Integer(i)) if *i >= 0 => None,
            (toml::Value::Integer(_), _) => Some("a non-negative integer"),
            (toml::Value::Boolean(_), toml::Value::Boolean(_)) => None,
            (toml::Value::Boolean(_), _) => Some("true or false"),
            (toml::Value::Array(_), toml::Value::Array(items))
                if items.iter().all(toml::Value::is_str) =>
            {
                None
            }
            (toml::Value::Array(_), _) => Some("a list of strings"),
            _ => None,
        };
        if let Some(what) = expected {
            return Err(ConfigError::new(&key, format!("must be {what}")));
        }
        path.pop();
    }
    Ok(())
}

/// Converts an environment string to the type of the key's default.
fn typed_env_value(
    defaults: &toml::Value,
    path: &[String],
    raw: &str,
) -> Result<toml::Value, ConfigError> {
    let key = path.join(".");
    if path.len() == 2 && path[0] == "presets" {
        return Ok(if path[1] == "eager" {
            toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            )
        } else {
            toml::Value::String(raw.to_owned())
        });
    }
    if path.len() == 4 && path[0] == "limits" && path[1] == "plans" {
        if !PLAN_KEYS.contains(&path[3].as_str()) {
            return Err(ConfigError::new(&key, "unknown configuration key"));
        }
        return raw
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|v| i64::try_from(v).ok())
            .map(toml::Value::Integer)
            .ok_or_else(|| {
                ConfigError::new(&key, format!("`{raw}` is not a non-negative integer"))
            });
    }
    let Some(default) = get_path(defaults, path) else {
        return Err(ConfigError::new(&key, "unknown configuration key"));
    };
    let bad = |what: &str| ConfigError::new(&key, format!("`{raw}` is not {what}"));
    Ok(match default {
        toml::Value::String(_) => toml::Value::String(raw.to_owned()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse::<u64>()
                .ok()
                .and_then(|v| i64::try_from(v).ok())
                .ok_or_else(|| bad("a non-negative integer"))?,
        ),
        toml::Value::Float(_) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
        }
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(bad("true or false")),
        }),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        toml::Value::Table(_) => return Err(ConfigError::new(&key, "is a section, not a key")),
        toml::Value::Datetime(_) => toml::Value::String(raw.to_owned()),
    })
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
        assert_eq!(c.storage.backend, "fs");
        assert_eq!(c.storage.fs_root, "./data");
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        // Without dev secrets it is not valid yet.
        assert_eq!(c.validate().unwrap_err().key, "signing.keys");
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
        assert_eq!(c.server.trusted_proxies, vec!["10.0.0.0/8", "::1"]);
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
        assert_eq!(c.server.listen, "127.0.0.1:9000");
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
                "tiff",
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
        let err = Config::load(None, e).unwrap().validate().unwrap_err();
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
        let sample = include_str!("../config/pixgate.toml");
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
