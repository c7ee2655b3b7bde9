//! Request coalescing ("singleflight"): concurrent misses of one key share one
//! origin request.
//!
//! The first caller starts the work as a spawned task, so that its own
//! cancellation (its client went away) does not cancel the work the others
//! wait for; every caller waits on a `watch` channel with its own deadline.
//! The task removes its key from the table when it ends, panics included, so a
//! key is never stuck behind a dead flight.
//!
//! A caller that read the store before a flight's fill landed, and asks for
//! a flight only after that flight left the table, would start a second one
//! for nothing. So each landing is counted (per stripe of keys), and a
//! caller that took a [`LandingMark`] before its read learns from
//! [`Flights::try_join_since`] that a flight of its stripe landed meanwhile,
//! and reads again instead (seen over the etcd engine, whose reads take a
//! round trip: two refreshes for one stale-while-revalidate window).

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// A receiver of a flight's result (`None` until it lands).
pub type Landing<T> = watch::Receiver<Option<T>>;

/// Stripes of keys whose landings are counted together: few enough to
/// cost nothing, enough that a landing rarely sends a reader of another
/// key back to the store.
const LANDING_STRIPES: usize = 64;

/// The flights in progress, by key.
#[derive(Debug)]
pub struct Flights<T> {
    /// A std mutex: held to look up or insert, never across an await.
    in_flight: Mutex<HashMap<String, Landing<T>>>,
    /// Flights landed so far, per stripe of keys; raised under the table's
    /// lock as a flight leaves it.
    landings: [AtomicU64; LANDING_STRIPES],
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
            landings: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// How many flights of a key's stripe had landed when it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LandingMark {
    stripe: usize,
    landed: u64,
}

fn stripe_of(key: &str) -> usize {
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    (hash % LANDING_STRIPES as u64) as usize
}

impl<T> Flights<T> {
    /// A mark to take before reading what a flight of `key` would fill.
    pub fn mark(&self, key: &str) -> LandingMark {
        let stripe = stripe_of(key);
        LandingMark {
            stripe,
            landed: self.landings[stripe].load(Ordering::SeqCst),
        }
    }
}

/// Whether a caller started the flight or joined one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started it.
    Leader,
    /// Joined one in progress.
    Waiter,
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// The flight for `key`: the one in progress, or a new one running
    /// `work()` on a spawned task.
    pub fn join<F, W>(self: &Arc<Self>, key: &str, work: W) -> (Landing<T>, Role)
    where
        W: FnOnce() -> F,
        F: Future<Output = T> + Send + 'static,
    {
        match self.try_join(key, || Ok::<F, std::convert::Infallible>(work())) {
            Ok(flight) => flight,
            Err(never) => match never {},
        }
    }

    /// [`Flights::join`], where starting a new flight may be refused:
    /// `work()` is called only when no flight of `key` is in progress (a
    /// joiner never needs what starting one takes), under the table's lock,
    /// so it must not block; its error is returned and no flight starts.
    pub fn try_join<F, W, E>(self: &Arc<Self>, key: &str, work: W) -> Result<(Landing<T>, Role), E>
    where
        W: FnOnce() -> Result<F, E>,
        F: Future<Output = T> + Send + 'static,
    {
        self.try_join_since(key, None, work)
            .map(|joined| joined.expect("without a mark a flight is always joined or started"))
    }

    /// [`Flights::try_join`], except that with a `mark` taken before the
    /// caller read the store, no flight starts if one of the key's stripe
    /// landed since: `Ok(None)` asks the caller to read again (what it read
    /// may be older than what that flight stored). A flight in progress is
    /// joined either way.
    pub fn try_join_since<F, W, E>(
        self: &Arc<Self>,
        key: &str,
        mark: Option<LandingMark>,
        work: W,
    ) -> Result<Option<(Landing<T>, Role)>, E>
    where
        W: FnOnce() -> Result<F, E>,
        F: Future<Output = T> + Send + 'static,
    {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(landing) = in_flight.get(key) {
            return Ok(Some((landing.clone(), Role::Waiter)));
        }
        if let Some(mark) = mark {
            // Raised under this lock before a flight leaves the table: a
            // flight that left since the mark is seen here.
            if self.landings[mark.stripe].load(Ordering::SeqCst) != mark.landed {
                return Ok(None);
            }
        }
        let work = work()?;
        let (sender, landing) = watch::channel(None);
        in_flight.insert(key.to_string(), landing.clone());
        drop(in_flight);
        let guard = Landed {
            flights: Arc::clone(self),
            key: key.to_string(),
        };
        tokio::spawn(async move {
            let result = work.await;
            // Off the table before the result is out: a caller arriving
            // later finds the filled cache, or starts a new flight.
            drop(guard);
            let _ = sender.send(Some(result));
        });
        Ok(Some((landing, Role::Leader)))
    }

    /// Whether a flight for `key` is in progress.
    pub fn is_flying(&self, key: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }
}

/// Removes a flight from the table when its task ends, however it ends.
struct Landed<T> {
    flights: Arc<Flights<T>>,
    key: String,
}

impl<T> Drop for Landed<T> {
    fn drop(&mut self) {
        let stripe = stripe_of(&self.key);
        let mut in_flight = self
            .flights
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.flights.landings[stripe].fetch_add(1, Ordering::SeqCst);
        in_flight.remove(&self.key);
    }
}

/// Waits for a flight's result; `None` if its task died without one.
pub async fn wait<T: Clone>(mut landing: Landing<T>) -> Option<T> {
    match landing.wait_for(Option::is_some).await {
        Ok(result) => result.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Concurrent joins run the work once; all get its result; the leader
    /// going away does not stop it; the key is free again afterwards.
    #[tokio::test]
    async fn one_flight_per_key() {
        let flights: Arc<Flights<u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let counter = Arc::clone(&runs);
        let (leader, role) = flights.join("k", move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = released.await;
            7
        });
        assert_eq!(role, Role::Leader);
        let mut waiters = Vec::new();
        for _ in 0..10 {
            let (landing, role) = flights.join("k", || async { 0 });
            assert_eq!(role, Role::Waiter);
            waiters.push(tokio::spawn(wait(landing)));
        }
        drop(leader);
        release.send(()).unwrap();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), Some(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::task::yield_now().await;
        assert!(!flights.is_flying("k"));
    }

    /// A caller whose mark predates a landing of its key is asked to read
    /// again rather than start a flight; with a mark taken after, or while
    /// a flight is in progress, it starts or joins one as usual.
    #[tokio::test]
    async fn a_landing_since_the_mark_sends_the_caller_back_to_read() {
        let flights: Arc<Flights<u32>> = Arc::default();
        let before = flights.mark("k");
        let (landing, _) = flights.join("k", || async { 7 });
        let in_progress = flights.try_join_since("k", Some(before), || Ok::<_, ()>(async { 0 }));
        assert_eq!(in_progress.unwrap().unwrap().1, Role::Waiter);
        // The flight left the table before its result went out.
        assert_eq!(wait(landing).await, Some(7));
        let again = flights.try_join_since("k", Some(before), || Ok::<_, ()>(async { 0 }));
        assert!(
            again.unwrap().is_none(),
            "landed since the mark: read again"
        );
        let after = flights.mark("k");
        let started = flights.try_join_since("k", Some(after), || Ok::<_, ()>(async { 8 }));
        let (landing, role) = started.unwrap().unwrap();
        assert_eq!(role, Role::Leader);
        assert_eq!(wait(landing).await, Some(8));
    }
}
