//! Routes: which handler a path goes to, and each route's metric label and audit action.

use http::Method;

use crate::app::App;

/// Routes (their labels are metric label values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    Healthz,
    Readyz,
    Metrics,
    /// `/v1/images`: list (GET), upload (POST).
    Images,
    /// `/v1/images/{id}`: get, patch, delete.
    Image(String),
    /// `/v1/images/{id}/url`: mint a signed URL.
    ImageUrl(String),
    /// `/v1/api-keys`: list, create.
    ApiKeys,
    /// `/v1/api-keys/{id}`: revoke.
    ApiKey(String),
    /// `/v1/admin/users/{user}/revoke-tokens`.
    AdminRevoke(String),
    /// `/v1/usage`: the caller's quotas.
    Usage,
    /// `/v1/me`: erasure (`DELETE`).
    Me,
    /// `/v1/me/export`: the GDPR export.
    MeExport,
    /// `/v1/admin/audit`: audit events.
    AdminAudit,
    /// `/v1/me/activity`: the caller's own audit events.
    MeActivity,
    /// `/v1/admin/blocks`: the IP blocklist (list, add).
    AdminBlocks,
    /// `/v1/admin/blocks/{id}`: lift a block.
    AdminBlock(String),
    /// Any other `/v1` path.
    Api,
    /// `/info/{signature}/…`: an image's facts and placeholders.
    Info,
    Transform,
}

impl Route {
    pub(super) fn label(&self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Images => "images",
            Route::Image(_) => "image",
            Route::ImageUrl(_) => "image_url",
            Route::ApiKeys | Route::ApiKey(_) => "api_keys",
            Route::AdminRevoke(_)
            | Route::AdminAudit
            | Route::AdminBlocks
            | Route::AdminBlock(_) => "admin",
            Route::Usage => "usage",
            Route::Me | Route::MeExport | Route::MeActivity => "account",
            Route::Api => "api",
            Route::Info => "info",
            Route::Transform => "transform",
        }
    }

    /// The audit action of a request on this route (`None`: not audited).
    pub(super) fn audit_action(&self, method: &Method) -> Option<&'static str> {
        let get = method == Method::GET || method == Method::HEAD;
        Some(match (self, method) {
            (Route::Images, &Method::POST) => "image.upload",
            (Route::Images, _) if get => "image.list",
            (Route::Image(_), _) if get => "image.read",
            (Route::Image(_), &Method::PATCH) => "image.update",
            (Route::Image(_), &Method::DELETE) => "image.delete",
            (Route::ImageUrl(_), &Method::POST) => "url.sign",
            (Route::ApiKeys, &Method::POST) => "apikey.create",
            (Route::ApiKeys, _) if get => "apikey.list",
            (Route::ApiKey(_), &Method::DELETE) => "apikey.revoke",
            (Route::AdminRevoke(_), &Method::POST) => "tokens.revoke",
            (Route::AdminAudit, _) if get => "audit.read",
            (Route::AdminBlocks, &Method::POST) => "block.create",
            (Route::AdminBlocks, _) if get => "block.list",
            (Route::AdminBlock(_), &Method::DELETE) => "block.delete",
            (Route::Usage, _) if get => "usage.read",
            (Route::Me, &Method::DELETE) => "user.erase",
            (Route::MeExport, _) if get => "user.export",
            (Route::MeActivity, _) if get => "activity.read",
            (Route::Info, _) if get => "image.info",
            (Route::Transform, _) if get => "image.transform",
            _ => return None,
        })
    }

    /// Everything the blocklist refuses: all but the operational routes (probes, metrics).
    pub(super) fn is_api_or_image(&self) -> bool {
        !matches!(self, Route::Healthz | Route::Readyz | Route::Metrics)
    }

    pub(super) fn is_api(&self) -> bool {
        !matches!(
            self,
            Route::Transform | Route::Info | Route::Healthz | Route::Readyz | Route::Metrics
        )
    }
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Main,
    /// The separate `/metrics` listener: serves only `/metrics`, `/healthz`.
    Metrics,
}

pub(super) fn classify(path: &str, listener: Listener, app: &App) -> Route {
    match path {
        "/healthz" => return Route::Healthz,
        "/readyz" => return Route::Readyz,
        "/metrics"
            if listener == Listener::Metrics || app.config.server.metrics_listen.is_none() =>
        {
            return Route::Metrics;
        }
        _ if listener == Listener::Metrics => return Route::Api,
        _ => {}
    }
    // A transform signature reads `info` only when truncated to 3 bytes
    // (`signing.signature_size`), and then for one URL in 2^24.
    if path.starts_with("/info/") {
        return Route::Info;
    }
    let Some(rest) = path.strip_prefix("/v1") else {
        return Route::Transform;
    };
    let segs: Vec<&str> = rest.split('/').skip(1).collect();
    match segs.as_slice() {
        ["images"] => Route::Images,
        ["images", id] => Route::Image((*id).to_owned()),
        ["images", id, "url"] => Route::ImageUrl((*id).to_owned()),
        ["api-keys"] => Route::ApiKeys,
        ["api-keys", id] => Route::ApiKey((*id).to_owned()),
        ["admin", "users", user, "revoke-tokens"] => Route::AdminRevoke((*user).to_owned()),
        ["usage"] => Route::Usage,
        ["me"] => Route::Me,
        ["me", "export"] => Route::MeExport,
        ["me", "activity"] => Route::MeActivity,
        ["admin", "audit"] => Route::AdminAudit,
        ["admin", "blocks"] => Route::AdminBlocks,
        ["admin", "blocks", id] => Route::AdminBlock((*id).to_owned()),
        _ if rest.is_empty() || rest.starts_with('/') => Route::Api,
        _ => Route::Transform,
    }
}
