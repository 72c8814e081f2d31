//! Single-flight: concurrent identical misses share one computation.
//!
//! The first request for a key becomes the [`Lead`]; the others get a [`Wait`] on the same
//! key and receive a clone of whatever the leader publishes. A lead that is dropped without
//! publishing (its request was cancelled, or it failed for a reason of its own, such as its
//! caller's quota) closes the flight: its waiters get `None` and try again, one of them
//! becoming the next leader. The map entry is removed in `Drop`, so no exit path — panic,
//! cancellation, early return — leaves a key wedged.
//!
//! The map lock is a `std::sync::Mutex` held only for map operations, never across `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Map<T> = Arc<Mutex<HashMap<String, Entry<T>>>>;

struct Entry<T> {
    /// Which lead owns the entry: a lead only ever removes its own.
    id: u64,
    rx: watch::Receiver<Option<T>>,
}

/// In-flight computations by key.
pub struct Flights<T> {
    map: Map<T>,
    next_id: AtomicU64,
}

/// The outcome of [`Flights::join`].
pub enum Joined<T: Clone> {
    /// Nobody computes this key: the caller does, and publishes with [`Lead::finish`].
    Leader(Lead<T>),
    /// Someone already does: wait for their result.
    Follower(Wait<T>),
}

/// The right (and duty) to compute one key.
pub struct Lead<T: Clone> {
    key: String,
    id: u64,
    tx: watch::Sender<Option<T>>,
    map: Map<T>,
}

/// A place in the queue for a key's result.
pub struct Wait<T> {
    rx: watch::Receiver<Option<T>>,
}

impl<T: Clone> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<T: Clone> Flights<T> {
    pub fn new() -> Flights<T> {
        Flights::default()
    }

    /// Leads the computation of `key`, or waits for the one in flight.
    pub fn join(&self, key: &str) -> Joined<T> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get(key) {
            return Joined::Follower(Wait {
                rx: entry.rx.clone(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_owned(), Entry { id, rx });
        Joined::Leader(Lead {
            key: key.to_owned(),
            id,
            tx,
            map: self.map.clone(),
        })
    }

    /// Keys in flight.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Clone> Lead<T> {
    /// A waiter on this lead's own result (the leader's request waits like any other, so a
    /// computation handed to a background task outlives the request that started it).
    pub fn subscribe(&self) -> Wait<T> {
        Wait {
            rx: self.tx.subscribe(),
        }
    }

    /// Publishes the result to every waiter and ends the flight.
    pub fn finish(self, value: T) {
        // Stored even with no receivers; joiners until the entry is removed (in `Drop`, right
        // after) see it at once.
        self.tx.send_replace(Some(value));
    }
}

impl<T: Clone> Drop for Lead<T> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.key).is_some_and(|e| e.id == self.id) {
            map.remove(&self.key);
        }
        // `tx` drops after this: waiters of an unfinished lead see the channel close.
    }
}

impl<T: Clone> Wait<T> {
    /// The leader's result, or `None` if the lead was abandoned (try again).
    pub async fn wait(mut self) -> Option<T> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(j: Joined<u32>) -> Lead<u32> {
        match j {
            Joined::Leader(l) => l,
            Joined::Follower(_) => panic!("expected to lead"),
        }
    }

    fn follow(j: Joined<u32>) -> Wait<u32> {
        match j {
            Joined::Follower(w) => w,
            Joined::Leader(_) => panic!("expected to follow"),
        }
    }

    #[tokio::test]
    async fn followers_get_the_leaders_result_and_the_key_is_freed() {
        let f = Flights::new();
        let l = lead(f.join("k"));
        let own = l.subscribe();
        let waiters: Vec<_> = (0..49).map(|_| follow(f.join("k"))).collect();
        let other = lead(f.join("other"));
        let tasks: Vec<_> = waiters
            .into_iter()
            .map(|w| tokio::spawn(w.wait()))
            .collect();
        l.finish(7);
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(7));
        }
        assert_eq!(own.wait().await, Some(7));
        drop(other);
        assert!(f.is_empty(), "finished and dropped leads leave no entry");
        // The next request for the key leads a new flight.
        let _again = lead(f.join("k"));
    }

    #[tokio::test]
    async fn an_abandoned_lead_releases_its_waiters_and_the_key() {
        let f = Flights::<u32>::new();
        let l = lead(f.join("k"));
        let w1 = follow(f.join("k"));
        let w2 = follow(f.join("k"));
        let t = tokio::spawn(w1.wait());
        // The leader's request is cancelled (its future dropped) before it published.
        drop(l);
        assert_eq!(t.await.unwrap(), None);
        assert_eq!(w2.wait().await, None);
        // A waiter that retries becomes the new leader; nothing is wedged.
        let l2 = lead(f.join("k"));
        let w3 = follow(f.join("k"));
        l2.finish(9);
        assert_eq!(w3.wait().await, Some(9));
        assert!(f.is_empty());
    }

    #[tokio::test]
    async fn a_stale_lead_never_removes_a_newer_flight() {
        let f = Flights::<u32>::new();
        let old = lead(f.join("k"));
        // Simulate the entry having been replaced (as after a removal and a new join).
        f.map.lock().unwrap().remove("k");
        let new = lead(f.join("k"));
        drop(old);
        let w = follow(f.join("k"));
        new.finish(1);
        assert_eq!(w.wait().await, Some(1));
    }

    #[tokio::test]
    async fn a_waiter_joining_between_publish_and_removal_sees_the_value() {
        let f = Flights::<u32>::new();
        let l = lead(f.join("k"));
        l.tx.send_replace(Some(3)); // published; `Drop` has not run yet
        let w = follow(f.join("k"));
        drop(l);
        assert_eq!(w.wait().await, Some(3));
    }
}
