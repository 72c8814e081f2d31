//! The access matrix (issue 22): every route × every principal, the expected status computed
//! from a model of the relations (owner, team roles, shares, collections) written here
//! independently of the server, on fs and on Garage + Redis. Then share and membership
//! revocation through one instance seen by another, quotas charged to the owner, and export and
//! erasure with teams, collections and shares.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use crate::audit::unzip;
use crate::harness::*;
use crate::identity::unique;
use pixgate::auth::Role;
use sha2::Digest;

/// Where the principals call from (through the trusted proxy).
const HOME: &str = "192.0.2.10";
const KEY_NET: &str = "10.0.0.0/8";
const KEY_IP: &str = "10.1.2.3";
const OUTSIDE_IP: &str = "198.51.100.7";
const BLOCKED_NET: &str = "203.0.113.0/24";
const BLOCKED_IP: &str = "203.0.113.5";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    None,
    Read,
    Edit,
    Manage,
}

/// The principals of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Owner,
    TeamViewer,
    TeamEditor,
    TeamAdmin,
    ShareRead,
    ShareEdit,
    Stranger,
    Admin,
    KeyInside,
    KeyOutside,
    Blocked,
}

const EVERYONE: [Who; 11] = [
    Who::Owner,
    Who::TeamViewer,
    Who::TeamEditor,
    Who::TeamAdmin,
    Who::ShareRead,
    Who::ShareEdit,
    Who::Stranger,
    Who::Admin,
    Who::KeyInside,
    Who::KeyOutside,
    Who::Blocked,
];

/// The world the matrix runs in: users, the team, and the relations.
struct World {
    s: Server,
    users: BTreeMap<&'static str, String>,
    admin: String,
    key: String,
    team: String,
    /// Image A (alice's): shared with `sr` (read), `se` (edit), the team (edit); in `coll`.
    image: String,
    /// Another of alice's images (put in and taken out of `coll`).
    spare: String,
    /// Alice's collection: holds A; shared with `sr` (read), `se` (edit), the team (read).
    coll: String,
    /// The team's collection.
    team_coll: String,
}

/// The user a principal acts as (API keys are alice's).
fn as_user(who: Who) -> &'static str {
    match who {
        Who::Owner | Who::KeyInside | Who::KeyOutside | Who::Blocked => "alice",
        Who::TeamViewer => "tv",
        Who::TeamEditor => "te",
        Who::TeamAdmin => "ta",
        Who::ShareRead => "sr",
        Who::ShareEdit => "se",
        Who::Stranger => "st",
        Who::Admin => "root",
    }
}

// ---- The model: relations as set up in `World::build`, and what they reach. ----

fn team_role(user: &str) -> Option<Level> {
    // The team's roles as collection levels: viewer reads, editor edits, admin manages.
    match user {
        "ta" => Some(Level::Manage),
        "te" => Some(Level::Edit),
        "tv" | "alice" => Some(Level::Read),
        _ => None,
    }
}

/// A share at `access` through the team reaches `access`, at most read for a viewer member.
fn via_team(user: &str, access: Level) -> Level {
    match team_role(user) {
        None => Level::None,
        Some(Level::Read) => Level::Read,
        Some(_) => access,
    }
}

fn collection_level(user: &str) -> Level {
    if user == "alice" || user == "root" {
        return Level::Manage;
    }
    let direct = match user {
        "sr" => Level::Read,
        "se" => Level::Edit,
        _ => Level::None,
    };
    direct.max(via_team(user, Level::Read))
}

fn image_level(user: &str) -> Level {
    if user == "alice" || user == "root" {
        return Level::Manage;
    }
    let direct = match user {
        "sr" => Level::Read,
        "se" => Level::Edit,
        _ => Level::None,
    };
    let shared = direct.max(via_team(user, Level::Edit));
    if shared == Level::None && collection_level(user) >= Level::Read {
        return Level::Read;
    }
    shared
}

fn team_collection_level(user: &str) -> Level {
    if user == "root" {
        return Level::Manage;
    }
    team_role(user).unwrap_or(Level::None)
}

fn team_level(user: &str) -> Level {
    match (user, team_role(user)) {
        ("root", _) => Level::Manage,
        (_, Some(Level::Manage)) => Level::Manage,
        (_, Some(_)) => Level::Read,
        _ => Level::None,
    }
}

/// What a route is about, and so which level of the model applies.
#[derive(Debug, Clone, Copy)]
enum On {
    Nothing,
    Image,
    Collection,
    TeamCollection,
    Team,
    /// Creating a team's collection: the team's editors and admins (and admins).
    TeamCollectionCreate,
    AdminOnly,
}

/// One route of the matrix.
struct Row {
    name: &'static str,
    method: Method,
    on: On,
    need: Level,
    ok: u16,
    /// Placing image A in a collection also needs owning A.
    owns_image: bool,
}

fn row(name: &'static str, method: Method, on: On, need: Level, ok: u16) -> Row {
    Row {
        name,
        method,
        on,
        need,
        ok,
        owns_image: false,
    }
}

fn rows() -> Vec<Row> {
    use Level::*;
    let mut item = row("add_item", Method::POST, On::Collection, Edit, 200);
    item.owns_image = true;
    vec![
        row("list_images", Method::GET, On::Nothing, None, 200),
        row("list_shared_images", Method::GET, On::Nothing, None, 200),
        row("upload", Method::POST, On::Nothing, None, 201),
        row("get_image", Method::GET, On::Image, Read, 200),
        row("patch_image", Method::PATCH, On::Image, Edit, 200),
        row("sign_url", Method::POST, On::Image, Read, 200),
        row("transform", Method::GET, On::Image, Read, 200),
        row("list_image_shares", Method::GET, On::Image, Manage, 200),
        row("share_image", Method::POST, On::Image, Manage, 201),
        row("revoke_image_share", Method::DELETE, On::Image, Manage, 204),
        row("delete_image", Method::DELETE, On::Image, Manage, 204),
        row("list_collections", Method::GET, On::Nothing, None, 200),
        row(
            "list_shared_collections",
            Method::GET,
            On::Nothing,
            None,
            200,
        ),
        row("create_collection", Method::POST, On::Nothing, None, 201),
        row("get_collection", Method::GET, On::Collection, Read, 200),
        row("patch_collection", Method::PATCH, On::Collection, Edit, 200),
        item,
        row("remove_item", Method::DELETE, On::Collection, Edit, 204),
        row(
            "list_collection_shares",
            Method::GET,
            On::Collection,
            Manage,
            200,
        ),
        row(
            "share_collection",
            Method::POST,
            On::Collection,
            Manage,
            201,
        ),
        row(
            "revoke_collection_share",
            Method::DELETE,
            On::Collection,
            Manage,
            204,
        ),
        row(
            "delete_collection",
            Method::DELETE,
            On::Collection,
            Manage,
            204,
        ),
        row(
            "get_team_collection",
            Method::GET,
            On::TeamCollection,
            Read,
            200,
        ),
        row(
            "patch_team_collection",
            Method::PATCH,
            On::TeamCollection,
            Edit,
            200,
        ),
        row(
            "create_team_collection",
            Method::POST,
            On::TeamCollectionCreate,
            Edit,
            201,
        ),
        row("list_teams", Method::GET, On::Nothing, None, 200),
        row("create_team", Method::POST, On::Nothing, None, 201),
        row("get_team", Method::GET, On::Team, Read, 200),
        row("add_member", Method::POST, On::Team, Manage, 201),
        row("remove_member", Method::DELETE, On::Team, Manage, 204),
        row("delete_team", Method::DELETE, On::Team, Manage, 204),
        row("usage", Method::GET, On::Nothing, None, 200),
        row("my_activity", Method::GET, On::Nothing, None, 200),
        row("list_api_keys", Method::GET, On::Nothing, None, 200),
        row("admin_audit", Method::GET, On::AdminOnly, None, 200),
        row("admin_blocks", Method::GET, On::AdminOnly, None, 200),
        row("admin_revoke", Method::POST, On::AdminOnly, None, 200),
    ]
}

/// The model's answer for `who` on `r`.
fn expected(r: &Row, who: Who) -> u16 {
    match who {
        Who::Blocked => return 403,
        Who::KeyOutside => return 401,
        _ => {}
    }
    let user = as_user(who);
    let level = match r.on {
        On::Nothing => return r.ok,
        On::AdminOnly => return if user == "root" { r.ok } else { 403 },
        // A stranger's team and a missing one answer alike: 403.
        On::TeamCollectionCreate => {
            return if team_collection_level(user) >= Level::Edit {
                r.ok
            } else {
                403
            };
        }
        On::Image => image_level(user),
        On::Collection => collection_level(user),
        On::TeamCollection => team_collection_level(user),
        On::Team => team_level(user),
    };
    if level == Level::None {
        404
    } else if level < r.need {
        403
    } else if r.owns_image && !(user == "alice" || user == "root") {
        400
    } else {
        r.ok
    }
}

// ---- The server side. ----

impl World {
    fn token(&self, user: &str) -> String {
        if user == "root" {
            return self.admin.clone();
        }
        token(&self.users[user], Role::Editor)
    }

    async fn call(&self, method: Method, path: &str, user: &str, body: Value) -> Resp {
        let auth = bearer(&self.token(user));
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        request(
            method,
            &self.s.url(path),
            &[("authorization", &auth), ("x-forwarded-for", HOME)],
            body,
        )
        .await
    }

    async fn ok(&self, method: Method, path: &str, user: &str, body: Value) -> Value {
        let r = self.call(method.clone(), path, user, body).await;
        assert!(
            (200..300).contains(&r.status),
            "{method} {path} as {user}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        }
    }

    fn uid(&self, user: &str) -> String {
        self.users[user].clone()
    }

    async fn upload(&self) -> String {
        upload_fixture(
            &self.s,
            &self.uid("alice"),
            "photo_320x240.jpg",
            "image/jpeg",
        )
        .await
    }

    /// Shares at `path` with `sr` (read), `se` (edit) and the team (`team_access`).
    async fn share_all(&self, path: &str, team_access: &str) {
        for (k, v, a) in [
            ("user", self.uid("sr"), "read"),
            ("user", self.uid("se"), "edit"),
            ("team", self.team.clone(), team_access),
        ] {
            self.ok(Method::POST, path, "alice", json!({k: v, "access": a}))
                .await;
        }
    }

    async fn build(backend: Backend, env: &[(&str, &str)]) -> World {
        let s = Server::start_with(backend, env);
        let users: BTreeMap<&'static str, String> = ["alice", "tv", "te", "ta", "sr", "se", "st"]
            .into_iter()
            .map(|u| (u, unique(u)))
            .collect();
        let admin = token(&unique("root"), Role::Admin);
        let mut w = World {
            s,
            users,
            admin,
            key: String::new(),
            team: String::new(),
            image: String::new(),
            spare: String::new(),
            coll: String::new(),
            team_coll: String::new(),
        };
        w.team = w
            .ok(Method::POST, "/v1/teams", "ta", json!({"name": "Design"}))
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        for (u, role) in [("te", "editor"), ("tv", "viewer"), ("alice", "viewer")] {
            let body = json!({"user": w.uid(u), "role": role});
            w.ok(
                Method::POST,
                &format!("/v1/teams/{}/members", w.team),
                "ta",
                body,
            )
            .await;
        }
        w.image = w.upload().await;
        w.spare = w.upload().await;
        w.share_all(&format!("/v1/images/{}/shares", w.image), "edit")
            .await;
        let c = w
            .ok(
                Method::POST,
                "/v1/collections",
                "alice",
                json!({"title": "Trip"}),
            )
            .await;
        w.coll = c["id"].as_str().unwrap().to_owned();
        let items = format!("/v1/collections/{}/items", w.coll);
        w.ok(Method::POST, &items, "alice", json!({"image": w.image}))
            .await;
        w.share_all(&format!("/v1/collections/{}/shares", w.coll), "read")
            .await;
        let body = json!({"title": "Team board", "team": w.team});
        w.team_coll = w.ok(Method::POST, "/v1/collections", "te", body).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        // Shared with its own team too (reaches nothing more; listed once, as the team's).
        let path = format!("/v1/collections/{}/shares", w.team_coll);
        let body = json!({"team": w.team, "access": "read"});
        w.ok(Method::POST, &path, "ta", body).await;
        let body = json!({"scopes": ["read", "transform", "upload", "delete", "manage"], "allowed_cidrs": [KEY_NET]});
        w.key = w.ok(Method::POST, "/v1/api-keys", "alice", body).await["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let body = json!({"cidr": BLOCKED_NET, "reason": "matrix"});
        w.ok(Method::POST, "/v1/admin/blocks", "root", body).await;
        w
    }

    /// What a destructive row acts on is made fresh for each principal, with the same
    /// relations as the shared fixtures; returns the path and body.
    async fn prepare(&self, r: &Row, who: Who) -> (String, Value) {
        let tag = format!("{who:?}").to_lowercase();
        let (img, coll, team) = (&self.image, &self.coll, &self.team);
        match r.name {
            "list_images" => ("/v1/images".into(), Value::Null),
            "list_shared_images" => ("/v1/images?shared=1".into(), Value::Null),
            "upload" => unreachable!("uploads are sent raw"),
            "get_image" => (format!("/v1/images/{img}"), Value::Null),
            "patch_image" => (format!("/v1/images/{img}"), json!({"title": tag})),
            "sign_url" => (format!("/v1/images/{img}/url"), json!({"options": "w:20"})),
            "transform" => (format!("/_/w:24/plain/{img}"), Value::Null),
            "list_image_shares" => (format!("/v1/images/{img}/shares"), Value::Null),
            "share_image" => (
                format!("/v1/images/{img}/shares"),
                json!({"user": format!("zed-{tag}"), "access": "read"}),
            ),
            "revoke_image_share" => {
                let path = format!("/v1/images/{img}/shares");
                let body = json!({"user": format!("victim-{tag}"), "access": "read"});
                let sid = self.ok(Method::POST, &path, "alice", body).await["id"].clone();
                (format!("{path}/{}", sid.as_str().unwrap()), Value::Null)
            }
            "delete_image" => {
                let fresh = self.upload().await;
                self.share_all(&format!("/v1/images/{fresh}/shares"), "edit")
                    .await;
                let items = format!("/v1/collections/{coll}/items");
                self.ok(Method::POST, &items, "alice", json!({"image": fresh}))
                    .await;
                (format!("/v1/images/{fresh}"), Value::Null)
            }
            "list_collections" => ("/v1/collections".into(), Value::Null),
            "list_shared_collections" => ("/v1/collections?shared=1".into(), Value::Null),
            "create_collection" => ("/v1/collections".into(), json!({"title": tag})),
            "get_collection" => (format!("/v1/collections/{coll}"), Value::Null),
            "patch_collection" => (
                format!("/v1/collections/{coll}"),
                json!({"description": tag}),
            ),
            "add_item" => (
                format!("/v1/collections/{coll}/items"),
                json!({"image": img, "position": 0}),
            ),
            "remove_item" => {
                let items = format!("/v1/collections/{coll}/items");
                self.ok(Method::POST, &items, "alice", json!({"image": self.spare}))
                    .await;
                (format!("{items}/{}", self.spare), Value::Null)
            }
            "list_collection_shares" => (format!("/v1/collections/{coll}/shares"), Value::Null),
            "share_collection" => (
                format!("/v1/collections/{coll}/shares"),
                json!({"user": format!("zed-{tag}"), "access": "read"}),
            ),
            "revoke_collection_share" => {
                let path = format!("/v1/collections/{coll}/shares");
                let body = json!({"user": format!("victim-{tag}"), "access": "read"});
                let sid = self.ok(Method::POST, &path, "alice", body).await["id"].clone();
                (format!("{path}/{}", sid.as_str().unwrap()), Value::Null)
            }
            "delete_collection" => {
                let c = self
                    .ok(
                        Method::POST,
                        "/v1/collections",
                        "alice",
                        json!({"title": tag}),
                    )
                    .await;
                let id = c["id"].as_str().unwrap().to_owned();
                self.share_all(&format!("/v1/collections/{id}/shares"), "read")
                    .await;
                (format!("/v1/collections/{id}"), Value::Null)
            }
            "get_team_collection" => (format!("/v1/collections/{}", self.team_coll), Value::Null),
            "patch_team_collection" => (
                format!("/v1/collections/{}", self.team_coll),
                json!({"title": tag}),
            ),
            "create_team_collection" => (
                "/v1/collections".into(),
                json!({"title": tag, "team": team}),
            ),
            "list_teams" => ("/v1/teams".into(), Value::Null),
            "create_team" => ("/v1/teams".into(), json!({"name": tag})),
            "get_team" => (format!("/v1/teams/{team}"), Value::Null),
            "add_member" => (
                format!("/v1/teams/{team}/members"),
                json!({"user": format!("new-{tag}"), "role": "viewer"}),
            ),
            "remove_member" => {
                let path = format!("/v1/teams/{team}/members");
                let gone = format!("gone-{tag}");
                self.ok(
                    Method::POST,
                    &path,
                    "ta",
                    json!({"user": gone, "role": "viewer"}),
                )
                .await;
                (format!("{path}/{gone}"), Value::Null)
            }
            "delete_team" => {
                let t = self
                    .ok(Method::POST, "/v1/teams", "ta", json!({"name": tag}))
                    .await;
                let id = t["id"].as_str().unwrap().to_owned();
                for (u, role) in [("te", "editor"), ("tv", "viewer"), ("alice", "viewer")] {
                    let body = json!({"user": self.uid(u), "role": role});
                    self.ok(Method::POST, &format!("/v1/teams/{id}/members"), "ta", body)
                        .await;
                }
                (format!("/v1/teams/{id}"), Value::Null)
            }
            "usage" => ("/v1/usage".into(), Value::Null),
            "my_activity" => ("/v1/me/activity".into(), Value::Null),
            "list_api_keys" => ("/v1/api-keys".into(), Value::Null),
            "admin_audit" => ("/v1/admin/audit".into(), Value::Null),
            "admin_blocks" => ("/v1/admin/blocks".into(), Value::Null),
            "admin_revoke" => (
                format!("/v1/admin/users/nobody-{tag}/revoke-tokens"),
                Value::Null,
            ),
            other => panic!("no route {other}"),
        }
    }

    /// Sends the row as `who`: their credential, from their address.
    async fn send(&self, r: &Row, who: Who) -> Resp {
        let (credential, from) = match who {
            Who::KeyInside => (self.key.clone(), KEY_IP),
            Who::KeyOutside => (self.key.clone(), OUTSIDE_IP),
            Who::Blocked => (self.token("alice"), BLOCKED_IP),
            other => (self.token(as_user(other)), HOME),
        };
        let auth = bearer(&credential);
        let mut headers = vec![("authorization", auth.as_str()), ("x-forwarded-for", from)];
        if r.name == "upload" {
            headers.push(("content-type", "image/jpeg"));
            let url = self.s.url("/v1/images");
            return request(Method::POST, &url, &headers, fixture("photo_320x240.jpg")).await;
        }
        let (path, body) = self.prepare(r, who).await;
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        request(r.method.clone(), &self.s.url(&path), &headers, body).await
    }
}

async fn access_matrix(backend: Backend) {
    // On S3, buckets of its own: its block must not reach other tests' servers.
    let buckets = match backend {
        Backend::S3 => own_buckets("acm"),
        Backend::Fs => Vec::new(),
    };
    let mut env: Vec<(&str, &str)> = buckets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.push(("PIXGATE__SERVER__TRUSTED_PROXIES", "127.0.0.1/32"));
    let w = World::build(backend, &env).await;
    let rows = rows();
    let mut failures = Vec::new();
    let mut cells = 0;
    for r in &rows {
        for who in EVERYONE {
            let want = expected(r, who);
            let got = w.send(r, who).await;
            cells += 1;
            if got.status != want {
                failures.push(format!(
                    "{} as {who:?}: expected {want}, got {} {}",
                    r.name,
                    got.status,
                    String::from_utf8_lossy(&got.body)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cells} cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(cells, rows.len() * EVERYONE.len());
    shared_listings_show_exactly_what_was_shared(&w).await;
}

/// `?shared=1` lists image A for its share holders (directly or through the team) and never for
/// anyone else; the plain listing never shows another user's image.
async fn shared_listings_show_exactly_what_was_shared(w: &World) {
    for user in ["alice", "tv", "te", "ta", "sr", "se", "st"] {
        let shared = w
            .ok(Method::GET, "/v1/images?shared=1", user, Value::Null)
            .await;
        let ids: Vec<&str> = shared["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["id"].as_str())
            .collect();
        let holder = matches!(user, "tv" | "te" | "ta" | "sr" | "se");
        assert_eq!(ids.contains(&w.image.as_str()), holder, "{user}: {shared}");
        let own = w.ok(Method::GET, "/v1/images", user, Value::Null).await;
        assert!(
            own["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["owner"] == w.uid(user).as_str()),
            "{user}: {own}"
        );
        let cols = w
            .ok(Method::GET, "/v1/collections?shared=1", user, Value::Null)
            .await;
        assert!(
            cols["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["id"] != w.team_coll.as_str()),
            "a team's own collection is in its members' plain listing: {cols}"
        );
        let has = cols["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == w.coll.as_str());
        assert_eq!(has, holder, "{user}: {cols}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_matrix_fs() {
    access_matrix(Backend::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_matrix_garage_redis() {
    access_matrix(Backend::S3).await;
}

/// Calls `path` on `s` as `credential` with a JSON body (`Null`: none).
async fn call(s: &Server, method: Method, path: &str, credential: &str, body: Value) -> Resp {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    request(
        method,
        &s.url(path),
        &[("authorization", &bearer(credential))],
        body,
    )
    .await
}

fn id_of(r: &Resp) -> String {
    assert!(
        (200..300).contains(&r.status),
        "{} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    r.json()["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_and_membership_revocations_apply_on_every_instance() {
    // Two instances of one fleet (one bus), on buckets of their own.
    let buckets = own_buckets("acr");
    let pairs: Vec<(&str, &str)> = buckets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let env = crate::fleet::fleet_env(&unique("acr"), &pairs);
    let mut fleet = crate::fleet::start_fleet(2, &env);
    let (b, a) = (fleet.remove(1), fleet.remove(0));
    let (alice, sr, tv) = (unique("alice"), unique("sr"), unique("tv"));
    let (ta_t, alice_t) = (
        token(&unique("ta"), Role::Editor),
        token(&alice, Role::Editor),
    );
    let (sr_t, tv_t) = (token(&sr, Role::Editor), token(&tv, Role::Editor));
    let team = id_of(&call(&a, Method::POST, "/v1/teams", &ta_t, json!({"name": "T"})).await);
    for (u, role) in [(&tv, "viewer"), (&alice, "viewer")] {
        let path = format!("/v1/teams/{team}/members");
        let r = call(
            &a,
            Method::POST,
            &path,
            &ta_t,
            json!({"user": u, "role": role}),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    let img = upload_fixture(&a, &alice, "photo_320x240.jpg", "image/jpeg").await;
    let shares = format!("/v1/images/{img}/shares");
    let share = id_of(
        &call(
            &a,
            Method::POST,
            &shares,
            &alice_t,
            json!({"user": sr, "access": "read"}),
        )
        .await,
    );
    let r = call(
        &a,
        Method::POST,
        &shares,
        &alice_t,
        json!({"team": team, "access": "edit"}),
    )
    .await;
    assert_eq!(r.status, 201);
    // A share holder's computation is charged to the owner, not to the holder.
    let before = crate::limits::usage(&b, &alice_t).await["quotas"]["transforms"]["used"]
        .as_u64()
        .unwrap();
    for t in [&sr_t, &tv_t] {
        let meta = call(
            &b,
            Method::GET,
            &format!("/v1/images/{img}"),
            t,
            Value::Null,
        )
        .await;
        assert_eq!(meta.status, 200);
        let r = call(
            &b,
            Method::GET,
            &format!("/_/w:30/plain/{img}"),
            t,
            Value::Null,
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let after = crate::limits::usage(&b, &alice_t).await["quotas"]["transforms"]["used"]
        .as_u64()
        .unwrap();
    assert_eq!(
        after,
        before + 1,
        "one computation (the second was a hit), the owner's"
    );
    let holder = crate::limits::usage(&b, &sr_t).await;
    assert_eq!(holder["quotas"]["transforms"]["used"], 0, "{holder}");
    // Revoked through `a`: `b` refuses at once, also its memory hit.
    let r = call(
        &a,
        Method::DELETE,
        &format!("{shares}/{share}"),
        &alice_t,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("pixgate-fleet")
            .map(|v| v.starts_with("acked=1/1")),
        Some(true)
    );
    for path in [format!("/v1/images/{img}"), format!("/_/w:30/plain/{img}")] {
        let r = call(&b, Method::GET, &path, &sr_t, Value::Null).await;
        assert_eq!((r.status, r.code().as_str()), (404, "not_found"), "{path}");
        let r = call(&b, Method::GET, &path, &tv_t, Value::Null).await;
        assert_eq!(r.status, 200, "the team's share stands: {path}");
    }
    // A membership ended through `a`: the same.
    let path = format!("/v1/teams/{team}/members/{tv}");
    let r = call(&a, Method::DELETE, &path, &ta_t, Value::Null).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("pixgate-fleet")
            .map(|v| v.starts_with("acked=1/1")),
        Some(true)
    );
    for path in [format!("/v1/images/{img}"), format!("/_/w:30/plain/{img}")] {
        let r = call(&b, Method::GET, &path, &tv_t, Value::Null).await;
        assert_eq!(r.status, 404, "{path}");
    }
    let r = call(
        &b,
        Method::GET,
        &format!("/v1/teams/{team}"),
        &tv_t,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_erasure_cover_teams_collections_and_shares() {
    let s = Server::start(Backend::Fs);
    let (bob, carol, dave) = (unique("bob"), unique("carol"), unique("dave"));
    let (bt, ct, dt) = (
        token(&bob, Role::Editor),
        token(&carol, Role::Editor),
        token(&dave, Role::Editor),
    );
    let root = token(&unique("root"), Role::Admin);
    let post = |path: String, t: &String, body: Value| {
        let (s, t) = (&s, t.clone());
        async move { call(s, Method::POST, &path, &t, body).await }
    };
    let tb = id_of(&post("/v1/teams".into(), &bt, json!({"name": "B"})).await);
    let solo = id_of(&post("/v1/teams".into(), &bt, json!({"name": "solo"})).await);
    let tc = id_of(&post("/v1/teams".into(), &ct, json!({"name": "C"})).await);
    let r = post(
        format!("/v1/teams/{tb}/members"),
        &bt,
        json!({"user": carol, "role": "viewer"}),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = post(
        format!("/v1/teams/{tc}/members"),
        &ct,
        json!({"user": bob, "role": "editor"}),
    )
    .await;
    assert_eq!(r.status, 201);
    let img_b = upload_fixture(&s, &bob, "photo_320x240.jpg", "image/jpeg").await;
    let img_c = upload_fixture(&s, &carol, "photo_320x240.jpg", "image/jpeg").await;
    let given = id_of(
        &post(
            format!("/v1/images/{img_b}/shares"),
            &bt,
            json!({"user": carol, "access": "read"}),
        )
        .await,
    );
    let got = id_of(
        &post(
            format!("/v1/images/{img_c}/shares"),
            &ct,
            json!({"user": bob, "access": "edit"}),
        )
        .await,
    );
    let cc = id_of(&post("/v1/collections".into(), &ct, json!({"title": "carol's"})).await);
    let r = post(
        format!("/v1/collections/{cc}/items"),
        &ct,
        json!({"image": img_c}),
    )
    .await;
    assert_eq!(r.status, 201);
    id_of(
        &post(
            format!("/v1/collections/{cc}/shares"),
            &ct,
            json!({"user": bob, "access": "read"}),
        )
        .await,
    );
    let cb = id_of(
        &post(
            "/v1/collections".into(),
            &bt,
            json!({"title": "bob's", "description": "d"}),
        )
        .await,
    );
    let r = post(
        format!("/v1/collections/{cb}/items"),
        &bt,
        json!({"image": img_b}),
    )
    .await;
    assert_eq!(r.status, 201);
    let to_dave = id_of(
        &post(
            format!("/v1/collections/{cb}/shares"),
            &bt,
            json!({"user": dave, "access": "read"}),
        )
        .await,
    );
    let team_board = id_of(
        &post(
            "/v1/collections".into(),
            &bt,
            json!({"title": "C board", "team": tc}),
        )
        .await,
    );

    // The export: teams with roles, bob's collections with items, shares given and received.
    let r = call(&s, Method::GET, "/v1/me/export", &bt, Value::Null).await;
    assert_eq!(r.status, 200);
    let files = unzip(&r.body);
    let m: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let mut teams: Vec<(String, String)> = m["teams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_owned(),
                t["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    teams.sort();
    let mut want = vec![
        (tb.clone(), "admin".to_owned()),
        (solo.clone(), "admin".into()),
        (tc.clone(), "editor".into()),
    ];
    want.sort();
    assert_eq!(teams, want);
    let cols = m["collections"].as_array().unwrap();
    assert_eq!(
        cols.len(),
        1,
        "bob's own; the team's board is the team's: {cols:?}"
    );
    assert_eq!(
        (cols[0]["id"].as_str(), &cols[0]["items"]),
        (Some(cb.as_str()), &json!([img_b]))
    );
    let ids = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = m[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let mut want = vec![given.clone(), to_dave.clone()];
    want.sort();
    assert_eq!(ids("shares_given"), want);
    assert!(ids("shares_received").contains(&got));
    assert_eq!(
        ids("shares_received").len(),
        2,
        "img_c and carol's collection"
    );

    // The erasure.
    let r = call(&s, Method::DELETE, "/v1/me", &bt, Value::Null).await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let get = |path: String, t: &String| {
        let (s, t) = (&s, t.clone());
        async move { call(s, Method::GET, &path, &t, Value::Null).await }
    };
    assert_eq!(get(format!("/v1/images/{img_b}"), &ct).await.status, 404);
    assert_eq!(
        get(format!("/v1/images/{img_c}"), &ct).await.status,
        200,
        "other users' images stay"
    );
    let shares = get(format!("/v1/images/{img_c}/shares"), &ct).await.json();
    assert_eq!(shares["items"], json!([]), "the share to bob went with him");
    let shares = get(format!("/v1/collections/{cc}/shares"), &ct)
        .await
        .json();
    assert_eq!(shares["items"], json!([]));
    let team = get(format!("/v1/teams/{tb}"), &ct).await;
    assert_eq!(team.status, 200, "a team with members left stays");
    let members: Vec<String> = team.json()["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(members, vec![carol.clone()]);
    assert_eq!(
        get(format!("/v1/teams/{solo}"), &root).await.status,
        404,
        "an emptied team is deleted"
    );
    let team = get(format!("/v1/teams/{tc}"), &ct).await.json();
    assert_eq!(team["members"].as_array().unwrap().len(), 1);
    let board = get(format!("/v1/collections/{team_board}"), &ct).await;
    assert_eq!(board.status, 200, "the team's collection stays");
    assert_eq!(board.json()["created_by"], "", "without bob's id");
    // Nor is bob's id left in the memberships he made (carol was added to his team by him).
    let hash = |u: &str| hex::encode(sha2::Sha256::digest(u.as_bytes()));
    let record = s.dir.path().join(format!(
        "data/originals/teams/{tb}/members/{}.json",
        hash(&carol)
    ));
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(!text.contains(&bob), "{text}");
    let team_record = s
        .dir
        .path()
        .join(format!("data/originals/teams/{tb}/team.json"));
    assert!(!std::fs::read_to_string(team_record).unwrap().contains(&bob));
    assert_eq!(get(format!("/v1/collections/{cb}"), &dt).await.status, 404);
    assert_eq!(
        get(format!("/v1/collections/{cb}"), &root).await.status,
        404,
        "bob's collection is gone"
    );
    assert_eq!(
        get("/v1/collections?shared=1".into(), &dt).await.json()["items"],
        json!([])
    );
    for path in [
        "/v1/teams",
        "/v1/collections",
        "/v1/images?shared=1",
        "/v1/collections?shared=1",
    ] {
        assert_eq!(
            get(path.into(), &bt).await.json()["items"],
            json!([]),
            "{path}"
        );
    }
    // Deleting an image takes it out of every collection.
    let r = call(
        &s,
        Method::DELETE,
        &format!("/v1/images/{img_c}"),
        &ct,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        get(format!("/v1/collections/{cc}"), &ct).await.json()["items"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_access_inputs_get_stable_errors() {
    let s = Server::start_with(Backend::Fs, &[("PIXGATE__AUDIT__FLUSH_SECONDS", "1")]);
    let (ann, bob) = (unique("ann"), unique("bob"));
    let (at, bt) = (token(&ann, Role::Editor), token(&bob, Role::Editor));
    let viewer = token(&unique("vic"), Role::Viewer);
    let team = id_of(&call(&s, Method::POST, "/v1/teams", &at, json!({"name": "A"})).await);
    let bobs = id_of(&call(&s, Method::POST, "/v1/teams", &bt, json!({"name": "B"})).await);
    let img = upload_fixture(&s, &ann, "photo_320x240.jpg", "image/jpeg").await;
    let coll = id_of(
        &call(
            &s,
            Method::POST,
            "/v1/collections",
            &at,
            json!({"title": "t"}),
        )
        .await,
    );
    let cases: Vec<(Method, String, &String, Value, u16, &str)> = vec![
        (
            Method::POST,
            "/v1/teams".into(),
            &at,
            json!({}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/teams".into(),
            &at,
            json!({"name": "x".repeat(101)}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/teams".into(),
            &at,
            json!({"name": 7}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            format!("/v1/teams/{team}/members"),
            &at,
            json!({"user": "u", "role": "owner"}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            format!("/v1/teams/{team}/members"),
            &at,
            json!({"user": "", "role": "viewer"}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            format!("/v1/teams/{team}/members"),
            &at,
            json!({"user": ann, "role": "viewer"}),
            409,
            "conflict",
        ),
        (
            Method::DELETE,
            format!("/v1/teams/{team}/members/{}", ann),
            &at,
            Value::Null,
            409,
            "conflict",
        ),
        (
            Method::GET,
            "/v1/teams/team_..%2F..%2Fetc".into(),
            &at,
            Value::Null,
            404,
            "not_found",
        ),
        (
            Method::GET,
            format!("/v1/teams/{bobs}"),
            &at,
            Value::Null,
            404,
            "not_found",
        ),
        (
            Method::POST,
            format!("/v1/images/{img}/shares"),
            &at,
            json!({"user": "u", "team": team, "access": "read"}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            format!("/v1/images/{img}/shares"),
            &at,
            json!({"user": "u", "access": "owner"}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            format!("/v1/images/{img}/shares"),
            &at,
            json!({"user": ann, "access": "read"}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            format!("/v1/images/{img}/shares"),
            &at,
            json!({"team": bobs, "access": "read"}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            format!("/v1/images/{img}/shares"),
            &at,
            json!({"team": "team_000000000000000000000000", "access": "read"}),
            400,
            "invalid_field",
        ),
        (
            Method::DELETE,
            format!("/v1/images/{img}/shares/shr_000000000000000000000000"),
            &at,
            Value::Null,
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/collections".into(),
            &at,
            json!({"title": " "}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/collections".into(),
            &at,
            json!({"title": "t", "team": bobs}),
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/collections".into(),
            &viewer,
            json!({"title": "t"}),
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/collections".into(),
            &at,
            json!({"title": "t", "description": "x".repeat(2001)}),
            400,
            "invalid_field",
        ),
        (
            Method::PATCH,
            format!("/v1/collections/{coll}"),
            &at,
            json!({}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            format!("/v1/collections/{coll}/items"),
            &at,
            json!({"image": "nope"}),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            format!("/v1/collections/{coll}/items"),
            &at,
            json!({"image": img, "position": -1}),
            400,
            "invalid_field",
        ),
        (
            Method::DELETE,
            format!("/v1/collections/{coll}/items/{img}"),
            &at,
            Value::Null,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/images?shared=maybe".into(),
            &at,
            Value::Null,
            400,
            "invalid_field",
        ),
        (
            Method::GET,
            "/v1/images?shared=1&cursor=..%2F".into(),
            &at,
            Value::Null,
            400,
            "invalid_field",
        ),
        (
            Method::PUT,
            "/v1/teams".into(),
            &at,
            Value::Null,
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/v1/collections/col_zz".into(),
            &at,
            Value::Null,
            404,
            "not_found",
        ),
    ];
    for (method, path, t, body, status, code) in cases {
        let r = call(&s, method.clone(), &path, t, body.clone()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{method} {path} {body}"
        );
    }
    // An image placed twice moves instead of duplicating; positions are honoured.
    let other = upload_fixture(&s, &ann, "photo_320x240.jpg", "image/jpeg").await;
    let items = format!("/v1/collections/{coll}/items");
    for (image, pos, status) in [
        (&img, None, 201),
        (&other, Some(0), 201),
        (&img, Some(0), 200),
    ] {
        let r = call(
            &s,
            Method::POST,
            &items,
            &at,
            json!({"image": image, "position": pos}),
        )
        .await;
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    }
    let c = call(
        &s,
        Method::GET,
        &format!("/v1/collections/{coll}"),
        &at,
        Value::Null,
    )
    .await
    .json();
    let order: Vec<&str> = c["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image"].as_str().unwrap())
        .collect();
    assert_eq!(order, vec![img.as_str(), other.as_str()]);
    // An image's owner takes it out of a collection they no longer reach.
    let (bob_img, bob_coll) = (
        upload_fixture(&s, &bob, "photo_320x240.jpg", "image/jpeg").await,
        format!("/v1/collections/{coll}"),
    );
    let share = id_of(
        &call(
            &s,
            Method::POST,
            &format!("{bob_coll}/shares"),
            &at,
            json!({"user": bob, "access": "edit"}),
        )
        .await,
    );
    let r = call(
        &s,
        Method::POST,
        &format!("{bob_coll}/items"),
        &bt,
        json!({"image": bob_img}),
    )
    .await;
    assert_eq!(r.status, 201);
    let mine = call(
        &s,
        Method::GET,
        &format!("/v1/images/{bob_img}"),
        &bt,
        Value::Null,
    )
    .await;
    assert_eq!(
        mine.json()["collections"],
        json!([coll]),
        "the owner sees where it is"
    );
    let r = call(
        &s,
        Method::DELETE,
        &format!("{bob_coll}/shares/{share}"),
        &at,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        call(&s, Method::GET, &bob_coll, &bt, Value::Null)
            .await
            .status,
        404
    );
    let item = format!("{bob_coll}/items/{bob_img}");
    let r = call(&s, Method::DELETE, &item, &at, Value::Null).await;
    assert_eq!(r.status, 204, "the collection's owner may too");
    let r = call(
        &s,
        Method::POST,
        &format!("{bob_coll}/shares"),
        &at,
        json!({"user": bob, "access": "edit"}),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = call(
        &s,
        Method::POST,
        &format!("{bob_coll}/items"),
        &bt,
        json!({"image": bob_img}),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = call(
        &s,
        Method::DELETE,
        &format!(
            "{bob_coll}/shares/{}",
            r.json()["id"].as_str().unwrap_or("")
        ),
        &at,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 404, "not a share id");
    let listed = call(
        &s,
        Method::GET,
        &format!("{bob_coll}/shares"),
        &at,
        Value::Null,
    )
    .await
    .json();
    let sid = listed["items"][0]["id"].as_str().unwrap().to_owned();
    let r = call(
        &s,
        Method::DELETE,
        &format!("{bob_coll}/shares/{sid}"),
        &at,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204);
    let r = call(&s, Method::DELETE, &item, &bt, Value::Null).await;
    assert_eq!(
        r.status, 204,
        "the image's owner, without access to the collection"
    );
    let r = call(&s, Method::DELETE, &item, &bt, Value::Null).await;
    assert_eq!(r.status, 404, "gone already");
    // An admin names an existing team, never a path.
    let root = token(&unique("root"), Role::Admin);
    let r = call(
        &s,
        Method::POST,
        "/v1/collections",
        &root,
        json!({"title": "t", "team": format!("{team}/members/x")}),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    assert_eq!(
        call(
            &s,
            Method::GET,
            &format!("/v1/teams/{team}"),
            &at,
            Value::Null
        )
        .await
        .status,
        200
    );
    // Every new route is audited, refusals included: ann's own activity names them.
    let want = [
        "team.create",
        "team.member.add",
        "team.member.remove",
        "team.read",
        "share.create",
        "share.revoke",
        "collection.create",
        "collection.update",
        "collection.item.add",
        "collection.item.remove",
        "collection.read",
    ];
    let mut actions: Vec<String> = Vec::new();
    for _ in 0..100 {
        let r = call(
            &s,
            Method::GET,
            "/v1/me/activity?since=0&limit=1000",
            &at,
            Value::Null,
        )
        .await;
        assert_eq!(r.status, 200);
        actions = r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
            .collect();
        if want.iter().all(|w| actions.iter().any(|a| a == w)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for w in want {
        assert!(actions.iter().any(|a| a == w), "{w} not in {actions:?}");
    }
}
