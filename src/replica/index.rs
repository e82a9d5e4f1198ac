//! Where each applied operation still in the log is: per actor, sequence
//! number → LSN and signature digest. It tells a repeated operation from
//! a conflicting one, and which log records a catch-up answer is made of.

use std::collections::{BTreeMap, VecDeque};

use super::{ActorId, OpEnvelope};
use crate::wal::Lsn;

/// What is kept in memory of an applied operation's signature to tell a
/// repeat from a conflicting one: its second half, the scalar
/// `S = r + H(R, A, M)·a` of RFC 8032, which depends on the message even if
/// a cheating signer reuses its nonce (`R`, the first half, need not).
type SigDigest = [u8; 32];

fn sig_digest<O>(env: &OpEnvelope<O>) -> SigDigest {
    let mut d = [0u8; 32];
    d.copy_from_slice(&env.sig.0[32..]);
    d
}

/// Per actor: the sequence number of the first indexed operation, and the
/// LSN and signature digest of that operation and its successors, as long
/// as they are in the log.
#[derive(Debug, Default)]
pub(super) struct OpIndex {
    actors: BTreeMap<ActorId, (u64, VecDeque<(Lsn, SigDigest)>)>,
}

impl OpIndex {
    /// Records an operation applied from log record `lsn`. Operations of an
    /// actor are indexed in a run without gaps: one that does not follow
    /// the run (after a snapshot merge, say) starts a new one.
    pub(super) fn insert<O>(&mut self, env: &OpEnvelope<O>, lsn: Lsn) {
        let entry = self.actors.entry(env.actor).or_insert_with(|| (env.seq, VecDeque::new()));
        if entry.0 + entry.1.len() as u64 != env.seq {
            *entry = (env.seq, VecDeque::new());
        }
        entry.1.push_back((lsn, sig_digest(env)));
    }

    /// Whether `env` has the signature of the indexed operation for its
    /// (actor, seq); `None` if that operation is not indexed.
    pub(super) fn same_sig<O>(&self, env: &OpEnvelope<O>) -> Option<bool> {
        let (first, entries) = self.actors.get(&env.actor)?;
        let i = usize::try_from(env.seq.checked_sub(*first)?).ok()?;
        entries.get(i).map(|(_, sig)| *sig == sig_digest(env))
    }

    /// The LSNs of `actor`'s operations `from..=last`, or `None` if any of
    /// them is not indexed (truncated from the log, or merged from a
    /// snapshot): then only a snapshot can answer.
    pub(super) fn lsns(&self, actor: &ActorId, from: u64, last: u64) -> Option<impl Iterator<Item = Lsn> + '_> {
        let (first, entries) = self.actors.get(actor)?;
        if from < *first || first + entries.len() as u64 <= last {
            return None;
        }
        let skip = usize::try_from(from - first).ok()?;
        Some(entries.iter().skip(skip).map(|(lsn, _)| *lsn))
    }

    /// Forgets the operations whose records are before `first`, the log's
    /// first LSN after a truncation.
    pub(super) fn forget_before(&mut self, first: Lsn) {
        for (seq, entries) in self.actors.values_mut() {
            while entries.front().is_some_and(|&(l, _)| l < first) {
                entries.pop_front();
                *seq += 1;
            }
        }
    }

    /// Forgets everything, before the state is rebuilt by a replay.
    pub(super) fn clear(&mut self) {
        self.actors.clear();
    }
}
