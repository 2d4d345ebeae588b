//! Poison-tolerant locking, the one way the shim takes its short
//! synchronous locks.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m` even when a panicking holder poisoned it: every value the shim
/// guards is replaced whole or updated in one step, so it is consistent
/// after any panic, and one failed request must not wedge the others.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
