//! Application state: everything a request needs, built once from a validated [`Config`].

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{ApiKeys, Authenticator, JwtVerifier, Revocations};
use crate::cache::{DerivedLimits, DerivedStore};
use crate::catalog::Catalog;
use crate::cdn::CdnPurger;
use crate::config::Config;
use crate::fleet::{Apply, Event, Fleet};
use crate::http::jobs::AccountJobs;
use crate::image::ImageLimits;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::options::ParseLimits;
use crate::reload::Swap;
use crate::render::Renderer;
use crate::signature::Signer;
use crate::storage::{Backend, FsStore, ObjectStore, S3Store};

/// Shared, immutable-after-start state.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn ObjectStore>,
    /// The store's readiness check, bounded in time and single-flight (`/readyz`).
    pub health: crate::storage::HealthProbe,
    pub catalog: Catalog,
    /// Swapped on `SIGHUP` ([`App::reload`]).
    pub signer: Swap<Signer>,
    /// Bearer credentials → principals (JWTs, API keys, revocations).
    pub auth: Authenticator,
    /// Teams, shares, collections, and how far a principal reaches an image.
    pub access: crate::access::Access,
    /// Results: caches, single-flight, the engine and its CPU pool, eager renders, deletes.
    pub render: Arc<Renderer>,
    /// The CDN purge hook (a no-op unless `cdn.purge_url` is set).
    pub cdn: Arc<CdnPurger>,
    /// The audit trail (log stream and archive writer).
    pub audit: Arc<crate::audit::Auditor>,
    /// Account erasures and exports in flight.
    pub jobs: AccountJobs,
    pub metrics: Metrics,
    /// Quotas and rate limits (Redis, or in-process).
    pub limiter: Limiter,
    /// The fleet bus (`None` without Redis: a single instance).
    pub fleet: Option<Arc<Fleet>>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub image_limits: ImageLimits,
    pub parse_limits: ParseLimits,
    /// `sources.legacy`: `s3://` source URLs of imported objects.
    pub legacy: crate::import::legacy::Legacy,
}

impl App {
    /// Builds the state. Start-up code: errors are reported and the process exits.
    pub async fn build(config: Config) -> Result<App, String> {
        let store = store(&config).await?;
        let signer = Signer::from_hex(
            &config.signing.keys,
            &config.signing.salts,
            config.signing.signature_size as usize,
        )?;
        let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
        let redis = crate::kv::Pool::from_config(&config.redis)?;
        let fleet = Fleet::new(
            &config.redis,
            crate::kv::Pool::for_fleet(&config.redis)?,
            &config.fleet,
            metrics.clone(),
        );
        let auth = authenticator(&config, &store).await?;
        let l = &config.limits;
        let image_limits = l.image_limits();
        // Before anything with side effects (the audit spool): a bad watermark fails first.
        let engine = crate::render::engine(&config, image_limits)?;
        let limiter = Limiter::new(&config.limits, &config.redis, redis, &metrics);
        limiter.warm_up().await;
        let (catalog, foreign) = catalog(&config, &store).await;
        let c = &config.cache;
        let derived = Arc::new(DerivedStore::new(
            store.clone(),
            catalog.clone(),
            DerivedLimits {
                max_bytes: c.derived_max_bytes,
                reads: usize::try_from(c.derived_read_concurrency).unwrap_or(usize::MAX),
                concurrency: usize::try_from(c.derived_write_concurrency).unwrap_or(usize::MAX),
                queue: usize::try_from(c.derived_write_queue).unwrap_or(usize::MAX),
                ttl: c.derived_ttl(),
            },
            metrics.clone(),
        ));
        let audit = Arc::new(
            crate::audit::Auditor::start(
                store.clone(),
                crate::audit::Settings::from_config(&config.audit, &config.storage.fs_root),
                usize::try_from(config.audit.queue).unwrap_or(usize::MAX),
                metrics.clone(),
            )
            .await?,
        );
        let cdn = Arc::new(CdnPurger::new(&config.cdn, metrics.clone())?.audited(audit.clone()));
        let render = Arc::new(Renderer::build(
            &config,
            engine,
            catalog.clone(),
            derived,
            cdn.clone(),
            metrics.clone(),
        ));
        let access = access(&config, &store);
        Ok(App {
            access,
            limiter,
            fleet,
            catalog,
            render,
            cdn,
            audit,
            jobs: AccountJobs::default(),
            health: crate::storage::HealthProbe::new(store.clone()),
            store,
            signer: Swap::new(signer),
            auth,
            metrics,
            trusted_proxies: config.server.trusted_networks(),
            image_limits,
            parse_limits: config.parse_limits(),
            legacy: crate::import::legacy::Legacy::new(
                config.sources.resolved().map_err(|e| e.to_string())?,
                legacy_lazy(&config, foreign.as_deref()),
                Duration::from_secs(config.sources.legacy_failure_ttl_secs),
            ),
            config,
        })
    }
}

impl App {
    /// Swaps in the secrets of `config` (re-read on `SIGHUP`): signing keys and salts, JWT
    /// verification keys (secret, key file, JWKS file or URL), CDN purge headers. Nothing is
    /// swapped unless all of them build. Returns what was reloaded, for the log.
    pub async fn reload(&self, config: &Config) -> Result<Vec<&'static str>, String> {
        let signer = Signer::from_hex(
            &config.signing.keys,
            &config.signing.salts,
            config.signing.signature_size as usize,
        )?;
        let jwt = JwtVerifier::from_config(&config.auth).await?;
        self.signer.store(signer);
        self.auth.jwt.store(jwt);
        let mut done = vec!["signing.keys", "signing.salts", "auth"];
        if self.cdn.reload_headers(&config.cdn) {
            done.push("cdn.purge_headers");
        }
        Ok(done)
    }
}

/// What a fleet event from another instance means here: forget, in memory, what it deleted or
/// revoked (the durable change is already made).
impl Apply for App {
    fn apply(&self, event: &Event) {
        let cache = &self.render.cache;
        match event {
            Event::ImageDeleted { image } => {
                cache.purge_image(image);
                self.access.forget_image(image);
            }
            Event::AccountErased { user } => {
                cache.purge_owner(user);
                self.access.forget_all();
                self.auth.api_keys.forget_owner(user);
                self.auth.revocations.forget(user);
            }
            Event::ApiKeyRevoked { owner } => self.auth.api_keys.forget_owner(owner),
            Event::TokensRevoked { user, .. } => {
                self.auth.revocations.forget(user);
                self.auth.api_keys.forget_owner(user);
            }
            Event::Blocked { block } => self.auth.blocks.apply_added(block),
            Event::Unblocked { id } => self.auth.blocks.apply_removed(id),
            Event::AccessChanged { changes } => changes.iter().for_each(|c| self.access.apply(c)),
        }
        self.metrics.cache_memory_bytes.set(cache.bytes() as i64);
    }

    fn resync(&self) {
        self.render.cache.forget_confirmations();
        self.auth.api_keys.forget_all();
        self.auth.revocations.forget_all();
        self.access.forget_all();
        // Events may have been missed: the blocklist is read again.
        let blocks = self.auth.blocks.clone();
        tokio::spawn(async move {
            if let Err(e) = blocks.reload().await {
                tracing::warn!(error = %e, "could not reload the IP blocklist");
            }
        });
    }
}

/// Access records, cached for the credential caches' lifetime (the same revocation bound).
fn access(config: &Config, store: &Arc<dyn ObjectStore>) -> crate::access::Access {
    let ttl = Duration::from_secs(config.auth.revocation_cache_secs);
    crate::access::Access::new(store.clone(), ttl)
}

/// The catalog, with the reader of in-place originals: the storage's own S3 service, which
/// lazy legacy imports read too (returned for them).
async fn catalog(
    config: &Config,
    store: &Arc<dyn ObjectStore>,
) -> (Catalog, Option<Arc<crate::storage::foreign::S3Foreign>>) {
    let foreign = crate::storage::foreign::S3Foreign::from_config(&config.storage)
        .await
        .map(Arc::new);
    let catalog = Catalog::new(store.clone(), config.limits.max_source_bytes).with_foreign(
        foreign
            .clone()
            .map(|f| f as Arc<dyn crate::storage::foreign::Foreign>),
    );
    (catalog, foreign)
}

/// `sources.legacy_lazy`: lazy imports read the legacy buckets from the storage's S3 service
/// (validation makes sure the backend is S3).
fn legacy_lazy(
    config: &Config,
    foreign: Option<&crate::storage::foreign::S3Foreign>,
) -> Option<crate::import::legacy::Lazy> {
    let foreign = foreign.filter(|_| config.sources.legacy_lazy)?;
    Some(crate::import::legacy::Lazy {
        client: foreign.client().clone(),
        timeout: foreign.timeout(),
    })
}

/// Bearer credentials: the JWT verifier (fetches a JWKS URL once), API keys and revocation
/// records in the store.
async fn authenticator(
    config: &Config,
    store: &Arc<dyn ObjectStore>,
) -> Result<Authenticator, String> {
    let a = &config.auth;
    let revocation_ttl = Duration::from_secs(a.revocation_cache_secs);
    Ok(Authenticator {
        jwt: Swap::new(JwtVerifier::from_config(a).await?),
        api_keys: ApiKeys::new(
            store.clone(),
            revocation_ttl,
            usize::try_from(a.max_api_keys_per_user).unwrap_or(usize::MAX),
        ),
        revocations: Revocations::new(store.clone(), revocation_ttl),
        blocks: {
            let blocks = Arc::new(crate::auth::blocks::Blocklist::new(
                store.clone(),
                revocation_ttl,
            ));
            // Unreadable now (storage down at start): empty until the first reload succeeds.
            if let Err(e) = blocks.reload().await {
                tracing::warn!(error = %e, "could not load the IP blocklist");
            }
            blocks
        },
        leeway_secs: a.leeway_secs,
    })
}

/// The object store as configured (also used by the CLI's archive jobs).
pub async fn store(config: &Config) -> Result<Arc<dyn ObjectStore>, String> {
    let timeout = Duration::from_secs(config.storage.timeout_secs);
    Ok(match config.storage.backend {
        Backend::S3 => Arc::new(S3Store::new(&config.storage).await),
        Backend::Fs => Arc::new(
            FsStore::new(&config.storage.fs_root, timeout)
                .map_err(|e| format!("storage.fs_root {}: {e}", config.storage.fs_root))?,
        ),
    })
}
