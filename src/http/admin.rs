//! Admin actions. `POST /v1/admin/users/{id}/revoke-tokens` — incident response: every JWT of
//! the user issued until now is refused from now on (durable record), and every API key of the
//! user is revoked. The user id is the percent-encoded path segment.
//!
//! `GET /v1/admin/audit?actor=&action=&image=&user=&since=&until=&limit=&cursor=` — audit
//! events from the archive, oldest first, filtered; `since`/`until` are RFC 3339 or Unix
//! seconds (default: the last 24 hours); at most `limit` (default 100, at most 1000) per page,
//! and a page reads a bounded number of batches, so it may hold fewer and still carry a
//! `next_cursor`. Events appear once their batch is archived (`audit.flush_seconds`).
//!
//! `GET /v1/me/activity?action=&image=&since=&until=&limit=&cursor=` — the same reader over
//! the caller's own events only (`actor.user` is the caller: what they did, from where, when;
//! never events of others, such as viewers of their images or an admin acting on them). Any
//! role; an API key needs the `read` scope.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::error::Error;
use super::{Body, Ctx, authenticate_for, json_response, percent_decode, query_param};
use crate::app::App;
use crate::audit::query::{self, Cursor, Filter};
use crate::auth::Action;
use crate::signature::unix_now;

pub async fn revoke_tokens(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    raw_user: &str,
) -> Result<Response<Body>, Error> {
    let principal = authenticate_for(app, req.headers(), ctx, Action::Admin).await?;
    let user = percent_decode(raw_user)
        .filter(|u| !u.is_empty() && u.len() <= 255 && !u.chars().any(char::is_control))
        .ok_or_else(|| Error::InvalidField("user: not a user id".into()))?;
    ctx.set_subject(&user);
    let now = unix_now();
    app.auth.revocations.revoke(&user, now).await?;
    let keys = app.auth.api_keys.revoke_all(&user).await?;
    tracing::warn!(request_id = %ctx.request_id, user = %user.escape_debug(), by = %principal.user_id.escape_debug(), api_keys = keys, "tokens revoked");
    let resp = json_response(
        StatusCode::OK,
        &json!({"user_id": user, "not_before": now, "api_keys_revoked": keys}),
    );
    let event = crate::fleet::Event::TokensRevoked {
        user,
        not_before: now,
    };
    Ok(super::propagate::propagate(app, event, ctx, resp).await)
}

/// `POST /v1/admin/blocks` `{cidr, reason, expires_in?}` → `201` with the block: clients in
/// `cidr` (as derived through `server.trusted_proxies`) get `403 blocked` on every route but the
/// probes, on every instance (fleet event; else within `auth.revocation_cache_secs`). A block
/// that would cover the caller's own address is refused (an admin cannot lock themselves out).
pub async fn block(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let principal = authenticate_for(app, &parts.headers, ctx, Action::Admin).await?;
    let v = super::read_json(body, app.config.server.max_body_bytes).await?;
    for k in v.as_object().into_iter().flat_map(|o| o.keys()) {
        if !["cidr", "reason", "expires_in"].contains(&k.as_str()) {
            return Err(Error::InvalidField(
                "fields: cidr, reason, expires_in".into(),
            ));
        }
    }
    let net = v["cidr"]
        .as_str()
        .and_then(|s| crate::config::types::parse_cidr(s).ok())
        .ok_or_else(|| Error::InvalidField("cidr: a network like 203.0.113.0/24".into()))?;
    let reason = v["reason"]
        .as_str()
        .ok_or_else(|| Error::InvalidField("reason: required, a string".into()))?;
    let expires_in = match &v["expires_in"] {
        serde_json::Value::Null => None,
        e => Some(
            e.as_u64()
                .filter(|s| (1..=10 * 365 * 86_400).contains(s))
                .ok_or_else(|| Error::InvalidField("expires_in: seconds, 1 to 10 years".into()))?,
        ),
    };
    if net.contains(&ctx.client_ip.to_canonical()) {
        return Err(Error::InvalidField("cidr: covers your own address".into()));
    }
    let block = app
        .auth
        .blocks
        .add(net, reason, &principal.user_id, expires_in)
        .await?;
    tracing::warn!(request_id = %ctx.request_id, block = %block.id, cidr = %block.cidr, "client network blocked");
    let body = serde_json::to_value(&block).map_err(|e| Error::Internal(e.to_string()))?;
    let resp = json_response(StatusCode::CREATED, &body);
    let event = crate::fleet::Event::Blocked { block };
    Ok(super::propagate::propagate(app, event, ctx, resp).await)
}

/// `GET /v1/admin/blocks`: every block (expired ones until they are lifted), oldest first.
pub async fn blocks(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    authenticate_for(app, req.headers(), ctx, Action::Admin).await?;
    let items = app.auth.blocks.list();
    Ok(json_response(StatusCode::OK, &json!({ "items": items })))
}

/// `DELETE /v1/admin/blocks/{id}` → `204`, or `404`.
pub async fn unblock(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    authenticate_for(app, req.headers(), ctx, Action::Admin).await?;
    if !app.auth.blocks.remove(id).await? {
        return Err(Error::NotFound);
    }
    tracing::warn!(request_id = %ctx.request_id, block = %id.escape_debug(), "client network unblocked");
    let event = crate::fleet::Event::Unblocked { id: id.to_owned() };
    Ok(super::propagate::propagate(app, event, ctx, super::no_content()).await)
}

/// `since`/`until`: RFC 3339 or Unix seconds.
fn time_param(query: Option<&str>, name: &str) -> Result<Option<u64>, Error> {
    let Some(v) = query_param(query, name)? else {
        return Ok(None);
    };
    if let Ok(n) = v.parse::<u64>() {
        return Ok(Some(n));
    }
    humantime::parse_rfc3339_weak(&v)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| Some(d.as_secs()))
        .ok_or_else(|| Error::InvalidField(format!("{name}: not an RFC 3339 time or Unix seconds")))
}

pub async fn audit(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    authenticate_for(app, req.headers(), ctx, Action::Admin).await?;
    let q = req.uri().query();
    audit_page(app, q, query_param(q, "actor")?, query_param(q, "user")?).await
}

pub async fn activity(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
) -> Result<Response<Body>, Error> {
    let principal = authenticate_for(app, req.headers(), ctx, Action::Read).await?;
    let q = req.uri().query();
    // Only the caller's own events: another actor cannot be asked for.
    if query_param(q, "actor")?.is_some_and(|a| a != principal.user_id) {
        return Err(Error::InvalidField("actor: only your own activity".into()));
    }
    audit_page(app, q, Some(principal.user_id.clone()), None).await
}

/// One page of the archive's events matching the query's filters, `actor` and `subject`.
async fn audit_page(
    app: &App,
    q: Option<&str>,
    actor: Option<String>,
    subject: Option<String>,
) -> Result<Response<Body>, Error> {
    let until = time_param(q, "until")?.unwrap_or_else(|| query::now_secs() + 1);
    let since = time_param(q, "since")?.unwrap_or_else(|| until.saturating_sub(86_400));
    if since >= until {
        return Err(Error::InvalidField("since: must be before until".into()));
    }
    if until > query::MAX_TIME + 1 {
        return Err(Error::InvalidField("until: after the year 9999".into()));
    }
    let limit = match query_param(q, "limit")? {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| Error::InvalidField("limit: 1..=1000".into()))?,
    };
    let filter = Filter {
        actor,
        action: query_param(q, "action")?,
        image: query_param(q, "image")?,
        subject,
        since,
        until,
    };
    let cursor = query_param(q, "cursor")?
        .map(|c| Cursor::decode(&c))
        .transpose()?;
    let page = query::page(app.store.as_ref(), &filter, cursor.as_ref(), limit).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "items": page.items,
            "next_cursor": page.next.map(|c| c.encode()),
        }),
    ))
}
