//! Shared test harness: real `redis-server` and real Garage (S3) started hermetically on
//! ephemeral ports, once per test binary; a real `pixgate serve` subprocess per test.
//!
//! Services are spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so they die with the
//! test process even though Rust runs no destructors for statics. Each pixgate instance gets its
//! own temporary directory and configuration through `PIXGATE__*` variables only.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pixgate::auth::{Role, TokenRequest, mint_hs256};
use pixgate::config::AuthConfig;
use pixgate::signature::Signer;

pub const SIGNING_KEY: &str = "943b421c9eb07c830af81030552c86009268de4e532ba2ee2eab8247c6da0881";
pub const SIGNING_SALT: &str = "520f986b998545b4785e0defbc4f3c1203f22de2374a3d53cb7a7fe9fea309c5";
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-42";
pub const ISSUER: &str = "https://idp.test/";
pub const AUDIENCE: &str = "pixgate-tests";
pub(crate) const S3_KEY_ID: &str = "GK0123456789abcdef01234567";
pub(crate) const S3_SECRET: &str =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const ORIGINALS_BUCKET: &str = "pixgate-originals";
pub const DERIVED_BUCKET: &str = "pixgate-derived";
/// The audit archive of S3 servers (tests of the archive itself use buckets of their own).
pub const AUDIT_BUCKET: &str = "pixgate-audit";

/// Which storage backend a server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Filesystem storage, no Redis: the embedded default's shape.
    Fs,
    /// Garage S3 plus Redis: the production shape.
    S3,
}

/// The shared external services.
pub struct Services {
    pub redis_port: u16,
    pub s3_endpoint: String,
    garage_cfg: PathBuf,
}

/// Creates a bucket in the shared Garage, usable by the tests' key.
pub fn create_bucket(name: &str) {
    let cfg = &services().garage_cfg;
    retry(|| garage(cfg, &["bucket", "create", name]));
    retry(|| {
        garage(
            cfg,
            &[
                "bucket", "allow", "--read", "--write", "--owner", name, "--key", "pixgate",
            ],
        )
    });
}

/// Fresh originals, derived and audit buckets in the shared Garage, as server overrides: a
/// test whose storage must hold only its own objects (fsck, crash consistency).
pub fn own_buckets(prefix: &str) -> Vec<(String, String)> {
    let tag = crate::identity::unique(prefix).to_lowercase();
    let (o, d, a) = (
        format!("{prefix}-o-{tag}"),
        format!("{prefix}-d-{tag}"),
        format!("{prefix}-a-{tag}"),
    );
    for b in [&o, &d, &a] {
        create_bucket(b);
    }
    vec![
        ("PIXGATE__STORAGE__S3_BUCKET".into(), o),
        ("PIXGATE__STORAGE__S3_DERIVED_BUCKET".into(), d),
        ("PIXGATE__STORAGE__S3_AUDIT_BUCKET".into(), a),
    ]
}

static SERVICES: OnceLock<Services> = OnceLock::new();

/// Starts Redis and Garage once for this test binary.
pub fn services() -> &'static Services {
    SERVICES.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        // The spawning thread must outlive the children (PDEATHSIG fires when it exits).
        std::thread::Builder::new()
            .name("test-services".into())
            .spawn(move || {
                let (started, _children) = start_services();
                let _ = tx.send(started);
                // Keeps the children's handles (and this thread) alive for the whole run.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn services thread");
        rx.recv().expect("services thread died")
    })
}

fn start_services() -> (Services, Vec<Child>) {
    let root = tempfile::Builder::new()
        .prefix("pixgate-it-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let redis_port = free_port();
    let mut redis = Command::new("redis-server");
    redis
        .args(["--port", &redis_port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let redis = spawn_tied(&mut redis).expect("redis-server (apt-get install redis-server)");
    wait_port(redis_port, Duration::from_secs(10));

    let (s3_endpoint, garage) = start_garage(&root);
    (
        Services {
            redis_port,
            s3_endpoint,
            garage_cfg: root.join("garage.toml"),
        },
        vec![redis, garage],
    )
}

/// Sends `sig` to `pid` (SIGSTOP/SIGCONT to stall and resume a service).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a child of this test process.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// A Garage of one test's own (same key and buckets as the shared one), which the test may
/// stall with SIGSTOP without disturbing the other tests.
pub struct PrivateGarage {
    pub endpoint: String,
    child: Child,
    _root: tempfile::TempDir,
}

impl PrivateGarage {
    pub fn start() -> PrivateGarage {
        let root = tempfile::Builder::new()
            .prefix("pixgate-garage-")
            .tempdir()
            .expect("tempdir");
        let (endpoint, child) = start_garage(root.path());
        PrivateGarage {
            endpoint,
            child,
            _root: root,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PrivateGarage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ports of one Garage node.
pub(crate) struct GaragePorts {
    pub rpc: u16,
    pub s3: u16,
    pub admin: u16,
}

impl GaragePorts {
    pub(crate) fn free() -> GaragePorts {
        GaragePorts {
            rpc: free_port(),
            s3: free_port(),
            admin: free_port(),
        }
    }
}

/// Writes `cfg`: a Garage node keeping its metadata and data under `dir`, in a cluster of
/// `replication` copies sharing `secret` (hex).
pub(crate) fn write_garage_config(
    cfg: &Path,
    dir: &Path,
    replication: u8,
    secret: &str,
    p: &GaragePorts,
) {
    std::fs::write(
        cfg,
        format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
            meta = dir.join("garage-meta").display(),
            data = dir.join("garage-data").display(),
            rpc = p.rpc,
            s3 = p.s3,
            admin = p.admin,
        ),
    )
    .expect("write garage config");
}

fn start_garage(root: &Path) -> (String, Child) {
    let ports = GaragePorts::free();
    let (rpc, s3) = (ports.rpc, ports.s3);
    let cfg = root.join("garage.toml");
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("rng");
    write_garage_config(&cfg, root, 1, &hex::encode(secret), &ports);
    let log = std::fs::File::create(root.join("garage.log")).expect("garage log");
    let mut server = Command::new(garage_bin());
    server
        .arg("-c")
        .arg(&cfg)
        .arg("server")
        .stdout(Stdio::null())
        .stderr(log);
    let child =
        spawn_tied(&mut server).expect("garage (cargo install garage --version 2.5.0 --locked)");
    wait_port(s3, Duration::from_secs(20));
    wait_port(rpc, Duration::from_secs(20));

    let node = retry(|| garage(&cfg, &["node", "id", "-q"]));
    let node = node.trim().split('@').next().unwrap_or_default().to_owned();
    retry(|| garage(&cfg, &["layout", "assign", "-z", "dc1", "-c", "1G", &node]));
    retry(|| garage(&cfg, &["layout", "apply", "--version", "1"]));
    import_key_and_buckets(&cfg);
    (format!("http://127.0.0.1:{s3}"), child)
}

/// The tests' access key and the three buckets, through the Garage configured by `cfg`.
pub(crate) fn import_key_and_buckets(cfg: &Path) {
    retry(|| {
        garage(
            cfg,
            &[
                "key", "import", "--yes", "-n", "pixgate", S3_KEY_ID, S3_SECRET,
            ],
        )
    });
    for bucket in [ORIGINALS_BUCKET, DERIVED_BUCKET, AUDIT_BUCKET] {
        retry(|| garage(cfg, &["bucket", "create", bucket]));
        retry(|| {
            garage(
                cfg,
                &[
                    "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", "pixgate",
                ],
            )
        });
    }
}

pub(crate) fn garage_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GARAGE_BIN") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        let p = PathBuf::from(home).join("bin/garage");
        if p.exists() {
            return p;
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cargo/bin/garage");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("garage")
}

pub(crate) fn garage(cfg: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(garage_bin())
        .arg("-c")
        .arg(cfg)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "garage {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub(crate) fn retry(mut f: impl FnMut() -> Result<String, String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Spawns a child that receives SIGKILL when the spawning thread exits.
pub(crate) fn spawn_tied(cmd: &mut Command) -> std::io::Result<Child> {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub(crate) fn wait_port(port: u16, max: Duration) {
    let deadline = Instant::now() + max;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `pixgate serve`.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Environment for a server on `backend`, plus overrides.
pub fn server_env(backend: Backend, dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PIXGATE__SERVER__LISTEN", "127.0.0.1:0"),
        ("PIXGATE__SIGNING__KEYS", SIGNING_KEY),
        ("PIXGATE__SIGNING__SALTS", SIGNING_SALT),
        ("PIXGATE__AUTH__JWT_HS256_SECRET", JWT_SECRET),
        ("PIXGATE__AUTH__JWT_ISSUER", ISSUER),
        ("PIXGATE__AUTH__JWT_AUDIENCE", AUDIENCE),
        ("PIXGATE__LOG__LEVEL", "pixgate=debug,warn"),
        ("PIXGATE__TRANSFORM__WORKERS", "2"),
        // Tests run in parallel from one address against one Redis: each server gets its own
        // key space, and limits that would couple unrelated tests are opened wide. The limits
        // tests (`limits.rs`) set the real values they test.
        ("PIXGATE__LIMITS__AUTH_FAILURES_PER_IP", "100000"),
        ("PIXGATE__LIMITS__REQUESTS_PER_MINUTE", "100000"),
        ("PIXGATE__LIMITS__IP_REQUESTS_PER_MINUTE", "100000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    match backend {
        Backend::Fs => {
            env.push((
                "PIXGATE__STORAGE__FS_ROOT".into(),
                dir.join("data").display().to_string(),
            ));
        }
        Backend::S3 => {
            let s = services();
            for (k, v) in [
                ("PIXGATE__STORAGE__BACKEND", "s3"),
                ("PIXGATE__STORAGE__S3_ENDPOINT", s.s3_endpoint.as_str()),
                ("PIXGATE__STORAGE__S3_REGION", "garage"),
                ("PIXGATE__STORAGE__S3_BUCKET", ORIGINALS_BUCKET),
                ("PIXGATE__STORAGE__S3_DERIVED_BUCKET", DERIVED_BUCKET),
                ("PIXGATE__STORAGE__S3_AUDIT_BUCKET", AUDIT_BUCKET),
                ("PIXGATE__STORAGE__S3_FORCE_PATH_STYLE", "true"),
                ("AWS_ACCESS_KEY_ID", S3_KEY_ID),
                ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
            ] {
                env.push((k.into(), v.into()));
            }
            env.push((
                "PIXGATE__REDIS__URL".into(),
                format!("redis://127.0.0.1:{}/0", s.redis_port),
            ));
        }
    }
    env.push((
        "PIXGATE__REDIS__KEY_PREFIX".into(),
        format!("t{}", crate::identity::unique("k")),
    ));
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

/// A `pixgate` command with a clean environment (no inherited PIXGATE__ or AWS_ variables).
pub fn pixgate_cmd(env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pixgate"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // Never let the AWS SDK probe instance metadata from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd
}

impl Server {
    pub fn start(backend: Backend) -> Server {
        Server::start_with(backend, &[])
    }

    pub fn start_with(backend: Backend, extra: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = server_env(backend, dir.path(), extra);
        Server::start_cmd(pixgate_cmd(&env), dir)
    }

    /// Starts `pixgate serve` inside a wrapper command (`wrapper… pixgate serve`), e.g.
    /// `unshare` to give it a mount namespace with a small tmpfs.
    pub fn start_wrapped(backend: Backend, extra: &[(&str, &str)], wrapper: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = server_env(backend, dir.path(), extra);
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_pixgate"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Server::start_cmd(cmd, dir)
    }

    fn start_cmd(mut cmd: Command, dir: tempfile::TempDir) -> Server {
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        cmd.arg("serve")
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = spawn_tied(&mut cmd).expect("spawn pixgate");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("pixgate listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(b) => b,
            Err(_) => {
                let log =
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                let _ = child.kill();
                panic!("pixgate did not start:\n{log}");
            }
        };
        let addr: SocketAddr = base
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .parse()
            .expect("listen address");
        Server {
            child: Some(child),
            base,
            addr,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The server's log so far. A worker thread writes its lines out as it parks (`logsink`),
    /// moments after the response that a test has just read: this waits until the file has
    /// not grown for 20 ms (at most 2 s).
    pub fn log(&self) -> String {
        let path = self.dir.path().join("server.log");
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = size();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = size();
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        std::fs::read_to_string(&path).unwrap_or_default()
    }

    /// The server's log once it holds every one of `needles` (at most 10 s; then the log as it
    /// is, for the caller's assertion to show): a line written as a worker thread parks may
    /// land a moment after the response that caused it.
    pub fn log_with(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if needles.iter().all(|n| log.contains(n)) || Instant::now() > deadline {
                return log;
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// SIGKILL, as an OOM kill or a power cut would; waits for the exit.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pixgate did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn auth_config() -> AuthConfig {
    AuthConfig {
        jwt_hs256_secret: JWT_SECRET.into(),
        jwt_issuer: ISSUER.into(),
        jwt_audience: AUDIENCE.into(),
        ..AuthConfig::default()
    }
}

/// A valid token for `sub` with `role`.
pub fn token(sub: &str, role: Role) -> String {
    token_with_plan(sub, role, None)
}

/// A valid token for `sub` with `role` and a `plan` claim.
pub fn token_with_plan(sub: &str, role: Role, plan: Option<&str>) -> String {
    mint_hs256(
        &auth_config(),
        &TokenRequest {
            sub: sub.into(),
            role,
            plan: plan.map(String::from),
            ttl_secs: 600,
        },
    )
    .expect("mint")
}

/// A `redis-server` of one test's own, which the test may kill, slow down and restart (on the
/// same port) without disturbing the shared one.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (again) on the same port, empty: the shared Redis keeps nothing on disk either.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(spawn_tied(&mut cmd).expect("redis-server"));
        wait_port(self.port, Duration::from_secs(10));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let mut c = self.child.take().expect("running");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `redis-cli` started in the background (e.g. `DEBUG SLEEP`).
    pub fn cli_background(&self, args: &[&str]) -> Child {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `Authorization: Bearer …` for a credential.
pub fn bearer(credential: &str) -> String {
    format!("Bearer {credential}")
}

/// An S3 client for the shared Garage, to look at buckets the way an operator would.
pub async fn s3_client() -> aws_sdk_s3::Client {
    let s = services();
    let creds = aws_sdk_s3::config::Credentials::new(S3_KEY_ID, S3_SECRET, None, None, "tests");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("garage"))
        .endpoint_url(&s.s3_endpoint)
        .force_path_style(true)
        .credentials_provider(creds)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Puts one object into `bucket` of the shared Garage.
pub async fn s3_put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .expect("put object");
}

/// Every key in `bucket` (through ListObjectsV2).
pub async fn s3_keys(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let out = client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token)
            .send()
            .await
            .expect("list objects");
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
        match out.next_continuation_token() {
            Some(t) => token = Some(t.to_owned()),
            None => return keys,
        }
    }
}

/// Every object of the shared buckets (originals, derived, audit), key and body.
pub async fn s3_objects(client: &aws_sdk_s3::Client) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for bucket in [ORIGINALS_BUCKET, DERIVED_BUCKET, AUDIT_BUCKET] {
        for key in s3_keys(client, bucket).await {
            let obj = client
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .expect("get object");
            let body = obj
                .body
                .collect()
                .await
                .expect("body")
                .into_bytes()
                .to_vec();
            out.push((format!("{bucket}/{key}"), body));
        }
    }
    out
}

/// `/{signature}{path}` with the test signing key.
pub fn signed(path: &str) -> String {
    let s = Signer::from_hex(&[SIGNING_KEY.into()], &[SIGNING_SALT.into()], 32).expect("signer");
    format!("/{}{}", s.sign(path), path)
}

pub fn fixture(name: &str) -> Bytes {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    Bytes::from(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// A buffered response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The stable error code of an error response.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// One HTTP/1.1 request.
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
    try_request(method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// One HTTP/1.1 request; `Err` when the connection fails (a server that was killed).
pub async fn try_request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body)).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    request(Method::GET, url, headers, Bytes::new()).await
}

/// Uploads `body` as `content_type` with `token`.
pub async fn upload(server: &Server, token: &str, content_type: &str, body: Bytes) -> Resp {
    let auth = format!("Bearer {token}");
    request(
        Method::POST,
        &server.url("/v1/images"),
        &[("authorization", &auth), ("content-type", content_type)],
        body,
    )
    .await
}

/// Uploads a fixture as `owner` (editor) and returns the new image id.
pub async fn upload_fixture(
    server: &Server,
    owner: &str,
    name: &str,
    content_type: &str,
) -> String {
    let r = upload(
        server,
        &token(owner, Role::Editor),
        content_type,
        fixture(name),
    )
    .await;
    assert_eq!(
        r.status,
        201,
        "upload {name}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["id"].as_str().expect("id").to_owned()
}

/// Reads one sample value from Prometheus text, e.g. `metric(&text, "x_total", "{a=\"b\"}")`.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub async fn metrics(server: &Server) -> String {
    let r = get(&server.url("/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Runs a test body against both storage backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn fs() {
                    super::$name($crate::harness::Backend::Fs).await
                }
                #[tokio::test]
                async fn s3() {
                    super::$name($crate::harness::Backend::S3).await
                }
            }
        )*
    };
}

/// Waits until `f(metrics)` holds (background work: derived writes, eager renders, purges).
pub async fn wait_for(s: &Server, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics(s).await;
        if f(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A second server on the first one's storage (same directory, or the same buckets).
/// Each server has an audit spool of its own (a spool serves one process).
pub fn restart_on_same_storage(backend: Backend, first: &Server, extra: &[(&str, &str)]) -> Server {
    let root = first.dir.path().join("data").display().to_string();
    let spool = first
        .dir
        .path()
        .join(crate::identity::unique("spool"))
        .display()
        .to_string();
    let mut env: Vec<(&str, &str)> = extra.to_vec();
    if backend == Backend::Fs {
        env.push(("PIXGATE__STORAGE__FS_ROOT", root.as_str()));
        env.push(("PIXGATE__AUDIT__SPOOL_DIR", spool.as_str()));
    }
    Server::start_with(backend, &env)
}

/// An HTTP/2 (prior knowledge) connection to `s`, its driver running in a task.
pub async fn h2_connect(
    s: &Server,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    (send, tokio::spawn(conn))
}
