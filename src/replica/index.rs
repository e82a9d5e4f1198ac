//! Where each applied operation still in the log is: per actor, sequence
//! number → LSN of its log record, its chain hash, and whether it is a
//! signed chain head. It tells a repeated operation from a conflicting one
//! (same position, other hash), and which records a catch-up answer is
//! made of.

use std::collections::{BTreeMap, VecDeque};

use super::{ActorId, ChainHash};
use crate::wal::Lsn;

/// One indexed operation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub lsn: Lsn,
    pub hash: ChainHash,
    /// A signed chain head (its signature is in its record).
    pub signed: bool,
    /// Written in format 2: it can only be served inside a snapshot.
    pub legacy: bool,
}

/// Per actor: the sequence number of the first indexed operation, the hash
/// before it, and that operation and its successors, as long as they are
/// in the log.
#[derive(Debug, Default)]
pub(super) struct OpIndex {
    actors: BTreeMap<ActorId, Indexed>,
}

#[derive(Debug)]
struct Indexed {
    first: u64,
    before: ChainHash,
    entries: VecDeque<Entry>,
}

/// The hash the operation after `e` follows: `e`'s, or the zero hash after
/// a format-2 operation (the chain starts again there).
fn follows(e: &Entry) -> ChainHash {
    if e.legacy {
        ChainHash::ZERO
    } else {
        e.hash
    }
}

impl OpIndex {
    /// Records operation `seq` of `actor`, following `prev`, applied from
    /// log record `entry.lsn`. Operations of an actor are indexed in a run
    /// without gaps: one that does not follow the run (after a snapshot
    /// merge, say) starts a new one.
    pub(super) fn insert(&mut self, actor: ActorId, seq: u64, prev: ChainHash, entry: Entry) {
        let at =
            self.actors.entry(actor).or_insert_with(|| Indexed { first: seq, before: prev, entries: VecDeque::new() });
        if at.first + at.entries.len() as u64 != seq {
            *at = Indexed { first: seq, before: prev, entries: VecDeque::new() };
        }
        at.entries.push_back(entry);
    }

    /// The indexed operation `seq` of `actor`.
    pub(super) fn get(&self, actor: &ActorId, seq: u64) -> Option<&Entry> {
        let at = self.actors.get(actor)?;
        let i = usize::try_from(seq.checked_sub(at.first)?).ok()?;
        at.entries.get(i)
    }

    /// The hash operation `from` of `actor` follows, and the entries
    /// `from..=last`, or `None` if any of them is not indexed (truncated
    /// from the log, merged from a snapshot) or was written in format 2:
    /// then only a snapshot can answer.
    pub(super) fn range(&self, actor: &ActorId, from: u64, last: u64) -> Option<(ChainHash, Vec<Entry>)> {
        let at = self.actors.get(actor)?;
        if from < at.first || at.first + at.entries.len() as u64 <= last || last < from {
            return None;
        }
        let skip = usize::try_from(from - at.first).ok()?;
        let before = if skip == 0 { at.before } else { follows(at.entries.get(skip - 1)?) };
        let entries: Vec<Entry> = at.entries.iter().skip(skip).take((last - from + 1) as usize).copied().collect();
        if entries.iter().any(|e| e.legacy) {
            return None;
        }
        Some((before, entries))
    }

    /// Forgets the operations whose records are before `first`, the log's
    /// first LSN after a truncation.
    pub(super) fn forget_before(&mut self, first: Lsn) {
        for at in self.actors.values_mut() {
            while at.entries.front().is_some_and(|e| e.lsn < first) {
                if let Some(e) = at.entries.pop_front() {
                    at.before = follows(&e);
                }
                at.first += 1;
            }
        }
    }

    /// Forgets everything, before the state is rebuilt by a replay.
    pub(super) fn clear(&mut self) {
        self.actors.clear();
    }
}
