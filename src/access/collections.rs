//! Collections: named, ordered sets of images owned by a user or a team, over the object store.
//!
//! The record is `collections/{id}/collection.json`; each item is an object of its own
//! (`collections/{id}/items/{image}.json`), so adds and removals through different instances
//! never overwrite each other. Order is a fractional sort key per item ([`between`]): an insert
//! or a move rewrites one item, not the list. Every item has a back-reference under its image
//! (`images/{image}/in/{id}`), written before the item and removed after it, so an image's
//! delete finds (and removes) every item of it, and the access check finds the collections that
//! may grant read on an image without listing collections.

use std::sync::Arc;

use super::model::{
    AccessError, COLLECTION, Collection, Grantee, Item, MAX_COLLECTIONS, MAX_DESCRIPTION_CHARS,
    MAX_HOLDERS, MAX_ITEMS, MAX_TITLE_CHARS, check_text, new_id, now_secs, valid_id,
};
use super::records::{self, leaf};
use crate::storage::ObjectStore;

/// Sort-key digits, in ASCII order (so keys compare as strings).
const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BASE: usize = 62;
/// Longer keys (many inserts at one place) make the collection's keys be renumbered.
const MAX_KEY: usize = 48;

fn digit(b: u8) -> usize {
    DIGITS.iter().position(|d| *d == b).unwrap_or(0)
}

/// A key strictly between `lo` and `hi` (`None`: the ends), never ending in the zero digit (so
/// no two different keys denote the same fraction). Appends grow by one digit per 61 appends,
/// inserts at one place by one digit per ~6. `None` when there is no such key of at most
/// [`MAX_KEY`] digits — `lo` not below `hi` (two items given one key by concurrent adds), or a
/// gap worn thin — and the caller renumbers.
pub fn between(lo: Option<&str>, hi: Option<&str>) -> Option<String> {
    if let (Some(l), Some(h)) = (lo, hi)
        && l >= h
    {
        return None;
    }
    let append = hi.is_none();
    let lo = lo.unwrap_or("").as_bytes();
    let mut bounded = hi.map(str::as_bytes);
    let mut out = Vec::new();
    for i in 0..MAX_KEY {
        let dl = lo.get(i).map_or(0, |b| digit(*b));
        let dh = match bounded {
            Some(h) => h.get(i).map_or(0, |b| digit(*b)),
            None => BASE,
        };
        if dh > dl + 1 {
            // Appends step by one digit value (keys grow by a digit per 61 appends); inserts
            // take the middle of the gap.
            let d = match (append, i < lo.len()) {
                (true, true) => dl + 1,
                (true, false) => 1,
                (false, _) => dl + (dh - dl) / 2,
            };
            out.push(DIGITS[d]);
            return Some(String::from_utf8_lossy(&out).into_owned());
        }
        out.push(DIGITS[dl]);
        if dh > dl {
            bounded = None;
        }
    }
    None
}

/// `n` evenly spread three-digit keys, in order (a renumbering).
fn spread(n: usize) -> Vec<String> {
    let span = BASE * BASE * BASE;
    let step = span / (n + 1);
    (1..=n)
        .map(|i| {
            let mut v = i * step;
            if v.is_multiple_of(BASE) {
                v += 1;
            }
            let d = [v / (BASE * BASE), (v / BASE) % BASE, v % BASE];
            d.iter().map(|x| DIGITS[*x] as char).collect()
        })
        .collect()
}

/// Title and description as given in a body.
pub fn check_fields(title: Option<&str>, description: Option<&str>) -> Result<(), AccessError> {
    if let Some(t) = title {
        if t.trim().is_empty() {
            return Err(AccessError::InvalidField("title: required".into()));
        }
        check_text("title", t, MAX_TITLE_CHARS, false)?;
    }
    if let Some(d) = description {
        check_text("description", d, MAX_DESCRIPTION_CHARS, true)?;
    }
    Ok(())
}

/// Creates a collection owned by `owner` (a user or a team).
pub async fn create(
    store: &dyn ObjectStore,
    title: &str,
    description: Option<String>,
    owner: &Grantee,
    by: &str,
) -> Result<Collection, AccessError> {
    check_fields(Some(title), description.as_deref())?;
    let prefix = records::owned_collections_prefix(owner);
    if records::keys(store, &prefix, MAX_COLLECTIONS).await?.len() >= MAX_COLLECTIONS {
        return Err(AccessError::Conflict(format!(
            "at most {MAX_COLLECTIONS} collections per user or team"
        )));
    }
    let now = now_secs();
    let (user, team) = match owner {
        Grantee::User(u) => (Some(u.clone()), None),
        Grantee::Team(t) => (None, Some(t.clone())),
    };
    let c = Collection {
        id: new_id(COLLECTION)?,
        title: title.trim().to_owned(),
        description,
        owner: user,
        team,
        created_by: by.to_owned(),
        created_at: now,
        updated_at: now,
    };
    // The owner's index first: a collection is always found by its owner's erasure.
    records::mark(store, &format!("{prefix}{}", c.id)).await?;
    records::write(store, &records::collection_record(&c.id), &c).await?;
    Ok(c)
}

/// Who owns `c`, as an index names it.
pub fn owner_of(c: &Collection) -> Grantee {
    match (&c.team, &c.owner) {
        (Some(t), _) => Grantee::Team(t.clone()),
        (None, Some(u)) => Grantee::User(u.clone()),
        (None, None) => Grantee::User(c.created_by.clone()),
    }
}

/// The collection, if it exists (a malformed id is none, without I/O).
pub async fn get(store: &dyn ObjectStore, id: &str) -> Result<Option<Collection>, AccessError> {
    if !valid_id(id, COLLECTION) {
        return Ok(None);
    }
    records::read(store, &records::collection_record(id)).await
}

pub async fn save(store: &dyn ObjectStore, c: &Collection) -> Result<(), AccessError> {
    records::write(store, &records::collection_record(&c.id), c).await
}

/// The collections `owner` has, oldest first.
pub async fn owned_by(
    store: &Arc<dyn ObjectStore>,
    owner: &Grantee,
) -> Result<Vec<Collection>, AccessError> {
    let ids: Vec<String> = records::keys(
        store.as_ref(),
        &records::owned_collections_prefix(owner),
        MAX_COLLECTIONS,
    )
    .await?
    .iter()
    .map(|k| leaf(k).to_owned())
    .filter(|id| valid_id(id, COLLECTION))
    .map(|id| records::collection_record(&id))
    .collect();
    let mut out: Vec<Collection> = records::read_keys(store, &ids).await?;
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(out)
}

/// The items of `id`, in order.
pub async fn items(store: &Arc<dyn ObjectStore>, id: &str) -> Result<Vec<Item>, AccessError> {
    let mut all: Vec<Item> =
        records::read_all(store, &records::items_prefix(id), MAX_ITEMS).await?;
    all.sort_by(|a, b| (&a.pos, &a.image).cmp(&(&b.pos, &b.image)));
    Ok(all)
}

/// The collections `image` is in (its back-references).
pub async fn holders(store: &dyn ObjectStore, image: &str) -> Result<Vec<String>, AccessError> {
    Ok(
        records::keys(store, &records::holders_prefix(image), MAX_HOLDERS)
            .await?
            .iter()
            .map(|k| leaf(k).to_owned())
            .collect(),
    )
}

/// Puts `image` at `position` (0-based; `None` or past the end: last) of collection `id`,
/// adding it or moving it. Returns the item and whether it is new.
pub async fn place(
    store: &Arc<dyn ObjectStore>,
    id: &str,
    image: &str,
    position: Option<usize>,
    by: &str,
) -> Result<(Item, bool), AccessError> {
    let mut all = items(store, id).await?;
    let existing = all
        .iter()
        .position(|i| i.image == image)
        .map(|at| all.remove(at));
    if existing.is_none() {
        if all.len() >= MAX_ITEMS {
            return Err(AccessError::Conflict(format!(
                "a collection holds at most {MAX_ITEMS} images"
            )));
        }
        if holders(store.as_ref(), image).await?.len() >= MAX_HOLDERS {
            return Err(AccessError::Conflict(format!(
                "an image is in at most {MAX_HOLDERS} collections"
            )));
        }
    }
    let at = position.unwrap_or(all.len()).min(all.len());
    let pos = match between(
        at.checked_sub(1).map(|p| all[p].pos.as_str()),
        all.get(at).map(|i| i.pos.as_str()),
    ) {
        Some(k) => k,
        None => renumber(store.as_ref(), id, &mut all, at).await?,
    };
    let item = Item {
        image: image.to_owned(),
        pos,
        added_by: existing
            .as_ref()
            .map_or_else(|| by.to_owned(), |e| e.added_by.clone()),
        added_at: existing.as_ref().map_or_else(now_secs, |e| e.added_at),
    };
    if existing.is_none() {
        records::mark(
            store.as_ref(),
            &format!("{}{id}", records::holders_prefix(image)),
        )
        .await?;
    }
    records::write(store.as_ref(), &records::item(id, image), &item).await?;
    Ok((item, existing.is_none()))
}

/// Rewrites every key of `all` evenly spread, leaving room at `at`; returns the key for it.
async fn renumber(
    store: &dyn ObjectStore,
    id: &str,
    all: &mut [Item],
    at: usize,
) -> Result<String, AccessError> {
    let mut keys = spread(all.len() + 1);
    let mine = keys.remove(at);
    for (item, k) in all.iter_mut().zip(keys) {
        item.pos = k;
        records::write(store, &records::item(id, &item.image), item).await?;
    }
    Ok(mine)
}

/// Removes `image` from collection `id`: the item, then its back-reference. `false` if it was
/// not there.
pub async fn remove_item(
    store: &dyn ObjectStore,
    id: &str,
    image: &str,
) -> Result<bool, AccessError> {
    let k = records::item(id, image);
    let present = records::read::<Item>(store, &k).await?.is_some();
    records::remove(store, &k).await?;
    records::remove(store, &format!("{}{id}", records::holders_prefix(image))).await?;
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_stay_between_and_short() {
        let mut keys: Vec<String> = Vec::new();
        // Appends.
        for _ in 0..500 {
            let k = between(keys.last().map(String::as_str), None).unwrap();
            assert!(keys.last().is_none_or(|l| *l < k), "{k}");
            keys.push(k);
        }
        assert!(keys.last().unwrap().len() <= 10, "{}", keys.last().unwrap());
        // Inserts at the front and in one gap, over and over.
        let mut front = keys[0].clone();
        let mut mid = (keys[10].clone(), keys[11].clone());
        for _ in 0..60 {
            let k = between(None, Some(&front)).unwrap();
            assert!(k < front && !k.ends_with('0'), "{k} {front}");
            front = k;
            let k = between(Some(&mid.0), Some(&mid.1)).unwrap();
            assert!(mid.0 < k && k < mid.1 && !k.ends_with('0'), "{k} {mid:?}");
            mid.1 = k;
        }
        assert!(front.len() <= 14 && mid.1.len() <= 14, "{front} {}", mid.1);
        // Equal or reversed neighbours (concurrent adds) and worn-out gaps ask for a renumbering
        // instead of looping.
        assert_eq!(between(Some("V"), Some("V")), None);
        assert_eq!(between(Some("W"), Some("V")), None);
        let mut hi = "1".to_owned();
        let mut renumber = false;
        for _ in 0..1000 {
            match between(None, Some(&hi)) {
                Some(k) => hi = k,
                None => {
                    renumber = true;
                    break;
                }
            }
        }
        assert!(renumber && hi.len() <= MAX_KEY);
        let s = spread(1000);
        assert!(s.windows(2).all(|w| w[0] < w[1]) && s.iter().all(|k| !k.ends_with('0')));
    }
}
