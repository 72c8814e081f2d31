//! What others shared with the caller, paged: the helpers of `GET /v1/images?shared=1`
//! (`images::list_shared`) and `GET /v1/collections?shared=1` (`collections::list_shared`),
//! never part of the caller's own listings otherwise.
//!
//! Pages follow the caller's received-share indexes (their own and each team's) by share id;
//! every listed resource is checked again (`access`), so a revoked share, a membership that
//! ended or a deleted resource never shows, even if an index copy was left behind.

use serde_json::{Value, json};

use super::error::Error;
use super::query_param;
use crate::access::model::{SHARE, valid_id};
use crate::access::{Grantee, Resource, Share, shares, teams};
use crate::app::App;
use crate::auth::Principal;

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

pub(super) async fn page(
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

pub(super) fn via(s: &Share) -> Value {
    json!({"share": s.id, "via": s.grantee, "granted_access": s.access})
}

/// One page of the resources of one kind shared with the caller (`images`: images, else
/// collections), each once, with the share that lists it; and the next page's cursor.
pub(super) async fn resources(
    app: &App,
    p: &Principal,
    cursor: Option<&str>,
    limit: usize,
    images: bool,
) -> Result<(Vec<(String, Share)>, Option<String>), Error> {
    let (shares, next) = page(app, p, cursor, limit).await?;
    let mut seen = std::collections::HashSet::new();
    let picked = shares
        .into_iter()
        .filter_map(|s| match (&s.resource, images) {
            (Resource::Image(id), true) | (Resource::Collection(id), false) => {
                Some((id.clone(), s))
            }
            _ => None,
        })
        // Once per page, though shared directly and through a team.
        .filter(|(id, _)| seen.insert(id.clone()))
        .collect();
    Ok((picked, next))
}
