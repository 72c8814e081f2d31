//! The deploy artifacts, run: pixgate started the way `deploy/kubernetes/` starts it (the
//! image's environment, the ConfigMap, the container's env and args, uid 10001, a read-only
//! root filesystem with only the declared volumes writable, secrets as mounted files read
//! through `file:`), by `tests/deploy_sandbox.sh` in a private mount namespace. Endpoints
//! (S3, Redis, buckets, listen addresses) and secret values are the test services'.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pixgate::auth::Role;

use crate::harness::*;
use crate::identity::unique;

fn sandbox(extra: &[(&str, &str)]) -> Command {
    let s = services();
    let redis = format!("redis://127.0.0.1:{}/0", s.redis_port);
    let prefix = format!("t{}", unique("deploy"));
    let mut cmd = Command::new(format!(
        "{}/tests/deploy_sandbox.sh",
        env!("CARGO_MANIFEST_DIR")
    ));
    cmd.arg(env!("CARGO_BIN_EXE_pixgate"))
        .arg(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("SANDBOX_S3_ENDPOINT", s.s3_endpoint.as_str()),
            ("SANDBOX_S3_REGION", "garage"),
            ("SANDBOX_REDIS_URL", redis.as_str()),
            ("SANDBOX_REDIS_KEY_PREFIX", prefix.as_str()),
            ("SANDBOX_BUCKET_ORIGINALS", ORIGINALS_BUCKET),
            ("SANDBOX_BUCKET_DERIVED", DERIVED_BUCKET),
            ("SANDBOX_BUCKET_AUDIT", AUDIT_BUCKET),
            ("SANDBOX_AWS_ACCESS_KEY_ID", S3_KEY_ID),
            ("SANDBOX_AWS_SECRET_ACCESS_KEY", S3_SECRET),
            ("SANDBOX_SIGNING_KEY", SIGNING_KEY),
            ("SANDBOX_SIGNING_SALT", SIGNING_SALT),
            ("SANDBOX_JWT_SECRET", JWT_SECRET),
            ("SANDBOX_ISSUER", ISSUER),
            ("SANDBOX_AUDIENCE", AUDIENCE),
            ("SANDBOX_LISTEN", "127.0.0.1:0"),
            ("SANDBOX_METRICS_LISTEN", "127.0.0.1:0"),
        ])
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The two base URLs pixgate prints (main listener, metrics listener).
fn listening(child: &mut Child) -> (String, String) {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut main = None;
    let mut metrics = None;
    while main.is_none() || metrics.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("pixgate did not start in the sandbox");
        if let Some(u) = line.strip_prefix("pixgate listening on ") {
            main = Some(u.to_owned());
        } else if let Some(u) = line.strip_prefix("pixgate metrics on ") {
            metrics = Some(u.to_owned());
        }
    }
    (main.unwrap_or_default(), metrics.unwrap_or_default())
}

/// Root and `unshare` are what the sandbox needs (CI runs as root).
fn can_sandbox() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("deploy sandbox test needs root (unshare, chroot): not run");
    }
    root
}

#[tokio::test]
async fn pixgate_runs_as_the_kubernetes_manifests_run_it() {
    if !can_sandbox() {
        return;
    }
    let mut child = spawn_tied(&mut sandbox(&[])).expect("deploy_sandbox.sh");
    let (base, metrics_base) = listening(&mut child);
    let r = get(&format!("{base}/readyz"), &[]).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready")),
        "{:?}",
        r.json()
    );
    assert_eq!(r.json()["checks"]["redis"], "ok");
    // Metrics on their own listener only, as the NetworkPolicy assumes.
    assert_eq!(
        get(&format!("{metrics_base}/metrics"), &[]).await.status,
        200
    );
    assert_eq!(
        get(&format!("{metrics_base}/healthz"), &[]).await.status,
        200
    );
    assert_eq!(get(&format!("{base}/metrics"), &[]).await.status, 404);
    // Secrets from the mounted files: a token signed with the JWT secret uploads; a URL signed
    // with the signing key renders (through S3 with the mounted AWS credentials file).
    let owner = unique("k8s");
    let auth = bearer(&token(&owner, Role::Editor));
    let r = request(
        http::Method::POST,
        &format!("{base}/v1/images"),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "image/jpeg"),
        ],
        fixture("photo_320x240.jpg"),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = get(
        &format!(
            "{base}{}",
            signed(&format!("/rs:fit:100:100/plain/{id}@webp"))
        ),
        &[],
    )
    .await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("image/webp"))
    );
    // SIGTERM (the image's STOPSIGNAL) drains and exits 0 well within the grace period.
    signal(child.id(), libc::SIGTERM);
    let t = std::time::Instant::now();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(45), "{:?}", t.elapsed());
}

/// Without its declared volume pixgate cannot start: the sandbox's root really is read-only
/// (the audit spool, which pixgate creates and locks at start, has nowhere to go).
#[tokio::test]
async fn without_its_volume_the_read_only_root_refuses_the_spool() {
    if !can_sandbox() {
        return;
    }
    let out = sandbox(&[("SANDBOX_SELFTEST_DROP_VOLUMES", "1")])
        .output()
        .expect("deploy_sandbox.sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Read-only file system"), "{err}");
}
