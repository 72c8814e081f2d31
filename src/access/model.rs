//! The records of access beyond ownership (teams, members, shares, collections, items), their
//! bounds, ids and errors. A leaf: no I/O.

use serde::{Deserialize, Serialize};

use crate::storage::StorageError;

/// Members one team holds.
pub const MAX_MEMBERS: usize = 1000;
/// Teams one user belongs to (every access check of a team share reads at most one membership
/// per share, but `?shared=1` lists every team's received shares).
pub const MAX_TEAMS_PER_USER: usize = 50;
/// Shares of one image or collection.
pub const MAX_SHARES: usize = 100;
/// Shares one user or team receives (listed by `?shared=1`).
pub const MAX_RECEIVED: usize = 10_000;
/// Images in one collection.
pub const MAX_ITEMS: usize = 1000;
/// Collections one user or team owns.
pub const MAX_COLLECTIONS: usize = 1000;
/// Collections one image is in (each can grant read on it: bounded per access check).
pub const MAX_HOLDERS: usize = 100;
pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Longest record read (a collection with the longest description, escaped).
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Why an access operation failed. Mapped to statuses in `http::error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccessError {
    /// Absent, or not visible to the caller: the same answer.
    #[error("not found")]
    NotFound,
    /// Visible to the caller, but its role or relation does not allow the act.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("invalid field: {0}")]
    InvalidField(String),
    /// A bound or a rule of the current state (the last team admin, a full collection).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored access record damaged: {0}")]
    Corrupt(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// How far a principal reaches a resource, least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Not visible: `404`, like a missing resource.
    None,
    /// Read metadata, transform, mint signed URLs; see a collection and its items.
    Read,
    /// Also change metadata; a collection's title, description and items.
    Edit,
    /// Owner (or admin; a team collection's team admins): delete, share.
    Manage,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Read => "read",
            Level::Edit => "edit",
            Level::Manage => "manage",
        }
    }
}

/// A member's role in a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeamRole {
    Viewer,
    Editor,
    Admin,
}

impl TeamRole {
    pub fn parse(s: &str) -> Option<TeamRole> {
        match s {
            "viewer" => Some(TeamRole::Viewer),
            "editor" => Some(TeamRole::Editor),
            "admin" => Some(TeamRole::Admin),
            _ => None,
        }
    }

    /// The most a share reaches through a member of this role: a viewer member of an editing
    /// share reads.
    pub fn cap(self, access: ShareAccess) -> Level {
        match (self, access) {
            (TeamRole::Viewer, _) | (_, ShareAccess::Read) => Level::Read,
            (_, ShareAccess::Edit) => Level::Edit,
        }
    }

    /// What the role reaches on the team's own collections.
    pub fn collection_level(self) -> Level {
        match self {
            TeamRole::Viewer => Level::Read,
            TeamRole::Editor => Level::Edit,
            TeamRole::Admin => Level::Manage,
        }
    }
}

/// What a share grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareAccess {
    Read,
    Edit,
}

impl ShareAccess {
    pub fn parse(s: &str) -> Option<ShareAccess> {
        match s {
            "read" => Some(ShareAccess::Read),
            "edit" => Some(ShareAccess::Edit),
            _ => None,
        }
    }

    pub fn level(self) -> Level {
        match self {
            ShareAccess::Read => Level::Read,
            ShareAccess::Edit => Level::Edit,
        }
    }
}

/// Whom a share is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grantee {
    User(String),
    Team(String),
}

/// What a share is of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Resource {
    Image(String),
    Collection(String),
}

/// One share: durable at `{resource prefix}/shares/{id}.json`, indexed for its grantee
/// (`…/received/`) and its creator (`users/{hash}/granted/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// `shr_` + 24 hex.
    pub id: String,
    pub resource: Resource,
    pub grantee: Grantee,
    pub access: ShareAccess,
    pub created_by: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// A team: `teams/{id}/team.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Team {
    /// `team_` + 24 hex.
    pub id: String,
    pub name: String,
    pub created_by: String,
    pub created_at: u64,
}

/// A membership: `teams/{team}/members/{hash}.json` (the authority), indexed for the user at
/// `users/{hash}/teams/{team}.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub team: String,
    pub user: String,
    pub role: TeamRole,
    pub added_by: String,
    pub added_at: u64,
}

/// A collection: `collections/{id}/collection.json`. Owned by a user or by a team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    /// `col_` + 24 hex.
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The owning user (`None` for a team's collection).
    #[serde(default)]
    pub owner: Option<String>,
    /// The owning team.
    #[serde(default)]
    pub team: Option<String>,
    pub created_by: String,
    pub created_at: u64,
    pub updated_at: u64,
}

/// An image in a collection: `collections/{id}/items/{image}.json`, one object per item (so
/// concurrent adds through different instances never overwrite each other), ordered by `pos`
/// (a fractional sort key: see `collections::between`), then image id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub image: String,
    pub pos: String,
    pub added_by: String,
    pub added_at: u64,
}

/// What changed, for the other instances' caches (`fleet::Event::AccessChanged`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Change {
    /// The shares of a resource.
    Shares { resource: Resource },
    /// One membership.
    Member { team: String, user: String },
    /// A whole team (deleted).
    Team { team: String },
    /// A collection's record (changed or deleted).
    Collection { id: String },
    /// The collections an image is in.
    Holders { image: String },
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh id: `prefix` + 24 hex (96 random bits: not guessable).
pub fn new_id(prefix: &str) -> Result<String, AccessError> {
    Ok(format!(
        "{prefix}{}",
        crate::id::random_hex(12).map_err(|e| AccessError::Internal(e.to_string()))?
    ))
}

/// Whether `id` is `prefix` + 24 lowercase hex (anything else is not found, before any I/O).
pub fn valid_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|h| h.len() == 24 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

pub const TEAM: &str = "team_";
pub const SHARE: &str = "shr_";
pub const COLLECTION: &str = "col_";

/// A user id as given in a body: what `http::acting_for` accepts for `?owner=`.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= 255 && !user.chars().any(char::is_control)
}

/// Text of at most `max` characters, without control characters (`\n` and `\t` allowed in
/// descriptions only, via `multiline`).
pub fn check_text(field: &str, v: &str, max: usize, multiline: bool) -> Result<(), AccessError> {
    let bad = v
        .chars()
        .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t')));
    if v.chars().count() > max || bad {
        return Err(AccessError::InvalidField(format!(
            "{field}: at most {max} characters, no control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_roles_cap_shares_and_ids_are_strict() {
        assert_eq!(TeamRole::Viewer.cap(ShareAccess::Edit), Level::Read);
        assert_eq!(TeamRole::Editor.cap(ShareAccess::Edit), Level::Edit);
        assert_eq!(TeamRole::Admin.cap(ShareAccess::Read), Level::Read);
        assert!(Level::None < Level::Read && Level::Edit < Level::Manage);
        let id = new_id(SHARE).unwrap();
        assert!(valid_id(&id, SHARE));
        assert!(!valid_id(&id, TEAM));
        assert!(!valid_id("shr_../../etc/passwd/aaaaaa", SHARE));
        assert!(
            !valid_id("shr_ABCDEFABCDEFABCDEFABCDEF", SHARE),
            "lowercase only"
        );
        let g = serde_json::to_value(Grantee::Team("team_x".into())).unwrap();
        assert_eq!(g, serde_json::json!({"team": "team_x"}));
        let r = serde_json::to_value(Resource::Image("abc".into())).unwrap();
        assert_eq!(r, serde_json::json!({"kind": "image", "id": "abc"}));
    }
}
