//! Shares of images and collections, over the object store.
//!
//! The authority is the record under the resource's own prefix
//! (`images/{id}/shares/{share}.json`), so it goes with the resource. Copies index it for its
//! grantee (`…/received/`, what `?shared=1` lists) and its creator (`users/{hash}/granted/`,
//! what an export shows and an erasure revokes). Creation writes the copies first and the
//! authority last; revocation removes the authority first: a copy without its authority grants
//! nothing (every read of a copy is followed by an access check against the authority).

use std::sync::Arc;

use super::model::{
    AccessError, Grantee, MAX_RECEIVED, MAX_SHARES, Resource, SHARE, Share, ShareAccess, now_secs,
    valid_id,
};
use super::records::{self, leaf};
use crate::storage::ObjectStore;

/// Every share of `r`.
pub async fn of(store: &Arc<dyn ObjectStore>, r: &Resource) -> Result<Vec<Share>, AccessError> {
    records::read_all(store, &records::shares_prefix(r), MAX_SHARES).await
}

/// One share of `r` (a malformed id is none, without I/O).
pub async fn get(
    store: &dyn ObjectStore,
    r: &Resource,
    id: &str,
) -> Result<Option<Share>, AccessError> {
    if !valid_id(id, SHARE) {
        return Ok(None);
    }
    records::read(store, &records::share(r, id)).await
}

/// Shares `r` with `grantee`; a share to the same grantee changes its access instead. Returns
/// the share and whether it is new.
pub async fn create(
    store: &Arc<dyn ObjectStore>,
    r: Resource,
    grantee: Grantee,
    access: ShareAccess,
    by: &str,
) -> Result<(Share, bool), AccessError> {
    let existing = of(store, &r).await?;
    if let Some(mut s) = existing.into_iter().find(|s| s.grantee == grantee) {
        s.access = access;
        write(store.as_ref(), &s).await?;
        return Ok((s, false));
    }
    if records::keys(store.as_ref(), &records::shares_prefix(&r), MAX_SHARES)
        .await?
        .len()
        >= MAX_SHARES
    {
        return Err(AccessError::Conflict(format!(
            "at most {MAX_SHARES} shares of one image or collection"
        )));
    }
    let received = records::keys(
        store.as_ref(),
        &records::received_prefix(&grantee),
        MAX_RECEIVED,
    )
    .await?;
    if received.len() >= MAX_RECEIVED {
        return Err(AccessError::Conflict(format!(
            "the grantee holds {MAX_RECEIVED} shares already"
        )));
    }
    let s = Share {
        id: share_id(&r, &grantee),
        resource: r,
        grantee,
        access,
        created_by: by.to_owned(),
        created_at: now_secs(),
    };
    write(store.as_ref(), &s).await?;
    Ok((s, true))
}

/// A share's id: derived from what it is of and for, so two concurrent creations of the same
/// share (through different instances, on a store without conditional writes) write the same
/// objects instead of making two shares. Not a secret: only who manages the resource can act
/// on a share id.
fn share_id(r: &Resource, g: &Grantee) -> String {
    use sha2::{Digest, Sha256};
    let (rk, rid) = match r {
        Resource::Image(id) => ("image", id),
        Resource::Collection(id) => ("collection", id),
    };
    let (gk, gid) = match g {
        Grantee::User(u) => ("user", u),
        Grantee::Team(t) => ("team", t),
    };
    let digest = Sha256::digest(format!("pixgate.share/1\0{rk}\0{rid}\0{gk}\0{gid}").as_bytes());
    format!("{SHARE}{}", &hex::encode(digest)[..24])
}

/// The copies, then the authority.
async fn write(store: &dyn ObjectStore, s: &Share) -> Result<(), AccessError> {
    records::write(store, &records::received(&s.grantee, &s.id), s).await?;
    records::write(store, &records::granted(&s.created_by, &s.id), s).await?;
    records::write(store, &records::share(&s.resource, &s.id), s).await
}

/// Revokes a share: the authority first, then its copies.
pub async fn revoke(store: &dyn ObjectStore, s: &Share) -> Result<(), AccessError> {
    records::remove(store, &records::share(&s.resource, &s.id)).await?;
    records::remove(store, &records::received(&s.grantee, &s.id)).await?;
    records::remove(store, &records::granted(&s.created_by, &s.id)).await
}

/// Removes the copies of every share of `r` (its authorities go with `r`'s prefix).
pub async fn forget_resource(
    store: &Arc<dyn ObjectStore>,
    r: &Resource,
) -> Result<(), AccessError> {
    for s in of(store, r).await? {
        records::remove(store.as_ref(), &records::received(&s.grantee, &s.id)).await?;
        records::remove(store.as_ref(), &records::granted(&s.created_by, &s.id)).await?;
    }
    Ok(())
}

/// Shares indexed under `prefix` (a received or granted index), checked against their
/// authority: a copy whose share was revoked (an interrupted revocation) is skipped.
pub async fn indexed(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    max: usize,
) -> Result<Vec<Share>, AccessError> {
    let copies: Vec<Share> = records::read_all(store, prefix, max).await?;
    let mut out = Vec::with_capacity(copies.len());
    for c in copies {
        if let Some(s) = get(store.as_ref(), &c.resource, &c.id).await? {
            out.push(s);
        }
    }
    Ok(out)
}

/// One page of the shares `grantees` received, by share id after `after`: at most `limit`,
/// and the cursor of the next page (the last id this page covered) if more follow. Copies only
/// (the caller checks access per item).
pub async fn received_page(
    store: &Arc<dyn ObjectStore>,
    grantees: &[Grantee],
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Share>, Option<String>), AccessError> {
    let mut ids: Vec<(String, &Grantee)> = Vec::new();
    for g in grantees {
        let prefix = records::received_prefix(g);
        let start = after.map(|a| format!("{prefix}{a}.json"));
        for k in records::keys_after(store.as_ref(), &prefix, start.as_deref(), limit + 1).await? {
            ids.push((leaf(&k).to_owned(), g));
        }
    }
    ids.sort_by(|a, b| a.0.cmp(&b.0));
    ids.dedup_by(|a, b| a.0 == b.0);
    let more = ids.len() > limit;
    let mut out = Vec::with_capacity(limit.min(ids.len()));
    let mut last = None;
    for (id, g) in ids.into_iter().take(limit) {
        if let Some(s) = records::read::<Share>(store.as_ref(), &records::received(g, &id)).await? {
            out.push(s);
        }
        last = Some(id);
    }
    Ok((out, last.filter(|_| more)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_are_indexed_replaced_and_revoked() {
        let (_dir, store) = crate::storage::temp_store();
        let img = Resource::Image("0123456789abcdef0123456789abcdef".into());
        let bob = Grantee::User("bob".into());
        let (s, new) = create(&store, img.clone(), bob.clone(), ShareAccess::Read, "ann")
            .await
            .unwrap();
        assert!(new);
        let (again, new) = create(&store, img.clone(), bob.clone(), ShareAccess::Edit, "ann")
            .await
            .unwrap();
        assert!(!new && again.id == s.id && again.access == ShareAccess::Edit);
        // The same share created twice at once (neither seeing the other) is one share.
        assert_eq!(share_id(&img, &bob), s.id);
        assert!(valid_id(&s.id, SHARE));
        assert_ne!(share_id(&img, &Grantee::Team("bob".into())), s.id);
        assert_eq!(of(&store, &img).await.unwrap(), vec![again.clone()]);
        let (page, more) = received_page(&store, std::slice::from_ref(&bob), None, 10)
            .await
            .unwrap();
        assert_eq!((page, more), (vec![again.clone()], None));
        let given = indexed(&store, &records::granted_prefix("ann"), 10)
            .await
            .unwrap();
        assert_eq!(given, vec![again.clone()]);
        // An interrupted revocation (authority gone, copies left) grants and lists nothing.
        records::remove(store.as_ref(), &records::share(&img, &s.id))
            .await
            .unwrap();
        assert!(
            indexed(&store, &records::granted_prefix("ann"), 10)
                .await
                .unwrap()
                .is_empty()
        );
        revoke(store.as_ref(), &again).await.unwrap();
        let (page, _) = received_page(&store, &[bob], None, 10).await.unwrap();
        assert!(page.is_empty());
        assert!(
            get(store.as_ref(), &img, "shr_../../x")
                .await
                .unwrap()
                .is_none()
        );
    }
}
