//! Identity and authorization against real servers (Garage + Redis): the hostile JWT matrix
//! (RS256 PEM, JWKS file, JWKS URL with rotation), API key lifecycle, token revocation, and the
//! ownership matrix over every route.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pixgate::auth::Role;
use serde_json::{Value, json};

use crate::harness::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A user id no other test uses (the S3 buckets are shared by the whole run).
pub fn unique(name: &str) -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    format!("{name}-{}", hex::encode(b))
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "role": "editor", "iat": now(), "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn rsa_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture(name)).unwrap()
}

async fn list_with(s: &Server, token: &str) -> Resp {
    get(&s.url("/v1/images"), &[("authorization", &bearer(token))]).await
}

#[tokio::test]
async fn hostile_jwt_matrix_is_refused() {
    let pem = fixture_path("jwt_rsa_public.pem");
    let jwks = fixture_path("jwks.json");
    let s = Server::start_with(
        Backend::S3,
        &[
            ("PIXGATE__AUTH__JWT_HS256_SECRET", ""),
            ("PIXGATE__AUTH__JWT_PUBLIC_KEY_FILE", &pem),
            ("PIXGATE__AUTH__JWT_PUBLIC_KEY_ALGORITHM", "RS256"),
            ("PIXGATE__AUTH__JWT_PUBLIC_KEY_KID", "pem-1"),
            ("PIXGATE__AUTH__JWKS_FILE", &jwks),
        ],
    );
    let rsa = rsa_key("jwt_rsa_private.pem");
    let ec = EncodingKey::from_ec_pem(&fixture("jwt_ec_private.pem")).unwrap();
    let stranger = rsa_key("jwt_rsa2_private.pem");
    let good = claims(&unique("alice"));
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = good.as_object().unwrap().clone();
        f(&mut c);
        sign(Algorithm::RS256, Some("pem-1"), &Value::Object(c), &rsa)
    };

    // Accepted: each configured key, and an expiry within the 30 s leeway.
    for (name, t) in [
        (
            "RS256 PEM",
            sign(Algorithm::RS256, Some("pem-1"), &good, &rsa),
        ),
        (
            "RS256 JWKS",
            sign(Algorithm::RS256, Some("rsa-1"), &good, &rsa),
        ),
        (
            "ES256 JWKS",
            sign(Algorithm::ES256, Some("ec-1"), &good, &ec),
        ),
        (
            "within leeway",
            with(&|c| drop(c.insert("exp".into(), json!(now() - 10)))),
        ),
    ] {
        let r = list_with(&s, &t).await;
        assert_eq!(
            r.status,
            200,
            "{name}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }

    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"pem-1"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    // Algorithm confusion: HS256 keyed with the RSA public key the server is configured with.
    let confused = sign(
        Algorithm::HS256,
        Some("pem-1"),
        &good,
        &EncodingKey::from_secret(&fixture("jwt_rsa_public.pem")),
    );
    let mut jku = Header::new(Algorithm::RS256);
    jku.kid = Some("rsa-2".into());
    jku.jku = Some("https://attacker.example/jwks.json".into());
    let jku = jsonwebtoken::encode(&jku, &good, &stranger).unwrap();
    // The same, signed with a key the server does know: refused for the header alone.
    let mut jku_known = Header::new(Algorithm::RS256);
    jku_known.kid = Some("pem-1".into());
    jku_known.jku = Some("https://attacker.example/jwks.json".into());
    let jku_known = jsonwebtoken::encode(&jku_known, &good, &rsa).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none, "invalid_token"),
        ("HS256 with the RSA public key", confused, "invalid_token"),
        (
            "wrong iss",
            with(&|c| drop(c.insert("iss".into(), json!("https://evil.example/")))),
            "invalid_token",
        ),
        (
            "wrong aud",
            with(&|c| drop(c.insert("aud".into(), json!("someone-else")))),
            "invalid_token",
        ),
        (
            "missing aud",
            with(&|c| drop(c.remove("aud"))),
            "invalid_token",
        ),
        (
            "missing sub",
            with(&|c| drop(c.remove("sub"))),
            "invalid_token",
        ),
        (
            "missing exp",
            with(&|c| drop(c.remove("exp"))),
            "invalid_token",
        ),
        (
            "exp as a string",
            with(&|c| drop(c.insert("exp".into(), json!((now() + 600).to_string())))),
            "invalid_token",
        ),
        (
            "expired beyond leeway",
            with(&|c| drop(c.insert("exp".into(), json!(now() - 120)))),
            "token_expired",
        ),
        (
            "nbf in the future",
            with(&|c| drop(c.insert("nbf".into(), json!(now() + 600)))),
            "invalid_token",
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, Some("nope"), &good, &rsa),
            "invalid_token",
        ),
        (
            "no kid while the PEM key has one",
            sign(Algorithm::RS256, None, &good, &rsa),
            "invalid_token",
        ),
        ("jku to an attacker's key set", jku, "invalid_token"),
        ("jku on a known key", jku_known, "invalid_token"),
        (
            "ES256 header on an RSA kid",
            sign(Algorithm::ES256, Some("rsa-1"), &good, &ec),
            "invalid_token",
        ),
        ("garbage", "a.b.c".into(), "invalid_token"),
    ];
    for (name, t, code) in cases {
        let r = list_with(&s, &t).await;
        assert_eq!((r.status, r.code().as_str()), (401, code), "{name}");
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(www.contains("error=\"invalid_token\""), "{name}: {www}");
    }
    let r = get(&s.url("/v1/images"), &[]).await;
    assert_eq!((r.status, r.code().as_str()), (401, "missing_token"));
}

/// A minimal JWKS endpoint that counts its fetches.
struct JwksServer {
    url: String,
    doc: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

fn jwks_server(initial: &str) -> JwksServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let doc = Arc::new(Mutex::new(initial.to_owned()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (d, f) = (doc.clone(), fetches.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            f.fetch_add(1, Ordering::SeqCst);
            let body = d.lock().unwrap().clone();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    JwksServer { url, doc, fetches }
}

#[tokio::test]
async fn jwks_url_refreshes_once_for_a_rotated_key_and_rate_limits_unknown_kids() {
    let idp = jwks_server(&String::from_utf8_lossy(&fixture("jwks.json")));
    let s = Server::start_with(
        Backend::S3,
        &[
            ("PIXGATE__AUTH__JWT_HS256_SECRET", ""),
            ("PIXGATE__AUTH__JWKS_URL", &idp.url),
        ],
    );
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1, "fetched at start");
    let c = claims(&unique("alice"));
    let old = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &c,
        &rsa_key("jwt_rsa_private.pem"),
    );
    assert_eq!(list_with(&s, &old).await.status, 200);
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "a known kid needs no fetch"
    );

    // The IdP rotates: a token with the new kid makes pixgate refetch once.
    *idp.doc.lock().unwrap() = String::from_utf8_lossy(&fixture("jwks_rotated.json")).into();
    let new = sign(
        Algorithm::RS256,
        Some("rsa-2"),
        &c,
        &rsa_key("jwt_rsa2_private.pem"),
    );
    assert_eq!(list_with(&s, &new).await.status, 200);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);

    // A storm of unknown kids within the minute: no further fetches.
    for i in 0..5 {
        let t = sign(
            Algorithm::RS256,
            Some(&format!("ghost-{i}")),
            &c,
            &rsa_key("jwt_rsa2_private.pem"),
        );
        assert_eq!(list_with(&s, &t).await.status, 401);
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        2,
        "refetch is rate limited"
    );
}

#[tokio::test]
async fn api_key_lifecycle_end_to_end() {
    let s = Server::start(Backend::S3);
    let alice = unique("alice");
    let jwt = token(&alice, Role::Editor);
    let r = request(
        Method::POST,
        &s.url("/v1/api-keys"),
        &[("authorization", &bearer(&jwt))],
        Bytes::from(r#"{"name":"ci","scopes":["read","upload"]}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let created = r.json();
    let raw = created["key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    assert!(raw.starts_with("pxg_live_") && raw.len() == 9 + 43, "{raw}");
    assert_eq!(created["scopes"], json!(["read", "upload"]));

    // The key works for what it may do, as its owner.
    let r = upload(&s, &raw, "image/jpeg", fixture("photo_320x240.jpg")).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["owner"], json!(alice));
    assert_eq!(list_with(&s, &raw).await.status, 200);
    // …and not for what it may not.
    let r = request(
        Method::POST,
        &s.url("/v1/api-keys"),
        &[("authorization", &bearer(&raw))],
        Bytes::new(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "insufficient_scope"));
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    // Nobody mints keys for someone else, admins included.
    let admin = token(&unique("root"), Role::Admin);
    let r = request(
        Method::POST,
        &s.url(&format!("/v1/api-keys?owner={alice}")),
        &[("authorization", &bearer(&admin))],
        Bytes::new(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_field"));

    // Listed with its last use (recorded in the background).
    let mut last_used = Value::Null;
    for _ in 0..50 {
        let r = get(&s.url("/v1/api-keys"), &[("authorization", &bearer(&jwt))]).await;
        assert_eq!(r.status, 200);
        let items = r.json()["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["id"], json!(key_id));
        assert!(items[0].get("key").is_none() && items[0].get("hash").is_none());
        last_used = items[0]["last_used_at"].clone();
        if last_used.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last_used.is_string(), "last use never recorded");

    // The raw key is nowhere: not in any object of either bucket, not in the log.
    let secret = &raw["pxg_live_".len()..];
    let client = s3_client().await;
    for (key, body) in s3_objects(&client).await {
        assert!(
            !String::from_utf8_lossy(&body).contains(secret) && !key.contains(secret),
            "raw API key stored in {key}"
        );
    }
    assert!(!s.log().contains(secret), "raw API key in the log");

    // Revoked: refused at once on this instance, gone from the list.
    let r = request(
        Method::DELETE,
        &s.url(&format!("/v1/api-keys/{key_id}")),
        &[("authorization", &bearer(&jwt))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
    let r = list_with(&s, &raw).await;
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_token"));
    let r = get(&s.url("/v1/api-keys"), &[("authorization", &bearer(&jwt))]).await;
    assert_eq!(r.json()["items"], json!([]));
    // A second instance sharing the store refuses it too (it never cached it).
    let other = Server::start(Backend::S3);
    assert_eq!(list_with(&other, &raw).await.status, 401);
    // Malformed keys are refused without a lookup.
    assert_eq!(list_with(&s, "pxg_live_nope").await.code(), "invalid_token");
}

#[tokio::test]
async fn revoke_tokens_voids_old_jwts_and_every_api_key() {
    // Revocation cut-offs include the clock leeway; keep it short to mint a newer token.
    let s = Server::start_with(Backend::S3, &[("PIXGATE__AUTH__LEEWAY_SECS", "1")]);
    let mallory = unique("mallory");
    let old = token(&mallory, Role::Editor);
    let r = request(
        Method::POST,
        &s.url("/v1/api-keys"),
        &[("authorization", &bearer(&old))],
        Bytes::new(),
    )
    .await;
    let key = r.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(list_with(&s, &key).await.status, 200);
    let admin = token(&unique("root"), Role::Admin);
    let path = format!("/v1/admin/users/{mallory}/revoke-tokens");
    let r = request(
        Method::POST,
        &s.url(&path),
        &[("authorization", &bearer(&old))],
        Bytes::new(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    let r = request(
        Method::POST,
        &s.url(&path),
        &[("authorization", &bearer(&admin))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["api_keys_revoked"], json!(1));
    for credential in [&old, &key] {
        let r = list_with(&s, credential).await;
        assert_eq!((r.status, r.code().as_str()), (401, "invalid_token"));
    }
    // Durable: a fresh instance refuses the old token too.
    let other = Server::start(Backend::S3);
    assert_eq!(list_with(&other, &old).await.status, 401);
    // Tokens issued after the revocation (plus leeway; iat has second resolution) work.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        list_with(&s, &token(&mallory, Role::Editor)).await.status,
        200
    );
}

/// Who calls, in the ownership matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Owner,
    Other,
    Admin,
    /// The owner, but with the viewer role.
    Viewer,
    Nobody,
    /// The owner's API key with only the `transform` scope.
    NarrowKey,
    RevokedToken,
    RevokedKey,
}

#[tokio::test]
async fn ownership_matrix_over_every_route() {
    let s = Server::start(Backend::S3);
    let alice = unique("alice");
    let owner = token(&alice, Role::Editor);
    let key_with = |scopes: &'static str| {
        let s = &s;
        let owner = owner.clone();
        async move {
            let r = request(
                Method::POST,
                &s.url("/v1/api-keys"),
                &[("authorization", &bearer(&owner))],
                Bytes::from(format!(r#"{{"scopes":{scopes}}}"#)),
            )
            .await;
            assert_eq!(r.status, 201);
            let j = r.json();
            (
                j["key"].as_str().unwrap().to_owned(),
                j["id"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (narrow, _) = key_with(r#"["transform"]"#).await;
    let (revoked_key, revoked_id) =
        key_with(r#"["read","transform","upload","delete","manage"]"#).await;
    let r = request(
        Method::DELETE,
        &s.url(&format!("/v1/api-keys/{revoked_id}")),
        &[("authorization", &bearer(&owner))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
    // A user whose tokens an admin revoked; the token predates the revocation.
    let carol = unique("carol");
    let revoked_token = token(&carol, Role::Admin);
    let admin = token(&unique("root"), Role::Admin);
    let r = request(
        Method::POST,
        &s.url(&format!("/v1/admin/users/{carol}/revoke-tokens")),
        &[("authorization", &bearer(&admin))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);

    let image = upload_fixture(&s, &alice, "photo_320x240.jpg", "image/jpeg").await;
    let credential = |w: Who| -> Option<String> {
        Some(match w {
            Who::Owner => owner.clone(),
            Who::Other => token(&unique("bob"), Role::Editor),
            Who::Admin => admin.clone(),
            Who::Viewer => token(&alice, Role::Viewer),
            Who::Nobody => return None,
            Who::NarrowKey => narrow.clone(),
            Who::RevokedToken => revoked_token.clone(),
            Who::RevokedKey => revoked_key.clone(),
        })
    };
    use Who::*;
    let everyone = [
        Owner,
        Other,
        Admin,
        Viewer,
        Nobody,
        NarrowKey,
        RevokedToken,
        RevokedKey,
    ];
    // route, then the expected status for each of `everyone`, in order.
    let table: Vec<(&str, [u16; 8])> = vec![
        ("upload", [201, 201, 201, 403, 401, 403, 401, 401]),
        ("list", [200, 200, 200, 200, 401, 403, 401, 401]),
        ("get", [200, 404, 200, 200, 401, 403, 401, 401]),
        ("patch", [200, 404, 200, 403, 401, 403, 401, 401]),
        ("sign_url", [200, 404, 200, 200, 401, 200, 401, 401]),
        ("bearer_transform", [200, 404, 200, 200, 401, 200, 401, 401]),
        ("delete", [204, 404, 204, 403, 401, 403, 401, 401]),
        ("create_key", [201, 201, 201, 201, 401, 403, 401, 401]),
        ("list_keys", [200, 200, 200, 200, 401, 403, 401, 401]),
        (
            "revoke_missing_key",
            [404, 404, 404, 404, 401, 403, 401, 401],
        ),
        ("admin_revoke", [403, 403, 200, 403, 401, 403, 401, 401]),
    ];
    let mut failures = Vec::new();
    for (route, expected) in &table {
        for (who, want) in everyone.iter().zip(expected) {
            let auth = credential(*who).map(|c| bearer(&c));
            let mut headers: Vec<(&str, &str)> = Vec::new();
            if let Some(a) = &auth {
                headers.push(("authorization", a));
            }
            // Destructive calls get an image of their own.
            let target = if *route == "delete" {
                upload_fixture(&s, &alice, "photo_320x240.jpg", "image/jpeg").await
            } else {
                image.clone()
            };
            let (method, path, body, ct) = match *route {
                "upload" => (
                    Method::POST,
                    "/v1/images".to_owned(),
                    fixture("photo_320x240.jpg"),
                    "image/jpeg",
                ),
                "list" => (Method::GET, "/v1/images".into(), Bytes::new(), ""),
                "get" => (
                    Method::GET,
                    format!("/v1/images/{target}"),
                    Bytes::new(),
                    "",
                ),
                "patch" => (
                    Method::PATCH,
                    format!("/v1/images/{target}"),
                    Bytes::from(r#"{"title":"t"}"#),
                    "application/json",
                ),
                "sign_url" => (
                    Method::POST,
                    format!("/v1/images/{target}/url"),
                    Bytes::from(r#"{"options":"rs:fit:40:40"}"#),
                    "application/json",
                ),
                "bearer_transform" => (
                    Method::GET,
                    format!("/_/rs:fit:40:40/plain/{target}@png"),
                    Bytes::new(),
                    "",
                ),
                "delete" => (
                    Method::DELETE,
                    format!("/v1/images/{target}"),
                    Bytes::new(),
                    "",
                ),
                "create_key" => (
                    Method::POST,
                    "/v1/api-keys".into(),
                    Bytes::from(r#"{"scopes":["read"]}"#),
                    "application/json",
                ),
                "list_keys" => (Method::GET, "/v1/api-keys".into(), Bytes::new(), ""),
                "revoke_missing_key" => (
                    Method::DELETE,
                    "/v1/api-keys/key_000000000000000000000000".into(),
                    Bytes::new(),
                    "",
                ),
                "admin_revoke" => (
                    Method::POST,
                    "/v1/admin/users/zed/revoke-tokens".into(),
                    Bytes::new(),
                    "",
                ),
                other => panic!("{other}"),
            };
            if !ct.is_empty() {
                headers.push(("content-type", ct));
            }
            let r = request(method, &s.url(&path), &headers, body).await;
            if r.status != *want {
                failures.push(format!(
                    "{route} as {who:?}: got {} want {want} ({})",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
            }
            // 401s always tell the client how to authenticate.
            if r.status == 401 {
                assert!(r.header("www-authenticate").is_some(), "{route} {who:?}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `allowed_cidrs`: a key bound to networks works from them (the client address derived from
/// trusted proxies, IPv4 and IPv6) and is `401 invalid_token` elsewhere, counted as a failed
/// authentication (the per-IP limit then refuses even valid credentials); bad networks are
/// `400`; the list shows the networks.
#[tokio::test]
async fn api_keys_bound_to_networks_work_only_from_them() {
    let s = Server::start_with(
        Backend::Fs,
        &[
            ("PIXGATE__SERVER__TRUSTED_PROXIES", "127.0.0.1/32"),
            ("PIXGATE__LIMITS__AUTH_FAILURES_PER_IP", "3"),
        ],
    );
    let hal = unique("hal");
    let jwt = token(&hal, Role::Editor);
    let create = |body: &'static str| {
        let (url, auth) = (s.url("/v1/api-keys"), bearer(&jwt));
        async move {
            request(
                Method::POST,
                &url,
                &[("authorization", &auth)],
                Bytes::from(body),
            )
            .await
        }
    };
    for bad in [
        r#"{"allowed_cidrs":["10.0.0.0/33"]}"#,
        r#"{"allowed_cidrs":["nope"]}"#,
        r#"{"allowed_cidrs":"10.0.0.0/8"}"#,
        r#"{"allowed_cidrs":[7]}"#,
    ] {
        let r = create(bad).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_field"),
            "{bad}"
        );
    }
    let many: Vec<String> = (0..33).map(|i| format!("\"10.{i}.0.0/16\"")).collect();
    let body = format!("{{\"allowed_cidrs\":[{}]}}", many.join(","));
    let r = request(
        Method::POST,
        &s.url("/v1/api-keys"),
        &[("authorization", &bearer(&jwt))],
        Bytes::from(body),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_field"),
        "33 networks"
    );
    let r =
        create(r#"{"scopes":["read"],"allowed_cidrs":["198.51.100.9/24","2001:db8::1"]}"#).await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["allowed_cidrs"],
        json!(["198.51.100.0/24", "2001:db8::1/128"]),
        "normalised"
    );
    let key = r.json()["key"].as_str().unwrap().to_owned();
    let from = |ip: &'static str| {
        let (url, auth) = (s.url("/v1/images"), bearer(&key));
        async move {
            let mut h = vec![("authorization", auth.as_str())];
            if !ip.is_empty() {
                h.push(("x-forwarded-for", ip));
            }
            get(&url, &h).await
        }
    };
    assert_eq!(from("198.51.100.200").await.status, 200);
    assert_eq!(from("2001:db8::1").await.status, 200);
    // The proxy itself (no forwarded address) and other clients: refused, as a failed login.
    for ip in ["", "203.0.113.5", "2001:db8::2"] {
        let r = from(ip).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "invalid_token"),
            "{ip:?}"
        );
    }
    // 203.0.113.5 failed once; two more failures from it and even the owner's JWT is refused
    // there, while the key's own network is unaffected.
    for _ in 0..2 {
        assert_eq!(from("203.0.113.5").await.status, 401);
    }
    let r = get(
        &s.url("/v1/images"),
        &[
            ("authorization", &bearer(&jwt)),
            ("x-forwarded-for", "203.0.113.5"),
        ],
    )
    .await;
    assert_eq!(
        r.status, 429,
        "failed authentications counted per client address"
    );
    assert_eq!(from("198.51.100.7").await.status, 200);
    // Listed with its networks.
    let r = get(&s.url("/v1/api-keys"), &[("authorization", &bearer(&jwt))]).await;
    assert_eq!(r.json()["items"][0]["allowed_cidrs"][0], "198.51.100.0/24");
}
