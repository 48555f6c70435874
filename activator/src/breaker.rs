//! A breaker in Knative's sense: at most `max_concurrency` requests run, at most `queue_depth`
//! more wait, and anything beyond is refused at once (a 503 / UNAVAILABLE upstream) instead of
//! queueing without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError {
    #[error("queue full: {in_flight} in flight and {queued} queued (capacity {capacity})")]
    QueueFull {
        in_flight: usize,
        queued: usize,
        capacity: usize,
    },
    #[error("invalid breaker settings: {0}")]
    Invalid(String),
}

impl From<BreakerError> for tonic::Status {
    fn from(e: BreakerError) -> Self {
        tonic::Status::unavailable(e.to_string())
    }
}

#[derive(Debug)]
struct Inner {
    sem: Arc<Semaphore>,
    /// Requests holding or waiting for a slot; bounded by `total`.
    pending: AtomicUsize,
    max_concurrency: usize,
    total: usize,
}

/// Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

/// Holds a slot until dropped.
#[derive(Debug)]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    inner: Arc<Inner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Breaker {
    /// `max_concurrency` must be at least 1; `queue_depth` may be 0 (no waiting).
    pub fn new(max_concurrency: usize, queue_depth: usize) -> Result<Self, BreakerError> {
        if max_concurrency == 0 {
            return Err(BreakerError::Invalid(
                "max_concurrency is 0; it must be at least 1".into(),
            ));
        }
        if max_concurrency > Semaphore::MAX_PERMITS {
            return Err(BreakerError::Invalid(format!(
                "max_concurrency {max_concurrency} is over {}",
                Semaphore::MAX_PERMITS
            )));
        }
        Ok(Breaker {
            inner: Arc::new(Inner {
                sem: Arc::new(Semaphore::new(max_concurrency)),
                pending: AtomicUsize::new(0),
                max_concurrency,
                total: max_concurrency.saturating_add(queue_depth),
            }),
        })
    }

    /// The queue-proxy breaker for a containerConcurrency: none for 0, else CC running and
    /// 10 x CC waiting.
    pub fn for_container_concurrency(cc: usize) -> Result<Option<Self>, BreakerError> {
        if cc == 0 {
            return Ok(None);
        }
        Breaker::new(cc, cc.saturating_mul(10)).map(Some)
    }

    /// Waits for a slot, or fails at once when running plus waiting is at capacity.
    pub async fn acquire(&self) -> Result<Permit, BreakerError> {
        let inner = &self.inner;
        let mut cur = inner.pending.load(Ordering::Acquire);
        loop {
            if cur >= inner.total {
                let in_flight = self.in_flight();
                return Err(BreakerError::QueueFull {
                    in_flight,
                    queued: cur.saturating_sub(in_flight),
                    capacity: inner.total,
                });
            }
            match inner.pending.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        // Counted as pending before waiting, so the capacity check above covers waiters too.
        // If this future is dropped while waiting, the guard gives the count back.
        let guard = PendingGuard(inner);
        let permit = inner
            .sem
            .clone()
            .acquire_owned()
            .await
            .expect("breaker semaphore is never closed");
        std::mem::forget(guard);
        Ok(Permit {
            _permit: permit,
            inner: inner.clone(),
        })
    }

    /// Requests running now.
    pub fn in_flight(&self) -> usize {
        self.inner.max_concurrency - self.inner.sem.available_permits()
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.inner
            .pending
            .load(Ordering::Acquire)
            .saturating_sub(self.in_flight())
    }

    pub fn capacity(&self) -> usize {
        self.inner.total
    }
}

struct PendingGuard<'a>(&'a Arc<Inner>);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rejects_zero_concurrency() {
        assert!(matches!(Breaker::new(0, 5), Err(BreakerError::Invalid(_))));
        assert!(Breaker::for_container_concurrency(0).unwrap().is_none());
        assert_eq!(
            Breaker::for_container_concurrency(3)
                .unwrap()
                .unwrap()
                .capacity(),
            33
        );
    }

    #[tokio::test(start_paused = true)]
    async fn admits_queues_then_rejects() {
        let b = Breaker::new(2, 1).unwrap();
        let p1 = b.acquire().await.unwrap();
        let _p2 = b.acquire().await.unwrap();
        assert_eq!(b.in_flight(), 2);
        // The third waits in the queue.
        let b3 = b.clone();
        let waiter = tokio::spawn(async move { b3.acquire().await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(b.queued(), 1);
        // The fourth finds running + queued at capacity and is refused at once.
        let err = b.acquire().await.unwrap_err();
        assert!(matches!(
            err,
            BreakerError::QueueFull {
                in_flight: 2,
                queued: 1,
                capacity: 3
            }
        ));
        let status: tonic::Status = err.into();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        // Releasing one slot lets the queued request in.
        drop(p1);
        let p3 = waiter.await.unwrap().unwrap();
        assert_eq!(b.in_flight(), 2);
        assert_eq!(b.queued(), 0);
        drop(p3);
        assert_eq!(b.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiter_frees_its_queue_place() {
        let b = Breaker::new(1, 1).unwrap();
        let _p = b.acquire().await.unwrap();
        let timed_out = tokio::time::timeout(Duration::from_secs(1), b.acquire()).await;
        assert!(timed_out.is_err());
        assert_eq!(b.queued(), 0);
        // The queue place is free again: another waiter may take it.
        let b2 = b.clone();
        let w = tokio::spawn(async move { b2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(b.queued(), 1);
        w.abort();
    }
}
