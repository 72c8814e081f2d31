//! The CPU pool: a semaphore of `transform.workers` permits and a bounded queue in front.
//!
//! CPU work (decode, resize, encode, hashing large bodies) runs on `transform.workers`
//! dedicated threads, never on the async workers — and not on tokio's blocking pool either:
//! that pool grows to hundreds of short-lived threads, and the allocator keeps each thread's
//! freed pages for it, so every thread that ever ran a 100 MB decode held on to about that
//! much (a soak grew past 4 GB RSS at a 256 MiB cache). A few long-lived threads reuse their
//! own memory. When `workers + queue_len` jobs are already admitted, new work is
//! refused at once with 503 `overloaded` instead of piling up. QueuePlace is released in `Drop`,
//! so a request cancelled while queued frees its slot.
//!
//! Jobs also reserve their estimated peak memory from a process-wide byte budget
//! (`transform.memory_budget_mb`) before running: the job count alone lets N concurrent
//! worst-case inputs (a 50 MP PNG is ~0.5 GB) reach N × that. A job larger than the whole
//! budget takes all of it and runs alone.
//!
//! The originals of queued and running jobs count too (`transform.originals_budget_mb`): a job
//! reserves its input's stored size ([`Workers::hold_input`]) before fetching it, and waits
//! while the budget is taken, holding no bytes. Without it every admitted job fetched its
//! original at once and 32 queued 12 MP JPEGs held 134 MB before any of them ran.
//!
//! Jobs are also refused when the queue would hold them too long (`transform.max_queue_wait_ms`):
//! the expected wait of a new job is the jobs ahead of it over the workers, times a moving
//! average of job run time. Under overload the excess gets `503` with `Retry-After` at once,
//! admitted requests keep a latency near the uncontended one, and only that many originals wait
//! in memory (issue 20: 32 concurrent misses on 2 cores).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A job for a worker thread.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not run to its own result. Mapped to `503 overloaded` and `500 internal` in
/// `http::error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// The queue is full (or the memory budget cannot be reserved): refused at once.
    #[error("server overloaded")]
    Overloaded,
    /// The pool is shutting down, or the job panicked (the worker thread serves on).
    #[error("worker failed: {0}")]
    Failed(String),
}

/// Runs CPU-bound closures with bounded concurrency and queueing.
pub struct Workers {
    /// To the worker threads, which exit once this (the only sender) is dropped.
    jobs: mpsc::SyncSender<Job>,
    permits: Arc<Semaphore>,
    /// The memory budget in KiB permits.
    memory: Arc<Semaphore>,
    memory_kib: u32,
    /// The originals budget in KiB permits (`QueueBounds::originals_bytes`).
    originals: Arc<Semaphore>,
    originals_kib: u32,
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
    workers: usize,
    /// Moving average of a job's run time, µs (0 before the first job).
    run_us: Arc<AtomicU64>,
    /// `transform.max_queue_wait_ms`; `None`: the queue length alone bounds waiting.
    max_wait: Option<Duration>,
    depth: IntGauge,
    wait: Histogram,
    originals_bytes: IntGauge,
    originals_waits: IntCounter,
}

/// The pool's metrics: queue depth, the wait for a worker, originals held and waits for room.
pub struct PoolMetrics {
    pub depth: IntGauge,
    pub wait: Histogram,
    pub originals_bytes: IntGauge,
    pub originals_waits: IntCounter,
}

/// Queue bounds: places beyond the workers, and the longest expected wait to admit.
#[derive(Debug, Clone, Copy)]
pub struct QueueBounds {
    pub len: usize,
    pub max_wait: Option<Duration>,
    /// Bytes of job inputs (originals) held at once by queued and running jobs.
    pub originals_bytes: u64,
}

/// KiB permits for `bytes`, at least 1 and at most `cap` (a reservation larger than the whole
/// budget takes all of it: it waits for the others and then runs alone).
fn kib_permits(bytes: u64, cap: u32) -> u32 {
    u32::try_from(bytes.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .clamp(1, cap)
}

/// A budget's size in KiB permits.
fn budget_kib(bytes: u64) -> u32 {
    u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1)
}

/// A reserved place in the pool (queued or running), released on drop. Taking it before
/// fetching a job's input bounds how many inputs are held in memory at once.
pub struct QueuePlace {
    admitted: Arc<AtomicUsize>,
    depth: IntGauge,
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
        self.depth.dec();
    }
}

/// Room for one job's input in the originals budget ([`Workers::hold_input`]), given back
/// on drop.
pub struct InputHeld {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    gauge: IntGauge,
}

impl Drop for InputHeld {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

impl Workers {
    pub fn new(
        workers: usize,
        bounds: QueueBounds,
        memory_bytes: u64,
        metrics: PoolMetrics,
    ) -> Workers {
        let PoolMetrics {
            depth,
            wait,
            originals_bytes,
            originals_waits,
        } = metrics;
        let workers = workers.max(1);
        let memory_kib = budget_kib(memory_bytes);
        let originals_kib = budget_kib(bounds.originals_bytes);
        // A job is sent only while holding one of `workers` permits, so the channel never
        // holds more than `workers` jobs and `try_send` never finds it full.
        let (jobs, queue) = mpsc::sync_channel::<Job>(workers);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..workers {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pixgate-worker-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let next = match queue.lock() {
                            Ok(rx) => rx.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        match next {
                            Ok(job) => job(),
                            Err(_) => return, // the pool was dropped
                        }
                    }
                });
            if let Err(e) = spawned {
                // Start-up: without its threads the pool cannot run anything.
                panic!("cannot start worker thread {i}: {e}");
            }
        }
        Workers {
            jobs,
            permits: Arc::new(Semaphore::new(workers)),
            memory: Arc::new(Semaphore::new(memory_kib as usize)),
            memory_kib,
            originals: Arc::new(Semaphore::new(originals_kib as usize)),
            originals_kib,
            admitted: Arc::new(AtomicUsize::new(0)),
            max_admitted: workers + bounds.len,
            workers,
            run_us: Arc::new(AtomicU64::new(0)),
            max_wait: bounds.max_wait,
            depth,
            wait,
            originals_bytes,
            originals_waits,
        }
    }

    /// Jobs admitted at once: the workers and the queue behind them.
    pub fn capacity(&self) -> usize {
        self.max_admitted
    }

    /// Reserves a place, or refuses at once with `overloaded` when the queue is full or the
    /// expected wait is over `max_wait`.
    pub fn admit(&self) -> Result<QueuePlace, WorkerError> {
        let prev = self.admitted.fetch_add(1, Ordering::AcqRel);
        let admission = QueuePlace {
            admitted: self.admitted.clone(),
            depth: self.depth.clone(),
        };
        self.depth.inc();
        if prev >= self.max_admitted {
            return Err(WorkerError::Overloaded); // `admission` drops and undoes the increment
        }
        if let Some(max) = self.max_wait
            && self.expected_wait(prev) > max
        {
            return Err(WorkerError::Overloaded);
        }
        Ok(admission)
    }

    /// How long a job admitted behind `ahead` others waits for a worker: the jobs that must
    /// finish first over the workers, times the average run time.
    fn expected_wait(&self, ahead: usize) -> Duration {
        let to_finish = (ahead + 1).saturating_sub(self.workers) as u64;
        let run = self.run_us.load(Ordering::Relaxed);
        Duration::from_micros(to_finish.saturating_mul(run) / self.workers as u64)
    }

    /// Reserves room for a job's input of `bytes` (its stored original) in the originals
    /// budget, waiting while it is taken; hold the permit until the job is done with the input.
    /// Take it after the queue place and before fetching, so queued jobs wait without bytes.
    pub async fn hold_input(&self, bytes: u64) -> Result<InputHeld, WorkerError> {
        let kib = kib_permits(bytes, self.originals_kib);
        let permit = match self.originals.clone().try_acquire_many_owned(kib) {
            Ok(p) => p,
            Err(_) => {
                self.originals_waits.inc();
                self.originals
                    .clone()
                    .acquire_many_owned(kib)
                    .await
                    .map_err(|_| WorkerError::Failed("worker pool closed".into()))?
            }
        };
        let held = i64::from(kib) * 1024;
        self.originals_bytes.add(held);
        Ok(InputHeld {
            _permit: permit,
            bytes: held,
            gauge: self.originals_bytes.clone(),
        })
    }

    /// Runs `f`, which needs about `memory` bytes at its peak, on a worker thread once a
    /// worker and that much of the memory budget are free.
    pub async fn run<T, F>(&self, memory: u64, f: F) -> Result<T, WorkerError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let admission = self.admit()?;
        self.run_admitted(admission, memory, f).await
    }

    /// Runs `f` in a place reserved earlier with [`Workers::admit`]; see [`Workers::run`].
    pub async fn run_admitted<T, F>(
        &self,
        admission: QueuePlace,
        memory: u64,
        f: F,
    ) -> Result<T, WorkerError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let waited = self.wait.start_timer();
        // Memory first, then a worker: a job holding a worker while it waits for memory would
        // idle a core. Both waits happen inside the request's deadline.
        let kib = kib_permits(memory, self.memory_kib);
        let reserved = self
            .memory
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| WorkerError::Failed("worker pool closed".into()))?;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| WorkerError::Failed("worker pool closed".into()))?;
        waited.observe_duration();
        let (done, result) = tokio::sync::oneshot::channel();
        let run_us = self.run_us.clone();
        let job: Job = Box::new(move || {
            // Held until the work is done, even if the caller went away; released before the
            // result is handed over, so a caller that has its result sees its place free.
            let started = std::time::Instant::now();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            record_run(&run_us, started.elapsed());
            drop((permit, reserved, admission));
            let _ = done.send(r);
        });
        self.jobs
            .try_send(job)
            .map_err(|e| WorkerError::Failed(format!("worker pool: {e}")))?;
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(WorkerError::Failed("worker task panicked".into())),
            Err(_) => Err(WorkerError::Failed("worker thread gone".into())),
        }
    }
}

/// Folds a job's run time into the moving average (weight 1/8; the first job sets it).
fn record_run(avg: &AtomicU64, took: Duration) {
    let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
    let _ = avg.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        })
    });
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

/// A few permits for a scarce kind of work (AVIF encodes) with a bounded, time-limited queue
/// in front: a permit at once when one is free; otherwise a place among at most `queue`
/// waiters for at most `wait`; `overloaded` when the queue is full or the wait runs out. A
/// cancelled waiter gives its place back.
pub struct Gate {
    permits: Arc<Semaphore>,
    waiting: Backlog,
    wait: Duration,
}

impl Gate {
    pub fn new(permits: usize, queue: usize, wait: Duration) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(permits)),
            waiting: Backlog::new(queue),
            wait,
        }
    }

    /// Every permit is taken (a caller with an alternative should use it).
    pub fn busy(&self) -> bool {
        self.permits.available_permits() == 0
    }

    /// A permit if one is free now, without queueing.
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// A permit, held until dropped.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, WorkerError> {
        if let Some(permit) = self.try_enter() {
            return Ok(permit);
        }
        let _place = self.waiting.try_enter().ok_or(WorkerError::Overloaded)?;
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(WorkerError::Failed("gate closed".into())),
            Err(_) => Err(WorkerError::Overloaded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gate_queues_a_few_for_a_while_and_refuses_the_rest() {
        let gate = Arc::new(Gate::new(1, 2, Duration::from_millis(300)));
        let held = gate.enter().await.unwrap();
        assert!(gate.busy());
        assert!(gate.try_enter().is_none(), "try_enter never queues");
        // Two wait; the third is refused at once.
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let g = gate.clone();
                tokio::spawn(async move { g.enter().await.map(drop) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = std::time::Instant::now();
        assert_eq!(gate.enter().await.unwrap_err(), WorkerError::Overloaded);
        assert!(t.elapsed() < Duration::from_millis(100));
        // Releasing the permit serves the waiters in turn.
        drop(held);
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert!(!gate.busy());
        // A waiter whose wait runs out is refused, and its place comes back.
        let held = gate.enter().await.unwrap();
        let t = std::time::Instant::now();
        assert_eq!(gate.enter().await.unwrap_err(), WorkerError::Overloaded);
        assert!(t.elapsed() >= Duration::from_millis(300));
        // A cancelled waiter gives its place back too.
        let g = gate.clone();
        let cancelled = tokio::spawn(async move { g.enter().await.map(drop) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancelled.abort();
        let _ = cancelled.await;
        assert!(gate.waiting.is_empty());
        drop(held);
    }
}

#[cfg(test)]
mod pool_tests {

    use super::*;

    fn pool_metrics() -> PoolMetrics {
        PoolMetrics {
            depth: IntGauge::new("d", "d").unwrap(),
            wait: wait(),
            originals_bytes: IntGauge::new("o", "o").unwrap(),
            originals_waits: IntCounter::new("w", "w").unwrap(),
        }
    }

    fn queue(len: usize) -> QueueBounds {
        QueueBounds {
            len,
            max_wait: None,
            originals_bytes: 1 << 30,
        }
    }

    #[tokio::test]
    async fn queued_jobs_wait_for_room_before_holding_their_inputs() {
        // A 10 MiB originals budget: two 4 MiB inputs fit, the third waits until one is done.
        let bounds = QueueBounds {
            originals_bytes: 10 << 20,
            ..queue(8)
        };
        let w = Workers::new(2, bounds, 1 << 30, pool_metrics());
        let first = w.hold_input(4 << 20).await.unwrap();
        let _second = w.hold_input(4 << 20).await.unwrap();
        let third = w.hold_input(4 << 20);
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut third)
                .await
                .is_err(),
            "no room: the third input is not fetched yet"
        );
        assert_eq!(w.originals_bytes.get(), 8 << 20, "two inputs held");
        assert_eq!(w.originals_waits.get(), 1, "the third one waits");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("room once the first job let go of its input")
            .unwrap();
        drop(third);
        assert_eq!(w.originals_bytes.get(), 4 << 20);
        // An input larger than the whole budget waits for all of it, then holds it alone.
        drop(_second);
        let huge = w.hold_input(u64::MAX).await.unwrap();
        assert_eq!(w.originals.available_permits(), 0);
        drop(huge);
        assert_eq!(w.originals.available_permits(), 10 << 10);
        assert_eq!(w.originals_bytes.get(), 0);
    }

    fn wait() -> Histogram {
        Histogram::with_opts(prometheus::HistogramOpts::new("w", "w")).unwrap()
    }

    #[tokio::test]
    async fn full_queue_is_refused_fast_and_recovers() {
        let w = Arc::new(Workers::new(1, queue(1), 1 << 30, pool_metrics()));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let block = |rx: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>| {
            move || {
                let _ = rx.lock().unwrap().recv();
            }
        };
        let w1 = w.clone();
        let r1 = rx.clone();
        let running = tokio::spawn(async move { w1.run(0, block(r1)).await });
        let w2 = w.clone();
        let r2 = rx.clone();
        let queued = tokio::spawn(async move { w2.run(0, block(r2)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = w.run(0, || ()).await;
        assert_eq!(refused.unwrap_err(), WorkerError::Overloaded);
        tx.send(()).unwrap();
        tx.send(()).unwrap();
        running.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        w.run(0, || ()).await.unwrap();
        assert_eq!(w.admitted.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn the_memory_budget_bounds_concurrent_jobs_and_a_huge_job_runs_alone() {
        // Two workers, a 10 MiB budget: two 6 MiB jobs cannot run together.
        let w = Arc::new(Workers::new(2, queue(4), 10 << 20, pool_metrics()));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let job = |running: Arc<AtomicUsize>, peak: Arc<AtomicUsize>| {
            move || {
                let now = running.fetch_add(1, Ordering::AcqRel) + 1;
                peak.fetch_max(now, Ordering::AcqRel);
                std::thread::sleep(Duration::from_millis(50));
                running.fetch_sub(1, Ordering::AcqRel);
            }
        };
        let mut handles = Vec::new();
        for _ in 0..3 {
            let (w, r, p) = (w.clone(), running.clone(), peak.clone());
            handles.push(tokio::spawn(async move { w.run(6 << 20, job(r, p)).await }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::Acquire), 1);
        // Small jobs share the budget; a job over the whole budget still runs (alone).
        peak.store(0, Ordering::Release);
        let mut handles = Vec::new();
        for cost in [1 << 20, 1 << 20] {
            let (w, r, p) = (w.clone(), running.clone(), peak.clone());
            handles.push(tokio::spawn(async move { w.run(cost, job(r, p)).await }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::Acquire), 2);
        w.run(u64::MAX, || ()).await.unwrap();
        assert_eq!(w.memory.available_permits(), 10 << 10);
    }

    #[tokio::test]
    async fn jobs_expected_to_wait_too_long_are_refused_at_once() {
        let bounds = QueueBounds {
            max_wait: Some(Duration::from_millis(150)),
            ..queue(10)
        };
        let w = Workers::new(1, bounds, 1 << 30, pool_metrics());
        // Before any job has run nothing is known: the queue length alone applies.
        let places: Vec<_> = (0..5).map(|_| w.admit().unwrap()).collect();
        drop(places);
        w.run(0, || std::thread::sleep(Duration::from_millis(100)))
            .await
            .unwrap();
        // Jobs take ~100 ms: one running and one waiting (~100 ms) are admitted; a third
        // would wait ~200 ms and is refused without waiting.
        let running = w.admit().unwrap();
        let queued = w.admit().unwrap();
        let t = std::time::Instant::now();
        assert!(matches!(w.admit(), Err(WorkerError::Overloaded)));
        assert!(t.elapsed() < Duration::from_millis(20));
        assert_eq!(w.admitted.load(Ordering::Acquire), 2);
        drop(queued);
        let _again = w.admit().unwrap();
        drop(running);
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
    async fn a_panicking_job_is_an_error_and_its_thread_serves_on() {
        let w = Workers::new(1, queue(1), 1 << 30, pool_metrics());
        let first = w.run(0, || -> u32 { panic!("codec bug") }).await;
        assert!(matches!(first, Err(WorkerError::Failed(_))), "{first:?}");
        // The one worker thread is still there, and the job's place was given back.
        assert_eq!(w.run(0, || 7).await.unwrap(), 7);
        assert_eq!(w.admitted.load(Ordering::Acquire), 0);
        let names = w
            .run(0, || std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_eq!(names.as_deref(), Some("pixgate-worker-0"));
    }

    #[tokio::test]
    async fn cancelled_waiter_frees_its_slot() {
        let w = Arc::new(Workers::new(1, queue(1), 1 << 30, pool_metrics()));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let w1 = w.clone();
        let running = tokio::spawn(async move {
            w1.run(0, move || {
                let _ = rx.recv();
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let w2 = w.clone();
        let waiter = tokio::spawn(async move { w2.run(0, || ()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(w.admitted.load(Ordering::Acquire), 1);
        tx.send(()).unwrap();
        running.await.unwrap().unwrap();
        assert_eq!(w.admitted.load(Ordering::Acquire), 0);
    }
}
