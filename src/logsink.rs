//! Where the log streams go: standard error, written in batches by the runtime's worker threads.
//!
//! Every request writes a log line and an audit line. Under a container runtime or systemd,
//! standard error is a pipe and each `write(2)` wakes its reader: one write per line held
//! cache hits at 0.88x of nginx (also logging through a pipe), batching brings them to
//! 1.00-1.06x (`benches/cdn_origin.sh`, `LOGS=1 LOG_PIPE=1`); into a file the difference is
//! within noise. Here a tokio worker thread appends its whole, formatted lines to a buffer of
//! its own and writes the buffer out in one call when it is about to park (it has nothing left
//! to run), when the buffer holds [`FLUSH_BYTES`], when its oldest line is [`MAX_AGE`] old at the
//! next line, and when the thread stops. Under load that is dozens of lines per write; an idle
//! server writes each line as soon as its request is done. No thread is woken for it (a
//! dedicated writer thread measured worse, 0.72x, on 2 cores).
//!
//! Every other thread (the main thread, the blocking pool, the CPU workers, a process without
//! the runtime hooks such as the CLI) writes each line at once, as before. Lines are never
//! split or reordered within a thread; between threads their order is the order of the writes,
//! as it was. What a `SIGKILL` loses is what the worker threads held: at most
//! [`FLUSH_BYTES`] each, never more than [`MAX_AGE`] of lines from a thread that is still
//! logging; so does a worker still blocked when the runtime's shutdown grace (1 s) ends. A
//! graceful stop writes them out (`on_thread_stop`), and the panic hook writes out its thread's
//! buffer at once. The durable record is the audit archive, which does not go through here.

use std::cell::RefCell;
use std::io::Write;
use std::time::{Duration, Instant};

/// A worker thread's buffer is written out when it reaches this size.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// ... or when its oldest line is this old as another line is added.
pub const MAX_AGE: Duration = Duration::from_millis(50);

struct Pending {
    buf: Vec<u8>,
    since: Option<Instant>,
}

/// Writes to standard error under its lock, so another thread's line never lands inside a
/// batch. (Unit tests capture what would be written instead.)
fn emit(bytes: &[u8]) -> std::io::Result<()> {
    #[cfg(test)]
    {
        // `try_with`: at thread exit the capture may be gone before the buffer's destructor.
        let _ = tests::WRITTEN.try_with(|w| w.borrow_mut().extend_from_slice(bytes));
        Ok(())
    }
    #[cfg(not(test))]
    {
        std::io::stderr().lock().write_all(bytes)
    }
}

impl Pending {
    fn write_out(&mut self) {
        if !self.buf.is_empty() {
            let _ = emit(&self.buf);
            self.buf.clear();
        }
        self.since = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.write_out();
    }
}

thread_local! {
    /// `Some` on a runtime worker thread once it has parked and woken (see [`unparked`]).
    static PENDING: RefCell<Option<Pending>> = const { RefCell::new(None) };
}

/// The runtime's `on_thread_unpark` hook: from now on this thread batches its lines. Only
/// worker threads park (the blocking pool's threads never call the hook), so only they batch.
pub fn unparked() {
    // `try_with`: during thread teardown the buffer may already be gone.
    let _ = PENDING.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut()
            && p.is_none()
        {
            *p = Some(Pending {
                buf: Vec::with_capacity(FLUSH_BYTES),
                since: None,
            });
        }
    });
}

/// The runtime's `on_thread_park` and `on_thread_stop` hooks: writes out what this thread
/// holds.
pub fn flush() {
    let _ = PENDING.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut()
            && let Some(p) = p.as_mut()
        {
            p.write_out();
        }
    });
}

/// Buffers `line` if this thread batches; otherwise hands it back.
fn buffer(line: &[u8]) -> Option<&[u8]> {
    // Gone (thread teardown: a destructor logging): written at once.
    let held = PENDING.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return Some(line);
        };
        let Some(p) = p.as_mut() else {
            return Some(line);
        };
        let now = Instant::now();
        if p.since.is_some_and(|s| now.duration_since(s) >= MAX_AGE)
            || p.buf.len() + line.len() > FLUSH_BYTES
        {
            p.write_out();
        }
        if line.len() > FLUSH_BYTES {
            return Some(line);
        }
        p.buf.extend_from_slice(line);
        p.since.get_or_insert(now);
        None
    });
    held.unwrap_or(Some(line))
}

/// The `tracing_subscriber` writer: standard error through the thread's batch.
#[derive(Clone, Copy, Default)]
pub struct Stderr;

/// One event's writer. The fmt layer formats a whole line and hands it over in one
/// `write_all`, so each `write` here is a complete line.
pub struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if let Some(direct) = buffer(line) {
            emit(direct)?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        pub(super) static WRITTEN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    fn written() -> String {
        WRITTEN.with(|w| String::from_utf8_lossy(&w.borrow()).into_owned())
    }

    fn log(line: &str) {
        LineWriter.write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn a_thread_that_never_parked_writes_each_line_at_once() {
        std::thread::spawn(|| {
            log("one\n");
            assert_eq!(written(), "one\n");
            log("two\n");
            assert_eq!(written(), "one\ntwo\n");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_worker_thread_holds_lines_until_it_parks() {
        std::thread::spawn(|| {
            unparked();
            log("one\n");
            log("two\n");
            assert_eq!(written(), "", "held");
            flush();
            assert_eq!(written(), "one\ntwo\n", "in order, at the park");
            flush();
            assert_eq!(written(), "one\ntwo\n", "nothing twice");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_full_buffer_is_written_out_before_the_line_that_would_overflow_it() {
        std::thread::spawn(|| {
            unparked();
            let big = "x".repeat(FLUSH_BYTES - 4) + "\n";
            log(&big);
            assert_eq!(written(), "");
            log("overflow\n");
            assert_eq!(written(), big, "the held bytes left; the new line is held");
            // A line larger than the buffer goes straight out, after what was held.
            let huge = "y".repeat(FLUSH_BYTES + 1);
            log(&huge);
            assert_eq!(written(), format!("{big}overflow\n{huge}"));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_old_line_is_written_out_with_the_next() {
        std::thread::spawn(|| {
            unparked();
            log("old\n");
            std::thread::sleep(MAX_AGE + Duration::from_millis(5));
            log("new\n");
            assert_eq!(
                written(),
                "old\n",
                "the old line left when the new one came"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn what_a_stopping_thread_holds_is_written_out() {
        let out = std::thread::spawn(|| {
            unparked();
            log("last words\n");
            // What the thread-local's destructor does at thread exit.
            let held = PENDING.with(|p| p.borrow_mut().take());
            drop(held);
            written()
        })
        .join()
        .unwrap();
        assert_eq!(out, "last words\n");
    }
}
