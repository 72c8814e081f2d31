//! The `pixgate` binary: `serve`, `sign`, `token`, `check-config`, `audit verify`, `sweep`,
//! `fsck`, `import`.
//!
//! Start-up code: errors are printed with the offending config key and the process exits
//! non-zero. Nothing here runs on a request path.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use pixgate::app::App;
use pixgate::auth::{Role, TokenRequest, mint_hs256};
use pixgate::config::{Config, DevSecrets};
use pixgate::http::Listener;
use pixgate::options::parse_path;
use pixgate::server;
use pixgate::signature::Signer;

#[derive(Parser)]
#[command(name = "pixgate", version, about = "On-the-fly image transform proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the signed URL path for PATH, e.g. /rs:fit:300:300/f:webp/plain/IMAGE_ID.
    Sign {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Adds an `exp:` option this far in the future (e.g. 1h, 30m, 7d).
        #[arg(long)]
        expires_in: Option<String>,
        path: String,
    },
    /// Mint an HS256 JWT with the configured secret (development and tests).
    Token {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        sub: String,
        #[arg(long, default_value = "viewer")]
        role: String,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Validate and print the effective configuration, secrets redacted.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Operator jobs over the audit archive.
    Audit {
        #[command(subcommand)]
        job: AuditJob,
    },
    /// Retention: deletes audit batches older than `audit.retention_days` (checkpointing each
    /// chain so the rest still verifies) and, with `cache.derived_ttl_days`, derived objects
    /// unused that long. Run it daily (cron, a Kubernetes CronJob) or use the lifecycle rules
    /// in deploy/s3-lifecycle.json.
    Sweep {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The sandboxed decoder child (internal: spawned by the server for AVIF and HEIC).
    #[command(hide = true)]
    DecodeWorker {
        /// Lock down, try what an exploited decoder would, exit 0 if all of it is refused.
        #[arg(long)]
        check: bool,
        #[arg(default_value = "")]
        format: String,
        #[arg(default_value_t = 0)]
        width: u32,
        #[arg(default_value_t = 0)]
        height: u32,
        #[arg(default_value_t = 0)]
        memory: u64,
    },
    /// Storage consistency: finds (and with --repair removes) what interrupted writes and
    /// crashes leave behind — originals without metadata, metadata without an original, owner
    /// index entries and derived objects of missing images, API key lookups and markers of
    /// revoked keys, temporary files of interrupted fs writes. Progress on a terminal (stderr),
    /// a JSON summary on stdout; exits 1 when something is left unrepaired, 2 on errors.
    Fsck {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Remove what is found (otherwise only report).
        #[arg(long)]
        repair: bool,
        /// Objects modified more recently than this are left alone (uploads in flight on a
        /// live server); `0s` only while no server uses the storage.
        #[arg(long, default_value = "15m")]
        min_age: String,
    },
    /// Registers existing originals (an S3 bucket and prefix, or a directory) as pixgate images
    /// without re-uploading them through HTTP: each object passes the upload's checks, gets an
    /// owner, metadata, placeholders and an `image.import` audit event; quotas are not charged.
    /// Resumable (a checkpoint in the storage) and idempotent. JSON lines per object on a
    /// non-terminal stdout, a progress line on a terminal, a JSON summary at the end. Exits 0
    /// when done without failures, 1 when some objects failed (listed with their codes), 3
    /// when interrupted (run it again to continue), 2 on errors.
    Import(ImportArgs),
}

/// `pixgate import`'s arguments.
#[derive(clap::Args)]
struct ImportArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// `s3://BUCKET/PREFIX` or a local directory.
    source: String,
    /// Every object belongs to this user.
    #[arg(long, group = "owners")]
    owner: Option<String>,
    /// The owner is a segment of the key, e.g. `users/{owner}/**` (`*`: any one segment; a
    /// final `**`: one or more).
    #[arg(long, group = "owners")]
    owner_pattern: Option<String>,
    /// CSV rows `key,owner[,title,alt_text,tags]` (tags `;`-separated; a header row is
    /// allowed); keys not listed fail with `not_in_manifest`.
    #[arg(long, group = "owners")]
    manifest: Option<PathBuf>,
    /// Objects in flight at once (at most the CPU pool's workers + queue).
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// At most this many objects started per second (spares the source).
    #[arg(long)]
    rate: Option<f64>,
    /// Read and validate everything, write nothing; report what would be imported and what
    /// would fail.
    #[arg(long)]
    dry_run: bool,
    /// The source's S3 endpoint (default: `storage.s3_endpoint`). Credentials: the
    /// `PIXGATE_IMPORT_ACCESS_KEY_ID` / `PIXGATE_IMPORT_SECRET_ACCESS_KEY` variables if set,
    /// otherwise the standard AWS chain.
    #[arg(long)]
    endpoint: Option<String>,
    /// The source's region (default: `storage.s3_region`).
    #[arg(long)]
    region: Option<String>,
    /// Recorded as the operator in each `image.import` audit event (default: `$USER`).
    #[arg(long)]
    operator: Option<String>,
    /// Reference each source object read-only instead of copying it: reads are pinned to the
    /// ETag that was validated. Needs `storage.backend = "s3"` and a bucket of that same service,
    /// read with the storage's own credentials (the server reads it later with them).
    #[arg(long)]
    in_place: bool,
    /// With `--in-place`: the source objects are pixgate's, so deleting an image (by its
    /// owner, an erasure or an admin) deletes its source object too. Without it, they are
    /// never touched.
    #[arg(long, requires = "in_place")]
    owned: bool,
}

#[derive(Subcommand)]
enum AuditJob {
    /// Checks every hash chain in the archive; names each problem's object and line; exits 1
    /// on any problem.
    Verify {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::DecodeWorker { check: true, .. } => return pixgate::sandbox::check_main(),
        Command::DecodeWorker {
            format,
            width,
            height,
            memory,
            ..
        } => return pixgate::sandbox::child_main(&format, width, height, memory),
        Command::Serve { config } => serve(config),
        Command::Sign {
            config,
            expires_in,
            path,
        } => sign(config, expires_in, &path),
        Command::Token {
            config,
            sub,
            role,
            plan,
            ttl,
        } => token(config, sub, &role, plan, &ttl),
        Command::CheckConfig { config } => check_config(config),
        // `audit verify` exits 1 when the archive does not verify, 2 when it cannot run.
        Command::Audit { job } => match audit(job) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Sweep { config } => sweep(config),
        Command::Import(args) => match import(args) {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Fsck {
            config,
            repair,
            min_age,
        } => match fsck(config, repair, &min_age) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("pixgate: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Defaults → file → env; embedded default gets dev secrets; then validation.
fn load_config(file: Option<PathBuf>) -> Result<Config, String> {
    let mut config = Config::load(file.as_deref(), std::env::vars()).map_err(|e| e.to_string())?;
    if config.embedded {
        let secrets = DevSecrets::load_or_create(&config.storage.fs_root).map_err(|e| {
            format!(
                "cannot read or create {}: {e}",
                DevSecrets::path(&config.storage.fs_root).display()
            )
        })?;
        config.apply_dev_secrets(&secrets);
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn check_config(file: Option<PathBuf>) -> Result<(), String> {
    let config = load_config(file)?;
    if config.embedded {
        println!("# embedded default (no config file, no PIXGATE__* variables)");
    }
    print!("{}", config.redacted_toml());
    Ok(())
}

fn sign(file: Option<PathBuf>, expires_in: Option<String>, path: &str) -> Result<(), String> {
    let config = load_config(file)?;
    if !path.starts_with('/') {
        return Err("PATH must start with /".into());
    }
    let path = match expires_in {
        Some(d) => {
            let ttl = humantime::parse_duration(&d).map_err(|e| format!("--expires-in: {e}"))?;
            let exp = SystemTime::now()
                .checked_add(ttl)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .ok_or("--expires-in is out of range")?
                .as_secs();
            format!("/exp:{exp}{path}")
        }
        None => path.to_owned(),
    };
    // Refuse to sign something the server would refuse to serve.
    parse_path(&path, &config.parse_limits()).map_err(|e| format!("invalid path: {e}"))?;
    let signer = Signer::from_hex(
        &config.signing.keys,
        &config.signing.salts,
        config.signing.signature_size as usize,
    )?;
    println!("/{}{}", signer.sign(&path), path);
    Ok(())
}

fn token(
    file: Option<PathBuf>,
    sub: String,
    role: &str,
    plan: Option<String>,
    ttl: &str,
) -> Result<(), String> {
    let config = load_config(file)?;
    let role = Role::parse(role).ok_or("--role must be viewer, editor or admin")?;
    let ttl = humantime::parse_duration(ttl).map_err(|e| format!("--ttl: {e}"))?;
    let t = mint_hs256(
        &config.auth,
        &TokenRequest {
            sub,
            role,
            plan,
            ttl_secs: ttl.as_secs(),
        },
    )?;
    println!("{t}");
    Ok(())
}

/// Runs an archive job on a runtime of its own; `Ok(false)`: the archive does not verify.
fn audit(job: AuditJob) -> Result<bool, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        match job {
            AuditJob::Verify { config } => {
                let config = load_config(config)?;
                let store = pixgate::app::store(&config).await?;
                let r = pixgate::audit::archive::verify(store.as_ref())
                    .await
                    .map_err(|e| format!("audit archive: {e}"))?;
                for p in &r.problems {
                    println!("FAIL {p}");
                }
                println!(
                    "{} chain(s), {} batch(es), {} record(s): {}",
                    r.chains,
                    r.batches,
                    r.records,
                    if r.problems.is_empty() {
                        "intact".to_owned()
                    } else {
                        format!("{} problem(s)", r.problems.len())
                    }
                );
                Ok(r.problems.is_empty())
            }
        }
    })
}

/// `pixgate sweep`: audit retention, then derived-object expiry.
fn sweep(file: Option<PathBuf>) -> Result<(), String> {
    let config = load_config(file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let store = pixgate::app::store(&config).await?;
        let now = SystemTime::now();
        let cutoff = pixgate::audit::archive::cutoff_day(now, config.audit.retention_days);
        let s = pixgate::audit::archive::sweep(store.as_ref(), &cutoff)
            .await
            .map_err(|e| format!("audit sweep: {e}"))?;
        println!(
            "audit: removed {} batch(es) before {cutoff}; {} chain checkpoint(s) written",
            s.batches, s.checkpoints
        );
        let days = config.cache.derived_ttl_days;
        if days > 0 {
            let cutoff = now
                .checked_sub(Duration::from_secs(days.saturating_mul(86_400)))
                .unwrap_or(UNIX_EPOCH);
            let n = pixgate::cache::derived_sweep(store.as_ref(), cutoff)
                .await
                .map_err(|e| format!("derived sweep: {e}"))?;
            println!("derived: removed {n} object(s) unused for {days} day(s)");
        } else {
            println!("derived: kept (cache.derived_ttl_days = 0)");
        }
        let n = pixgate::auth::blocks::Blocklist::sweep_expired(store.as_ref())
            .await
            .map_err(|e| format!("blocks sweep: {e}"))?;
        println!("blocks: removed {n} expired block(s)");
        // Temporary files of fs writes a crash interrupted (none on S3). An hour is far past
        // any write in progress, so this is safe beside live servers.
        let hour_ago = now
            .checked_sub(Duration::from_secs(3600))
            .unwrap_or(UNIX_EPOCH);
        let mut removed = 0u64;
        for t in store
            .temporaries()
            .await
            .map_err(|e| format!("temporaries: {e}"))?
        {
            if t.modified() < hour_ago
                && store
                    .remove_temporary(&t)
                    .await
                    .map_err(|e| format!("temporary {t}: {e}"))?
            {
                removed += 1;
            }
        }
        println!("temporaries: removed {removed} left by interrupted writes");
        Ok(())
    })
}

/// `pixgate fsck`; `Ok(false)`: findings are left in the store (or some checks failed).
fn fsck(file: Option<PathBuf>, repair: bool, min_age: &str) -> Result<bool, String> {
    use std::io::IsTerminal;
    let config = load_config(file)?;
    let min_age = humantime::parse_duration(min_age).map_err(|e| format!("--min-age: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let terminal = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let report = runtime.block_on(async move {
        let store = pixgate::app::store(&config).await?;
        let foreign = pixgate::storage::foreign::S3Foreign::from_config(&config.storage).await;
        let foreign = foreign
            .as_ref()
            .map(|f| f as &dyn pixgate::storage::foreign::Foreign);
        let opts = pixgate::fsck::FsckOptions { repair, min_age };
        let mut progress = |phase: &str, scanned: u64| {
            if terminal {
                let rate = scanned as f64 / started.elapsed().as_secs_f64().max(0.001);
                eprint!("\r\x1b[2Kfsck: {phase:<12} {scanned:>10} objects  {rate:>8.0}/s");
                if phase == "done" {
                    eprintln!();
                }
            }
        };
        pixgate::fsck::fsck(store.as_ref(), foreign, &opts, &mut progress)
            .await
            .map_err(|e| format!("fsck: {e}"))
    })?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(report.is_clean())
}

/// `pixgate import`; `Ok(code)`: 0 complete without failures, 1 complete with failures in the
/// scan (this run's or an interrupted run's it continued), 3 interrupted (the checkpoint is
/// saved; run it again to continue).
fn import(args: ImportArgs) -> Result<u8, String> {
    use std::io::IsTerminal;
    let config = import_config(&args)?;
    init_tracing(&config);
    let owners = import_owners(&args)?;
    if let Some(r) = args.rate
        && !(r.is_finite() && (0.001..=1e6).contains(&r))
    {
        return Err("--rate must be objects per second, 0.001 to 1000000".into());
    }
    let operator = args
        .operator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let terminal = std::io::stderr().is_terminal();
    let lines = !std::io::stdout().is_terminal();
    runtime.block_on(async move {
        start_decoder_sandbox();
        let source = import_source(&args, &config).await?;
        let mode = import_mode(&args, &config, source.as_ref());
        let app = Arc::new(App::build(config).await?);
        // Never more in flight than the CPU pool admits (workers + queue): a full queue would
        // fail objects that only had to wait.
        let capacity = app.render.workers.capacity();
        let plan = pixgate::import::Plan {
            source,
            owners,
            checks: Arc::new(pixgate::http::legacy::UploadChecks::new(app.clone())),
            jobs: args.jobs.clamp(1, capacity.max(1)),
            rate: args.rate,
            dry_run: args.dry_run,
            mode,
            operator,
        };
        let mut out = ImportOutput {
            started: std::time::Instant::now(),
            done: 0,
            total: None,
            terminal,
            lines,
            stdout: std::io::stdout().lock(),
        };
        let on_event = |e: pixgate::import::Event<'_>| out.event(e);
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let summary = pixgate::import::run(&app, plan, on_event, stop).await;
        // The import's audit events are archived (or spooled, for the next run) before exit.
        app.audit.shutdown(Duration::from_secs(30)).await;
        let summary = summary?;
        if terminal {
            eprintln!();
        }
        let json = serde_json::to_string(&serde_json::json!({"summary": summary}))
            .map_err(|e| e.to_string())?;
        println!("{json}");
        if summary.audit_events_dropped > 0 {
            eprintln!(
                "pixgate: {} image.import audit event(s) could not be archived (audit.queue or audit.spool_max_bytes)",
                summary.audit_events_dropped
            );
        }
        Ok(if !summary.complete {
            3
        } else if summary.scan.failed_total() > 0 || summary.audit_events_dropped > 0 {
            1
        } else {
            0
        })
    })
}

/// The configuration an import runs with: the server's, adjusted for an operator job.
fn import_config(args: &ImportArgs) -> Result<Config, String> {
    let mut config = load_config(args.config.clone())?;
    // The import's audit events get a spool (and chain) of their own: the spool directory is
    // locked by a server running beside it on the same storage root.
    let spool = config.audit.spool_dir(&config.storage.fs_root);
    config.audit.spool_dir = format!("{}-import", spool.display());
    // Objects wait for the CPU pool instead of being shed (there are no clients to protect).
    config.transform.max_queue_wait_ms = 0;
    // Warnings on stderr; the audit events go to the archive (through the spool), not to the
    // terminal, one line per image.
    config.log.level = "warn,audit=off".to_owned();
    Ok(config)
}

/// What `pixgate import` prints as it goes: a JSON line per object off a terminal, a
/// progress line (rate, ETA once the source is counted) on one.
struct ImportOutput<'a> {
    started: std::time::Instant,
    done: u64,
    total: Option<u64>,
    terminal: bool,
    lines: bool,
    stdout: std::io::StdoutLock<'a>,
}

impl ImportOutput<'_> {
    fn event(&mut self, e: pixgate::import::Event<'_>) {
        let (key, outcome) = match e {
            pixgate::import::Event::Total(n) => {
                self.total = Some(n);
                return;
            }
            pixgate::import::Event::Object { key, outcome } => (key, outcome),
        };
        self.done += 1;
        if self.lines {
            let line = serde_json::json!({"key": key, "result": outcome});
            let _ = writeln!(self.stdout, "{line}");
        }
        if self.terminal && (self.done.is_multiple_of(10) || self.total == Some(self.done)) {
            let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            let eta = self
                .total
                .map(|t| {
                    let left = t.saturating_sub(self.done) as f64 / rate.max(0.001);
                    let left = humantime::format_duration(Duration::from_secs(left as u64));
                    format!("  ETA {left}")
                })
                .unwrap_or_default();
            let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
            eprint!(
                "\r\x1b[2Kimport: {}{of} objects  {rate:.1}/s{eta}",
                self.done
            );
        }
    }
}

fn import_owners(args: &ImportArgs) -> Result<pixgate::import::owners::Owners, String> {
    use pixgate::import::owners::{Owners, Pattern, parse_manifest, valid_owner};
    match (&args.owner, &args.owner_pattern, &args.manifest) {
        (Some(o), None, None) if valid_owner(o) => Ok(Owners::Fixed(o.clone())),
        (Some(_), None, None) => Err("--owner: 1..=256 characters, no control characters".into()),
        (None, Some(p), None) => Pattern::parse(p)
            .map(Owners::Pattern)
            .map_err(|e| format!("--owner-pattern: {e}")),
        (None, None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--manifest {}: {e}", path.display()))?;
            parse_manifest(&text).map(Owners::Manifest)
        }
        _ => Err("one of --owner, --owner-pattern or --manifest is required".into()),
    }
}

async fn import_source(
    args: &ImportArgs,
    config: &Config,
) -> Result<Arc<dyn pixgate::import::source::Source>, String> {
    use pixgate::import::source::{DirSource, S3Source, parse_s3};
    if let Some((bucket, prefix)) = parse_s3(&args.source) {
        let s = &config.storage;
        if args.in_place {
            check_in_place(args, config, &bucket)?;
        }
        let endpoint = args
            .endpoint
            .clone()
            .unwrap_or_else(|| s.s3_endpoint.clone());
        let region = args.region.clone().unwrap_or_else(|| s.s3_region.clone());
        let credentials = match (
            std::env::var("PIXGATE_IMPORT_ACCESS_KEY_ID"),
            std::env::var("PIXGATE_IMPORT_SECRET_ACCESS_KEY"),
        ) {
            (Ok(id), Ok(secret)) => Some((id, secret)),
            _ => None,
        };
        let conf = pixgate::storage::client_config(s, &endpoint, &region, credentials).await;
        return Ok(Arc::new(S3Source::new(
            aws_sdk_s3::Client::from_conf(conf),
            bucket,
            prefix,
            Duration::from_secs(s.timeout_secs),
        )));
    }
    if args.source.contains("://") {
        return Err("SOURCE must be s3://BUCKET/PREFIX or a local directory".into());
    }
    if args.in_place {
        return Err("--in-place needs an s3:// source (a directory is always copied)".into());
    }
    Ok(Arc::new(DirSource::new(std::path::Path::new(
        &args.source,
    ))?))
}

/// `--in-place`; else a server-side copy when the service can make it; else a copy.
fn import_mode(
    args: &ImportArgs,
    config: &Config,
    source: &dyn pixgate::import::source::Source,
) -> pixgate::import::Mode {
    use pixgate::import::Mode;
    if args.in_place {
        Mode::InPlace { owned: args.owned }
    } else if source.bucket().is_some() && same_service(args, config) {
        Mode::ServerCopy
    } else {
        Mode::Copy
    }
}

/// The source is read from the storage's own S3 service with its own credentials: the server
/// can read it too (`--in-place`), and the service can copy from it (a server-side copy).
fn same_service(args: &ImportArgs, config: &Config) -> bool {
    let s = &config.storage;
    s.backend == pixgate::storage::Backend::S3
        && args.endpoint.as_ref().is_none_or(|e| *e == s.s3_endpoint)
        && args.region.as_ref().is_none_or(|r| *r == s.s3_region)
        && std::env::var_os("PIXGATE_IMPORT_ACCESS_KEY_ID").is_none()
}

/// `--in-place`: the server must be able to read the source later, with the storage's own
/// service and credentials, and the source must not be pixgate's own layout.
fn check_in_place(args: &ImportArgs, config: &Config, bucket: &str) -> Result<(), String> {
    let s = &config.storage;
    if s.backend != pixgate::storage::Backend::S3 {
        return Err("--in-place needs storage.backend = \"s3\"".into());
    }
    if !same_service(args, config) {
        return Err("--in-place reads the source with the storage's own endpoint and credentials (the server reads it later with them): drop --endpoint, --region and PIXGATE_IMPORT_* or import by copy".into());
    }
    if [&s.s3_bucket, &s.s3_derived_bucket, &s.s3_audit_bucket].contains(&&bucket.to_owned()) {
        return Err(format!(
            "--in-place: {bucket} is one of pixgate's own buckets"
        ));
    }
    Ok(())
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    // The audit log stream stays on unless the filter says otherwise about it.
    let level = if config.log.level.contains("audit") {
        config.log.level.clone()
    } else {
        format!("{},audit=info", config.log.level)
    };
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(pixgate::logsink::Stderr);
    if config.log.format == pixgate::config::LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    // A panic (caught per request: a codec bug on a hostile file is `invalid_image`) is one
    // structured log line with its location, not a multi-line backtrace on stderr that a log
    // pipeline splits into dozens of unparseable records.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message: String = message.chars().take(300).collect();
        tracing::error!(target: "panic", %location, %message, "panic");
        // If this panic ends the process (a panic while unwinding aborts), its line must not
        // stay in this thread's log buffer.
        pixgate::logsink::flush();
    }));
}

fn serve(file: Option<PathBuf>) -> Result<(), String> {
    pixgate::tune_allocator();
    let config = load_config(file.clone())?;
    init_tracing(&config);
    start_decoder_sandbox();
    // Worker threads batch their log lines and write them out as they park (`logsink`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_unpark(pixgate::logsink::unparked)
        .on_thread_park(pixgate::logsink::flush)
        .on_thread_stop(pixgate::logsink::flush)
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let result = runtime.block_on(run(config, file));
    // Connections are drained by now; blocking-pool jobs of abandoned requests (or a stuck
    // disk) must not hold the process open: dropping a runtime would wait for them forever.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// AVIF and HEIC decode in a sandboxed child of this binary (`pixgate::sandbox`). Checked
/// once here: where the kernel refuses the seccomp filter those uploads and transforms are
/// refused, and the log says why; the server runs either way.
fn start_decoder_sandbox() {
    if let Err(e) = pixgate::sandbox::ChildDecoder::install_current_exe() {
        tracing::error!(error = %e, "AVIF and HEIC sources are unavailable");
        return;
    }
    match pixgate::sandbox::self_check() {
        Ok(()) => tracing::info!("decoder sandbox ready (AVIF, HEIC)"),
        Err(e) => {
            tracing::error!(error = %e, "decoder sandbox unavailable: AVIF and HEIC sources will be refused")
        }
    }
}

/// On `SIGHUP`: re-reads the configuration (file, environment, `file:` secrets) and swaps in
/// its secrets (`App::reload`); a configuration that does not load keeps the previous ones.
fn spawn_reloader(app: Arc<App>, file: Option<PathBuf>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: secrets reload needs a restart");
                return;
            }
        };
        while hup.recv().await.is_some() {
            let f = file.clone();
            let loaded = tokio::task::spawn_blocking(move || load_config(f))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            let reloaded = match loaded {
                Ok(config) => app.reload(&config).await,
                Err(e) => Err(e),
            };
            match reloaded {
                Ok(what) => tracing::info!(reloaded = ?what, "SIGHUP: secrets reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: reload refused; the previous secrets stay in force")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (app, file);
}

/// Subscribes to the fleet bus before listening: listening first would let a delete made
/// through another instance skip this one.
async fn join_fleet(app: &Arc<App>) {
    if let Some(fleet) = &app.fleet {
        fleet.start(app.clone());
        if !fleet.wait_up(FLEET_JOIN_WAIT).await {
            tracing::warn!("fleet: event bus not reachable yet; joining when it is");
        }
    }
}

/// How long start-up waits for the fleet bus before listening anyway.
const FLEET_JOIN_WAIT: Duration = Duration::from_secs(3);

async fn run(config: Config, file: Option<PathBuf>) -> Result<(), String> {
    if config.embedded {
        let secrets = DevSecrets::path(&config.storage.fs_root);
        tracing::warn!(
            secrets = %secrets.display(),
            "EMBEDDED DEFAULT: development signing key and JWT secret in use; do not expose this server"
        );
        eprintln!(
            "\n  !!! pixgate is running on the EMBEDDED DEFAULT with DEVELOPMENT SECRETS ({}).\n  !!! Do not expose it. Configure signing.keys, auth.jwt_hs256_secret, issuer and audience for real use.\n",
            secrets.display()
        );
    }
    let (listener, addr) = server::bind(config.server.listen)
        .await
        .map_err(|e| format!("server.listen {}: {e}", config.server.listen))?;
    let metrics_listener = match config.server.metrics_listen {
        None => None,
        Some(maddr) => Some(
            server::bind(maddr)
                .await
                .map_err(|e| format!("server.metrics_listen {maddr}: {e}"))?,
        ),
    };
    let tls = if config.server.tls_cert_file.is_empty() {
        None
    } else {
        Some(server::tls_acceptor(
            &config.server.tls_cert_file,
            &config.server.tls_key_file,
        )?)
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let app = Arc::new(App::build(config).await?);
    join_fleet(&app).await;
    tracing::info!(%addr, backend = app.store.backend(), scheme, "pixgate listening");
    // A machine-readable line for scripts and the test harness (which may bind port 0).
    println!("pixgate listening on {scheme}://{addr}");
    if let Some((_, maddr)) = &metrics_listener {
        println!("pixgate metrics on http://{maddr}");
    }
    let _ = std::io::stdout().flush();

    spawn_reloader(app.clone(), file);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(server::serve(
        listener,
        app.clone(),
        Listener::Main,
        tls,
        rx.clone(),
    )));
    if let Some((l, _)) = metrics_listener {
        tasks.push(tokio::spawn(server::serve(
            l,
            app.clone(),
            Listener::Metrics,
            None,
            rx.clone(),
        )));
    }
    server::shutdown_signal().await;
    let _ = tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    // Every request has finished: nobody needs to wait for this instance's acknowledgement
    // any more; then seal the last audit batch (archived, or spooled for the next start).
    if let Some(fleet) = &app.fleet {
        fleet.leave().await;
    }
    app.audit.shutdown(Duration::from_secs(10)).await;
    tracing::info!("pixgate stopped");
    Ok(())
}
