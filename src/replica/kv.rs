//! The key-value document: an observed-remove map of multi-value registers,
//! built as a dot store with a causal context.
//!
//! Every write of a value is identified by a *dot* (actor, counter). A key
//! holds the dotted values nobody has overwritten or deleted yet. A write or
//! delete names the dots it has seen for the key and removes exactly those,
//! so a value written concurrently (unseen) survives: concurrent writes show
//! up as several values, and a delete never removes a concurrent write. The
//! causal context remembers every dot seen (added or removed), so an old
//! write that arrives late is not resurrected.
//!
//! This replaces `crdts::Map<_, MVReg<_>>`, whose state merge is not
//! associative once keys are deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use crdts::{CmRDT, CvRDT};
use serde::{Deserialize, Serialize};

use super::{ActorId, Document};

/// Identifies one write: the writer and its write counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Writer.
    pub actor: ActorId,
    /// The writer's write counter (1, 2, …).
    pub counter: u64,
}

/// Every dot seen, per actor: all counters up to `upto`, plus `extra`
/// counters above it (seen out of order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalContext(BTreeMap<ActorId, (u64, BTreeSet<u64>)>);

impl CausalContext {
    /// Whether `dot` was seen.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.0.get(&dot.actor).is_some_and(|(upto, extra)| dot.counter <= *upto || extra.contains(&dot.counter))
    }

    /// Records `dot` as seen.
    pub fn insert(&mut self, dot: Dot) {
        let (upto, extra) = self.0.entry(dot.actor).or_default();
        if dot.counter > *upto {
            extra.insert(dot.counter);
        }
        // Checked: hostile state may hold u64::MAX.
        while upto.checked_add(1).is_some_and(|next| extra.remove(&next)) {
            *upto += 1;
        }
    }

    /// Union.
    pub fn merge(&mut self, other: &CausalContext) {
        for (actor, (upto, extra)) in &other.0 {
            let e = self.0.entry(*actor).or_default();
            if *upto > e.0 {
                e.0 = *upto;
                e.1.retain(|c| c > upto);
            }
            for c in extra {
                if *c > e.0 {
                    e.1.insert(*c);
                }
            }
            while e.0.checked_add(1).is_some_and(|next| e.1.remove(&next)) {
                e.0 += 1;
            }
        }
    }

    /// Highest contiguous counter seen for `actor`.
    pub fn upto(&self, actor: &ActorId) -> u64 {
        self.0.get(actor).map_or(0, |(u, _)| *u)
    }
}

/// An operation on a [`KvDoc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Sets `key` to `value` (as write `dot`), removing the values `seen`.
    Put {
        /// The key.
        key: String,
        /// Identifies this write.
        dot: Dot,
        /// The new value.
        value: String,
        /// Dots of the key's values the writer had seen.
        seen: Vec<Dot>,
    },
    /// Removes the values `seen` from `key`.
    Del {
        /// The key.
        key: String,
        /// Dots of the key's values the writer had seen.
        seen: Vec<Dot>,
    },
}

/// Key-value map whose values are multi-value registers: concurrent writes
/// to a key are all kept until a later write supersedes them; a delete
/// removes only the values it saw.
///
/// ```
/// use walrus::replica::{ActorId, KvDoc};
/// use crdts::CmRDT;
/// let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
/// let mut phone = KvDoc::default();
/// let mut laptop = KvDoc::default();
/// let op1 = phone.put_op(a, "title", "Groceries");
/// let op2 = laptop.put_op(b, "title", "Shopping");
/// phone.apply(op1.clone());
/// laptop.apply(op2.clone());
/// phone.apply(op2);
/// laptop.apply(op1);
/// assert_eq!(phone.values_of("title"), vec!["Groceries", "Shopping"]);
/// assert_eq!(phone.values_of("title"), laptop.values_of("title"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvDoc {
    entries: BTreeMap<String, BTreeMap<Dot, String>>,
    context: CausalContext,
}

impl KvDoc {
    fn seen(&self, key: &str) -> Vec<Dot> {
        self.entries.get(key).map(|vals| vals.keys().copied().collect()).unwrap_or_default()
    }

    fn remove_seen(&mut self, key: &str, seen: &[Dot]) {
        for d in seen {
            self.context.insert(*d);
        }
        if let Some(vals) = self.entries.get_mut(key) {
            for d in seen {
                vals.remove(d);
            }
            if vals.is_empty() {
                self.entries.remove(key);
            }
        }
    }
}

/// Building and reading operations.
impl KvDoc {
    /// Operation setting `key` to `value`, superseding every value seen.
    pub fn put_op(&self, actor: ActorId, key: &str, value: &str) -> KvOp {
        let dot = Dot { actor, counter: self.context.upto(&actor).saturating_add(1) };
        KvOp::Put { key: key.to_string(), dot, value: value.to_string(), seen: self.seen(key) }
    }

    /// Operation deleting `key` (values written concurrently survive).
    pub fn del_op(&self, key: &str) -> KvOp {
        KvOp::Del { key: key.to_string(), seen: self.seen(key) }
    }

    /// Current values of `key`, sorted: one normally, several after
    /// concurrent writes, none if absent.
    pub fn values_of(&self, key: &str) -> Vec<String> {
        let mut v: Vec<String> = self.entries.get(key).map(|vals| vals.values().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }

    /// All keys with their values, sorted.
    pub fn entries(&self) -> BTreeMap<String, Vec<String>> {
        self.entries
            .iter()
            .map(|(k, vals)| {
                let mut v: Vec<String> = vals.values().cloned().collect();
                v.sort();
                (k.clone(), v)
            })
            .collect()
    }
}

impl CmRDT for KvDoc {
    type Op = KvOp;
    type Validation = Infallible;

    fn validate_op(&self, _op: &KvOp) -> Result<(), Infallible> {
        Ok(())
    }

    fn apply(&mut self, op: KvOp) {
        match op {
            KvOp::Put { key, dot, value, seen } => {
                self.remove_seen(&key, &seen);
                if !self.context.contains(&dot) {
                    self.context.insert(dot);
                    self.entries.entry(key).or_default().insert(dot, value);
                }
            }
            KvOp::Del { key, seen } => self.remove_seen(&key, &seen),
        }
    }
}

impl CvRDT for KvDoc {
    type Validation = Infallible;

    fn validate_merge(&self, _other: &KvDoc) -> Result<(), Infallible> {
        Ok(())
    }

    fn merge(&mut self, other: KvDoc) {
        // A dotted value survives if both sides have it, or if one side has
        // it and the other never saw its dot.
        let mut merged: BTreeMap<String, BTreeMap<Dot, String>> = BTreeMap::new();
        for (key, vals) in &self.entries {
            for (dot, v) in vals {
                let theirs = other.entries.get(key).is_some_and(|o| o.contains_key(dot));
                if theirs || !other.context.contains(dot) {
                    merged.entry(key.clone()).or_default().insert(*dot, v.clone());
                }
            }
        }
        for (key, vals) in other.entries {
            for (dot, v) in vals {
                if !self.context.contains(&dot) {
                    merged.entry(key.clone()).or_default().insert(dot, v);
                }
            }
        }
        self.entries = merged;
        self.context.merge(&other.context);
    }
}

impl Document for KvDoc {
    type Operation = KvOp;

    /// A put of the same value, a delete of the same key, removing what
    /// the original saw — except `distrusted`'s values this state has never
    /// seen (forked writes, which other replicas may hold other operations
    /// for) — and what `actor` already wrote again of the key (so a run of
    /// rewritten puts overwrites itself as the original did). A trusted
    /// original put is replaced by its copy.
    fn reissue(&self, op: &KvOp, distrusted: ActorId, actor: ActorId) -> Option<KvOp> {
        let seen = |key: &str, seen: &[Dot]| -> Vec<Dot> {
            let mut out: Vec<Dot> =
                seen.iter().filter(|d| d.actor != distrusted || self.context.contains(d)).copied().collect();
            let rewritten: Vec<Dot> =
                self.seen(key).into_iter().filter(|d| d.actor == actor && !out.contains(d)).collect();
            out.extend(rewritten);
            out
        };
        Some(match op {
            KvOp::Put { key, value, seen: s, dot: original } => {
                let dot = Dot { actor, counter: self.context.upto(&actor).saturating_add(1) };
                let mut seen = seen(key, s);
                // The original, where trusted, is the same write: replaced.
                if original.actor != distrusted && !seen.contains(original) {
                    seen.push(*original);
                }
                KvOp::Put { key: key.clone(), dot, value: value.clone(), seen }
            }
            KvOp::Del { key, seen: s } => KvOp::Del { key: key.clone(), seen: seen(key, s) },
        })
    }

    fn check_author(op: &KvOp, author: &ActorId) -> Result<(), String> {
        match op {
            KvOp::Put { dot, .. } if dot.actor != *author => {
                Err(format!("it writes as actor {} but is signed by {author}", dot.actor))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reissued_write_removes_only_what_the_original_saw() {
        let (old, new, other) = (ActorId([1; 32]), ActorId([2; 32]), ActorId([3; 32]));
        let mut doc = KvDoc::default();
        let first = doc.put_op(other, "k", "first");
        doc.apply(first);
        let forked = doc.put_op(old, "k", "mine");
        // Written concurrently by someone else, arrived later.
        let mut elsewhere = KvDoc::default();
        let concurrent = elsewhere.put_op(ActorId([4; 32]), "k", "concurrent");
        elsewhere.apply(concurrent.clone());
        doc.apply(concurrent);
        let again = doc.reissue(&forked, old, new).unwrap();
        assert!(matches!(&again, KvOp::Put { dot, .. } if dot.actor == new && dot.counter == 1));
        doc.apply(again);
        assert_eq!(doc.values_of("k"), vec!["concurrent", "mine"], "the concurrent write survives");
        // A later forked put of the key, which saw the first forked one,
        // overwrites its rewritten version, not the concurrent write.
        let mut forked_state = KvDoc::default();
        forked_state.apply(forked.clone());
        let forked2 = forked_state.put_op(old, "k", "mine, later");
        let again2 = doc.reissue(&forked2, old, new).unwrap();
        doc.apply(again2);
        assert_eq!(doc.values_of("k"), vec!["concurrent", "mine, later"]);
    }

    #[test]
    fn delete_loses_to_a_concurrent_put_and_late_writes_stay_dead() {
        let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
        let mut x = KvDoc::default();
        let put = x.put_op(a, "k", "v1");
        x.apply(put.clone());
        let mut y = x.clone();
        let del = x.del_op("k");
        let put2 = y.put_op(b, "k", "v2");
        x.apply(del.clone());
        y.apply(put2.clone());
        assert!(x.values_of("k").is_empty());
        x.apply(put2.clone());
        y.apply(del);
        assert_eq!(x.values_of("k"), vec!["v2"]);
        assert_eq!(x, y);
        // A superseding write that arrives before the write it supersedes.
        let mut z = KvDoc::default();
        let put3 = x.put_op(a, "k", "v3");
        z.apply(put3.clone());
        z.apply(put.clone());
        z.apply(put2);
        assert_eq!(z.values_of("k"), vec!["v3"]);
        let mut m = x.clone();
        m.apply(put3);
        let mut merged = z.clone();
        merged.merge(m.clone());
        assert_eq!(merged.values_of("k"), vec!["v3"]);
    }

    #[test]
    fn context_compacts() {
        let a = ActorId([1; 32]);
        let mut c = CausalContext::default();
        for n in [3, 1, 2, 5] {
            c.insert(Dot { actor: a, counter: n });
        }
        assert_eq!(c.upto(&a), 3);
        assert!(c.contains(&Dot { actor: a, counter: 5 }) && !c.contains(&Dot { actor: a, counter: 4 }));
    }
}
