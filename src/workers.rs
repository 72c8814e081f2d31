//! The CPU pool: a semaphore of `transform.workers` permits and a bounded queue in front.
//!
//! CPU work (decode, resize, encode, hashing large bodies) runs on tokio's blocking pool, never
//! on the async workers. When `workers + queue_len` jobs are already admitted, new work is
//! refused at once with 503 `overloaded` instead of piling up. Admission is released in `Drop`,
//! so a request cancelled while queued frees its slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::{Histogram, IntGauge};
use tokio::sync::Semaphore;

use crate::error::Error;

/// Runs CPU-bound closures with bounded concurrency and queueing.
pub struct Workers {
    permits: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
    depth: IntGauge,
    wait: Histogram,
}

/// A reserved place in the pool (queued or running), released on drop. Taking it before
/// fetching a job's input bounds how many inputs are held in memory at once.
pub struct Admission {
    admitted: Arc<AtomicUsize>,
    depth: IntGauge,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
        self.depth.dec();
    }
}

impl Workers {
    pub fn new(workers: usize, queue_len: usize, depth: IntGauge, wait: Histogram) -> Workers {
        let workers = workers.max(1);
        Workers {
            permits: Arc::new(Semaphore::new(workers)),
            admitted: Arc::new(AtomicUsize::new(0)),
            max_admitted: workers + queue_len,
            depth,
            wait,
        }
    }

    /// Reserves a place, or refuses at once with `overloaded` when the queue is full.
    pub fn admit(&self) -> Result<Admission, Error> {
        let prev = self.admitted.fetch_add(1, Ordering::AcqRel);
        let admission = Admission {
            admitted: self.admitted.clone(),
            depth: self.depth.clone(),
        };
        self.depth.inc();
        if prev >= self.max_admitted {
            return Err(Error::Overloaded); // `admission` drops and undoes the increment
        }
        Ok(admission)
    }

    /// Runs `f` on the blocking pool once a worker is free.
    pub async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let admission = self.admit()?;
        self.run_admitted(admission, f).await
    }

    /// Runs `f` in a place reserved earlier with [`Workers::admit`].
    pub async fn run_admitted<T, F>(&self, admission: Admission, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let waited = self.wait.start_timer();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("worker pool closed".into()))?;
        waited.observe_duration();
        tokio::task::spawn_blocking(move || {
            // Both are held until the work is done, even if the caller went away.
            let _permit = permit;
            let _admission = admission;
            f()
        })
        .await
        .map_err(|e| Error::Internal(format!("worker task failed: {e}")))
    }
}

/// A bounded count of background jobs (derived writes, eager renders, CDN purges): a job
/// enters only while fewer than `max` are waiting or running, and leaves when its [`Slot`]
/// drops — on every exit path, panics included.
pub struct Backlog {
    pending: Arc<AtomicUsize>,
    max: usize,
}

/// A place in a [`Backlog`], given back on drop.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Backlog {
    pub fn new(max: usize) -> Backlog {
        Backlog {
            pending: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A place, or `None` when the backlog is full.
    pub fn try_enter(&self) -> Option<Slot> {
        let slot = Slot(self.pending.clone());
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max {
            return None; // `slot` drops and undoes the increment
        }
        Some(slot)
    }

    /// Jobs waiting or running.
    pub fn len(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn wait() -> Histogram {
        Histogram::with_opts(prometheus::HistogramOpts::new("w", "w")).unwrap()
    }

    #[tokio::test]
    async fn full_queue_is_refused_fast_and_recovers() {
        let w = Arc::new(Workers::new(1, 1, IntGauge::new("d", "d").unwrap(), wait()));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let block = |rx: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>| {
            move || {
                let _ = rx.lock().unwrap().recv();
            }
        };
        let w1 = w.clone();
        let r1 = rx.clone();
        let running = tokio::spawn(async move { w1.run(block(r1)).await });
        let w2 = w.clone();
        let r2 = rx.clone();
        let queued = tokio::spawn(async move { w2.run(block(r2)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = w.run(|| ()).await;
        assert_eq!(refused.unwrap_err().code(), "overloaded");
        tx.send(()).unwrap();
        tx.send(()).unwrap();
        running.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        w.run(|| ()).await.unwrap();
        assert_eq!(w.admitted.load(Ordering::Acquire), 0);
    }

    #[test]
    fn backlog_is_bounded_and_slots_come_back() {
        let b = Backlog::new(2);
        let one = b.try_enter().unwrap();
        let two = b.try_enter().unwrap();
        assert!(b.try_enter().is_none());
        assert_eq!(b.len(), 2);
        drop(one);
        let three = b.try_enter().unwrap();
        drop((two, three));
        assert!(b.is_empty());
    }

    #[tokio::test]
    async fn cancelled_waiter_frees_its_slot() {
        let w = Arc::new(Workers::new(1, 1, IntGauge::new("d", "d").unwrap(), wait()));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let w1 = w.clone();
        let running = tokio::spawn(async move {
            w1.run(move || {
                let _ = rx.recv();
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let w2 = w.clone();
        let waiter = tokio::spawn(async move { w2.run(|| ()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(w.admitted.load(Ordering::Acquire), 1);
        tx.send(()).unwrap();
        running.await.unwrap().unwrap();
        assert_eq!(w.admitted.load(Ordering::Acquire), 0);
    }
}
