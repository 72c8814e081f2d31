//! `POST/GET /v1/api-keys`, `DELETE /v1/api-keys/{id}`: a user's own API keys.
//!
//! Creating needs the `manage` action; the new key's scopes are the requested ones (default:
//! all the caller holds) intersected with the caller's, so no key can mint a stronger key. The
//! raw key is in the `201` body only (`Cache-Control: no-store`) and never logged. Admins manage
//! another user's keys with `?owner=`. `allowed_cidrs` (IPv4/IPv6 networks, at most 32) binds
//! a key to the client addresses pixgate derives (`server.trusted_proxies`): from elsewhere it
//! is `401 invalid_token` and counts as a failed authentication.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::error::Error;
use super::{
    Body, Ctx, acting_for, authenticate_for, json_response, no_content, query_param, read_json,
};
use crate::app::App;
use crate::auth::{Action, Scopes};

pub async fn create(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let principal = authenticate_for(app, &parts.headers, ctx, Action::ManageKeys).await?;
    // A key carries its creator's role: nobody, admins included, mints keys for someone else.
    if query_param(parts.uri.query(), "owner")?.is_some() {
        return Err(Error::InvalidField(
            "owner: API keys are created by their owner".into(),
        ));
    }
    let v = read_json(body, app.config.server.max_body_bytes).await?;
    for k in v.as_object().into_iter().flat_map(|o| o.keys()) {
        if k != "name" && k != "scopes" && k != "allowed_cidrs" {
            return Err(Error::InvalidField(format!(
                "`{}` is not an API key field (name, scopes, allowed_cidrs)",
                k.chars().take(40).collect::<String>()
            )));
        }
    }
    let name = match v.get("name") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(Error::InvalidField("name: must be a string".into())),
    };
    let requested = match v.get("scopes") {
        None | Some(Value::Null) => Scopes::ALL,
        Some(Value::Array(items)) => {
            let names = items
                .iter()
                .map(|i| {
                    i.as_str()
                        .ok_or_else(|| Error::InvalidField("scopes: must be strings".into()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Scopes::parse(names).map_err(|e| Error::InvalidField(format!("scopes: {e}")))?
        }
        Some(_) => return Err(Error::InvalidField("scopes: must be a list".into())),
    };
    let networks = allowed_cidrs(v.get("allowed_cidrs"))?;
    let (raw, record) = app
        .auth
        .api_keys
        .create(&principal, name, requested, &networks)
        .await?;
    tracing::info!(request_id = %ctx.request_id, key_id = %record.id, "API key created");
    ctx.set_api_key(&record.id);
    let mut body = record.public_json(None);
    body["key"] = Value::String(raw);
    Ok(json_response(StatusCode::CREATED, &body))
}

/// `allowed_cidrs`: a list of networks (`10.0.0.0/8`, `2001:db8::/32`, a bare address).
fn allowed_cidrs(v: Option<&Value>) -> Result<Vec<ipnet::IpNet>, Error> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(Error::InvalidField("allowed_cidrs: must be a list".into())),
    };
    if items.len() > crate::auth::api_keys::MAX_NETWORKS {
        return Err(Error::InvalidField(format!(
            "allowed_cidrs: at most {}",
            crate::auth::api_keys::MAX_NETWORKS
        )));
    }
    items
        .iter()
        .map(|i| {
            i.as_str()
                .and_then(|s| crate::config::types::parse_cidr(s).ok())
                .ok_or_else(|| {
                    Error::InvalidField(
                        "allowed_cidrs: each must be a network like 10.0.0.0/8".into(),
                    )
                })
        })
        .collect()
}

pub async fn list(app: &App, req: Request<Incoming>, ctx: &Ctx) -> Result<Response<Body>, Error> {
    let principal = authenticate_for(app, req.headers(), ctx, Action::ManageKeys).await?;
    let owner = acting_for(&principal, req.uri().query())?;
    ctx.set_subject(&owner);
    let items: Vec<Value> = app
        .auth
        .api_keys
        .list(&owner)
        .await?
        .iter()
        .map(|(r, used)| r.public_json(used.as_deref()))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "items": items })))
}

pub async fn revoke(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    id: &str,
) -> Result<Response<Body>, Error> {
    let principal = authenticate_for(app, req.headers(), ctx, Action::ManageKeys).await?;
    let owner = acting_for(&principal, req.uri().query())?;
    ctx.set_subject(&owner);
    ctx.set_api_key(id);
    if !app.auth.api_keys.revoke(&owner, id).await? {
        return Err(Error::NotFound);
    }
    tracing::info!(request_id = %ctx.request_id, key_id = %id.escape_debug(), "API key revoked");
    let event = crate::fleet::Event::ApiKeyRevoked { owner };
    Ok(super::propagate::propagate(app, event, ctx, no_content()).await)
}
