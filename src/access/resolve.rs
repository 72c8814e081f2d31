//! The access decision: how far a principal reaches an image or a collection, from ownership,
//! team membership, shares and collections, with per-instance caches.
//!
//! Owners and admins are decided without I/O. Anyone else costs, at most, the resource's shares
//! (one listing and a read per share), one membership per team share, and for an image the
//! collections it is in (one listing) with each collection's record and shares — all cached
//! for `auth.revocation_cache_secs` (absences too). A change made through this instance applies
//! here at once ([`Access::apply`]); the others are told by the fleet bus
//! (`fleet::Event::AccessChanged`), and the cache lifetime bounds an instance that missed it:
//! the same mechanism, and the same bound, as API-key revocation.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::collections;
use super::model::{
    AccessError, COLLECTION, Change, Collection, Grantee, Level, Resource, Share, TeamRole,
    valid_id,
};
use super::shares;
use super::teams;
use crate::auth::{Action, Principal};
use crate::storage::ObjectStore;

const ENTRIES: usize = 50_000;

/// An LRU whose entries expire. Every removal bumps a generation: a value read from the store
/// is kept only if no removal happened since the read began, so a read that started before a
/// revocation cannot put the revoked grant back after it was forgotten.
struct TtlCache<K: Hash + Eq + Clone, V: Clone> {
    ttl: Duration,
    // A std Mutex: held only for map operations, never across an `.await`.
    inner: Mutex<Generations<K, V>>,
}

/// The removal count, and the entries with the time each was read.
type Generations<K, V> = (u64, LruCache<K, (Instant, V)>);

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        let cap = NonZeroUsize::new(ENTRIES).unwrap_or(NonZeroUsize::MIN);
        TtlCache {
            ttl,
            inner: Mutex::new((0, LruCache::new(cap))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<K, V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live value, or the generation to pass to [`TtlCache::put`] after reading the store.
    fn get(&self, k: &K) -> Result<V, u64> {
        let mut g = self.lock();
        let generation = g.0;
        match g.1.get(k) {
            Some((at, v)) if at.elapsed() < self.ttl => Ok(v.clone()),
            _ => Err(generation),
        }
    }

    /// Keeps `v` unless something was removed since `generation`.
    fn put(&self, k: K, v: V, generation: u64) {
        let mut g = self.lock();
        if g.0 == generation {
            g.1.put(k, (Instant::now(), v));
        }
    }

    fn pop(&self, k: &K) {
        let mut g = self.lock();
        g.0 += 1;
        g.1.pop(k);
    }

    fn pop_where(&self, f: impl Fn(&K) -> bool) {
        let mut g = self.lock();
        g.0 += 1;
        let gone: Vec<K> =
            g.1.iter()
                .filter(|(k, _)| f(k))
                .map(|(k, _)| k.clone())
                .collect();
        for k in gone {
            g.1.pop(&k);
        }
    }

    fn clear(&self) {
        let mut g = self.lock();
        g.0 += 1;
        g.1.clear();
    }
}

/// Access records and the decision over them, with this instance's caches.
pub struct Access {
    pub store: Arc<dyn ObjectStore>,
    shares: TtlCache<Resource, Arc<Vec<Share>>>,
    roles: TtlCache<(String, String), Option<TeamRole>>,
    collections: TtlCache<String, Option<Arc<Collection>>>,
    holders: TtlCache<String, Arc<Vec<String>>>,
}

impl Access {
    pub fn new(store: Arc<dyn ObjectStore>, ttl: Duration) -> Access {
        Access {
            store,
            shares: TtlCache::new(ttl),
            roles: TtlCache::new(ttl),
            collections: TtlCache::new(ttl),
            holders: TtlCache::new(ttl),
        }
    }

    /// The shares of `r` (cached).
    pub async fn shares_of(&self, r: &Resource) -> Result<Arc<Vec<Share>>, AccessError> {
        let generation = match self.shares.get(r) {
            Ok(v) => return Ok(v),
            Err(g) => g,
        };
        let v = Arc::new(shares::of(&self.store, r).await?);
        self.shares.put(r.clone(), v.clone(), generation);
        Ok(v)
    }

    /// `user`'s role in `team` (cached).
    pub async fn role(&self, team: &str, user: &str) -> Result<Option<TeamRole>, AccessError> {
        let k = (team.to_owned(), user.to_owned());
        let generation = match self.roles.get(&k) {
            Ok(v) => return Ok(v),
            Err(g) => g,
        };
        let v = teams::membership(self.store.as_ref(), team, user)
            .await?
            .map(|m| m.role);
        self.roles.put(k, v, generation);
        Ok(v)
    }

    /// The collection's record (cached; a malformed id is none, and not cached).
    pub async fn collection(&self, id: &str) -> Result<Option<Arc<Collection>>, AccessError> {
        if !valid_id(id, COLLECTION) {
            return Ok(None);
        }
        let generation = match self.collections.get(&id.to_owned()) {
            Ok(v) => return Ok(v),
            Err(g) => g,
        };
        let v = collections::get(self.store.as_ref(), id)
            .await?
            .map(Arc::new);
        self.collections.put(id.to_owned(), v.clone(), generation);
        Ok(v)
    }

    async fn holders(&self, image: &str) -> Result<Arc<Vec<String>>, AccessError> {
        let generation = match self.holders.get(&image.to_owned()) {
            Ok(v) => return Ok(v),
            Err(g) => g,
        };
        let v = Arc::new(collections::holders(self.store.as_ref(), image).await?);
        self.holders.put(image.to_owned(), v.clone(), generation);
        Ok(v)
    }

    /// The most any share of `r` gives `p` (directly, or through a team, capped by the
    /// member's role).
    async fn share_level(&self, p: &Principal, r: &Resource) -> Result<Level, AccessError> {
        let mut best = Level::None;
        for s in self.shares_of(r).await?.iter() {
            let l = match &s.grantee {
                Grantee::User(u) if *u == p.user_id => s.access.level(),
                Grantee::User(_) => Level::None,
                Grantee::Team(t) => match self.role(t, &p.user_id).await? {
                    Some(role) => role.cap(s.access),
                    None => Level::None,
                },
            };
            best = best.max(l);
        }
        Ok(best)
    }

    /// How far `p` reaches image `image` owned by `owner`: `Manage` for its owner and admins
    /// (no I/O), else the best of its shares, and `Read` if it is in a collection `p` may read.
    pub async fn image_level(
        &self,
        p: &Principal,
        image: &str,
        owner: &str,
    ) -> Result<Level, AccessError> {
        if p.owns(owner) {
            return Ok(Level::Manage);
        }
        let shared = self
            .share_level(p, &Resource::Image(image.to_owned()))
            .await?;
        if shared >= Level::Read {
            return Ok(shared);
        }
        for cid in self.holders(image).await?.iter() {
            if let Some(c) = self.collection(cid).await?
                && self.collection_level(p, &c).await? >= Level::Read
            {
                return Ok(Level::Read);
            }
        }
        Ok(Level::None)
    }

    /// How far `p` reaches collection `c`: its owner and admins manage it; a team's members
    /// reach its collections by their role; shares as for images.
    pub async fn collection_level(
        &self,
        p: &Principal,
        c: &Collection,
    ) -> Result<Level, AccessError> {
        if p.allow(Action::Admin).is_ok() || c.owner.as_deref() == Some(p.user_id.as_str()) {
            return Ok(Level::Manage);
        }
        let mut best = Level::None;
        if let Some(t) = &c.team
            && let Some(role) = self.role(t, &p.user_id).await?
        {
            best = role.collection_level();
        }
        if best < Level::Manage {
            best = best.max(
                self.share_level(p, &Resource::Collection(c.id.clone()))
                    .await?,
            );
        }
        Ok(best)
    }

    /// Forgets what `change` makes stale (a change made here, or told by the fleet bus).
    pub fn apply(&self, change: &Change) {
        match change {
            Change::Shares { resource } => self.shares.pop(resource),
            Change::Member { team, user } => self.roles.pop(&(team.clone(), user.clone())),
            // Rare (a team deleted): the one change that scans.
            Change::Team { team } => self.roles.pop_where(|(t, _)| t == team),
            Change::Collection { id } => {
                self.collections.pop(id);
                self.shares.pop(&Resource::Collection(id.clone()));
            }
            Change::Holders { image } => self.holders.pop(image),
        }
    }

    /// An image is gone: its shares and back-references with it.
    pub fn forget_image(&self, image: &str) {
        self.apply(&Change::Shares {
            resource: Resource::Image(image.to_owned()),
        });
        self.apply(&Change::Holders {
            image: image.to_owned(),
        });
    }

    /// Forgets everything (fleet events may have been missed; an account was erased).
    pub fn forget_all(&self) {
        self.shares.clear();
        self.roles.clear();
        self.collections.clear();
        self.holders.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::model::ShareAccess;
    use crate::auth::{AuthMethod, Role, Scopes};

    #[test]
    fn a_read_that_began_before_a_removal_is_not_kept() {
        let c: TtlCache<String, u32> = TtlCache::new(Duration::from_secs(60));
        let k = "k".to_owned();
        let generation = c.get(&k).unwrap_err();
        // A revocation lands while the read is in flight: the stale answer is not cached.
        c.pop(&k);
        c.put(k.clone(), 1, generation);
        assert!(c.get(&k).is_err());
        let generation = c.get(&k).unwrap_err();
        c.put(k.clone(), 2, generation);
        assert_eq!(c.get(&k), Ok(2));
    }

    fn p(user: &str) -> Principal {
        Principal::jwt(user, Role::Editor, None)
    }

    #[tokio::test]
    async fn levels_follow_owners_shares_teams_and_collections_and_caches_forget_on_change() {
        let (_dir, store) = crate::storage::temp_store();
        let access = Access::new(store.clone(), Duration::from_secs(3600));
        let img = "0123456789abcdef0123456789abcdef";
        let level = |who: Principal| {
            let access = &access;
            async move { access.image_level(&who, img, "ann").await.unwrap() }
        };
        assert_eq!(level(p("ann")).await, Level::Manage);
        assert_eq!(
            level(Principal::jwt("root", Role::Admin, None)).await,
            Level::Manage
        );
        // An admin's narrow API key does not reach other users' images.
        let narrow = Principal {
            method: AuthMethod::ApiKey {
                key_id: "k".into(),
                scopes: Scopes::READ,
                networks: Vec::new(),
            },
            ..Principal::jwt("root", Role::Admin, None)
        };
        assert_eq!(level(narrow).await, Level::None);
        assert_eq!(level(p("bob")).await, Level::None);
        // A share written through another instance is seen once the change is applied.
        let r = Resource::Image(img.into());
        let bob = Grantee::User("bob".into());
        shares::create(&store, r.clone(), bob, ShareAccess::Read, "ann")
            .await
            .unwrap();
        assert_eq!(level(p("bob")).await, Level::None, "cached absence");
        access.apply(&Change::Shares {
            resource: r.clone(),
        });
        assert_eq!(level(p("bob")).await, Level::Read);
        // A team's edit share: editors edit, viewers read.
        let (team, _) = teams::create(store.as_ref(), "T", "tia").await.unwrap();
        teams::set_member(&store, &team.id, "vic", TeamRole::Viewer, "tia")
            .await
            .unwrap();
        let to_team = Grantee::Team(team.id.clone());
        shares::create(&store, r.clone(), to_team, ShareAccess::Edit, "ann")
            .await
            .unwrap();
        access.apply(&Change::Shares {
            resource: r.clone(),
        });
        assert_eq!(
            level(p("vic")).await,
            Level::Read,
            "capped by the viewer role"
        );
        assert_eq!(level(p("tia")).await, Level::Edit);
        // A collection's readers read its images, whatever the collection share gives.
        let owner = Grantee::User("ann".into());
        let c = collections::create(store.as_ref(), "C", None, &owner, "ann")
            .await
            .unwrap();
        collections::place(&store, &c.id, img, None, "ann")
            .await
            .unwrap();
        let cole = Grantee::User("cole".into());
        let cr = Resource::Collection(c.id.clone());
        shares::create(&store, cr, cole, ShareAccess::Edit, "ann")
            .await
            .unwrap();
        assert_eq!(
            level(p("cole")).await,
            Level::None,
            "cached: not in a collection"
        );
        access.apply(&Change::Holders { image: img.into() });
        assert_eq!(level(p("cole")).await, Level::Read);
        assert_eq!(
            access.collection_level(&p("cole"), &c).await.unwrap(),
            Level::Edit
        );
        // Taken out of the collection: gone once the change is applied.
        collections::remove_item(store.as_ref(), &c.id, img)
            .await
            .unwrap();
        assert_eq!(level(p("cole")).await, Level::Read, "cached");
        access.apply(&Change::Holders { image: img.into() });
        assert_eq!(level(p("cole")).await, Level::None);
        // A membership ended: the same.
        teams::remove_member(&store, &team.id, "vic", false)
            .await
            .unwrap();
        access.apply(&Change::Member {
            team: team.id.clone(),
            user: "vic".into(),
        });
        assert_eq!(level(p("vic")).await, Level::None);
        // A team's collection: members by role.
        let tc = collections::create(store.as_ref(), "TC", None, &Grantee::Team(team.id), "tia")
            .await
            .unwrap();
        assert_eq!(
            access.collection_level(&p("tia"), &tc).await.unwrap(),
            Level::Manage
        );
        assert_eq!(
            access.collection_level(&p("bob"), &tc).await.unwrap(),
            Level::None
        );
    }
}
