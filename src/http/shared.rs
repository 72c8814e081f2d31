//! What others shared with the caller: `GET /v1/images?shared=1` and
//! `GET /v1/collections?shared=1` (never part of the caller's own listings otherwise).
//!
//! Pages follow the caller's received-share indexes (their own and each team's) by share id;
//! every listed resource is checked again (`access`), so a revoked share, a membership that
//! ended or a deleted resource never shows, even if an index copy was left behind.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::error::Error;
use super::images::meta_json;
use super::{Body, json_response, query_param};
use crate::access::model::{SHARE, valid_id};
use crate::access::{Grantee, Level, Resource, Share, shares, teams};
use crate::app::App;
use crate::auth::Principal;
use crate::catalog::CatalogError;
use crate::id::ImageId;

/// Whether `?shared=` asks for what others shared (`1`/`true`; `0`/`false`/absent: no).
pub(super) fn wanted(query: Option<&str>) -> Result<bool, Error> {
    match query_param(query, "shared")?.as_deref() {
        None | Some("0") | Some("false") => Ok(false),
        Some("1") | Some("true") => Ok(true),
        Some(_) => Err(Error::InvalidField("shared: 1 or 0".into())),
    }
}

/// The caller and every team they are in.
async fn grantees(app: &App, p: &Principal) -> Result<Vec<Grantee>, Error> {
    let mut g = vec![Grantee::User(p.user_id.clone())];
    for m in teams::of_user(&app.access.store, &p.user_id).await? {
        g.push(Grantee::Team(m.team));
    }
    Ok(g)
}

async fn page(
    app: &App,
    p: &Principal,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<Share>, Option<String>), Error> {
    let cursor = cursor.filter(|c| !c.is_empty());
    if cursor.is_some_and(|c| !valid_id(c, SHARE)) {
        return Err(Error::InvalidField("cursor: not a cursor".into()));
    }
    let g = grantees(app, p).await?;
    Ok(shares::received_page(&app.access.store, &g, cursor, limit).await?)
}

fn via(s: &Share) -> Value {
    json!({"share": s.id, "via": s.grantee, "granted_access": s.access})
}

/// Images shared with the caller, newest share last, each with how far the caller reaches it.
pub(super) async fn images(
    app: &App,
    p: &Principal,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Response<Body>, Error> {
    let (shares, next) = page(app, p, cursor, limit).await?;
    let mut items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in &shares {
        let Resource::Image(id) = &s.resource else {
            continue;
        };
        // Once per page, though shared directly and through a team.
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(image) = ImageId::parse(id) else {
            continue;
        };
        let meta = match app.catalog.meta(&image).await {
            Ok(m) => m,
            Err(CatalogError::NotFound) => continue,
            Err(e) => return Err(e.into()),
        };
        // The caller's own images (shared with a team they are in) are their own listing's.
        if meta.owner == p.user_id {
            continue;
        }
        let level = app.access.image_level(p, &meta.id, &meta.owner).await?;
        if level < Level::Read {
            continue;
        }
        let mut v = meta_json(&meta);
        if let Some(o) = v.as_object_mut() {
            o.insert("access".into(), json!(level));
            o.insert("shared".into(), via(s));
        }
        items.push(v);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next}),
    ))
}

/// Collections shared with the caller (directly or through a team).
pub(super) async fn collections(
    app: &App,
    p: &Principal,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Response<Body>, Error> {
    let (shares, next) = page(app, p, cursor, limit).await?;
    let mut items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in &shares {
        let Resource::Collection(id) = &s.resource else {
            continue;
        };
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(c) = app.access.collection(id).await? else {
            continue;
        };
        if c.owner.as_deref() == Some(p.user_id.as_str()) {
            continue;
        }
        let level = app.access.collection_level(p, &c).await?;
        if level < Level::Read {
            continue;
        }
        let mut v = super::collections::collection_json(&c, level);
        if let Some(o) = v.as_object_mut() {
            o.insert("shared".into(), via(s));
        }
        items.push(v);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next}),
    ))
}
