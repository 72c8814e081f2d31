//! `pixgate import` against a real Garage (a source bucket of generated originals, killed
//! half-way and run again) and a directory, and legacy `s3://` source URLs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use bytes::Bytes;
use http::Method;
use pixgate::auth::Role;
use serde_json::Value;

use crate::audit::unzip;
use crate::harness::*;
use crate::identity::unique;

/// A `side`×`side` PNG of one colour from `seed`: every generated original is distinct.
fn png(seed: u32, side: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, side, side);
        enc.set_color(png::ColorType::Rgb);
        let mut w = enc.write_header().unwrap();
        let px = [(seed & 0xff) as u8, ((seed >> 8) & 0xff) as u8, 7];
        let data: Vec<u8> = (0..side * side).flat_map(|_| px).collect();
        w.write_image_data(&data).unwrap();
    }
    out
}

async fn put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) {
    s3_put(client, bucket, key, body).await;
}

fn import_cmd(
    env: &[(String, String)],
    dir: &std::path::Path,
    args: &[&str],
) -> std::process::Command {
    let mut cmd = pixgate_cmd(env);
    cmd.arg("import").args(args).current_dir(dir);
    cmd
}

/// The JSON summary line of an import's stdout.
fn summary(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("{\"summary\""))
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}"));
    serde_json::from_str::<Value>(line).unwrap()["summary"].clone()
}

async fn all_images(s: &Server, owner: &str) -> Vec<Value> {
    let t = token(owner, Role::Editor);
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/images?limit=100&cursor={c}"),
            None => "/v1/images?limit=100".to_owned(),
        };
        let r = get(&s.url(&q), &[("authorization", &bearer(&t))]).await;
        assert_eq!(r.status, 200);
        let j = r.json();
        out.extend(j["items"].as_array().unwrap().iter().cloned());
        match j["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// 2,000 generated originals under `users/{owner}/…` plus corrupt ones, a non-image, a pixel
/// bomb and a key outside the pattern. The import is killed (SIGKILL) part-way and run again:
/// every valid object is imported exactly once with its owner, every invalid one is reported
/// with its code; the owners list, transform, export and erase them; a rerun after erasure
/// imports nothing again; legacy `s3://` URLs serve imported images and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_imports_exactly_once_across_a_kill_and_serves_legacy_urls() {
    let buckets = own_buckets("imp");
    let src = format!("imp-src-{}", unique("s").to_lowercase());
    create_bucket(&src);
    let client = s3_client().await;
    let owners: Vec<String> = (0..5).map(|i| unique(&format!("own{i}"))).collect();
    let mut valid: BTreeMap<String, String> = BTreeMap::new(); // key → owner
    let mut puts = Vec::new();
    for n in 0..2000u32 {
        let owner = owners[(n % 5) as usize].clone();
        let key = format!("users/{owner}/{n:05}.png");
        valid.insert(key.clone(), owner);
        let (client, src) = (client.clone(), src.clone());
        puts.push(tokio::spawn(async move {
            put(&client, &src, &key, png(n, 8)).await
        }));
        if puts.len() == 64 {
            for p in puts.drain(..) {
                p.await.unwrap();
            }
        }
    }
    for p in puts {
        p.await.unwrap();
    }
    let o0 = owners[0].clone();
    let broken = png(1, 8);
    let invalid: [(String, Vec<u8>, &str); 5] = [
        (
            format!("users/{o0}/broken-a.png"),
            broken[..broken.len() - 20].to_vec(),
            "invalid_image",
        ),
        (
            format!("users/{o0}/broken-b.png"),
            broken[..30].to_vec(),
            "invalid_image",
        ),
        (
            format!("users/{o0}/notes.txt"),
            b"not an image\n".to_vec(),
            "unsupported_media_type",
        ),
        (
            format!("users/{o0}/bomb.png"),
            fixture("bomb_30000x30000.png").to_vec(),
            "too_many_pixels",
        ),
        (
            "misc/stray.png".to_owned(),
            png(9, 8),
            "owner_pattern_mismatch",
        ),
    ];
    for (k, b, _) in &invalid {
        put(&client, &src, k, b.clone()).await;
    }

    let legacy = format!("s3://{src}/users/ owner_pattern=users/{{owner}}/**");
    let mut extra: Vec<(&str, &str)> = buckets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    extra.push(("PIXGATE__SOURCES__LEGACY", &legacy));
    let s = Server::start_with(Backend::S3, &extra);
    let env = server_env(Backend::S3, s.dir.path(), &extra);
    let source = format!("s3://{src}/");
    let args = [
        "--owner-pattern",
        "users/{owner}/**",
        "--jobs",
        "4",
        "--operator",
        "ops-test",
    ];
    let mut all_args = vec![source.as_str()];
    all_args.extend(args);

    // First run: killed once a third of the objects are done.
    let mut child = import_cmd(&env, s.dir.path(), &all_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut first_done = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.starts_with("{\"key\"") {
            first_done += 1;
            if first_done == 700 {
                break;
            }
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(
        first_done, 700,
        "the first run was killed before it finished"
    );

    // Second run: continues after the checkpoint and finishes.
    let out = import_cmd(&env, s.dir.path(), &all_args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "failures were reported: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = summary(&text);
    assert_eq!(sum["mode"], "server_copy", "same service: copied by Garage");
    assert!(sum["resumed_after"].is_string(), "resumed: {sum}");
    assert_eq!(sum["complete"], true);
    let scan = &sum["scan"];
    assert_eq!(
        scan["imported"].as_u64().unwrap() + scan["skipped"].as_u64().unwrap(),
        2000,
        "{scan}"
    );
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    for (_, _, code) in &invalid {
        *codes.entry((*code).to_owned()).or_default() += 1;
    }
    let reported: BTreeMap<String, u64> = serde_json::from_value(scan["failed"].clone()).unwrap();
    assert_eq!(reported, codes);
    let failures: BTreeSet<(String, String)> = sum["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["key"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = invalid
        .iter()
        .map(|(k, _, c)| (k.clone(), (*c).to_owned()))
        .collect();
    assert_eq!(
        failures, want,
        "each invalid object listed once with its code"
    );

    // Exactly once, with the right owner.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut by_owner: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for o in &owners {
        let imgs = all_images(&s, o).await;
        for img in &imgs {
            let uri = img["source"]
                .as_str()
                .expect("imported images name their source")
                .to_owned();
            let key = uri
                .strip_prefix(&format!("s3://{src}/"))
                .unwrap()
                .to_owned();
            assert!(
                seen.insert(key.clone(), o.clone()).is_none(),
                "{key} imported twice"
            );
            assert_eq!(img["owner"], o.as_str());
            assert!(img["blurhash"].is_string(), "placeholders computed: {img}");
        }
        by_owner.insert(o.clone(), imgs);
    }
    assert_eq!(seen, valid, "every valid object, once, under its owner");

    // A third run imports nothing new.
    let out = import_cmd(&env, s.dir.path(), &all_args).output().unwrap();
    let sum = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(sum["run"]["imported"], 0);
    assert_eq!(sum["run"]["skipped"], 2000);

    // The owner transforms, and a legacy URL names the same image.
    let img = &by_owner[&o0][0];
    let id = img["id"].as_str().unwrap();
    let key = img["source"]
        .as_str()
        .unwrap()
        .strip_prefix("s3://")
        .unwrap()
        .split_once('/')
        .unwrap()
        .1
        .to_owned();
    let native = get(&s.url(&signed(&format!("/w:4/f:png/plain/{id}"))), &[]).await;
    assert_eq!(native.status, 200);
    let via_legacy = get(
        &s.url(&signed(&format!("/w:4/f:png/plain/s3://{src}/{key}"))),
        &[],
    )
    .await;
    assert_eq!(via_legacy.status, 200, "{:?}", via_legacy.json());
    assert_eq!(via_legacy.body, native.body);
    assert_eq!(via_legacy.header("etag"), native.header("etag"));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("s3://{src}/{key}"));
    let r = get(&s.url(&signed(&format!("/w:4/{b64}.png"))), &[]).await;
    assert_eq!(r.status, 200);
    // Outside the configured prefix, another bucket, another scheme: 400; not imported: 404.
    for (path, status) in [
        (format!("/w:4/plain/s3://{src}/misc/stray.png"), 400),
        (
            format!("/w:4/plain/s3://other-bucket/users/{o0}/00000.png"),
            400,
        ),
        ("/w:4/plain/http://example.com/a.png".to_owned(), 400),
        ("/w:4/plain/local:///etc/passwd".to_owned(), 400),
        (
            format!("/w:4/plain/s3://{src}/users/{o0}/../x/00000.png"),
            400,
        ),
        (format!("/w:4/plain/s3://{src}/users//00000.png"), 400),
        (format!("/w:4/plain/s3://{src}/users/{o0}/missing.png"), 404),
        (format!("/w:4/plain/s3://{src}/users/{o0}/notes.txt"), 404),
    ] {
        let r = get(&s.url(&signed(&path)), &[]).await;
        assert_eq!(
            r.status,
            status,
            "{path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }

    // Audited as `image.import` by `system`, naming the operator: every imported image at
    // least once (a resumed run records again what the killed run may not have archived).
    let admin = token("root", Role::Admin);
    let mut audited: BTreeSet<String> = BTreeSet::new();
    let q = "/v1/admin/audit?action=image.import&since=0&limit=1000";
    let mut next = Some(q.to_owned());
    while let Some(path) = next {
        let r = get(&s.url(&path), &[("authorization", &bearer(&admin))]).await;
        assert_eq!(r.status, 200);
        let j = r.json();
        for e in j["items"].as_array().unwrap() {
            assert_eq!(e["actor"]["auth"], "system");
            assert_eq!(e["actor"]["operator"], "ops-test");
            assert!(e["status"] == 201 || e["status"] == 200, "{e}");
            assert!(e["request_id"].as_str().unwrap().starts_with("import-"));
            audited.insert(e["resource"]["image"].as_str().unwrap().to_owned());
        }
        next = j["next_cursor"]
            .as_str()
            .map(|c| format!("{q}&cursor={}", c.replace('~', "%7E")));
    }
    let imported: BTreeSet<String> = by_owner
        .values()
        .flatten()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(audited, imported, "every imported image has its event");

    // Export includes the imported originals; erasure removes them; a rerun leaves them gone.
    let t0 = token(&o0, Role::Editor);
    let r = get(&s.url("/v1/me/export"), &[("authorization", &bearer(&t0))]).await;
    assert_eq!(r.status, 200);
    let files = unzip(&r.body);
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["images"].as_array().unwrap().len(), 400);
    assert_eq!(files[&format!("images/{id}.png")], png(key_seed(&key), 8));
    let r = request(
        Method::DELETE,
        &s.url("/v1/me"),
        &[("authorization", &bearer(&t0))],
        Bytes::new(),
    )
    .await;
    assert!(r.status == 202 || r.status == 204, "{}", r.status);
    wait_until_empty(&s, &o0).await;
    let gone = get(
        &s.url(&signed(&format!("/w:4/f:png/plain/s3://{src}/{key}"))),
        &[],
    )
    .await;
    assert_eq!(gone.status, 404);
    let out = import_cmd(&env, s.dir.path(), &all_args).output().unwrap();
    let sum = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        sum["run"]["imported"], 0,
        "erased images are never imported again: {sum}"
    );
    assert!(all_images(&s, &o0).await.is_empty());
    // The foreign objects are the source's: never touched.
    assert_eq!(s3_keys(&client, &src).await.len(), 2000 + invalid.len());
}

fn key_seed(key: &str) -> u32 {
    key.rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".png")
        .parse()
        .unwrap()
}

async fn wait_until_empty(s: &Server, owner: &str) {
    for _ in 0..100 {
        if all_images(s, owner).await.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("erasure did not finish");
}

/// A directory with a manifest: owners, titles and tags from the CSV; a dry run writes nothing
/// and reports what would fail; keys missing from the manifest fail with their code.
#[tokio::test]
async fn a_directory_imports_with_a_manifest_and_a_dry_run_writes_nothing() {
    let s = Server::start(Backend::Fs);
    let env = server_env(Backend::Fs, s.dir.path(), &[]);
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("a")).unwrap();
    std::fs::write(src.path().join("a/one.png"), png(1, 16)).unwrap();
    std::fs::write(src.path().join("a/two.jpg"), fixture("photo_320x240.jpg")).unwrap();
    std::fs::write(src.path().join("a/unlisted.png"), png(3, 16)).unwrap();
    let set_mtime = |name: &str, t: std::time::SystemTime| {
        let f = std::fs::File::options()
            .write(true)
            .open(src.path().join(name))
            .unwrap();
        f.set_modified(t).unwrap();
    };
    let epoch = std::time::UNIX_EPOCH;
    set_mtime(
        "a/one.png",
        epoch + std::time::Duration::from_secs(1_551_675_967),
    );
    // Before 1970 and far in the future: the import's own time instead (never a panic).
    set_mtime("a/two.jpg", epoch - std::time::Duration::from_secs(86_400));
    set_mtime(
        "a/unlisted.png",
        epoch + std::time::Duration::from_secs(300_000_000_000),
    );
    std::fs::write(src.path().join("bad.png"), b"\x89PNG\r\n\x1a\nshort").unwrap();
    let carol = unique("carol");
    let manifest = src.path().join("../manifest.csv");
    std::fs::write(
        &manifest,
        format!("key,owner,title,alt_text,tags\na/one.png,{carol},\"One, first\",,red;blue\na/two.jpg,{carol}\nbad.png,{carol}\n"),
    )
    .unwrap();
    let src_arg = src.path().display().to_string();
    let m_arg = manifest.display().to_string();
    let args = [src_arg.as_str(), "--manifest", m_arg.as_str()];
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let out = import_cmd(&env, s.dir.path(), &dry).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let sum = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(sum["dry_run"], true);
    assert_eq!(sum["run"]["imported"], 2, "would import: {sum}");
    assert_eq!(sum["run"]["failed"]["not_in_manifest"], 1);
    assert_eq!(sum["run"]["failed"]["invalid_image"], 1);
    assert!(
        all_images(&s, &carol).await.is_empty(),
        "a dry run writes nothing"
    );

    let out = import_cmd(&env, s.dir.path(), &args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let imgs = all_images(&s, &carol).await;
    assert_eq!(imgs.len(), 2);
    let one = imgs.iter().find(|i| i["format"] == "png").unwrap();
    assert_eq!(one["title"], "One, first");
    // created_at is the file's modification time (the library keeps its order).
    assert_eq!(one["created_at"], "2019-03-04T05:06:07Z");
    assert_eq!(one["tags"], serde_json::json!(["red", "blue"]));
    // A fixed owner on the same directory: objects already imported are skipped by address.
    let out = import_cmd(&env, s.dir.path(), &[src_arg.as_str(), "--owner", &carol])
        .output()
        .unwrap();
    let sum = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(sum["run"]["skipped"], 2);
    assert_eq!(
        sum["run"]["imported"], 1,
        "only the unlisted one is new: {sum}"
    );
    let year = |i: &Value| {
        i["created_at"].as_str().unwrap()[..4]
            .parse::<u32>()
            .unwrap()
    };
    let imgs = all_images(&s, &carol).await;
    assert_eq!(imgs.len(), 3);
    let recent = imgs.iter().filter(|i| year(i) >= 2026).count();
    assert_eq!(
        recent, 2,
        "pre-1970 and future times become the import's: {imgs:?}"
    );
    // Bad arguments: exit 2 with a message, nothing written.
    for bad in [
        vec![src_arg.as_str()],
        vec![src_arg.as_str(), "--owner-pattern", "users/*"],
        vec!["http://example.com/x", "--owner", "x"],
        vec!["/nonexistent/dir", "--owner", "x"],
        vec![src_arg.as_str(), "--owner", "x", "--rate", "inf"],
        vec![src_arg.as_str(), "--owner", "x", "--rate", "0"],
    ] {
        let out = import_cmd(&env, s.dir.path(), &bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(!out.stderr.is_empty());
    }
}

/// `sources.legacy_lazy`: an object under a legacy prefix is imported on its first request
/// (once, even for concurrent first requests), audited with the request's id, served, and
/// never imported again once deleted; invalid objects get the upload's error, missing ones 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lazy_legacy_imports_on_first_request_once() {
    let src = format!("imp-lazy-{}", unique("s").to_lowercase());
    create_bucket(&src);
    let client = s3_client().await;
    let dora = unique("dora");
    put(&client, &src, &format!("users/{dora}/a.png"), png(11, 12)).await;
    put(&client, &src, &format!("users/{dora}/b.png"), png(12, 12)).await;
    put(
        &client,
        &src,
        &format!("users/{dora}/c.txt"),
        b"text".to_vec(),
    )
    .await;
    let legacy = format!("s3://{src}/users/ owner_pattern=users/{{owner}}/**");
    let s = Server::start_with(
        Backend::S3,
        &[
            ("PIXGATE__SOURCES__LEGACY", &legacy),
            ("PIXGATE__SOURCES__LEGACY_LAZY", "true"),
            ("PIXGATE__SOURCES__LEGACY_FAILURE_TTL_SECS", "2"),
            ("PIXGATE__AUDIT__FLUSH_SECONDS", "1"),
        ],
    );
    let url = |k: &str| {
        s.url(&signed(&format!(
            "/w:6/f:png/plain/s3://{src}/users/{dora}/{k}"
        )))
    };
    let r = get(&url("a.png"), &[("x-request-id", "lazy-first")]).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let imgs = all_images(&s, &dora).await;
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0]["source"], format!("s3://{src}/users/{dora}/a.png"));
    let id = imgs[0]["id"].as_str().unwrap().to_owned();
    // Concurrent first requests for another object: one import.
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let u = url("b.png");
            tokio::spawn(async move { get(&u, &[]).await.status })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), 200);
    }
    assert_eq!(all_images(&s, &dora).await.len(), 2, "imported once");
    assert_eq!(get(&url("c.txt"), &[]).await.status, 415);
    // A lasting refusal is remembered (no read, no decode) for legacy_failure_ttl_secs: the
    // object fixed in the bucket is still refused at once, and imported once that has passed.
    put(&client, &src, &format!("users/{dora}/c.txt"), png(13, 12)).await;
    assert_eq!(get(&url("c.txt"), &[]).await.status, 415, "remembered");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        get(&url("c.txt"), &[]).await.status,
        200,
        "tried again after the TTL"
    );
    // A bearer caller must own the object by the owner mapping, before anything is read.
    let bearer_url = |k: &str| s.url(&format!("/_/w:6/f:png/plain/s3://{src}/users/{dora}/{k}"));
    let stranger = token(&unique("eve"), Role::Editor);
    for k in ["a.png", "new.png"] {
        let r = get(&bearer_url(k), &[("authorization", &bearer(&stranger))]).await;
        assert_eq!(r.status, 404, "{k}");
    }
    let r = get(
        &bearer_url("a.png"),
        &[("authorization", &bearer(&token(&dora, Role::Viewer)))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(get(&url("missing.png"), &[]).await.status, 404);
    let outside = s.url(&signed(&format!("/w:6/plain/s3://{src}/other/a.png")));
    assert_eq!(get(&outside, &[]).await.status, 400);
    // Audited with the request's id (archived within a flush interval).
    let admin = token("root", Role::Admin);
    let mut items = Vec::new();
    for _ in 0..50 {
        let r = get(
            &s.url(&format!(
                "/v1/admin/audit?action=image.import&image={id}&since=0"
            )),
            &[("authorization", &bearer(&admin))],
        )
        .await;
        items = r.json()["items"].as_array().unwrap().clone();
        if !items.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["request_id"], "lazy-first");
    assert_eq!(items[0]["actor"]["operator"], "legacy_lazy");
    // Deleted through pixgate: gone for good, never re-imported by the next request.
    let r = request(
        Method::DELETE,
        &s.url(&format!("/v1/images/{id}")),
        &[("authorization", &bearer(&token(&dora, Role::Editor)))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(get(&url("a.png"), &[]).await.status, 404);
    assert_eq!(all_images(&s, &dora).await.len(), 2, "b and the fixed c");
}

/// Ctrl-C (SIGINT): objects in flight finish, the checkpoint is saved, exit 3; the next run
/// continues and the two runs import every object once.
#[tokio::test]
async fn an_interrupted_import_exits_3_and_the_next_run_finishes_it() {
    let s = Server::start(Backend::Fs);
    let env = server_env(Backend::Fs, s.dir.path(), &[]);
    let src = tempfile::tempdir().unwrap();
    for i in 0..40u32 {
        std::fs::write(src.path().join(format!("{i:03}.png")), png(i, 8)).unwrap();
    }
    let erin = unique("erin");
    let src_arg = src.path().display().to_string();
    let args = [src_arg.as_str(), "--owner", erin.as_str(), "--rate", "20"];
    let mut child = import_cmd(&env, s.dir.path(), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..5 {
        lines.next().unwrap().unwrap();
    }
    signal(child.id(), libc::SIGINT);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    let first = summary(&rest.join("\n"));
    assert_eq!(first["complete"], false);
    let done_first = first["run"]["imported"].as_u64().unwrap();
    assert!((5..40).contains(&done_first), "{first}");
    let out = import_cmd(
        &env,
        s.dir.path(),
        &[src_arg.as_str(), "--owner", erin.as_str()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let second = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(second["complete"], true);
    assert_eq!(second["scan"]["imported"], 40, "{second}");
    assert_eq!(all_images(&s, &erin).await.len(), 40);
}

/// An import killed between an image's owner-index entry and its metadata (simulated by removing
/// the metadata) is finished by the next run under the same id and index entry: the owner
/// lists the image once.
#[tokio::test]
async fn a_resumed_object_keeps_its_id_and_index_entry() {
    let s = Server::start(Backend::Fs);
    let env = server_env(Backend::Fs, s.dir.path(), &[]);
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("one.png"), png(5, 8)).unwrap();
    let fay = unique("fay");
    let src_arg = src.path().display().to_string();
    let args = [src_arg.as_str(), "--owner", fay.as_str()];
    let out = import_cmd(&env, s.dir.path(), &args).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let first = all_images(&s, &fay).await;
    assert_eq!(first.len(), 1);
    let id = first[0]["id"].as_str().unwrap().to_owned();
    let meta = s
        .dir
        .path()
        .join(format!("data/originals/images/{id}/meta.json"));
    std::fs::remove_file(&meta).unwrap();
    assert!(
        all_images(&s, &fay).await.is_empty(),
        "no metadata, no image"
    );
    // Index keys hold the creation second: a rerun in a later second must reuse the first.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let out = import_cmd(&env, s.dir.path(), &args).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let sum = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(sum["run"]["imported"], 1, "{sum}");
    let again = all_images(&s, &fay).await;
    assert_eq!(again.len(), 1, "listed once: {again:?}");
    assert_eq!(again[0]["id"], id.as_str(), "the same id");
    assert_eq!(again[0]["created_at"], first[0]["created_at"]);
}

async fn s3_get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .ok()?;
    Some(out.body.collect().await.unwrap().into_bytes().to_vec())
}

async fn delete_image(s: &Server, owner: &str, id: &str) {
    let r = request(
        Method::DELETE,
        &s.url(&format!("/v1/images/{id}")),
        &[("authorization", &bearer(&token(owner, Role::Editor)))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
}

/// `--in-place` (against Garage): pixgate's bucket holds reference stubs, not copies; reads are
/// pinned to the version validated (a replaced source is `409 source_changed`, a removed one
/// `410 source_gone`, never decoded unvalidated); the owner's delete and an erasure leave the
/// foreign objects, unless the import was `--owned` (then they go with the image); export
/// carries the bytes. The refusals: `--owned` alone, a directory, pixgate's own bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_place_imports_reference_the_source_and_delete_it_only_when_owned() {
    let buckets = own_buckets("inpl");
    let originals = buckets[0].1.clone();
    let src = format!("inpl-src-{}", unique("s").to_lowercase());
    create_bucket(&src);
    let client = s3_client().await;
    let (ann, bob) = (unique("ann"), unique("bob"));
    let mut sources: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, (tree, owner, name)) in [
        ("kept", &ann, "a.png"),
        ("kept", &ann, "b.png"),
        ("kept", &ann, "c.png"),
        ("kept", &bob, "x.png"),
        ("owned", &ann, "o1.png"),
        ("owned", &bob, "o2.png"),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("{tree}/users/{owner}/{name}");
        let body = png(100 + i as u32, 10);
        put(&client, &src, &key, body.clone()).await;
        sources.insert(key, body);
    }
    let extra: Vec<(&str, &str)> = buckets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let s = Server::start_with(Backend::S3, &extra);
    let env = server_env(Backend::S3, s.dir.path(), &extra);
    let run = |args: &[&str]| import_cmd(&env, s.dir.path(), args).output().unwrap();

    // Refused before anything is read.
    let kept = format!("s3://{src}/kept/");
    let own_bucket = format!("s3://{originals}/images/");
    let dir = s.dir.path().to_str().unwrap().to_owned();
    for args in [
        vec![kept.as_str(), "--owner", &ann, "--owned"],
        vec![dir.as_str(), "--owner", &ann, "--in-place"],
        vec![own_bucket.as_str(), "--owner", &ann, "--in-place"],
        vec![
            kept.as_str(),
            "--owner",
            &ann,
            "--in-place",
            "--endpoint",
            "http://127.0.0.1:1",
        ],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }

    let out = run(&[
        &kept,
        "--owner-pattern",
        "kept/users/{owner}/**",
        "--in-place",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        summary(&String::from_utf8_lossy(&out.stdout))["run"]["imported"],
        4
    );
    // With credentials of its own the source is another service to pixgate: a plain copy.
    let mut own_creds = env.clone();
    own_creds.push(("PIXGATE_IMPORT_ACCESS_KEY_ID".into(), S3_KEY_ID.into()));
    own_creds.push(("PIXGATE_IMPORT_SECRET_ACCESS_KEY".into(), S3_SECRET.into()));
    let copied = format!("s3://{src}/copied/");
    let cal = unique("cal");
    put(&client, &src, &format!("copied/{cal}.png"), png(99, 9)).await;
    let out = import_cmd(&own_creds, s.dir.path(), &[&copied, "--owner", &cal])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let sum = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        (sum["mode"].as_str(), sum["run"]["imported"].as_u64()),
        (Some("copy"), Some(1))
    );
    let out = import_cmd(
        &own_creds,
        s.dir.path(),
        &[&kept, "--owner", &cal, "--in-place"],
    )
    .output()
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "in place needs the storage's own credentials"
    );
    let owned = format!("s3://{src}/owned/");
    let out = run(&[
        &owned,
        "--owner-pattern",
        "owned/users/{owner}/**",
        "--in-place",
        "--owned",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // pixgate's bucket holds stubs only: no image's bytes were copied.
    let stubs: Vec<String> = s3_keys(&client, &originals)
        .await
        .into_iter()
        .filter(|k| k.ends_with("/original"))
        .collect();
    assert_eq!(stubs.len(), 7, "six stubs and one copy");
    let mut stub_count = 0;
    for k in &stubs {
        let body = s3_get(&client, &originals, k).await.unwrap();
        if body.starts_with(b"pixgate-reference/1\n") {
            stub_count += 1;
        } else {
            assert_eq!(body, png(99, 9), "the copy holds the bytes");
        }
    }
    assert_eq!(stub_count, 6);

    let by_key = |imgs: &[Value]| -> BTreeMap<String, String> {
        imgs.iter()
            .map(|i| {
                assert_eq!(i["in_place"], true, "{i}");
                assert!(
                    i.get("reference").is_none(),
                    "the reference is not shown: {i}"
                );
                let uri = i["source"].as_str().unwrap();
                let key = uri
                    .strip_prefix(&format!("s3://{src}/"))
                    .unwrap()
                    .to_owned();
                (key, i["id"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    let ann_ids = by_key(&all_images(&s, &ann).await);
    let bob_ids = by_key(&all_images(&s, &bob).await);
    assert_eq!(ann_ids.len(), 4);
    assert_eq!(bob_ids.len(), 2);
    let id_of = |key: &str| -> String {
        ann_ids
            .get(key)
            .or_else(|| bob_ids.get(key))
            .unwrap()
            .clone()
    };
    let a = format!("kept/users/{ann}/a.png");
    let transform = |id: String| {
        let url = s.url(&signed(&format!("/w:5/f:png/plain/{id}")));
        async move { get(&url, &[]).await }
    };
    let r = transform(id_of(&a)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/png"));

    // Replaced in the source after the import: refused, never decoded unvalidated.
    let b = format!("kept/users/{ann}/b.png");
    put(&client, &src, &b, b"not an image any more".to_vec()).await;
    let r = transform(id_of(&b)).await;
    assert_eq!((r.status, r.code().as_str()), (409, "source_changed"));
    // Removed from the source: its own error.
    let c = format!("kept/users/{ann}/c.png");
    client
        .delete_object()
        .bucket(&src)
        .key(&c)
        .send()
        .await
        .unwrap();
    let r = transform(id_of(&c)).await;
    assert_eq!((r.status, r.code().as_str()), (410, "source_gone"));

    // Not owned: the owner's delete leaves the foreign object as it was.
    delete_image(&s, &ann, &id_of(&a)).await;
    assert_eq!(transform(id_of(&a)).await.status, 404);
    assert_eq!(
        s3_get(&client, &src, &a).await.as_deref(),
        Some(&sources[&a][..])
    );
    // Owned: deleted with the image.
    let o1 = format!("owned/users/{ann}/o1.png");
    delete_image(&s, &ann, &id_of(&o1)).await;
    assert!(s3_get(&client, &src, &o1).await.is_none(), "owned: deleted");

    // Bob's export carries the in-place bytes; his erasure removes his owned object only.
    let tb = token(&bob, Role::Editor);
    let r = get(&s.url("/v1/me/export"), &[("authorization", &bearer(&tb))]).await;
    assert_eq!(r.status, 200);
    let files = unzip(&r.body);
    let x = format!("kept/users/{bob}/x.png");
    let o2 = format!("owned/users/{bob}/o2.png");
    for k in [&x, &o2] {
        assert_eq!(
            files[&format!("images/{}.png", id_of(k))],
            sources[k],
            "{k}"
        );
    }
    let r = request(
        Method::DELETE,
        &s.url("/v1/me"),
        &[("authorization", &bearer(&tb))],
        Bytes::new(),
    )
    .await;
    assert!(r.status == 202 || r.status == 204, "{}", r.status);
    wait_until_empty(&s, &bob).await;
    assert_eq!(
        s3_get(&client, &src, &x).await.as_deref(),
        Some(&sources[&x][..]),
        "not owned: left"
    );
    assert!(s3_get(&client, &src, &o2).await.is_none(), "owned: erased");
    // The stubs of deleted images are gone with them.
    let left = s3_keys(&client, &originals)
        .await
        .into_iter()
        .filter(|k| k.ends_with("/original"))
        .count();
    assert_eq!(
        left, 3,
        "b, c (not deleted) keep their stubs, the copy its bytes"
    );
}

/// Two imports of the same directory at once (fs backend: create-only source entries are
/// exact): every object becomes exactly one image (one id, listed once), nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_imports_of_one_source_import_each_object_once() {
    let s = Server::start(Backend::Fs);
    let env = server_env(Backend::Fs, s.dir.path(), &[]);
    let src = tempfile::tempdir().unwrap();
    for n in 0..120u32 {
        std::fs::write(src.path().join(format!("{n:03}.png")), png(500 + n, 6)).unwrap();
    }
    let gus = unique("gus");
    let src_arg = src.path().display().to_string();
    let args = [src_arg.as_str(), "--owner", gus.as_str(), "--jobs", "4"];
    // Each run gets an audit spool of its own (a spool is locked by one process).
    let spawn = |tag: &str| {
        let mut env = env.clone();
        let spool = s.dir.path().join(format!("spool-{tag}"));
        env.retain(|(k, _)| k != "PIXGATE__AUDIT__SPOOL_DIR");
        env.push((
            "PIXGATE__AUDIT__SPOOL_DIR".into(),
            spool.display().to_string(),
        ));
        import_cmd(&env, s.dir.path(), &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a"), spawn("b"));
    let mut imported = 0;
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = summary(&String::from_utf8_lossy(&out.stdout))["run"].clone();
        assert_eq!(run["failed"], serde_json::json!({}), "{run}");
        let n = run["imported"].as_u64().unwrap();
        assert_eq!(n + run["skipped"].as_u64().unwrap(), 120, "{run}");
        imported += n;
    }
    // A run that finds the other's claim before its image (a live importer looks like a
    // killed one) finishes it under the claimed id: the same image, written twice.
    assert!(imported >= 120, "{imported}");
    let imgs = all_images(&s, &gus).await;
    let sources: BTreeSet<&str> = imgs.iter().map(|i| i["source"].as_str().unwrap()).collect();
    assert_eq!((imgs.len(), sources.len()), (120, 120), "listed once each");
}

/// The S3 store's server-side copy against Garage: pinned to the ETag (a replaced source is
/// refused, nothing written), exact bytes and the given content type when it holds; a missing
/// source is `NotFound`. And `put_if_absent` answers for both outcomes (Garage ignores
/// `If-None-Match`, so the second write lands: that is the documented bound, checked here so a
/// Garage that starts honouring it shows up).
#[tokio::test]
async fn the_s3_store_copies_server_side_pinned_to_the_etag() {
    use pixgate::storage::foreign::Reference;
    use pixgate::storage::{Bucket, ObjectKey, ObjectStore, S3Store, StorageConfig};
    let buckets = own_buckets("scp");
    let src = format!("scp-src-{}", unique("s").to_lowercase());
    create_bucket(&src);
    let client = s3_client().await;
    let cfg = StorageConfig {
        backend: pixgate::storage::Backend::S3,
        s3_endpoint: services().s3_endpoint.clone(),
        s3_region: "garage".into(),
        s3_bucket: buckets[0].1.clone(),
        s3_derived_bucket: buckets[1].1.clone(),
        s3_audit_bucket: buckets[2].1.clone(),
        s3_force_path_style: true,
        ..StorageConfig::default()
    };
    let store = S3Store::with_credentials(&cfg, Some((S3_KEY_ID.into(), S3_SECRET.into()))).await;
    let key = "users/ann/a b+ü.png";
    let v1 = png(1, 8);
    put(&client, &src, key, v1.clone()).await;
    let etag = |k: &str| {
        let (client, src, k) = (client.clone(), src.clone(), k.to_owned());
        async move {
            let h = client
                .head_object()
                .bucket(&src)
                .key(&k)
                .send()
                .await
                .unwrap();
            h.e_tag().unwrap().to_owned()
        }
    };
    let from = Reference {
        bucket: src.clone(),
        key: key.into(),
        etag: etag(key).await,
        bytes: v1.len() as u64,
        owned: false,
    };
    let dest = ObjectKey::new("images/copytest/original").unwrap();
    assert!(
        store
            .copy_in(Bucket::Originals, &dest, &from, "image/png")
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(Bucket::Originals, &dest, 1 << 20).await.unwrap(),
        &v1[..]
    );
    let head = client
        .head_object()
        .bucket(&buckets[0].1)
        .key(dest.as_str())
        .send()
        .await;
    assert_eq!(head.unwrap().content_type(), Some("image/png"));
    // Replaced since it was read: refused, the earlier copy untouched.
    put(&client, &src, key, png(2, 8)).await;
    let other = ObjectKey::new("images/copytest2/original").unwrap();
    assert!(
        !store
            .copy_in(Bucket::Originals, &other, &from, "image/png")
            .await
            .unwrap()
    );
    assert!(matches!(
        store.get(Bucket::Originals, &other, 1 << 20).await,
        Err(pixgate::storage::StorageError::NotFound)
    ));
    let gone = Reference {
        key: "users/ann/missing.png".into(),
        ..from.clone()
    };
    assert!(matches!(
        store
            .copy_in(Bucket::Originals, &other, &gone, "image/png")
            .await,
        Err(pixgate::storage::StorageError::NotFound)
    ));
    // Create-only writes: the first lands; Garage 2.x ignores If-None-Match on the second.
    let claim = ObjectKey::new("sources/claimtest.json").unwrap();
    let first = store.put_if_absent(Bucket::Originals, &claim, Bytes::from_static(b"1"), "x");
    assert!(first.await.unwrap());
    let second = store.put_if_absent(Bucket::Originals, &claim, Bytes::from_static(b"2"), "x");
    assert!(
        second.await.unwrap(),
        "Garage 2.x ignores If-None-Match (documented bound)"
    );
}
