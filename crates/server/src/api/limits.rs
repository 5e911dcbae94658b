//! Limits before authentication: how many password hashes run at once (argon2 takes 19 MiB
//! each), how many wait for one, and how fast one source address or one user name may try.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

use crate::config::Config;

/// Memory the password hashes may take together.
const HASH_MEMORY_BUDGET: usize = 192 * 1024 * 1024;
/// What one argon2 hash (the crate's default parameters) takes.
const HASH_MEMORY: usize = 19 * 1024 * 1024;
/// Requests waiting for a hash slot beyond this are refused at once.
const MAX_WAITING: usize = 64;
/// A request that waited this long for a slot is refused.
const MAX_WAIT: Duration = Duration::from_secs(10);
/// Tracked sources and names; beyond this, idle entries are forgotten.
const MAX_TRACKED: usize = 100_000;

/// Login attempts: a burst, then one per interval.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub burst: u32,
    pub every: Duration,
}

pub const PER_SOURCE: Rate = Rate { burst: 30, every: Duration::from_millis(250) };
pub const PER_USER: Rate = Rate { burst: 30, every: Duration::from_millis(500) };

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("too many attempts; wait a few seconds and try again")]
    TooFast,
    #[error("the server is busy checking passwords; try again in a moment")]
    Busy,
}

pub struct Limits {
    hashing: Arc<Semaphore>,
    waiting: AtomicUsize,
    sources: Buckets<IpAddr>,
    users: Buckets<String>,
    /// Failed logins in a row per user name, known or not, for the growing delay.
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// The delay before answering the first failed login in a row; it doubles with each further
/// one, up to [`MAX_FAILURE_DELAY`].
pub const FIRST_FAILURE_DELAY: Duration = Duration::from_millis(250);
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(4);
/// A name's failures are forgotten after this long without one.
const FAILURES_KEPT: Duration = Duration::from_secs(15 * 60);

impl Limits {
    pub fn new(_cfg: &Config) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let permits = cores.clamp(1, (HASH_MEMORY_BUDGET / HASH_MEMORY).max(1));
        Self {
            hashing: Arc::new(Semaphore::new(permits)),
            waiting: AtomicUsize::new(0),
            sources: Buckets::new(PER_SOURCE),
            users: Buckets::new(PER_USER),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// A login for `user` failed: how long to wait before answering (growing with each failure
    /// in a row, the same for known and unknown names).
    pub fn login_failed(&self, user: &str) -> Duration {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, at)| now.duration_since(*at) < FAILURES_KEPT);
        }
        let (n, at) = map.entry(crate::domain::names::fold(user)).or_insert((0, now));
        if now.duration_since(*at) >= FAILURES_KEPT {
            *n = 0;
        }
        *n = n.saturating_add(1);
        *at = now;
        failure_delay(*n)
    }

    /// A login for `user` succeeded: its delay starts again.
    pub fn login_succeeded(&self, user: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&crate::domain::names::fold(user));
    }

    /// Takes one attempt from the source's and the user name's allowance.
    pub fn login_attempt(&self, source: Option<IpAddr>, user: &str) -> Result<(), LimitError> {
        let now = Instant::now();
        if let Some(ip) = source {
            if !self.sources.take(super::source_key(ip), now) {
                return Err(LimitError::TooFast);
            }
        }
        if !self.users.take(crate::domain::names::fold(user), now) {
            return Err(LimitError::TooFast);
        }
        Ok(())
    }

    /// Whether the source's allowance is used up (checked before unauthenticated work that
    /// only its failures draw on: enrolment).
    pub fn source_exhausted(&self, source: Option<IpAddr>) -> bool {
        source.is_some_and(|ip| self.sources.exhausted(super::source_key(ip), Instant::now()))
    }

    /// A failed unauthenticated request draws on its source's allowance.
    pub fn source_failed(&self, source: Option<IpAddr>) {
        if let Some(ip) = source {
            self.sources.take(super::source_key(ip), Instant::now());
        }
    }

    /// Runs a password hash or check on a blocking thread, at most a few at once.
    pub async fn hash<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LimitError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(LimitError::Busy);
        }
        let permit = tokio::time::timeout(MAX_WAIT, self.hashing.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let permit = match permit {
            Ok(Ok(p)) => p,
            _ => return Err(LimitError::Busy),
        };
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await;
        out.map_err(|_| LimitError::Busy)
    }
}

/// The delay after the `n`th failure in a row: 250 ms, 500 ms, 1 s, 2 s, then 4 s.
pub fn failure_delay(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(8);
    (FIRST_FAILURE_DELAY * 2u32.pow(doublings)).min(MAX_FAILURE_DELAY)
}

/// Token buckets by key.
struct Buckets<K> {
    rate: Rate,
    map: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: std::hash::Hash + Eq> Buckets<K> {
    fn new(rate: Rate) -> Self {
        Self { rate, map: Mutex::new(HashMap::new()) }
    }

    fn exhausted(&self, key: K, now: Instant) -> bool {
        let burst = f64::from(self.rate.burst);
        let per_sec = 1.0 / self.rate.every.as_secs_f64();
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key).is_some_and(|(tokens, at)| {
            (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(burst) < 1.0
        })
    }

    fn take(&self, key: K, now: Instant) -> bool {
        let burst = f64::from(self.rate.burst);
        let per_sec = 1.0 / self.rate.every.as_secs_f64();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            // Forget the keys whose allowance has filled up again.
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        if map.len() >= MAX_TRACKED {
            // Still full: a flood of distinct keys. Refuse rather than grow.
            return false;
        }
        let (tokens, at) = map.entry(key).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let b = Buckets::new(Rate { burst: 3, every: Duration::from_secs(1) });
        let t0 = Instant::now();
        assert!((0..3).all(|_| b.take("x", t0)));
        assert!(!b.take("x", t0));
        assert!(b.take("y", t0), "other keys have their own allowance");
        assert!(!b.take("x", t0 + Duration::from_millis(500)));
        assert!(b.take("x", t0 + Duration::from_millis(1600)));
        assert!(b.exhausted("x", t0 + Duration::from_millis(1600)));
        assert!(!b.exhausted("x", t0 + Duration::from_millis(2700)));
        assert!(!b.exhausted("never-seen", t0));
    }

    #[test]
    fn the_delay_grows_with_each_failure() {
        let d: Vec<u64> = (1..=7).map(|n| failure_delay(n).as_millis() as u64).collect();
        assert_eq!(d, [250, 500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(failure_delay(u32::MAX), MAX_FAILURE_DELAY);
    }

    #[tokio::test]
    async fn hashing_is_bounded() {
        let cfg = crate::config::Config::parse(
            "[server]\nlisten = \"127.0.0.1:1\"\npublic_url = \"https://127.0.0.1:1\"\n",
            [],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let limits = Arc::new(Limits::new(&cfg));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let (limits, running, peak) = (limits.clone(), running.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                limits
                    .hash(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
            }));
        }
        for t in tasks {
            assert!(t.await.is_ok());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(peak.load(Ordering::SeqCst) <= cores.min(HASH_MEMORY_BUDGET / HASH_MEMORY));
    }
}
