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
    /// `/v1/teams`: list the caller's teams, create one.
    Teams,
    /// `/v1/teams/{id}`: read, delete.
    Team(String),
    /// `/v1/teams/{id}/members`: add a member or change a role.
    TeamMembers(String),
    /// `/v1/teams/{id}/members/{user}`: remove a member.
    TeamMember(String, String),
    /// `/v1/images/{id}/shares`, `/v1/collections/{id}/shares`: list, create.
    Shares(ShareOf),
    /// `…/shares/{share}`: revoke.
    Share(ShareOf, String),
    /// `/v1/collections`: list, create.
    Collections,
    /// `/v1/collections/{id}`: read, change, delete.
    Collection(String),
    /// `/v1/collections/{id}/items`: add or move an image.
    CollectionItems(String),
    /// `/v1/collections/{id}/items/{image}`: remove an image.
    CollectionItem(String, String),
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
            Route::Teams | Route::Team(_) | Route::TeamMembers(_) | Route::TeamMember(..) => {
                "teams"
            }
            Route::Shares(_) | Route::Share(..) => "shares",
            Route::Collections
            | Route::Collection(_)
            | Route::CollectionItems(_)
            | Route::CollectionItem(..) => "collections",
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
            (Route::Teams, &Method::POST) => "team.create",
            (Route::Teams, _) if get => "team.list",
            (Route::Team(_), _) if get => "team.read",
            (Route::Team(_), &Method::DELETE) => "team.delete",
            (Route::TeamMembers(_), &Method::POST) => "team.member.add",
            (Route::TeamMember(..), &Method::DELETE) => "team.member.remove",
            (Route::Shares(_), &Method::POST) => "share.create",
            (Route::Shares(_), _) if get => "share.list",
            (Route::Share(..), &Method::DELETE) => "share.revoke",
            (Route::Collections, &Method::POST) => "collection.create",
            (Route::Collections, _) if get => "collection.list",
            (Route::Collection(_), _) if get => "collection.read",
            (Route::Collection(_), &Method::PATCH) => "collection.update",
            (Route::Collection(_), &Method::DELETE) => "collection.delete",
            (Route::CollectionItems(_), &Method::POST) => "collection.item.add",
            (Route::CollectionItem(..), &Method::DELETE) => "collection.item.remove",
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

/// What a share route is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ShareOf {
    Image(String),
    Collection(String),
}

impl ShareOf {
    pub(super) fn target(&self) -> super::shares::Target<'_> {
        match self {
            ShareOf::Image(id) => super::shares::Target::Image(id),
            ShareOf::Collection(id) => super::shares::Target::Collection(id),
        }
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
        ["images", id, "shares"] => Route::Shares(ShareOf::Image((*id).to_owned())),
        ["images", id, "shares", s] => {
            Route::Share(ShareOf::Image((*id).to_owned()), (*s).to_owned())
        }
        ["teams"] => Route::Teams,
        ["teams", id] => Route::Team((*id).to_owned()),
        ["teams", id, "members"] => Route::TeamMembers((*id).to_owned()),
        ["teams", id, "members", u] => Route::TeamMember((*id).to_owned(), (*u).to_owned()),
        ["collections"] => Route::Collections,
        ["collections", id] => Route::Collection((*id).to_owned()),
        ["collections", id, "items"] => Route::CollectionItems((*id).to_owned()),
        ["collections", id, "items", i] => Route::CollectionItem((*id).to_owned(), (*i).to_owned()),
        ["collections", id, "shares"] => Route::Shares(ShareOf::Collection((*id).to_owned())),
        ["collections", id, "shares", s] => {
            Route::Share(ShareOf::Collection((*id).to_owned()), (*s).to_owned())
        }
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
