//! Teams and their members, over the object store (no caching: `resolve::Access` caches the
//! membership checks).
//!
//! A membership is one object, `teams/{team}/members/{hash}.json` — the authority every access
//! check reads — so concurrent changes of different members through different instances never
//! overwrite each other. The user's index (`users/{hash}/teams/{team}.json`) is written before a
//! new membership and removed after it, so it always names at least every team the user is in.

use std::sync::Arc;

use super::model::{
    AccessError, MAX_MEMBERS, MAX_NAME_CHARS, MAX_TEAMS_PER_USER, Member, TEAM, Team, TeamRole,
    check_text, new_id, now_secs, valid_id,
};
use super::records::{self, leaf};
use crate::storage::ObjectStore;

/// Creates a team with `creator` as its admin.
pub async fn create(
    store: &dyn ObjectStore,
    name: &str,
    creator: &str,
) -> Result<(Team, Member), AccessError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(AccessError::InvalidField("name: required".into()));
    }
    check_text("name", name, MAX_NAME_CHARS, false)?;
    room_for_a_team(store, creator).await?;
    let now = now_secs();
    let team = Team {
        id: new_id(TEAM)?,
        name: name.to_owned(),
        created_by: creator.to_owned(),
        created_at: now,
    };
    records::write(store, &records::team_record(&team.id), &team).await?;
    let member = Member {
        team: team.id.clone(),
        user: creator.to_owned(),
        role: TeamRole::Admin,
        added_by: creator.to_owned(),
        added_at: now,
    };
    write_member(store, &member, true).await?;
    Ok((team, member))
}

async fn room_for_a_team(store: &dyn ObjectStore, user: &str) -> Result<(), AccessError> {
    let held = records::keys(
        store,
        &records::user_teams_prefix(user),
        MAX_TEAMS_PER_USER + 1,
    )
    .await?
    .len();
    if held >= MAX_TEAMS_PER_USER {
        return Err(AccessError::Conflict(format!(
            "a user belongs to at most {MAX_TEAMS_PER_USER} teams"
        )));
    }
    Ok(())
}

/// Index and authority, in the order that keeps the index a superset.
async fn write_member(store: &dyn ObjectStore, m: &Member, new: bool) -> Result<(), AccessError> {
    let index = records::user_team(&m.user, &m.team);
    let authority = records::member(&m.team, &m.user);
    if new {
        records::write(store, &index, m).await?;
        records::write(store, &authority, m).await
    } else {
        records::write(store, &authority, m).await?;
        records::write(store, &index, m).await
    }
}

/// Rewrites an existing membership (its role unchanged; erasure clears `added_by`).
pub async fn rewrite_member(store: &dyn ObjectStore, m: &Member) -> Result<(), AccessError> {
    write_member(store, m, false).await
}

/// The team, if it exists (a malformed id is none, without I/O).
pub async fn get(store: &dyn ObjectStore, team: &str) -> Result<Option<Team>, AccessError> {
    if !valid_id(team, TEAM) {
        return Ok(None);
    }
    records::read(store, &records::team_record(team)).await
}

/// `user`'s membership of `team`.
pub async fn membership(
    store: &dyn ObjectStore,
    team: &str,
    user: &str,
) -> Result<Option<Member>, AccessError> {
    if !valid_id(team, TEAM) {
        return Ok(None);
    }
    records::read(store, &records::member(team, user)).await
}

/// Every member, by hashed user id.
pub async fn members(store: &Arc<dyn ObjectStore>, team: &str) -> Result<Vec<Member>, AccessError> {
    records::read_all(store, &records::members_prefix(team), MAX_MEMBERS).await
}

/// The teams `user` is in, from their index, each checked against its authority (a stale
/// index entry is skipped).
pub async fn of_user(store: &Arc<dyn ObjectStore>, user: &str) -> Result<Vec<Member>, AccessError> {
    let mut out = Vec::new();
    for k in records::keys(
        store.as_ref(),
        &records::user_teams_prefix(user),
        MAX_TEAMS_PER_USER,
    )
    .await?
    {
        if let Some(m) = membership(store.as_ref(), leaf(&k), user).await? {
            out.push(m);
        }
    }
    Ok(out)
}

/// Adds `user` with `role`, or changes their role; returns the membership and whether it is
/// new. A team keeps at least one admin (`Conflict`).
pub async fn set_member(
    store: &Arc<dyn ObjectStore>,
    team: &str,
    user: &str,
    role: TeamRole,
    by: &str,
) -> Result<(Member, bool), AccessError> {
    let existing = membership(store.as_ref(), team, user).await?;
    if existing.is_none() {
        let held = records::keys(store.as_ref(), &records::members_prefix(team), MAX_MEMBERS)
            .await?
            .len();
        if held >= MAX_MEMBERS {
            return Err(AccessError::Conflict(format!(
                "a team has at most {MAX_MEMBERS} members"
            )));
        }
        room_for_a_team(store.as_ref(), user).await?;
    }
    if let Some(m) = &existing
        && m.role == TeamRole::Admin
        && role != TeamRole::Admin
    {
        keep_an_admin(&members(store, team).await?, user)?;
    }
    let m = Member {
        team: team.to_owned(),
        user: user.to_owned(),
        role,
        added_by: by.to_owned(),
        added_at: existing.as_ref().map_or_else(now_secs, |m| m.added_at),
    };
    write_member(store.as_ref(), &m, existing.is_none()).await?;
    Ok((m, existing.is_none()))
}

fn keep_an_admin(all: &[Member], leaving: &str) -> Result<(), AccessError> {
    if !all
        .iter()
        .any(|m| m.role == TeamRole::Admin && m.user != leaving)
    {
        return Err(AccessError::Conflict(
            "a team keeps at least one admin: add another first, or delete the team".into(),
        ));
    }
    Ok(())
}

/// Removes `user` from `team`; `false` if they were not a member. With `force` (erasure) the
/// last admin goes too.
pub async fn remove_member(
    store: &Arc<dyn ObjectStore>,
    team: &str,
    user: &str,
    force: bool,
) -> Result<bool, AccessError> {
    let Some(m) = membership(store.as_ref(), team, user).await? else {
        // A stale index entry, if any, goes too.
        records::remove(store.as_ref(), &records::user_team(user, team)).await?;
        return Ok(false);
    };
    if m.role == TeamRole::Admin && !force {
        keep_an_admin(&members(store, team).await?, user)?;
    }
    records::remove(store.as_ref(), &records::member(team, user)).await?;
    records::remove(store.as_ref(), &records::user_team(user, team)).await?;
    Ok(true)
}

/// Removes the team's members and its record (what it owns and received is removed first by
/// `account::delete_team`). Returns the members it had.
pub async fn remove(store: &Arc<dyn ObjectStore>, team: &str) -> Result<Vec<Member>, AccessError> {
    let all = members(store, team).await?;
    for m in &all {
        records::remove(store.as_ref(), &records::member(team, &m.user)).await?;
        records::remove(store.as_ref(), &records::user_team(&m.user, team)).await?;
    }
    // Member records that did not parse are not left behind either.
    for k in store
        .list(crate::storage::Bucket::Originals, &format!("teams/{team}/"))
        .await?
    {
        store.delete(crate::storage::Bucket::Originals, &k).await?;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn teams_keep_an_admin_and_index_their_members() {
        let (_dir, store) = crate::storage::temp_store();
        let (team, admin) = create(store.as_ref(), "  Design ", "ann").await.unwrap();
        assert_eq!(team.name, "Design");
        assert_eq!(admin.role, TeamRole::Admin);
        assert!(create(store.as_ref(), " ", "ann").await.is_err());
        assert!(create(store.as_ref(), "a\u{7}b", "ann").await.is_err());
        let (m, new) = set_member(&store, &team.id, "bob", TeamRole::Viewer, "ann")
            .await
            .unwrap();
        assert!(new && m.role == TeamRole::Viewer);
        let (m, new) = set_member(&store, &team.id, "bob", TeamRole::Editor, "ann")
            .await
            .unwrap();
        assert!(!new && m.role == TeamRole::Editor);
        // The last admin can neither step down nor leave.
        let e = set_member(&store, &team.id, "ann", TeamRole::Editor, "ann").await;
        assert!(matches!(e, Err(AccessError::Conflict(_))));
        let e = remove_member(&store, &team.id, "ann", false).await;
        assert!(matches!(e, Err(AccessError::Conflict(_))));
        assert_eq!(of_user(&store, "bob").await.unwrap().len(), 1);
        assert!(remove_member(&store, &team.id, "bob", false).await.unwrap());
        assert!(!remove_member(&store, &team.id, "bob", false).await.unwrap());
        assert!(of_user(&store, "bob").await.unwrap().is_empty());
        // Erasure removes even the last admin.
        assert!(remove_member(&store, &team.id, "ann", true).await.unwrap());
        assert!(members(&store, &team.id).await.unwrap().is_empty());
        assert!(get(store.as_ref(), "team_../x").await.unwrap().is_none());
        remove(&store, &team.id).await.unwrap();
        assert!(get(store.as_ref(), &team.id).await.unwrap().is_none());
    }
}
