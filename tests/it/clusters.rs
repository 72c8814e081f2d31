//! Multi-node services of one test's own: a Redis Cluster (3 masters + 3 replicas) and a
//! three-node Garage (replication factor 3), started hermetically on free ports, for the
//! fleet tests to kill nodes of.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A free port `p` with `p + 10000` free too (a cluster node's bus port), at most 55535.
fn cluster_port() -> u16 {
    loop {
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).expect("rng");
        let p = 20_000 + u16::from_le_bytes(b) % 25_000;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(p) && free(p + 10_000) {
            return p;
        }
    }
}

/// Six `redis-server --cluster-enabled yes` nodes joined by `redis-cli --cluster create`
/// with one replica per master. Node timeout 1 s: a killed master is failed over in seconds.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    /// TLS only (client, cluster bus and replication), with the test CA.
    tls: bool,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

pub const NODE_TIMEOUT_MS: u64 = 1000;
/// Every node requires it (clients, and replicas of their masters): AUTH in cluster mode.
const PASSWORD: &str = "cluster-pw-0123";

/// A fixture file (the Redis TLS certificate, key and CA: `tests/fixtures/README.md`).
pub fn tls_fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(false)
    }

    /// Client arguments of `redis-cli` for this cluster.
    fn cli_args(&self) -> Vec<String> {
        cli_args(self.tls)
    }

    pub fn start_with(tls: bool) -> RedisCluster {
        let dir = tempfile::Builder::new()
            .prefix("pixgate-rc-")
            .tempdir()
            .expect("tempdir");
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for _ in 0..6 {
            let port = cluster_port();
            let mut cmd = Command::new("redis-server");
            if tls {
                cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                    .args(["--tls-cert-file", &tls_fixture("redis_tls_cert.pem")])
                    .args(["--tls-key-file", &tls_fixture("redis_tls_key.pem")])
                    .args(["--tls-ca-cert-file", &tls_fixture("redis_tls_ca.pem")])
                    .args(["--tls-auth-clients", "no"]);
            } else {
                cmd.args(["--port", &port.to_string()]);
            }
            cmd.args(["--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // A replica fails over however long ago it last heard from its master (with
                // no writes, that can be a whole ping period).
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--repl-ping-replica-period", "1"])
                .args(["--requirepass", PASSWORD, "--masterauth", PASSWORD])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            children.push(Some(spawn_tied(&mut cmd).expect("redis-server")));
            wait_port(port, Duration::from_secs(10));
            ports.push(port);
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        // Bounded: a cluster whose nodes cannot meet makes `--cluster create` wait forever.
        let out = Command::new("timeout")
            .arg("60")
            .arg("redis-cli")
            .args(cli_args(tls))
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster {
            ports,
            tls,
            children,
            _dir: dir,
        };
        c.wait_ok(Duration::from_secs(30));
        c
    }

    /// `PIXGATE__REDIS__CLUSTER_URLS`: every node as a seed, with the password.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| {
                let scheme = if self.tls { "rediss" } else { "redis" };
                format!("{scheme}://:{PASSWORD}@127.0.0.1:{p}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(self.cli_args())
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn live(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.children)
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Ports of the live masters, as the live nodes see them (a killed master still listed
    /// as one before the cluster notices is not counted).
    pub fn masters(&self) -> Vec<u16> {
        let live = self.live();
        let nodes = self.cli(live[0], &["cluster", "nodes"]);
        let mut out: Vec<u16> = nodes
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 8 && f[2].contains("master") && !f[2].contains("fail")
            })
            .filter_map(|l| {
                let addr = l.split_whitespace().nth(1)?;
                addr.split('@').next()?.rsplit(':').next()?.parse().ok()
            })
            .filter(|p| live.contains(p))
            .collect();
        out.sort_unstable();
        out
    }

    /// Waits until every live node reports `cluster_state:ok` and three masters serve slots.
    pub fn wait_ok(&self, max: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let ok = self.live().iter().all(|p| {
                self.cli(*p, &["cluster", "info"])
                    .contains("cluster_state:ok")
            }) && self.masters().len() == 3;
            if ok {
                return start.elapsed();
            }
            assert!(start.elapsed() < max, "redis cluster not ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL of the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).expect("node");
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Number of keys under `prefix` on the node at `port`.
    pub fn keys_on(&self, port: u16, prefix: &str) -> usize {
        self.cli(port, &["--scan", "--pattern", &format!("{prefix}:*")])
            .lines()
            .filter(|l| !l.is_empty())
            .count()
    }
}

fn cli_args(tls: bool) -> Vec<String> {
    let mut a: Vec<String> = ["-a", PASSWORD, "--no-auth-warning"]
        .map(String::from)
        .to_vec();
    if tls {
        a.extend([
            "--tls".into(),
            "--cacert".into(),
            tls_fixture("redis_tls_ca.pem"),
        ]);
    }
    a
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three Garage nodes, replication factor 3 (writes need two of three), the tests' key and
/// buckets. pixgate talks to node 0's S3 API; the others may be killed.
pub struct GarageCluster {
    pub endpoint: String,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

struct NodeConfig {
    cfg: PathBuf,
    rpc: u16,
    s3: u16,
}

fn garage_node(root: &Path, i: usize, secret: &str) -> NodeConfig {
    let ports = GaragePorts::free();
    let dir = root.join(format!("node{i}"));
    std::fs::create_dir_all(&dir).expect("node dir");
    let cfg = dir.join("garage.toml");
    write_garage_config(&cfg, &dir, 3, secret, &ports);
    let (rpc, s3) = (ports.rpc, ports.s3);
    NodeConfig { cfg, rpc, s3 }
}

impl GarageCluster {
    pub fn start() -> GarageCluster {
        let dir = tempfile::Builder::new()
            .prefix("pixgate-gc-")
            .tempdir()
            .expect("tempdir");
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("rng");
        let secret = hex::encode(secret);
        let nodes: Vec<NodeConfig> = (0..3)
            .map(|i| garage_node(dir.path(), i, &secret))
            .collect();
        let mut children = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("node{i}.log"))).expect("log");
            let mut cmd = Command::new(garage_bin());
            cmd.arg("-c")
                .arg(&n.cfg)
                .arg("server")
                .stdout(Stdio::null())
                .stderr(log);
            children.push(Some(spawn_tied(&mut cmd).expect("garage")));
        }
        for n in &nodes {
            wait_port(n.rpc, Duration::from_secs(20));
            wait_port(n.s3, Duration::from_secs(20));
        }
        let first = &nodes[0].cfg;
        let ids: Vec<String> = nodes
            .iter()
            .map(|n| {
                let id = retry(|| garage(&n.cfg, &["node", "id", "-q"]));
                id.trim().split('@').next().unwrap_or_default().to_owned()
            })
            .collect();
        for (n, id) in nodes.iter().zip(&ids).skip(1) {
            let peer = format!("{id}@127.0.0.1:{}", n.rpc);
            retry(|| garage(first, &["node", "connect", &peer]));
        }
        for id in &ids {
            retry(|| garage(first, &["layout", "assign", "-z", "dc1", "-c", "1G", id]));
        }
        retry(|| garage(first, &["layout", "apply", "--version", "1"]));
        import_key_and_buckets(first);
        GarageCluster {
            endpoint: format!("http://127.0.0.1:{}", nodes[0].s3),
            children,
            _dir: dir,
        }
    }

    /// SIGKILL of node `i` (1 or 2: node 0 is the one pixgate talks to).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
