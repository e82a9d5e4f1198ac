//! Ready-made documents and what a user sees when two offline devices edit
//! them concurrently.
//!
//! | document | built on | concurrent edits |
//! |---|---|---|
//! | [`KvDoc`] | `Map<String, MVReg<String>>` | two devices set the same key offline: after sync the key holds **both** values (a conflict the app can show and resolve by writing again). Delete vs concurrent set: the set wins. |
//! | [`SetDoc`] | `Orswot<String>` | add-wins: an element removed on one device and (re-)added concurrently on another stays. |
//! | [`CounterDoc`] | `PNCounter` | increments and decrements from all devices add up; nothing is lost. |
//! | [`RegisterDoc`] | last-writer-wins register, hybrid logical clock marker | the write with the later hybrid timestamp wins everywhere; ties broken by actor id. The losing value is gone. |

use std::collections::BTreeMap;
use std::convert::Infallible;

use crdts::{CmRDT, CvRDT, MVReg};
use serde::{Deserialize, Serialize};

use super::{ActorId, Document};

/// Key-value map whose values are multi-value registers: concurrent writes
/// to a key are all kept until a later write supersedes them.
///
/// ```
/// use walrus::replica::{ActorId, KvDoc, KvDocExt};
/// use crdts::CmRDT;
/// let (a, b) = (ActorId([1; 16]), ActorId([2; 16]));
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
pub type KvDoc = crdts::Map<String, MVReg<String, ActorId>, ActorId>;

/// Building and reading [`KvDoc`] operations.
pub trait KvDocExt {
    /// Operation setting `key` to `value`, superseding every value seen.
    fn put_op(&self, actor: ActorId, key: &str, value: &str)
        -> crdts::map::Op<String, MVReg<String, ActorId>, ActorId>;
    /// Operation deleting `key` (values written concurrently survive).
    fn del_op(&self, key: &str) -> crdts::map::Op<String, MVReg<String, ActorId>, ActorId>;
    /// Current values of `key`, sorted: one normally, several after
    /// concurrent writes, none if absent.
    fn values_of(&self, key: &str) -> Vec<String>;
    /// All keys with their values, sorted.
    fn entries(&self) -> BTreeMap<String, Vec<String>>;
}

impl KvDocExt for KvDoc {
    fn put_op(
        &self,
        actor: ActorId,
        key: &str,
        value: &str,
    ) -> crdts::map::Op<String, MVReg<String, ActorId>, ActorId> {
        let ctx = self.read_ctx().derive_add_ctx(actor);
        self.update(key.to_string(), ctx, |reg, ctx| reg.write(value.to_string(), ctx))
    }

    fn del_op(&self, key: &str) -> crdts::map::Op<String, MVReg<String, ActorId>, ActorId> {
        let ctx = self.get(&key.to_string()).derive_rm_ctx();
        self.rm(key.to_string(), ctx)
    }

    fn values_of(&self, key: &str) -> Vec<String> {
        let mut v = self.get(&key.to_string()).val.map(|r| r.read().val).unwrap_or_default();
        v.sort();
        v
    }

    fn entries(&self) -> BTreeMap<String, Vec<String>> {
        self.iter()
            .map(|e| {
                let (k, reg) = e.val;
                let mut vals = reg.read().val;
                vals.sort();
                (k.clone(), vals)
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }
}

impl Document for KvDoc {
    type Operation = crdts::map::Op<String, MVReg<String, ActorId>, ActorId>;

    /// Only the map-level dot is checked: `crdts::Map::validate_op` also
    /// compares the dot with the *key's* clock, which rejects every
    /// legitimate write to a key other than the author's previous one.
    fn check_op(&self, op: &Self::Operation) -> Result<(), String> {
        match op {
            crdts::map::Op::Rm { .. } => Ok(()),
            crdts::map::Op::Up { dot, .. } => {
                let next = self.read_ctx().add_clock.get(&dot.actor) + 1;
                if dot.counter == next {
                    Ok(())
                } else {
                    Err(format!("dot ({}, {}) is not the next one ({next})", dot.actor, dot.counter))
                }
            }
        }
    }

    /// The map's clock and its visible entries. (The dots kept inside each
    /// register may differ between replicas that saw the same operations in
    /// different orders, without any visible or future effect.)
    fn canonical(&self) -> Vec<u8> {
        super::canonical_cbor(&(self.read_ctx().add_clock, self.entries()))
    }
}

/// Add-wins set of strings.
pub type SetDoc = crdts::Orswot<String, ActorId>;

impl Document for SetDoc {
    type Operation = crdts::orswot::Op<String, ActorId>;

    /// The set's clock and its members.
    fn canonical(&self) -> Vec<u8> {
        let members: std::collections::BTreeSet<String> = self.read().val.into_iter().collect();
        super::canonical_cbor(&(self.clock(), members))
    }
}

/// Counter that can go up and down.
pub type CounterDoc = crdts::PNCounter<ActorId>;

impl Document for CounterDoc {
    type Operation = crdts::pncounter::Op<ActorId>;
}

/// Hybrid logical clock timestamp: wall-clock milliseconds, a logical counter
/// for events within the same millisecond (or when the wall clock lags a
/// timestamp already seen), and the actor as the final tie-break. Totally
/// ordered and unique per actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (or the largest seen, if later).
    pub wall_ms: u64,
    /// Logical counter within `wall_ms`.
    pub logical: u32,
    /// Tie-break.
    pub actor: ActorId,
}

impl Hlc {
    /// The next timestamp for `actor` after everything in `seen`, reading
    /// the wall clock.
    pub fn next(seen: &Hlc, actor: ActorId) -> Hlc {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Hlc::next_at(seen, actor, now)
    }

    /// As [`Hlc::next`], with the wall clock given.
    pub fn next_at(seen: &Hlc, actor: ActorId, now_ms: u64) -> Hlc {
        if now_ms > seen.wall_ms {
            Hlc { wall_ms: now_ms, logical: 0, actor }
        } else if seen.logical < u32::MAX {
            Hlc { wall_ms: seen.wall_ms, logical: seen.logical + 1, actor }
        } else {
            Hlc { wall_ms: seen.wall_ms + 1, logical: 0, actor }
        }
    }
}

/// Last-writer-wins register holding an optional string, ordered by
/// [`Hlc`]. The operation is the write itself: `(value, timestamp)`.
///
/// ```
/// use walrus::replica::{ActorId, RegisterDoc};
/// use crdts::CmRDT;
/// let mut reg = RegisterDoc::default();
/// let op = reg.set_op(ActorId([1; 16]), Some("draft".into()));
/// reg.apply(op);
/// assert_eq!(reg.value.as_deref(), Some("draft"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegisterDoc {
    /// Current value (`None`: unset or cleared).
    pub value: Option<String>,
    /// Timestamp of the write that produced it.
    pub marker: Hlc,
}

impl RegisterDoc {
    /// Operation writing `value` with a timestamp later than any seen.
    pub fn set_op(&self, actor: ActorId, value: Option<String>) -> RegisterDoc {
        RegisterDoc { value, marker: Hlc::next(&self.marker, actor) }
    }
}

impl CmRDT for RegisterDoc {
    type Op = RegisterDoc;
    type Validation = Infallible;

    fn validate_op(&self, _op: &RegisterDoc) -> Result<(), Infallible> {
        Ok(())
    }

    fn apply(&mut self, op: RegisterDoc) {
        if op.marker > self.marker {
            *self = op;
        }
    }
}

impl CvRDT for RegisterDoc {
    type Validation = Infallible;

    fn validate_merge(&self, _other: &RegisterDoc) -> Result<(), Infallible> {
        Ok(())
    }

    fn merge(&mut self, other: RegisterDoc) {
        self.apply(other);
    }
}

impl Document for RegisterDoc {
    type Operation = RegisterDoc;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_is_monotonic_even_when_the_clock_goes_back() {
        let a = ActorId([1; 16]);
        let t1 = Hlc::next_at(&Hlc::default(), a, 1000);
        let t2 = Hlc::next_at(&t1, a, 900);
        let t3 = Hlc::next_at(&t2, a, 1000);
        let t4 = Hlc::next_at(&t3, a, 2000);
        assert!(t1 < t2 && t2 < t3 && t3 < t4);
        assert_eq!((t2.wall_ms, t2.logical), (1000, 1));
    }

    #[test]
    fn kv_delete_and_concurrent_put() {
        let (a, b) = (ActorId([1; 16]), ActorId([2; 16]));
        let mut x = KvDoc::default();
        let put = x.put_op(a, "k", "v1");
        x.apply(put.clone());
        let mut y = x.clone();
        let del = x.del_op("k");
        let put2 = y.put_op(b, "k", "v2");
        x.apply(del.clone());
        y.apply(put2.clone());
        assert!(x.values_of("k").is_empty());
        x.apply(put2);
        y.apply(del);
        assert_eq!(x.values_of("k"), vec!["v2"]);
        assert_eq!(x.entries(), y.entries());
        assert_eq!(x.canonical(), y.canonical());
    }
}
