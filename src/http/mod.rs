//! HTTP: routing, request context, and `finish` — the one exit for every response.
//!
//! `finish` writes the common headers (request id, the security headers, `no-store` and the
//! JSON error body for errors, `WWW-Authenticate` on 401, CORS for allowed origins), counts
//! metrics by route and status class, and logs one line per request. Handlers return
//! `Result<Response, Error>` and never build error responses themselves. Only this layer maps
//! errors to statuses.

mod account;
mod admin;
mod body;
mod cors;
pub mod error;
pub(crate) mod images;
pub mod jobs;
mod keys;
mod ops;
mod ratelimit;
mod transform;
mod usage;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::app::App;
use crate::audit::{Actor, Event, Resource};
use crate::auth::{Action, AuthError, AuthMethod, Principal};
use crate::limits::{Charge, Refusal, Status};
use crate::metrics::{GaugeGuard, status_class};
use error::Error;

pub use body::{Body, BodySender};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");
const X_FRAME_OPTIONS: HeaderName = HeaderName::from_static("x-frame-options");
const REFERRER_POLICY: HeaderName = HeaderName::from_static("referrer-policy");
const CONTENT_SECURITY_POLICY: HeaderName = HeaderName::from_static("content-security-policy");
const STRICT_TRANSPORT_SECURITY: HeaderName = HeaderName::from_static("strict-transport-security");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const MAX_REQUEST_ID_LEN: usize = 64;

/// Routes (their labels are metric label values).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
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
    /// Any other `/v1` path.
    Api,
    Transform,
}

impl Route {
    fn label(&self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Images => "images",
            Route::Image(_) => "image",
            Route::ImageUrl(_) => "image_url",
            Route::ApiKeys | Route::ApiKey(_) => "api_keys",
            Route::AdminRevoke(_) | Route::AdminAudit => "admin",
            Route::Usage => "usage",
            Route::Me | Route::MeExport => "account",
            Route::Api => "api",
            Route::Transform => "transform",
        }
    }

    /// The audit action of a request on this route (`None`: not audited).
    fn audit_action(&self, method: &Method) -> Option<&'static str> {
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
            (Route::Usage, _) if get => "usage.read",
            (Route::Me, &Method::DELETE) => "user.erase",
            (Route::MeExport, _) if get => "user.export",
            (Route::Transform, _) if get => "image.transform",
            _ => return None,
        })
    }

    fn is_api(&self) -> bool {
        !matches!(
            self,
            Route::Transform | Route::Healthz | Route::Readyz | Route::Metrics
        )
    }
}

/// What handlers learn about a request for its audit event and log line.
#[derive(Debug, Default)]
struct Note {
    /// The authenticated caller.
    actor: Option<Actor>,
    /// A verified signed URL (no principal).
    signed_url: bool,
    image: Option<String>,
    owner: Option<String>,
    /// The account acted on (export, erasure, admin on behalf).
    subject: Option<String>,
    api_key: Option<String>,
    bytes_in: u64,
    /// The image exists but the caller may not touch it (answered `404`).
    denied: bool,
}

/// Per-request facts shared by handlers.
pub struct Ctx {
    pub request_id: String,
    pub client_ip: IpAddr,
    /// Whether the request arrived over TLS.
    pub tls: bool,
    /// Actor and resource, for the audit event and the request log. Held only to set or read
    /// a value, never across an `.await`.
    note: Mutex<Note>,
    /// The limits this request was subject to, for the `RateLimit` headers (one per policy).
    limits: Mutex<Vec<Status>>,
    /// `max-age` for a `404` of this request (set once a signed URL verified); 0: `no-store`.
    not_found_max_age: AtomicU64,
}

impl Ctx {
    /// Lets a `404` of this request be cached publicly for `secs` (0: never).
    pub fn cache_not_found_for(&self, secs: u64) {
        self.not_found_max_age.store(secs, Ordering::Relaxed);
    }

    fn note(&self) -> std::sync::MutexGuard<'_, Note> {
        self.note.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the authenticated caller.
    pub fn set_principal(&self, p: &Principal) {
        self.note().actor = Some(Actor {
            user: Some(p.user_id.clone()),
            role: Some(p.role.as_str().to_owned()),
            auth: p.method_name().to_owned(),
            api_key_id: match &p.method {
                AuthMethod::ApiKey { key_id, .. } => Some(key_id.clone()),
                AuthMethod::Jwt => None,
            },
        });
    }

    /// Records that a verified signed URL authorised the request.
    pub fn set_signed_url(&self) {
        self.note().signed_url = true;
    }

    /// Records the image acted on and, once known, its owner.
    pub fn set_image(&self, id: &str, owner: Option<&str>) {
        let mut n = self.note();
        n.image = Some(crate::audit::clip(id));
        if let Some(o) = owner {
            n.owner = Some(o.to_owned());
        }
    }

    /// Records the owner of the image acted on.
    pub fn set_image_owner(&self, owner: &str) {
        self.note().owner = Some(owner.to_owned());
    }

    /// Records the account acted on (export, erasure, revocation, admin on behalf).
    pub fn set_subject(&self, user: &str) {
        self.note().subject = Some(crate::audit::clip(user));
    }

    /// Records the API key created or revoked.
    pub fn set_api_key(&self, id: &str) {
        self.note().api_key = Some(crate::audit::clip(id));
    }

    /// Records the bytes a request brought in (an upload's image).
    pub fn set_bytes_in(&self, n: u64) {
        self.note().bytes_in = n;
    }

    /// Records that the caller was refused an existing image (answered as `404`).
    pub fn set_denied(&self) {
        self.note().denied = true;
    }

    /// Records a limit's state for the response headers.
    pub fn note_limit(&self, status: &Status) {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits.retain(|s| s.policy.kind != status.policy.kind);
        limits.push(status.clone());
    }

    /// Passes a limiter decision through, recording the state of an admitted one (a refusal's
    /// state travels in its error and is recorded by `finish`).
    pub fn limit<T>(&self, decision: Result<T, Refusal>) -> Result<T, Error>
    where
        T: LimitState,
    {
        if let Ok(Some(s)) = decision.as_ref().map(LimitState::limit_state) {
            self.note_limit(s);
        }
        decision.map_err(Error::from)
    }
}

/// A limiter answer that may carry a limit's state.
pub trait LimitState {
    fn limit_state(&self) -> Option<&Status>;
}

impl LimitState for Option<Status> {
    fn limit_state(&self) -> Option<&Status> {
        self.as_ref()
    }
}

impl LimitState for () {
    fn limit_state(&self) -> Option<&Status> {
        None
    }
}

impl LimitState for Charge {
    fn limit_state(&self) -> Option<&Status> {
        self.status()
    }
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Main,
    /// The separate `/metrics` listener: serves only `/metrics`, `/healthz`.
    Metrics,
}

fn classify(path: &str, listener: Listener, app: &App) -> Route {
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
        ["admin", "audit"] => Route::AdminAudit,
        _ if rest.is_empty() || rest.starts_with('/') => Route::Api,
        _ => Route::Transform,
    }
}

/// Serves one request: CORS preflight, route, run the handler under the request deadline,
/// finish.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    listener: Listener,
    tls: bool,
) -> Response<Body> {
    let start = Instant::now();
    let _inflight = GaugeGuard::new(&app.metrics.inflight);
    let ctx = Ctx {
        request_id: request_id(req.headers()),
        client_ip: client_ip(
            peer.ip(),
            req.headers(),
            &app.trusted_proxies,
            app.config.server.client_ip_header == crate::server::config::ClientIpHeader::Forwarded,
        ),
        tls,
        note: Mutex::new(Note::default()),
        limits: Mutex::new(Vec::new()),
        not_found_max_age: AtomicU64::new(0),
    };
    let route = classify(req.uri().path(), listener, &app);
    let is_head = req.method() == Method::HEAD;
    let preflight = cors::is_preflight(&req);
    let audit_action = route.audit_action(req.method()).filter(|_| !preflight);
    let user_agent = audit_action.and_then(|_| {
        req.headers()
            .get(http::header::USER_AGENT)
            .map(|v| crate::audit::clip_user_agent(&String::from_utf8_lossy(v.as_bytes())))
    });
    // Declared after `ctx`, so dropped before it: a request cancelled before `finish` (the
    // client went away) still leaves its event — its work may have happened.
    let mut audit = AuditOnce {
        app: &app,
        ctx: &ctx,
        action: audit_action,
        user_agent,
        done: false,
    };
    let origin = cors::origin(req.headers());
    let result = if let Err(e) = check_host(&req) {
        Err(e)
    } else if preflight {
        cors::preflight(&app.config.server, req.headers(), route.is_api())
    } else {
        let deadline = Duration::from_secs(app.config.server.request_timeout_secs);
        match tokio::time::timeout(deadline, dispatch(&app, &route, req, &ctx)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    };
    let mut resp = finish(
        &app,
        &route,
        &ctx,
        start,
        is_head,
        result,
        |status, error, bytes_out| audit.emit(status, error, bytes_out),
    );
    cors::decorate(&app.config.server, origin.as_deref(), resp.headers_mut());
    resp
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, and no request has two (they
/// could name different hosts to a cache and to this server). HTTP/2 carries `:authority`
/// instead and HTTP/1.0 may omit it.
fn check_host(req: &Request<Incoming>) -> Result<(), Error> {
    let hosts = req.headers().get_all(http::header::HOST).iter().count();
    if hosts > 1 {
        return Err(Error::BadRequest("more than one Host header".into()));
    }
    if hosts == 0 && req.version() == http::Version::HTTP_11 {
        return Err(Error::BadRequest(
            "an HTTP/1.1 request needs a Host header".into(),
        ));
    }
    Ok(())
}

/// Emits a request's audit event exactly once: from `finish`, or — if the request future
/// is dropped first — on drop, as `499 client_closed`.
struct AuditOnce<'a> {
    app: &'a App,
    ctx: &'a Ctx,
    action: Option<&'static str>,
    user_agent: Option<String>,
    done: bool,
}

impl AuditOnce<'_> {
    fn emit(&mut self, status: u16, error: Option<&Error>, bytes_out: Option<u64>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let Some(action) = self.action {
            let event = audit_event(
                self.ctx,
                action,
                status,
                error,
                bytes_out,
                self.user_agent.take(),
            );
            self.app.audit.emit(&event);
        }
    }
}

impl Drop for AuditOnce<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(action) = self.action {
            let mut e = audit_event(self.ctx, action, 499, None, None, self.user_agent.take());
            e.outcome = "failure".to_owned();
            e.error = Some("client_closed".to_owned());
            self.app.audit.emit(&e);
        }
    }
}

/// The audit event of a finished request. Refusals are recorded under their own action
/// (`auth.failure`, `access.denied`, `quota.exceeded`, `rate.limited`) with the route's
/// action in `attempted`.
fn audit_event(
    ctx: &Ctx,
    action: &'static str,
    status: u16,
    error: Option<&Error>,
    bytes_out: Option<u64>,
    user_agent: Option<String>,
) -> Event {
    let mut n = ctx.note();
    let refusal = match error {
        Some(
            Error::MissingToken
            | Error::InvalidToken(_)
            | Error::TokenExpired
            | Error::InvalidSignature,
        ) => Some("auth.failure"),
        Some(Error::Forbidden(_) | Error::InsufficientScope(_)) => Some("access.denied"),
        Some(Error::NotFound) if n.denied => Some("access.denied"),
        Some(Error::QuotaExceeded(_)) => Some("quota.exceeded"),
        Some(Error::RateLimited(_)) => Some("rate.limited"),
        _ => None,
    };
    let actor = n.actor.take().unwrap_or_else(|| Actor {
        auth: if n.signed_url {
            "signed_url"
        } else {
            "anonymous"
        }
        .to_owned(),
        ..Actor::default()
    });
    let mut e = Event::new(&ctx.request_id, refusal.unwrap_or(action), actor);
    if refusal.is_some() {
        e.attempted = Some(action.to_owned());
    }
    e.resource = Resource {
        image: n.image.take(),
        owner: n.owner.take(),
        user: n.subject.take(),
        api_key: n.api_key.take(),
    };
    e.status = status;
    if let Some(err) = error {
        e.outcome = "failure".to_owned();
        e.error = Some(err.code().to_owned());
    }
    e.client_ip = ctx.client_ip.to_string();
    e.user_agent = user_agent;
    e.bytes_in = n.bytes_in;
    e.bytes_out = bytes_out;
    e
}

async fn dispatch(
    app: &Arc<App>,
    route: &Route,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<Response<Body>, Error> {
    let method = req.method().clone();
    let upload = *route == Route::Images && method == Method::POST;
    if !upload {
        reject_large_body(req.headers(), app.config.server.max_body_bytes)?;
    }
    let get_like = method == Method::GET || method == Method::HEAD;
    match (route, method) {
        (Route::Healthz, _) if get_like => Ok(ops::healthz()),
        (Route::Readyz, _) if get_like => Ok(ops::readyz(app).await),
        (Route::Metrics, _) if get_like => Ok(ops::metrics(app)),
        (Route::Images, Method::POST) => images::create(app, req, ctx).await,
        (Route::Images, _) if get_like => images::list(app, req, ctx).await,
        (Route::Images, _) => Err(Error::MethodNotAllowed("GET, HEAD, POST")),
        (Route::Image(id), Method::PATCH) => images::update(app, req, ctx, id).await,
        (Route::Image(id), Method::DELETE) => images::delete(app, req, ctx, id).await,
        (Route::Image(id), _) if get_like => images::get(app, req, ctx, id).await,
        (Route::Image(_), _) => Err(Error::MethodNotAllowed("GET, HEAD, PATCH, DELETE")),
        (Route::ImageUrl(id), Method::POST) => images::sign_url(app, req, ctx, id).await,
        (Route::ImageUrl(_), _) => Err(Error::MethodNotAllowed("POST")),
        (Route::ApiKeys, Method::POST) => keys::create(app, req, ctx).await,
        (Route::ApiKeys, _) if get_like => keys::list(app, req, ctx).await,
        (Route::ApiKeys, _) => Err(Error::MethodNotAllowed("GET, HEAD, POST")),
        (Route::ApiKey(id), Method::DELETE) => keys::revoke(app, req, ctx, id).await,
        (Route::ApiKey(_), _) => Err(Error::MethodNotAllowed("DELETE")),
        (Route::AdminRevoke(user), Method::POST) => admin::revoke_tokens(app, req, ctx, user).await,
        (Route::AdminRevoke(_), _) => Err(Error::MethodNotAllowed("POST")),
        (Route::Usage, _) if get_like => usage::get(app, req, ctx).await,
        (Route::Usage, _) => Err(Error::MethodNotAllowed("GET, HEAD")),
        (Route::Me, Method::DELETE) => account::erase(app, req, ctx).await,
        (Route::Me, _) => Err(Error::MethodNotAllowed("DELETE")),
        (Route::MeExport, _) if get_like => account::export(app, req, ctx).await,
        (Route::MeExport, _) => Err(Error::MethodNotAllowed("GET, HEAD")),
        (Route::AdminAudit, _) if get_like => admin::audit(app, req, ctx).await,
        (Route::AdminAudit, _) => Err(Error::MethodNotAllowed("GET, HEAD")),
        (Route::Api, _) => Err(Error::NotFound),
        (Route::Transform, _) if get_like => transform::handle(app, req, ctx).await,
        _ => Err(Error::MethodNotAllowed("GET, HEAD")),
    }
}

fn finish(
    app: &App,
    route: &Route,
    ctx: &Ctx,
    start: Instant,
    is_head: bool,
    result: Result<Response<Body>, Error>,
    audit: impl FnOnce(u16, Option<&Error>, Option<u64>),
) -> Response<Body> {
    let label = route.label();
    let (mut resp, error) = match result {
        Ok(r) => (r, None),
        Err(e) => (error_response(&e), Some(e)),
    };
    // Errors are `no-store`, except the `404` of a verified signed URL, which a CDN may keep
    // for `cache.error_max_age_secs` so a flood of requests for a deleted image stays there.
    let not_found_age = ctx.not_found_max_age.load(Ordering::Relaxed);
    if matches!(error, Some(Error::NotFound))
        && not_found_age > 0
        && let Ok(v) = HeaderValue::from_str(&format!("public, max-age={not_found_age}"))
    {
        resp.headers_mut().insert(CACHE_CONTROL, v);
    }
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    security_headers(h, ctx.tls.then_some(app.config.server.hsts_max_age_secs));
    if let Some(Error::QuotaExceeded(s) | Error::RateLimited(s)) = &error {
        ctx.note_limit(s);
    }
    let limits = std::mem::take(&mut *ctx.limits.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some((policy, state)) = ratelimit::header_values(&limits) {
        if let Ok(v) = HeaderValue::from_str(&policy) {
            h.insert(RATELIMIT_POLICY, v);
        }
        // A shared cache would replay one client's remaining allowance to everyone: public
        // (CDN-cacheable) responses carry the policy only.
        let public = h
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("public"));
        if !public && let Ok(v) = HeaderValue::from_str(&state) {
            h.insert(RATELIMIT, v);
        }
    }
    let status = resp.status().as_u16();
    let m = &app.metrics;
    m.http_requests
        .with_label_values(&[label, status_class(status)])
        .inc();
    m.http_duration
        .with_label_values(&[label])
        .observe(start.elapsed().as_secs_f64());
    // hyper adds Content-Length later; a whole body knows its exact size now (a stream does
    // not: `None`).
    let sent = if is_head {
        Some(0)
    } else {
        hyper::body::Body::size_hint(resp.body()).exact()
    };
    m.http_bytes_out
        .with_label_values(&[label])
        .inc_by(sent.unwrap_or(0));
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let (user, auth) = {
        let n = ctx.note();
        match &n.actor {
            Some(a) => (a.user.clone().unwrap_or_default(), auth_name(&a.auth)),
            // Signed URLs: the owner the request counts for.
            None if n.signed_url => (n.owner.clone().unwrap_or_default(), "signed_url"),
            None => (String::new(), "anonymous"),
        }
    };
    match &error {
        Some(e) => {
            m.http_errors
                .with_label_values(&[label, e.category().as_str()])
                .inc();
            // The full (internal) error goes to the log only, never to the client.
            if e.status().is_server_error() {
                tracing::error!(request_id = %ctx.request_id, route = label, status, code = e.code(), error = %e, user = %user.escape_debug(), auth, client_ip = %ctx.client_ip, duration_ms = ms, "request failed");
            } else {
                tracing::info!(request_id = %ctx.request_id, route = label, status, code = e.code(), user = %user.escape_debug(), auth, client_ip = %ctx.client_ip, duration_ms = ms, "request refused");
            }
        }
        None => {
            tracing::info!(request_id = %ctx.request_id, route = label, status, user = %user.escape_debug(), auth, client_ip = %ctx.client_ip, duration_ms = ms, "request");
        }
    }
    audit(status, error.as_ref(), sent);
    resp
}

fn auth_name(s: &str) -> &'static str {
    match s {
        "jwt" => "jwt",
        "api_key" => "api_key",
        "signed_url" => "signed_url",
        _ => "anonymous",
    }
}

/// Headers every response carries. The CSP forbids everything and sandboxes the document, so
/// an image (or an error body) opened directly in a browser can run nothing; HSTS only over
/// TLS (RFC 6797 §7.2: never over plain HTTP).
fn security_headers(h: &mut HeaderMap, hsts_max_age: Option<u64>) {
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
    );
    if let Some(age) = hsts_max_age
        && let Ok(v) = HeaderValue::from_str(&format!("max-age={age}"))
    {
        h.insert(STRICT_TRANSPORT_SECURITY, v);
    }
}

/// Renders an error as the standard JSON shape.
fn error_response(e: &Error) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": e.code(), "message": e.public_message()}});
    let mut resp = json_response(e.status(), &body);
    let h = resp.headers_mut();
    match e {
        Error::MissingToken => {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pixgate\""),
            );
        }
        Error::InvalidToken(_) | Error::TokenExpired => {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pixgate\", error=\"invalid_token\""),
            );
        }
        Error::InsufficientScope(_) => {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pixgate\", error=\"insufficient_scope\""),
            );
        }
        Error::MethodNotAllowed(allow) => {
            h.insert(ALLOW, HeaderValue::from_static(allow));
        }
        Error::Overloaded | Error::Timeout | Error::StorageUnavailable(_) => {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        Error::QuotaExceeded(s) | Error::RateLimited(s) => {
            h.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(s.retry_after_secs()),
            );
        }
        _ => {}
    }
    resp
}

/// A JSON response with `Cache-Control: no-store`.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Reads a whole request body of at most `limit` bytes.
pub(crate) async fn read_body(body: Incoming, limit: u64) -> Result<Bytes, Error> {
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Error::PayloadTooLarge { limit })
        }
        Err(_) => Err(Error::BadRequest("could not read the request body".into())),
    }
}

/// Refuses a declared body larger than `limit` without reading it.
pub(crate) fn reject_large_body(headers: &HeaderMap, limit: u64) -> Result<(), Error> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(Error::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// The bearer principal of a request (JWT or API key), or `MissingToken`; recorded as the
/// request's actor and charged one request of its per-user rate.
///
/// A presented credential is tried only if the client IP is under the failed-authentication
/// limit, and a credential that fails (invalid, revoked, unknown API key; not merely expired)
/// counts against that limit. No credential at all is not an attempt: `401` with no I/O.
pub(crate) async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    ctx: &Ctx,
) -> Result<Principal, Error> {
    if headers.contains_key(http::header::AUTHORIZATION) {
        ctx.limit(app.limiter.guard_auth(ctx.client_ip).await)?;
    }
    let p = match app.auth.authenticate(headers).await {
        Ok(p) => p,
        Err(e) => {
            // Guesses count; an expired token does not: its signature is valid, and clients
            // (single-page apps above all) routinely send a few before refreshing — counting
            // them would lock whole offices out for 15 minutes.
            if matches!(e, AuthError::InvalidToken(_)) {
                app.limiter.auth_failed(ctx.client_ip).await;
            }
            return Err(e.into());
        }
    };
    ctx.set_principal(&p);
    ctx.limit(
        app.limiter
            .user_request(&p.user_id, p.plan.as_deref())
            .await,
    )?;
    Ok(p)
}

/// Charges one unit of `kind` to the calling principal (admins bypass per
/// `limits.admin_bypass`), recording the limit's state for the response headers.
pub(crate) async fn charge_caller(
    app: &App,
    ctx: &Ctx,
    kind: crate::limits::Kind,
    p: &Principal,
) -> Result<Charge, Error> {
    let admin = p.role == crate::auth::Role::Admin;
    ctx.limit(
        app.limiter
            .charge(kind, &p.user_id, p.plan.as_deref(), admin)
            .await,
    )
}

/// Authenticates and checks that the principal may perform `action` (`403` otherwise).
pub(crate) async fn authorize(
    app: &App,
    headers: &HeaderMap,
    ctx: &Ctx,
    action: Action,
) -> Result<Principal, Error> {
    let p = authenticate(app, headers, ctx).await?;
    p.allow(action)?;
    Ok(p)
}

/// The user a request acts for: the caller, or — for admins only — `?owner=`.
pub(crate) fn acting_for(principal: &Principal, query: Option<&str>) -> Result<String, Error> {
    match query_param(query, "owner")? {
        Some(owner) if owner != principal.user_id => {
            principal.allow(Action::Admin)?;
            if owner.is_empty() || owner.len() > 255 || owner.chars().any(char::is_control) {
                return Err(Error::InvalidField("owner: not a user id".into()));
            }
            Ok(owner)
        }
        _ => Ok(principal.user_id.clone()),
    }
}

/// An empty `204 No Content`.
pub(crate) fn no_content() -> Response<Body> {
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// Reads a JSON object body (an empty body is `{}`).
pub(crate) async fn read_json(body: Incoming, limit: u64) -> Result<serde_json::Value, Error> {
    let bytes = read_body(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| Error::BadRequest("the body is not valid JSON".into()))?;
    if !v.is_object() {
        return Err(Error::BadRequest("the body must be a JSON object".into()));
    }
    Ok(v)
}

/// The decoded value of query parameter `name` (first occurrence); `Err` if it is not valid
/// percent-encoded UTF-8.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, Error> {
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return percent_decode(&v.replace('+', " "))
                .map(Some)
                .ok_or_else(|| Error::BadRequest(format!("query parameter {name} is malformed")));
        }
    }
    Ok(None)
}

/// Strict percent-decoding to UTF-8 (`None` on a bad escape or invalid UTF-8).
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Accepts a client's `X-Request-Id` if it is short and plain, else makes one.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    match given {
        Some(v) => v.to_owned(),
        // 32 random bits per process, then a counter: unique without a system call per
        // request (request ids correlate logs; they are not secrets).
        None => {
            static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let prefix = PREFIX.get_or_init(|| {
                let mut b = [0u8; 4];
                // On the (theoretical) failure of the OS RNG, zero is still a valid prefix.
                let _ = getrandom::fill(&mut b);
                u32::from_le_bytes(b)
            });
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            format!("{prefix:08x}{n:016x}")
        }
    }
}

/// The client address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most forwarded hop that is not itself a trusted proxy. Hops come from the one header
/// the proxies are configured to write (`server.client_ip_header`): `X-Forwarded-For`, or
/// `Forwarded` (RFC 7239 `for=`) — never chosen by what the request carries, since proxies pass
/// the other header through from the client untouched. The list is walked from the right and
/// the walk stops at the first entry that is not an address (malformed, `unknown`, an
/// obfuscated name): everything left of it may have been written by the client.
pub(crate) fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
    use_forwarded: bool,
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries = if !use_forwarded {
        // Several headers are one list, in order.
        let mut entries: Vec<String> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            match value.to_str() {
                Ok(s) => entries.extend(s.split(',').map(|e| e.trim().to_owned())),
                Err(_) => entries.push(String::new()), // ends the trustworthy part
            }
        }
        entries
    } else {
        forwarded_hops(headers)
    };
    let mut nearest = peer;
    for entry in entries.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => nearest = ip,
            Ok(ip) => return ip,
            Err(_) => return nearest,
        }
    }
    nearest
}

/// The `for=` values of every `Forwarded` element, in order, reduced to bare addresses
/// (`"[2001:db8::1]:4711"` → `2001:db8::1`, `192.0.2.1:80` → `192.0.2.1`). Elements without
/// `for=`, and unreadable headers, become an empty entry, which stops the walk there.
fn forwarded_hops(headers: &HeaderMap) -> Vec<String> {
    let mut hops = Vec::new();
    for value in headers.get_all("forwarded") {
        let Ok(s) = value.to_str() else {
            hops.push(String::new());
            continue;
        };
        for element in s.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
            });
            let Some(node) = node else {
                hops.push(String::new());
                continue;
            };
            let node = node.trim_matches('"');
            let addr = if let Some(rest) = node.strip_prefix('[') {
                rest.split(']').next().unwrap_or("")
            } else {
                node.split(':').next().unwrap_or("")
            };
            hops.push(addr.to_owned());
        }
    }
    hops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let trusted = vec![crate::config::parse_cidr("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.7".parse().unwrap());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "5.6.7.8".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // A client that is not a trusted proxy cannot spoof its address.
        assert_eq!(client_ip(stranger, &h, &trusted, false), stranger);
        // Spoofed left-most entries are ignored: the right-most untrusted hop wins.
        h.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(proxy, &h, &trusted, false), proxy);
        // A malformed entry stops the walk: nothing left of it is believed.
        h.insert(
            "x-forwarded-for",
            "9.9.9.9, junk, 10.0.0.5".parse().unwrap(),
        );
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", "9.9.9.9, junk, 1.2.3.4".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // Only trusted hops: the left-most of them.
        h.insert("x-forwarded-for", "10.0.0.9, 10.0.0.5".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &[], false), proxy);
    }

    #[test]
    fn forwarded_header_is_read_like_x_forwarded_for() {
        let trusted = vec![crate::config::parse_cidr("10.0.0.0/8").unwrap()];
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.3:80"
                .parse()
                .unwrap(),
        );
        h.insert("x-forwarded-for", "7.7.7.7".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, true),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // The configured header only: a client-sent Forwarded does not override XFF.
        assert_eq!(
            client_ip(proxy, &h, &trusted, false),
            "7.7.7.7".parse::<IpAddr>().unwrap()
        );
        h.insert("forwarded", "for=unknown, for=10.0.0.3".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, true),
            "10.0.0.3".parse::<IpAddr>().unwrap()
        );
        h.insert("forwarded", "proto=https;for=192.0.2.60".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &trusted, true),
            "192.0.2.60".parse::<IpAddr>().unwrap()
        );
        // Not from a trusted proxy: ignored.
        let stranger: IpAddr = "5.6.7.8".parse().unwrap();
        assert_eq!(client_ip(stranger, &h, &trusted, true), stranger);
    }

    #[test]
    fn only_admins_act_for_others() {
        use crate::auth::Role;
        let alice = Principal::jwt("alice", Role::Editor, None);
        assert_eq!(acting_for(&alice, None).unwrap(), "alice");
        assert_eq!(acting_for(&alice, Some("owner=alice")).unwrap(), "alice");
        assert_eq!(
            acting_for(&alice, Some("owner=bob")).unwrap_err().code(),
            "forbidden"
        );
        let admin = Principal::jwt("root", Role::Admin, None);
        assert_eq!(acting_for(&admin, Some("owner=b%C3%B6b")).unwrap(), "böb");
        assert_eq!(
            acting_for(&admin, Some("owner=a%0Ab")).unwrap_err().code(),
            "invalid_field"
        );
    }

    #[test]
    fn routes_and_query_parameters() {
        assert_eq!(percent_decode("a%2Fb%C3%A9").as_deref(), Some("a/bé"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(
            query_param(Some("limit=5&cursor=x%3Dy"), "cursor")
                .unwrap()
                .as_deref(),
            Some("x=y")
        );
        assert_eq!(query_param(None, "limit").unwrap(), None);
        assert!(query_param(Some("owner=%E0"), "owner").is_err());
    }

    #[test]
    fn request_ids_are_echoed_only_when_safe() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, "a b\"<script>".parse().unwrap());
        let id = request_id(&h);
        assert_eq!(id.len(), 24);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        h.insert(X_REQUEST_ID, "x".repeat(65).parse().unwrap());
        assert_eq!(request_id(&h).len(), 24);
    }

    #[test]
    fn error_responses_have_the_contract_shape() {
        let r = error_response(&Error::TokenExpired);
        assert_eq!(r.status(), 401);
        assert!(
            r.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        let r = error_response(&Error::Overloaded);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "1");
    }

    #[test]
    fn security_headers_and_hsts_only_over_tls() {
        let mut h = HeaderMap::new();
        security_headers(&mut h, None);
        assert_eq!(h[X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(
            h[CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("sandbox")
        );
        assert!(h.get(STRICT_TRANSPORT_SECURITY).is_none());
        security_headers(&mut h, Some(600));
        assert_eq!(h[STRICT_TRANSPORT_SECURITY], "max-age=600");
    }
}
