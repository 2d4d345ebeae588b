//! Poison-tolerant locking, the one way the agent takes its std mutexes.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m` even when poisoned. A panic aborts the agent (panic=abort), so
/// a poisoned lock is only ever seen in tests, and every critical section is
/// a few infallible steps: the data is consistent either way.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
