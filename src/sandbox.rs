//! The sandboxed decoder child: AVIF and HEIC are decoded by a short-lived `pixgate
//! decode-worker` process, never in the server (see `image::isolated` for why).
//!
//! Parent ([`ChildDecoder`], on a CPU-pool thread, so the pool's concurrency and memory
//! reservation cover the child): spawns this binary with an empty environment (no secrets),
//! `/` as its working directory and only three pipes; writes the source to its stdin; reads one
//! result record from its stdout, refusing anything but the probed size; reads at most
//! [`STDERR_BYTES`] of diagnostics. A child killed by a signal (a decoder abort, a seccomp
//! kill, the CPU limit) is an `invalid_image` answer, counted in [`crashes`].
//!
//! Child ([`child_main`]): before reading a byte of input it caps its own data segment at the
//! job's memory allowance (`RLIMIT_DATA`: an allocation past the reservation fails), its CPU
//! time ([`CPU_SECONDS`]) and core dumps (none), then installs a seccomp filter
//! that lets through memory management, reads and writes on its existing descriptors, futexes,
//! signals and exit — `open`, `socket`, `connect`, `execve`, `clone` and everything else fail
//! with `EPERM`. A decoder exploited by a hostile file can then only write wrong pixels into the
//! pipe of its own request.
//!
//! Record (stdout): `PXG1`, one status byte; status 0: width, height (u32 LE), channels (u8),
//! then width × height × channels bytes; status 1 (corrupt) or 2 (unsupported): a u32 LE length
//! and at most [`MESSAGE_BYTES`] of UTF-8.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::image::isolated::{Job, Runner};
use crate::image::{Bitmap, ImageError, ImageFormat};

/// CPU seconds a child may use (the decode of a 100 MP HEIC takes a few).
pub const CPU_SECONDS: u64 = 30;
/// Wall-clock seconds before a child is killed whatever it is doing.
pub const WALL_SECONDS: u64 = 2 * CPU_SECONDS;
/// The child's exit status when its limits or seccomp filter cannot be set up.
const SANDBOX_UNAVAILABLE: i32 = 3;
/// Diagnostics kept from a child's stderr (a panic message), for the log.
pub const STDERR_BYTES: u64 = 4096;
/// The longest error message a child may send.
pub const MESSAGE_BYTES: u32 = 1024;
/// The child's own data beyond the job's allowance: the binary's statics, the allocator's
/// first segments, the input it reads and libde265's thread stacks (8 MiB each).
const CHILD_BASE_BYTES: u64 = 128 << 20;

const MAGIC: &[u8; 4] = b"PXG1";
const STATUS_OK: u8 = 0;
const STATUS_CORRUPT: u8 = 1;
const STATUS_UNSUPPORTED: u8 = 2;

static CRASHES: AtomicU64 = AtomicU64::new(0);

/// Children that ended by a signal (or without a result) since the process started.
pub fn crashes() -> u64 {
    CRASHES.load(Ordering::Relaxed)
}

/// Spawns `exe decode-worker …` for every isolated decode.
#[derive(Debug, Clone)]
pub struct ChildDecoder {
    exe: PathBuf,
    /// Wall-clock time before the watchdog kills a child ([`WALL_SECONDS`]).
    wall: std::time::Duration,
}

impl ChildDecoder {
    pub fn new(exe: PathBuf) -> ChildDecoder {
        ChildDecoder {
            exe,
            wall: std::time::Duration::from_secs(WALL_SECONDS),
        }
    }

    /// Installs a child decoder running this very binary (the server, `pixgate` commands).
    pub fn install_current_exe() -> Result<(), String> {
        crate::image::isolated::install(Box::new(ChildDecoder::new(this_binary()?)));
        Ok(())
    }
}

/// The running binary: `/proc/self/exe` names its inode, so a package upgrade that replaces the
/// file on disk (the path then reads "… (deleted)") cannot leave the server spawning a
/// missing or different program.
fn this_binary() -> Result<PathBuf, String> {
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    std::env::current_exe()
        .map_err(|e| format!("cannot find this executable for the decoder child: {e}"))
}

fn corrupt(msg: impl Into<String>) -> ImageError {
    ImageError::Corrupt(msg.into())
}

/// `exe decode-worker` with nothing of the server's: an empty environment (no secrets), `/`
/// as working directory.
fn worker_command(exe: &std::path::Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("decode-worker")
        .env_clear()
        // mimalloc reserves a 1 GiB arena up front by default: writable address space that
        // RLIMIT_DATA counts. Without the reservation it maps what it uses.
        .env("MIMALLOC_ARENA_RESERVE", "0")
        .current_dir("/");
    cmd
}

impl ChildDecoder {
    fn spawn(&self, job: &Job) -> Result<std::process::Child, ImageError> {
        worker_command(&self.exe)
            .arg(job.format.as_str())
            .arg(job.width.to_string())
            .arg(job.height.to_string())
            .arg(job.memory.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ImageError::Unavailable(format!("cannot start the decoder child: {e}")))
    }
}

/// Kills a child that blocks without spending CPU (a decoder deadlock) after [`WALL_SECONDS`];
/// its pipes then close and the parent's reads return. Dropped (stopped) before the child is
/// waited for, so the pid it signals cannot have been reused.
struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(pid: u32, wall: std::time::Duration) -> Watchdog {
        let (done, stop) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(wall) {
                // SAFETY: a signal to our own child, not yet reaped.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        });
        Watchdog {
            done: Some(done),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Runner for ChildDecoder {
    fn decode(&self, job: &Job, bytes: &[u8]) -> Result<Bitmap, ImageError> {
        let mut child = self.spawn(job)?;
        let watchdog = Watchdog::start(child.id(), self.wall);
        // stderr is drained beside the rest (kept up to STDERR_BYTES), so a child that writes
        // a lot of it cannot block on a full pipe while the parent waits for stdout.
        let stderr = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let _ = (&mut err).take(STDERR_BYTES).read_to_end(&mut kept);
                let _ = std::io::copy(&mut err, &mut std::io::sink());
                kept
            })
        });
        // The child reads all of its input before it writes: no deadlock. A child that died
        // early closes the pipe (EPIPE); its status says why.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(bytes);
        }
        let result = child
            .stdout
            .take()
            .map(|out| read_record(out, job))
            .unwrap_or_else(|| Err(corrupt("no output pipe")));
        // A child still running past a refused record is stopped.
        if result.is_err() {
            let _ = child.kill();
        }
        // A child that sent its record and then closed its pipes and blocked would hold this
        // pool thread forever: its exit is awaited with the watchdog still armed, and without
        // reaping it, so the watchdog's pid stays this child's until `wait` below.
        await_exit(child.id());
        drop(watchdog);
        let status = child
            .wait()
            .map_err(|e| corrupt(format!("decoder child: {e}")))?;
        let diagnostics = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        let first_line = String::from_utf8_lossy(&diagnostics)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        outcome(job, result, status, &first_line)
    }
}

/// Blocks until child `pid` has exited, leaving it to be reaped (`WNOWAIT`).
fn await_exit(pid: u32) {
    loop {
        // SAFETY: waitid fills the zeroed siginfo it is given; WNOWAIT leaves the child
        // waitable.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// The answer for a finished child: its record when it exited cleanly, else a refusal.
fn outcome(
    job: &Job,
    record: Result<Result<Bitmap, ImageError>, ImageError>,
    status: std::process::ExitStatus,
    first_line: &str,
) -> Result<Bitmap, ImageError> {
    match record {
        Ok(record) if status.success() => record,
        Ok(Err(e)) => Err(e),
        _ if status.code() == Some(SANDBOX_UNAVAILABLE) => {
            tracing::error!(reason = %first_line, "the decoder sandbox cannot be set up");
            Err(ImageError::Unavailable(format!(
                "{} decoding is unavailable on this server",
                job.format.as_str()
            )))
        }
        _ => {
            CRASHES.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                format = job.format.as_str(),
                status = %status,
                stderr = %first_line,
                "decoder child failed on a source; answered invalid_image"
            );
            Err(corrupt(format!(
                "the {} decoder stopped on malformed data",
                job.format.as_str()
            )))
        }
    }
}

/// Reads one record; the outer error is a broken record, the inner one the child's answer.
fn read_record(mut out: impl Read, job: &Job) -> Result<Result<Bitmap, ImageError>, ImageError> {
    let broken = |_| corrupt("decoder child: broken record");
    let mut head = [0u8; 5];
    out.read_exact(&mut head).map_err(broken)?;
    if &head[..4] != MAGIC {
        return Err(corrupt("decoder child: broken record"));
    }
    if head[4] != STATUS_OK {
        let mut len = [0u8; 4];
        out.read_exact(&mut len).map_err(broken)?;
        let len = u32::from_le_bytes(len);
        if len > MESSAGE_BYTES {
            return Err(corrupt("decoder child: broken record"));
        }
        let mut msg = vec![0u8; len as usize];
        out.read_exact(&mut msg).map_err(broken)?;
        let msg = String::from_utf8_lossy(&msg).into_owned();
        return Ok(Err(match head[4] {
            STATUS_UNSUPPORTED => ImageError::Unsupported(msg),
            _ => ImageError::Corrupt(msg),
        }));
    }
    let mut dims = [0u8; 9];
    out.read_exact(&mut dims).map_err(broken)?;
    let width = u32::from_le_bytes([dims[0], dims[1], dims[2], dims[3]]);
    let height = u32::from_le_bytes([dims[4], dims[5], dims[6], dims[7]]);
    let channels = dims[8];
    if (width, height) != (job.width, job.height) || !matches!(channels, 3 | 4) {
        return Err(corrupt("decoder child: a size other than the probed one"));
    }
    let len = u64::from(width)
        .checked_mul(u64::from(height))
        .and_then(|n| n.checked_mul(u64::from(channels)))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| corrupt("decoder child: too large"))?;
    let mut data = vec![0u8; len];
    out.read_exact(&mut data).map_err(broken)?;
    // Nothing may follow the pixels.
    if out.read(&mut [0u8; 1]).map_err(broken)? != 0 {
        return Err(corrupt("decoder child: trailing output"));
    }
    Ok(Ok(Bitmap {
        width,
        height,
        channels,
        data,
    }))
}

/// The child's entry (`pixgate decode-worker FORMAT WIDTH HEIGHT MEMORY`): limits, then the
/// seccomp filter, then the decode. Exits 0 with a record on stdout (a decode error is a
/// record too); 3 when the sandbox cannot be set up (nothing is decoded without it).
pub fn child_main(format: &str, width: u32, height: u32, memory: u64) -> ExitCode {
    let Some(format) = parse_format(format) else {
        return fail_record(STATUS_UNSUPPORTED, "not a sandboxed format");
    };
    let job = Job {
        format,
        width,
        height,
        memory,
    };
    close_inherited();
    if let Err(e) = limit_self(memory) {
        eprintln!("decode-worker: {e}");
        return ExitCode::from(SANDBOX_UNAVAILABLE as u8);
    }
    crate::image::isolated::prepare(format);
    if let Err(e) = lock_down() {
        eprintln!("decode-worker: {e}");
        return ExitCode::from(SANDBOX_UNAVAILABLE as u8);
    }
    let mut input = Vec::new();
    if std::io::stdin().lock().read_to_end(&mut input).is_err() {
        return fail_record(STATUS_CORRUPT, "cannot read the source");
    }
    let result = crate::image::isolated::decode_here(&job, &input);
    drop(input);
    let mut out = std::io::stdout().lock();
    let written = match &result {
        Ok(b) => out
            .write_all(MAGIC)
            .and_then(|()| out.write_all(&[STATUS_OK]))
            .and_then(|()| out.write_all(&b.width.to_le_bytes()))
            .and_then(|()| out.write_all(&b.height.to_le_bytes()))
            .and_then(|()| out.write_all(&[b.channels]))
            .and_then(|()| out.write_all(&b.data))
            .and_then(|()| out.flush()),
        Err(e) => {
            let status = match e {
                ImageError::Unsupported(_) => STATUS_UNSUPPORTED,
                _ => STATUS_CORRUPT,
            };
            return fail_record(status, &e.to_string());
        }
    };
    if written.is_err() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn parse_format(name: &str) -> Option<ImageFormat> {
    [ImageFormat::Avif, ImageFormat::Heic]
        .into_iter()
        .find(|f| f.as_str() == name)
}

fn fail_record(status: u8, msg: &str) -> ExitCode {
    let mut msg = msg.as_bytes();
    msg = &msg[..msg.len().min(MESSAGE_BYTES as usize)];
    let len = u32::try_from(msg.len()).unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let ok = out
        .write_all(MAGIC)
        .and_then(|()| out.write_all(&[status]))
        .and_then(|()| out.write_all(&len.to_le_bytes()))
        .and_then(|()| out.write_all(&msg[..len as usize]))
        .and_then(|()| out.flush());
    if ok.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Result<(), String> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a plain system call on a stack value.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(format!(
            "setrlimit({resource}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Closes every descriptor past stdin, stdout and stderr: the filter lets the child read and
/// write whatever it holds, so it must hold nothing else (the server opens its own
/// close-on-exec; this covers any that is not).
fn close_inherited() {
    // SAFETY: close_range(2) on descriptors this process owns; an old kernel without it
    // answers ENOSYS and nothing changes.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// Caps the child's data segment and CPU time, and turns core dumps (image bytes) off.
fn limit_self(memory: u64) -> Result<(), String> {
    let data = memory.saturating_add(CHILD_BASE_BYTES);
    setrlimit(libc::RLIMIT_DATA, data, data)?;
    setrlimit(libc::RLIMIT_CPU, CPU_SECONDS, CPU_SECONDS + 1)?;
    setrlimit(libc::RLIMIT_CORE, 0, 0)
}

/// The system calls the decoders, the allocator and the standard library need once the input
/// is being read; anything else fails with `EPERM`.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Threads (libde265's workers), which glibc sets up with these; `clone` itself is checked
    // apart (threads only).
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
];

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7FFF_0000;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const RET_EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
// struct seccomp_data: int nr (0); __u32 arch (4); __u64 ip (8); __u64 args[6] (16…),
// little-endian: the low half of args[n] at 16 + 8n.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0: u32 = 16;
const ARG3: u32 = 40;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn nr(call: libc::c_long) -> u32 {
    u32::try_from(call).unwrap_or(u32::MAX)
}

/// `call` passes only when `test` (`JEQ_K` or `JSET_K` against `k`) on the 32-bit word at
/// `offset` comes out `pass_if`; otherwise `EPERM`. Other calls fall through, the call number
/// loaded again.
fn guard(f: &mut Vec<libc::sock_filter>, call: libc::c_long, word: (u32, u16, u32), pass_if: bool) {
    let (offset, test, k) = word;
    f.push(jump(JEQ_K, nr(call), 0, 4));
    f.push(stmt(LD_W_ABS, offset));
    f.push(if pass_if {
        jump(test, k, 0, 1)
    } else {
        jump(test, k, 1, 0)
    });
    f.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    f.push(stmt(RET_K, RET_EPERM));
    f.push(stmt(LD_W_ABS, NR));
}

/// The filter for process `pid`: a foreign architecture is killed; `clone3` answers `ENOSYS`
/// (glibc then uses `clone`, whose flags a filter can read); `clone` passes only for a thread
/// (`CLONE_THREAD`: no new process); `tgkill` only towards `pid` itself (`abort`; never the
/// server or another child, which run as the same user); `mmap` never shared or grow-down
/// (`RLIMIT_DATA` counts only private writable mappings: those would escape the memory cap);
/// each allowed call number jumps to ALLOW; everything else returns `EPERM`.
fn filter(pid: u32) -> Vec<libc::sock_filter> {
    let mut f = vec![
        stmt(LD_W_ABS, ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR),
        jump(JEQ_K, nr(libc::SYS_clone3), 0, 1),
        stmt(RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ];
    guard(
        &mut f,
        libc::SYS_clone,
        (ARG0, JSET_K, libc::CLONE_THREAD as u32),
        true,
    );
    guard(&mut f, libc::SYS_tgkill, (ARG0, JEQ_K, pid), true);
    let shared_or_grows_down = (libc::MAP_SHARED | libc::MAP_GROWSDOWN) as u32;
    guard(
        &mut f,
        libc::SYS_mmap,
        (ARG3, JSET_K, shared_or_grows_down),
        false,
    );
    let n = ALLOWED.len();
    for (i, call) in ALLOWED.iter().enumerate() {
        // Past the remaining comparisons and the EPERM return, to ALLOW.
        f.push(jump(
            JEQ_K,
            nr(*call),
            u8::try_from(n - i).unwrap_or(u8::MAX),
            0,
        ));
    }
    f.push(stmt(RET_K, RET_EPERM));
    f.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    f
}

/// `no_new_privs`, then the seccomp filter, for this (single-threaded) process.
pub fn lock_down() -> Result<(), String> {
    let program = filter(std::process::id());
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| "filter too long".to_owned())?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with documented arguments; `fprog` points to `program`, alive during the
    // call (the kernel copies the filter).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// `pixgate decode-worker --check`: locks itself down, then tries what an exploited decoder
/// would: open a file, create a socket, start a process, signal its parent (the server),
/// map shared memory (outside the memory cap). Exits 0 only if all of it is refused.
pub fn check_main() -> ExitCode {
    // SAFETY: plain system calls without arguments.
    let parent = unsafe { libc::getppid() };
    if let Err(e) = limit_self(256 << 20).and_then(|()| lock_down()) {
        eprintln!("decode-worker: {e}");
        return ExitCode::from(SANDBOX_UNAVAILABLE as u8);
    }
    let open = std::fs::File::open("/etc/hostname").is_err();
    let socket = std::net::TcpListener::bind("127.0.0.1:0").is_err();
    let spawn = Command::new("/bin/true").status().is_err();
    // SAFETY: signal 0 to the parent only checks permission; delivers nothing.
    let signal = unsafe { libc::syscall(libc::SYS_tgkill, parent, parent, 0) } != 0;
    // SAFETY: an anonymous mapping of our own; unmapped below if it was granted.
    let shared = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p != libc::MAP_FAILED {
            libc::munmap(p, 1 << 20);
        }
        p == libc::MAP_FAILED
    };
    println!(
        "open refused: {open}; socket refused: {socket}; exec refused: {spawn}; \
         signal refused: {signal}; shared memory refused: {shared}"
    );
    if open && socket && spawn && signal && shared {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs `decode-worker --check` with this binary: `Ok` when the kernel takes the filter and
/// the child can neither open, connect, exec, signal its parent nor map shared memory.
pub fn self_check() -> Result<(), String> {
    let out = worker_command(&this_binary()?)
        .arg("--check")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start the decoder child: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            format: ImageFormat::Heic,
            width: 2,
            height: 1,
            memory: 1 << 20,
        }
    }

    fn ok_record(w: u32, h: u32, channels: u8, pixels: usize) -> Vec<u8> {
        let mut r = MAGIC.to_vec();
        r.push(STATUS_OK);
        r.extend(w.to_le_bytes());
        r.extend(h.to_le_bytes());
        r.push(channels);
        r.extend(std::iter::repeat_n(7u8, pixels));
        r
    }

    #[test]
    fn records_are_read_exactly_and_anything_else_is_refused() {
        let b = read_record(&ok_record(2, 1, 3, 6)[..], &job())
            .unwrap()
            .unwrap();
        assert_eq!((b.width, b.height, b.channels, b.data.len()), (2, 1, 3, 6));
        for (what, bytes) in [
            ("short", ok_record(2, 1, 3, 5)),
            ("trailing", ok_record(2, 1, 3, 7)),
            ("another size", ok_record(3, 1, 3, 9)),
            ("two channels", ok_record(2, 1, 2, 4)),
            ("empty", Vec::new()),
            ("magic", b"PXG2\0".to_vec()),
        ] {
            assert!(read_record(&bytes[..], &job()).is_err(), "{what}");
        }
        let mut err = MAGIC.to_vec();
        err.push(STATUS_UNSUPPORTED);
        err.extend(3u32.to_le_bytes());
        err.extend(b"why");
        assert!(matches!(
            read_record(&err[..], &job()).unwrap(),
            Err(ImageError::Unsupported(m)) if m == "why"
        ));
        let mut long = MAGIC.to_vec();
        long.push(STATUS_CORRUPT);
        long.extend((MESSAGE_BYTES + 1).to_le_bytes());
        assert!(read_record(&long[..], &job()).is_err());
    }

    /// A stand-in child: a shell script (the record protocol is all the parent knows).
    fn script(dir: &std::path::Path, body: &str) -> ChildDecoder {
        let path = dir.join("child.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        ChildDecoder {
            exe: path,
            wall: std::time::Duration::from_secs(2),
        }
    }

    #[test]
    fn a_child_that_answers_then_hangs_or_floods_stderr_does_not_hold_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        // A valid refusal record, then both pipes closed and a sleep that costs no CPU.
        let hang = script(
            dir.path(),
            "cat >/dev/null; printf 'PXG1\\001\\003\\000\\000\\000why'; \
             exec 1>&- 2>&-; sleep 1000",
        );
        let started = std::time::Instant::now();
        let r = hang.decode(&job(), b"input");
        assert!(
            matches!(r, Err(ImageError::Corrupt(ref m)) if m == "why"),
            "{r:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // 1 MiB of stderr before the record: drained beside stdout, no watchdog needed.
        let flood = script(
            dir.path(),
            "cat >/dev/null; head -c 1048576 /dev/zero >&2; \
             printf 'PXG1\\002\\003\\000\\000\\000why'",
        );
        let started = std::time::Instant::now();
        let r = flood.decode(&job(), b"input");
        assert!(
            matches!(r, Err(ImageError::Unsupported(ref m)) if m == "why"),
            "{r:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn every_filter_jump_lands_inside_the_program() {
        let f = filter(4242);
        let jmp = (libc::BPF_JMP) as u16;
        for (i, ins) in f.iter().enumerate() {
            if ins.code & 0x07 == jmp {
                for off in [ins.jt, ins.jf] {
                    assert!(i + 1 + usize::from(off) < f.len(), "instruction {i}");
                }
            }
        }
        // The last two: EPERM for the rest, then ALLOW (the allowed calls' target).
        assert_eq!(f[f.len() - 1].k, SECCOMP_RET_ALLOW);
        assert_eq!(f[f.len() - 2].k, SECCOMP_RET_ERRNO | libc::EPERM as u32);
    }
}
