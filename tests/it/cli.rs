//! The CLI contract: `check-config`, `sign`, `token`, and the embedded default.

use pixgate::image::probe;

use crate::harness::*;

fn run(env: &[(String, String)], dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = pixgate_cmd(env)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run pixgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_redacts_secrets_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let env = server_env(Backend::S3, dir.path(), &[]);
    let (code, out, _) = run(&env, dir.path(), &["check-config"]);
    assert_eq!(code, 0);
    for secret in [SIGNING_KEY, SIGNING_SALT, JWT_SECRET] {
        assert!(!out.contains(secret), "secret leaked:\n{out}");
    }
    assert!(out.contains("<redacted>"));
    assert!(out.contains("backend = \"s3\""));

    let bad = server_env(
        Backend::Fs,
        dir.path(),
        &[("PIXGATE__SIGNING__SIGNATURE_SIZE", "99")],
    );
    let (code, _, err) = run(&bad, dir.path(), &["check-config"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("signing.signature_size") && err.contains("PIXGATE__SIGNING__SIGNATURE_SIZE"),
        "{err}"
    );

    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let (code, _, err) = run(
        &[],
        dir.path(),
        &["check-config", "--config", cfg.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(err.contains("server.listen"), "{err}");

    // The documented sample ships no secrets: it is refused until they are provided, and is
    // then a valid configuration.
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pixgate.toml");
    let (code, _, err) = run(&[], dir.path(), &["check-config", "--config", sample]);
    assert_ne!(code, 0);
    assert!(err.contains("signing.keys"), "{err}");
    let secrets: Vec<(String, String)> = [
        ("PIXGATE__SIGNING__KEYS", SIGNING_KEY),
        ("PIXGATE__SIGNING__SALTS", SIGNING_SALT),
        ("PIXGATE__AUTH__JWT_HS256_SECRET", JWT_SECRET),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (code, _, err) = run(&secrets, dir.path(), &["check-config", "--config", sample]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn embedded_default_uses_persistent_random_dev_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(&[], dir.path(), &["check-config"]);
    assert_eq!(code, 0);
    assert!(out.contains("embedded default"));
    assert!(out.contains("fs_root = \"./data\""));
    let secrets = dir.path().join("data/.pixgate-dev-secrets.json");
    assert!(secrets.exists());
    let first = std::fs::read(&secrets).unwrap();
    // sign/token agree with each other across invocations (same secrets file).
    let (code, token, _) = run(
        &[],
        dir.path(),
        &["token", "--sub", "dev", "--role", "editor"],
    );
    assert_eq!(code, 0);
    assert_eq!(token.trim().split('.').count(), 3);
    assert_eq!(std::fs::read(&secrets).unwrap(), first);
    // Another data directory gets different secrets.
    let other = tempfile::tempdir().unwrap();
    run(&[], other.path(), &["check-config"]);
    assert_ne!(
        std::fs::read(other.path().join("data/.pixgate-dev-secrets.json")).unwrap(),
        first
    );
}

#[tokio::test]
async fn sign_and_token_commands_work_against_the_server() {
    let s = Server::start(Backend::Fs);
    let env = server_env(Backend::Fs, s.dir.path(), &[]);
    let (code, token, err) = run(
        &env,
        s.dir.path(),
        &[
            "token", "--sub", "carol", "--role", "editor", "--ttl", "10m",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let r = upload(&s, token.trim(), "image/jpeg", fixture("photo_320x240.jpg")).await;
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_owned();

    let path = format!("/rs:fit:120:120/f:webp/plain/{id}");
    let (code, signed_path, err) = run(&env, s.dir.path(), &["sign", "--expires-in", "1h", &path]);
    assert_eq!(code, 0, "{err}");
    let r = get(&s.url(signed_path.trim()), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(probe(&r.body).unwrap().width, 120);
    assert!(
        r.header("cache-control").unwrap().contains("max-age=3"),
        "bounded by exp"
    );

    let (code, _, err) = run(&env, s.dir.path(), &["sign", "/bogus:1/plain/x"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid path"), "{err}");
    let (code, _, _) = run(
        &env,
        s.dir.path(),
        &["token", "--sub", "x", "--role", "root"],
    );
    assert_ne!(code, 0);
}
