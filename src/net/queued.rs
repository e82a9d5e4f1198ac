//! A node-wide bound on the bytes of gossip waiting in document queues.
//!
//! The queues are bounded in messages, but a message may be as large as
//! `max_gossip`: without this, a peer publishing large messages faster than
//! a document verifies them could make the node hold thousands of them.
//! Gossip over the bound is shed (anti-entropy catches up).

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of gossip queued at once, node-wide.
pub(crate) const MAX_QUEUED_GOSSIP: usize = 64 << 20;

/// The shared count of queued bytes and its limit.
#[derive(Debug, Clone)]
pub(crate) struct QueueBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl QueueBudget {
    pub fn new(limit: usize) -> QueueBudget {
        QueueBudget { used: Arc::new(AtomicUsize::new(0)), limit }
    }

    /// `bytes`, counted until dropped, if they fit; else they are given back.
    pub fn admit(&self, bytes: Vec<u8>) -> Result<Queued, Vec<u8>> {
        let len = bytes.len();
        let fits = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(len).filter(|&total| total <= self.limit)
        });
        match fits {
            Ok(_) => Ok(Queued { bytes, used: Arc::clone(&self.used) }),
            Err(_) => Err(bytes),
        }
    }

    /// Bytes queued now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Queued bytes: released from the budget when processed or dropped
/// (also when a document closes with messages still queued).
#[derive(Debug)]
pub(crate) struct Queued {
    bytes: Vec<u8>,
    used: Arc<AtomicUsize>,
}

impl Deref for Queued {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes.len(), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_counted_until_dropped() {
        let budget = QueueBudget::new(100);
        let a = budget.admit(vec![1; 60]).unwrap();
        assert_eq!(&a[..3], &[1, 1, 1]);
        let refused = budget.admit(vec![2; 41]).unwrap_err();
        assert_eq!(refused.len(), 41, "given back whole");
        let b = budget.admit(vec![3; 40]).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(budget.admit(vec![4; 60]).is_ok(), "dropped at once: nothing held");
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.admit(vec![0; 101]).is_err());
    }
}
