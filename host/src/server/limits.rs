//! Admission limits of the HTTP API: bounded concurrency with a bounded queue for
//! invocations (beyond both: 503 with `Retry-After`, never unbounded memory) and a
//! per-token request rate limit (429 with `Retry-After`).
//!
//! An invocation checks for a free place before it reads its body (so a request
//! refused under load never costs its body in memory) and takes the place once the body
//! is in (so a slow client never holds one). Invocation inputs are also bounded as a
//! whole: each reserves its declared length (the cap when it declares none, given back
//! down to its size once it is in) from a [`BodyBudget`] before it is read, and holds it
//! until the invocation ends, so inputs never take more than `--max-body-memory`, however
//! many clients send at once. (Uploads, admin-only, have their own cap and are not
//! counted.)

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// Invocation slots plus waiting places. Holding a ticket means "running or waiting";
/// how many run at once is the runtime's instance limit (`Runtime::invoke` waits for one
/// of its permits), which `keyhole serve` sizes to `--max-in-flight`.
#[derive(Debug)]
pub struct Capacity {
    admission: Arc<Semaphore>,
    places: usize,
}

/// Held while an invocation is admitted; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    _admitted: OwnedSemaphorePermit,
}

impl Capacity {
    /// `max_in_flight` invocations run at once and up to `queue` more wait.
    pub fn new(max_in_flight: usize, queue: usize) -> Self {
        let places = max_in_flight.max(1) + queue;
        Self {
            admission: Arc::new(Semaphore::new(places)),
            places,
        }
    }

    /// Take a place, or 503 at once when none is free.
    pub fn enter(&self) -> Result<Ticket, ApiError> {
        let admitted = self
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.refuse())?;
        Ok(Ticket {
            _admitted: admitted,
        })
    }

    /// The 503 for a request that found no place (counted in the metrics).
    pub fn refuse(&self) -> ApiError {
        crate::metrics::http_rejection("at_capacity");
        ApiError::at_capacity()
    }

    /// Whether a place is free now (it may be gone by the time [`Self::enter`] asks).
    pub fn has_room(&self) -> bool {
        self.admission.available_permits() > 0
    }

    /// Invocations admitted now (running or waiting for an instance).
    pub fn admitted(&self) -> usize {
        self.places - self.admission.available_permits()
    }
}

/// Memory for request bodies, shared by every request being read or run: a body's bytes
/// are reserved before the first one is read.
#[derive(Debug)]
pub struct BodyBudget {
    kib: Arc<Semaphore>,
}

/// Held while a request's body is in memory; dropping it gives the bytes back.
#[derive(Debug)]
pub struct Reserved {
    kib: OwnedSemaphorePermit,
}

impl Reserved {
    /// Keep only `bytes` of the reservation (a body that declared no length reserved the
    /// cap; once it is in, what it did not use goes back).
    pub fn shrink_to(&mut self, bytes: usize) {
        let unused = self.kib.num_permits().saturating_sub(kib(bytes));
        drop(self.kib.split(unused));
    }
}

impl BodyBudget {
    /// A budget of `bytes` (counted in whole KiB; at least one body of `body_cap`, so a
    /// budget below the body cap still admits one full-size body at a time).
    pub fn new(bytes: usize, body_cap: usize) -> Self {
        let kib = kib(bytes.max(body_cap)).min(Semaphore::MAX_PERMITS);
        Self {
            kib: Arc::new(Semaphore::new(kib)),
        }
    }

    /// Reserve `bytes` for one body, or 503 at once when the budget is spent.
    pub fn reserve(&self, bytes: usize) -> Result<Reserved, ApiError> {
        let n = u32::try_from(kib(bytes)).unwrap_or(u32::MAX);
        let permit = self.kib.clone().try_acquire_many_owned(n).map_err(|_| {
            crate::metrics::http_rejection("body_memory");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "at-capacity",
                "the host is at capacity: request bodies being received fill the memory set aside for them (`keyhole serve --max-body-memory`); retry shortly",
            )
        })?;
        Ok(Reserved { kib: permit })
    }
}

/// `bytes` in KiB, rounded up (an empty body still takes one).
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).max(1)
}

/// A per-token rate limit (GCRA via `governor`), or none.
pub struct RateLimit {
    limiter: Option<DefaultKeyedRateLimiter<i64>>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("enabled", &self.limiter.is_some())
            .finish()
    }
}

impl RateLimit {
    /// `per_second` sustained requests per token with bursts of `burst`; 0 disables.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self { limiter }
    }

    /// Count one request of token `token_id`; 429 when it is over its rate.
    pub fn check(&self, token_id: i64) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&token_id).map_err(|not_until| {
            crate::metrics::http_rejection("rate_limited");
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::rate_limited(wait.as_secs_f64().ceil() as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_admits_then_refuses_then_admits_again() {
        let c = Capacity::new(1, 1);
        let first = c.enter().unwrap();
        let second = c.enter().unwrap();
        assert_eq!(c.admitted(), 2);
        let refused = c.enter().unwrap_err();
        assert_eq!(refused.status.as_u16(), 503);
        drop(first);
        let third = c.enter().unwrap();
        drop((second, third));
        assert_eq!(c.admitted(), 0);
    }

    #[test]
    fn body_budget_reserves_declared_sizes_and_gives_them_back() {
        let b = BodyBudget::new(10 * 1024, 4 * 1024);
        let big = b.reserve(4 * 1024).unwrap();
        let small: Vec<_> = (0..6).map(|_| b.reserve(1).unwrap()).collect();
        let refused = b.reserve(1).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.kind),
            (503, "at-capacity")
        );
        assert!(refused.retry_after.is_some());
        drop(big);
        let mut again = b.reserve(4 * 1024).unwrap();
        assert!(b.reserve(1).is_err());
        // Shrunk to what a body turned out to hold, the rest is free again.
        again.shrink_to(1000);
        let more: Vec<_> = (0..3).map(|_| b.reserve(1).unwrap()).collect();
        assert!(b.reserve(1).is_err());
        drop((again, small, more));
        // A budget below the cap still admits one full-size body.
        let tight = BodyBudget::new(1, 8 * 1024);
        let one = tight.reserve(8 * 1024).unwrap();
        assert!(tight.reserve(1).is_err());
        drop(one);
    }

    #[test]
    fn rate_limit_per_token() {
        let r = RateLimit::new(1, 2);
        assert!(r.check(1).is_ok() && r.check(1).is_ok());
        let e = r.check(1).unwrap_err();
        assert_eq!(e.status.as_u16(), 429);
        assert!(e.retry_after.unwrap() >= 1);
        assert!(r.check(2).is_ok(), "another token has its own budget");
        let off = RateLimit::new(0, 0);
        assert!((0..1000).all(|_| off.check(1).is_ok()));
    }
}
