//! The log streams' writer: formatted lines go through a bounded channel to one thread that
//! writes them to stderr in batches (issue 20, the hit path with the audit stream on).
//!
//! Writing each event straight to stderr cost a `write(2)` per request under the stderr lock,
//! taken by every runtime thread in turn: the audit stream alone took ~14 % of the cache-hit
//! throughput. Here a request's thread only copies its formatted line into the channel; the
//! writer thread drains whatever has queued and writes it with one buffered flush. Order is
//! kept (one channel). Nothing is dropped: a full channel (16,384 lines) blocks the logging
//! thread as the direct write did. [`Flush`] waits for the queue to be written at exit.

use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines that may wait for the writer thread before a logging thread blocks.
const CAPACITY: usize = 16_384;
/// The longest [`Flush`] waits at exit.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Message {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// A [`MakeWriter`] for `tracing_subscriber::fmt` that hands lines to the writer thread.
#[derive(Clone)]
pub struct LogWriter {
    tx: SyncSender<Message>,
}

/// Writes everything queued when dropped (call sites keep it until the process ends).
pub struct Flush {
    tx: SyncSender<Message>,
}

/// Starts the writer thread on `out` (stderr in the server).
pub fn start<W: Write + Send + 'static>(out: W) -> std::io::Result<(LogWriter, Flush)> {
    let (tx, rx) = mpsc::sync_channel(CAPACITY);
    std::thread::Builder::new()
        .name("pixgate-log".into())
        .spawn(move || drain(rx, out))?;
    Ok((LogWriter { tx: tx.clone() }, Flush { tx }))
}

fn drain<W: Write>(rx: Receiver<Message>, out: W) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    let handle = |message: Message, out: &mut std::io::BufWriter<W>| match message {
        Message::Line(line) => {
            let _ = out.write_all(&line);
        }
        Message::Flush(done) => {
            let _ = out.flush();
            let _ = done.send(());
        }
    };
    while let Ok(message) = rx.recv() {
        handle(message, &mut out);
        while let Ok(more) = rx.try_recv() {
            handle(more, &mut out);
        }
        let _ = out.flush();
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(FLUSH_WAIT);
        }
    }
}

/// One event's line, sent when the formatter drops it.
pub struct Line<'a> {
    tx: &'a SyncSender<Message>,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.tx.send(Message::Line(std::mem::take(&mut self.buf)));
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            tx: &self.tx,
            buf: Vec::with_capacity(512),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A `Write` into shared memory.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_in_order_per_thread_and_flush_waits() {
        let sink = Shared::default();
        let (writer, flush) = start(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        let mut line = w.make_writer();
                        write!(line, "t{t} ").unwrap();
                        writeln!(line, "{i}").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(flush);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8_000);
        for t in 0..4 {
            let mine: Vec<u32> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("t{t} ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..2_000).collect::<Vec<_>>(), "thread {t}");
        }
    }
}
