//! HTTP: routing, request context, and `finish` — the one exit for every response.
//!
//! Files by concern: `route.rs` (path → route, labels, audit actions), `ctx.rs` (the request
//! context), `finish.rs` (the exit: headers, error body, metrics, log line, audit event),
//! `extract.rs` (bodies, JSON, query), `client_ip.rs`, `guard.rs` (authenticate, allow, act
//! for, charge), `error.rs` (the client-facing error and every module's mapping to it),
//! `ratelimit.rs` (the `RateLimit` headers), `jobs.rs` (account jobs in flight); one file per
//! group of handlers (`transform`, `images`, `keys`, `account`, `admin`, `usage`, `ops`).
//!
//! `finish` writes the common headers (request id, the security headers, `no-store` and the
//! JSON error body for errors, `WWW-Authenticate` on 401, CORS for allowed origins), counts
//! metrics by route and status class, and logs one line per request. Handlers return
//! `Result<Response, Error>` and never build error responses themselves. Only this layer maps
//! errors to statuses.

mod account;
mod admin;
mod body;
mod client_ip;
mod collections;
mod cors;
mod ctx;
pub mod error;
mod extract;
mod finish;
mod guard;
pub(crate) mod images;
mod info;
pub mod jobs;
mod keys;
pub mod legacy;
mod ops;
mod original;
mod propagate;
mod ratelimit;
mod route;
mod serving;
mod shared;
mod shares;
mod teams;
mod transform;
mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::app::App;
use crate::metrics::GaugeGuard;
use error::Error;

pub use body::{Body, BodySender};
pub(crate) use client_ip::client_ip;
use ctx::request_id;
pub use ctx::{Ctx, LimitState};
pub(crate) use extract::{percent_decode, query_param, read_body, read_json, reject_large_body};
use finish::{AuditOnce, Finishing, finish};
pub(crate) use finish::{json_response, no_content, with_fields};
pub(crate) use guard::{acting_for, authenticate, authenticate_for, charge_caller};
pub use route::Listener;
use route::{Route, classify};

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
    let ctx = Ctx::new(
        request_id(req.headers()),
        client_ip(
            peer.ip(),
            req.headers(),
            &app.trusted_proxies,
            app.config.server.client_ip_header == crate::server::config::ClientIpHeader::Forwarded,
        ),
        tls,
    );
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
    } else if route.is_api_or_image() && app.auth.blocks.is_blocked(ctx.client_ip) {
        // Before any other work (no credential is looked at, no storage touched).
        Err(Error::Blocked)
    } else if preflight {
        cors::preflight(&app.config.server, req.headers(), route.is_api())
    } else {
        let deadline = Duration::from_secs(app.config.server.request_timeout_secs);
        match tokio::time::timeout(deadline, dispatch(&app, &route, req, &ctx)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    };
    let finishing = Finishing {
        app: &app,
        route: &route,
        ctx: &ctx,
        start,
        is_head,
    };
    let mut resp = finish(&finishing, result, |status, error, bytes_out| {
        audit.emit(status, error, bytes_out)
    });
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
        (Route::MeActivity, _) if get_like => admin::activity(app, req, ctx).await,
        (Route::MeActivity, _) => Err(Error::MethodNotAllowed("GET, HEAD")),
        (Route::AdminBlocks, Method::POST) => admin::block(app, req, ctx).await,
        (Route::AdminBlocks, _) if get_like => admin::blocks(app, req, ctx).await,
        (Route::AdminBlocks, _) => Err(Error::MethodNotAllowed("GET, HEAD, POST")),
        (Route::AdminBlock(id), Method::DELETE) => admin::unblock(app, req, ctx, id).await,
        (Route::AdminBlock(_), _) => Err(Error::MethodNotAllowed("DELETE")),
        (Route::AdminAudit, _) if get_like => admin::audit(app, req, ctx).await,
        (Route::AdminAudit, _) => Err(Error::MethodNotAllowed("GET, HEAD")),
        (Route::Teams | Route::Team(_) | Route::TeamMembers(_) | Route::TeamMember(..), _) => {
            access_route(app, route, req, ctx).await
        }
        (Route::Shares(_) | Route::Share(..), _) => access_route(app, route, req, ctx).await,
        (
            Route::Collections
            | Route::Collection(_)
            | Route::CollectionItems(_)
            | Route::CollectionItem(..),
            _,
        ) => access_route(app, route, req, ctx).await,
        (Route::Api, _) => Err(Error::NotFound),
        (Route::Info, _) if get_like => info::handle(app, req, ctx).await,
        (Route::Transform, _) if get_like => transform::handle(app, req, ctx).await,
        _ => Err(Error::MethodNotAllowed("GET, HEAD")),
    }
}

/// Teams, shares and collections (`access`).
async fn access_route(
    app: &Arc<App>,
    route: &Route,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<Response<Body>, Error> {
    let method = req.method().clone();
    let get_like = method == Method::GET || method == Method::HEAD;
    match (route, method) {
        (Route::Teams, Method::POST) => teams::create(app, req, ctx).await,
        (Route::Teams, _) if get_like => teams::list(app, req, ctx).await,
        (Route::Teams, _) => Err(Error::MethodNotAllowed("GET, HEAD, POST")),
        (Route::Team(id), Method::DELETE) => teams::delete(app, req, ctx, id).await,
        (Route::Team(id), _) if get_like => teams::get(app, req, ctx, id).await,
        (Route::Team(_), _) => Err(Error::MethodNotAllowed("GET, HEAD, DELETE")),
        (Route::TeamMembers(id), Method::POST) => teams::add_member(app, req, ctx, id).await,
        (Route::TeamMember(id, u), Method::DELETE) => {
            teams::remove_member(app, req, ctx, id, u).await
        }
        (Route::TeamMembers(_), _) => Err(Error::MethodNotAllowed("POST")),
        (Route::Shares(of), Method::POST) => shares::create(app, req, ctx, of.target()).await,
        (Route::Shares(of), _) if get_like => shares::list(app, req, ctx, of.target()).await,
        (Route::Shares(_), _) => Err(Error::MethodNotAllowed("GET, HEAD, POST")),
        (Route::Share(of, s), Method::DELETE) => {
            shares::revoke(app, req, ctx, of.target(), s).await
        }
        (Route::Collections, Method::POST) => collections::create(app, req, ctx).await,
        (Route::Collections, _) if get_like => collections::list(app, req, ctx).await,
        (Route::Collections, _) => Err(Error::MethodNotAllowed("GET, HEAD, POST")),
        (Route::Collection(id), Method::PATCH) => collections::update(app, req, ctx, id).await,
        (Route::Collection(id), Method::DELETE) => collections::delete(app, req, ctx, id).await,
        (Route::Collection(id), _) if get_like => collections::get(app, req, ctx, id).await,
        (Route::Collection(_), _) => Err(Error::MethodNotAllowed("GET, HEAD, PATCH, DELETE")),
        (Route::CollectionItems(id), Method::POST) => {
            collections::add_item(app, req, ctx, id).await
        }
        (Route::CollectionItems(_), _) => Err(Error::MethodNotAllowed("POST")),
        (Route::CollectionItem(id, image), Method::DELETE) => {
            collections::remove_item(app, req, ctx, id, image).await
        }
        _ => Err(Error::MethodNotAllowed("DELETE")),
    }
}
