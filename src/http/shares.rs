//! Shares: `POST/GET /v1/images/{id}/shares`, `DELETE /v1/images/{id}/shares/{share}`, and the
//! same under `/v1/collections/{id}`.
//!
//! Only who manages the resource shares it and sees its shares: an image's owner (or an admin),
//! a collection's owner, its team's admins (or an admin). A share holder sees the resource but
//! gets `403` here (shares never re-share); anyone else `404`. A share goes to a user, or to a
//! team the sharer belongs to (a stranger's team is refused like a missing one: no spam into
//! teams, no probing of team ids). Grants and revocations reach every instance's cache through
//! the fleet bus.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::error::Error;
use super::teams::{changed, text};
use super::{Body, Ctx, authenticate_for, json_response, no_content, read_json};
use crate::access::model::valid_user;
use crate::access::{Change, Grantee, Level, Resource, ShareAccess, shares, teams};
use crate::app::App;
use crate::auth::{Action, Principal};

/// What a share route is about.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Image(&'a str),
    Collection(&'a str),
}

/// The resource, if the caller manages it (`404` unseen, `403` seen but not managed).
async fn managed(
    app: &App,
    p: &Principal,
    target: Target<'_>,
    ctx: &Ctx,
) -> Result<(Resource, String), Error> {
    match target {
        Target::Image(id) => {
            let meta = super::images::image_for(app, p, id, ctx, Level::Manage).await?;
            Ok((Resource::Image(meta.id), meta.owner))
        }
        Target::Collection(id) => {
            let (c, _) = super::collections::collection_for(app, p, id, Level::Manage).await?;
            let owner = c.owner.clone().unwrap_or_default();
            Ok((Resource::Collection(c.id.clone()), owner))
        }
    }
}

/// `{user}` or `{team}`: exactly one.
async fn grantee(app: &App, p: &Principal, v: &Value, owner: &str) -> Result<Grantee, Error> {
    match (text(v, "user")?, text(v, "team")?) {
        (Some(u), None) => {
            if !valid_user(u) {
                return Err(Error::InvalidField("user: a user id".into()));
            }
            if u == owner {
                return Err(Error::InvalidField(
                    "user: the owner reaches it already".into(),
                ));
            }
            Ok(Grantee::User(u.to_owned()))
        }
        (None, Some(t)) => {
            let member = teams::membership(app.access.store.as_ref(), t, &p.user_id)
                .await?
                .is_some();
            let exists = teams::get(app.access.store.as_ref(), t).await?.is_some();
            if !exists || !(member || p.allow(Action::Admin).is_ok()) {
                return Err(Error::InvalidField("team: not a team you belong to".into()));
            }
            Ok(Grantee::Team(t.to_owned()))
        }
        _ => Err(Error::InvalidField(
            "name exactly one of user or team".into(),
        )),
    }
}

pub async fn create(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    target: Target<'_>,
) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let p = authenticate_for(app, &parts.headers, ctx, Action::Collaborate).await?;
    let (r, owner) = managed(app, &p, target, ctx).await?;
    let v = read_json(body, app.config.server.max_body_bytes).await?;
    let g = grantee(app, &p, &v, &owner).await?;
    let access = text(&v, "access")?
        .and_then(ShareAccess::parse)
        .ok_or_else(|| Error::InvalidField("access: read or edit".into()))?;
    let (share, new) = shares::create(&app.access.store, r.clone(), g, access, &p.user_id).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let resp = json_response(status, &serde_json::to_value(&share).unwrap_or_default());
    Ok(changed(app, vec![Change::Shares { resource: r }], ctx, resp).await)
}

pub async fn list(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    target: Target<'_>,
) -> Result<Response<Body>, Error> {
    let p = authenticate_for(app, req.headers(), ctx, Action::Read).await?;
    let (r, _) = managed(app, &p, target, ctx).await?;
    let items = shares::of(&app.access.store, &r).await?;
    Ok(json_response(StatusCode::OK, &json!({"items": items})))
}

pub async fn revoke(
    app: &App,
    req: Request<Incoming>,
    ctx: &Ctx,
    target: Target<'_>,
    share_id: &str,
) -> Result<Response<Body>, Error> {
    let p = authenticate_for(app, req.headers(), ctx, Action::Collaborate).await?;
    let (r, _) = managed(app, &p, target, ctx).await?;
    let share = shares::get(app.access.store.as_ref(), &r, share_id)
        .await?
        .ok_or(Error::NotFound)?;
    shares::revoke(app.access.store.as_ref(), &share).await?;
    Ok(changed(app, vec![Change::Shares { resource: r }], ctx, no_content()).await)
}
