//! Ready-made documents and what a user sees when two offline devices edit
//! them concurrently.
//!
//! | document | built on | concurrent edits |
//! |---|---|---|
//! | [`KvDoc`](super::KvDoc) | observed-remove map of multi-value registers | two devices set the same key offline: after sync the key holds **both** values (a conflict the app can show and resolve by writing again). Delete vs concurrent set: the set wins. |
//! | [`SetDoc`] | `Orswot<String>` | add-wins: an element removed on one device and (re-)added concurrently on another stays. |
//! | [`CounterDoc`] | `PNCounter` | increments and decrements from all devices add up; nothing is lost. |
//! | [`RegisterDoc`] | last-writer-wins register, hybrid logical clock marker | the write with the later hybrid timestamp wins everywhere; ties broken by actor id. The losing value is gone. |

use std::convert::Infallible;

use crdts::{CmRDT, CvRDT};
use serde::{Deserialize, Serialize};

use super::{ActorId, Document};

/// Add-wins set of strings.
pub type SetDoc = crdts::Orswot<String, ActorId>;

// The default canonical encoding covers the whole state: the clock, each
// member's dots and the deferred removes. Members and clock alone are not
// enough: states that differ only in a member's dots answer the same later
// remove differently.
impl Document for SetDoc {
    type Operation = crdts::orswot::Op<String, ActorId>;

    /// Accepts every state. `Orswot::validate_merge` reports a
    /// "double-spent dot" whenever one dot tags several members, which is
    /// exactly what `add_all` produces, so it would refuse legitimate
    /// snapshots (even a state merged with itself).
    fn check_merge(&self, _other: &SetDoc) -> Result<(), String> {
        Ok(())
    }

    fn check_author(op: &Self::Operation, author: &ActorId) -> Result<(), String> {
        match op {
            crdts::orswot::Op::Add { dot, .. } => same_actor(&dot.actor, author),
            crdts::orswot::Op::Rm { .. } => Ok(()),
        }
    }
}

/// Refuses an operation whose own actor field is not its signer.
fn same_actor(named: &ActorId, author: &ActorId) -> Result<(), String> {
    if named == author {
        Ok(())
    } else {
        Err(format!("it names actor {named} but is signed by {author}"))
    }
}

/// Counter that can go up and down.
pub type CounterDoc = crdts::PNCounter<ActorId>;

impl Document for CounterDoc {
    type Operation = crdts::pncounter::Op<ActorId>;

    fn check_author(op: &Self::Operation, author: &ActorId) -> Result<(), String> {
        same_actor(&op.dot.actor, author)
    }
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
/// let op = reg.set_op(ActorId([1; 32]), Some("draft".into()));
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

    fn check_author(op: &Self::Operation, author: &ActorId) -> Result<(), String> {
        same_actor(&op.marker.actor, author)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::OpContext;
    use proptest::prelude::*;

    const CX: OpContext<'static> = OpContext { author: &ActorId([1; 32]), seq: 3 };

    /// Encodes with the default (CBOR), decodes, and checks the operation
    /// and its bytes survive, and that a trailing byte is refused.
    fn round_trip<D: Document>(op: &D::Operation) {
        let mut bytes = Vec::new();
        D::encode_op(op, &CX, &mut bytes).unwrap();
        let back = D::decode_op(&bytes, &CX).unwrap();
        assert_eq!(format!("{back:?}"), format!("{op:?}"));
        let mut again = Vec::new();
        D::encode_op(&back, &CX, &mut again).unwrap();
        assert_eq!(again, bytes);
        bytes.push(0);
        let e = D::decode_op(&bytes, &CX).unwrap_err();
        assert!(e.contains("1 bytes after"), "{e}");
        assert!(D::decode_op(&[], &CX).is_err());
    }

    #[test]
    fn ready_made_documents_encode_operations_as_cbor() {
        let a = *CX.author;
        let set = SetDoc::default();
        let add = set.add("x".to_string(), set.read_ctx().derive_add_ctx(a));
        round_trip::<SetDoc>(&add);
        let mut with_x = set.clone();
        with_x.apply(add);
        round_trip::<SetDoc>(&with_x.rm("x".to_string(), with_x.contains(&"x".to_string()).derive_rm_ctx()));
        let counter = CounterDoc::default();
        round_trip::<CounterDoc>(&counter.inc(a));
        round_trip::<CounterDoc>(&counter.dec_many(a, u64::MAX));
        let reg = RegisterDoc::default();
        round_trip::<RegisterDoc>(&reg.set_op(a, Some("draft ✎".into())));
        round_trip::<RegisterDoc>(&reg.set_op(a, None));
    }

    #[test]
    fn other_cbor_encodings_of_an_operation_decode_to_it() {
        let op = RegisterDoc { value: None, marker: Hlc { wall_ms: 0, logical: 0, actor: *CX.author } };
        let mut bytes = Vec::new();
        RegisterDoc::encode_op(&op, &CX, &mut bytes).unwrap();
        assert_eq!(RegisterDoc::decode_op(&bytes, &CX), Ok(op.clone()));
        // `logical: 0` with a one-byte argument (0x18 0x00) instead of 0x00:
        // the same operation (its hash, over the bytes, differs).
        let at = bytes.windows(7).position(|w| w == b"logical").unwrap() + 7;
        let mut longer = bytes.clone();
        longer[at] = 0x18;
        longer.insert(at + 1, 0x00);
        assert_eq!(RegisterDoc::decode_op(&longer, &CX), Ok(op));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(RegisterDoc::decode_op(&trailing, &CX).is_err());
    }

    /// Bytes that decode give an operation that encodes and decodes again
    /// to itself.
    fn stable_if_decoded<D: Document>(bytes: &[u8]) -> bool {
        let Ok(op) = D::decode_op(bytes, &CX) else { return true };
        let mut again = Vec::new();
        // Compared by their encodings: not every operation type is `PartialEq`.
        D::encode_op(&op, &CX, &mut again).is_ok()
            && D::decode_op(&again, &CX).is_ok_and(|o| {
                let mut third = Vec::new();
                D::encode_op(&o, &CX, &mut third).is_ok() && third == again
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            prop_assert!(stable_if_decoded::<SetDoc>(&bytes));
            prop_assert!(stable_if_decoded::<CounterDoc>(&bytes));
            prop_assert!(stable_if_decoded::<RegisterDoc>(&bytes));
        }

        #[test]
        fn altered_operations_never_panic(
            wall_ms in any::<u64>(),
            logical in any::<u32>(),
            steps in any::<u64>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            insert in any::<bool>(),
        ) {
            let alter = |mut b: Vec<u8>| {
                let i = at.index(b.len());
                if insert { b.insert(i, byte) } else { b[i] = byte }
                b
            };
            let reg = RegisterDoc { value: Some("v".into()), marker: Hlc { wall_ms, logical, actor: *CX.author } };
            let mut b = Vec::new();
            RegisterDoc::encode_op(&reg, &CX, &mut b).unwrap();
            prop_assert!(stable_if_decoded::<RegisterDoc>(&alter(b)));
            let mut b = Vec::new();
            CounterDoc::encode_op(&CounterDoc::default().inc_many(*CX.author, steps), &CX, &mut b).unwrap();
            prop_assert!(stable_if_decoded::<CounterDoc>(&alter(b)));
        }
    }

    #[test]
    fn set_states_with_multi_member_adds_can_be_merged() {
        let a = ActorId([1; 32]);
        let mut set = SetDoc::default();
        set.apply(set.add_all(["x".to_string(), "y".to_string()], set.read_ctx().derive_add_ctx(a)));
        assert!(set.validate_merge(&set).is_err(), "crdts refuses the merge of a state with itself");
        assert_eq!(set.check_merge(&set), Ok(()));
    }

    #[test]
    fn set_canonical_tells_apart_states_with_the_same_members_and_clock() {
        let (a, b) = (ActorId([1; 32]), ActorId([2; 32]));
        let m = "m".to_string();
        let empty = SetDoc::default();
        let add_a = empty.add(m.clone(), empty.read_ctx().derive_add_ctx(a));
        let add_b = empty.add(m.clone(), empty.read_ctx().derive_add_ctx(b));
        let (mut seen_by_a, mut seen_by_b) = (SetDoc::default(), SetDoc::default());
        seen_by_a.apply(add_a.clone());
        seen_by_b.apply(add_b.clone());
        // x: both concurrent adds; y: also a's remove of the add it saw.
        let mut x = SetDoc::default();
        x.apply(add_a);
        x.apply(add_b);
        let mut y = x.clone();
        y.apply(seen_by_a.rm(m.clone(), seen_by_a.contains(&m).derive_rm_ctx()));
        assert_eq!((x.read().val, x.clock()), (y.read().val, y.clock()));
        assert_ne!(x.canonical(), y.canonical());
        // The difference shows once b removes the add it saw.
        let rm_b = seen_by_b.rm(m.clone(), seen_by_b.contains(&m).derive_rm_ctx());
        x.apply(rm_b.clone());
        y.apply(rm_b);
        assert!(x.contains(&m).val && !y.contains(&m).val);
    }

    #[test]
    fn hlc_is_monotonic_even_when_the_clock_goes_back() {
        let a = ActorId([1; 32]);
        let t1 = Hlc::next_at(&Hlc::default(), a, 1000);
        let t2 = Hlc::next_at(&t1, a, 900);
        let t3 = Hlc::next_at(&t2, a, 1000);
        let t4 = Hlc::next_at(&t3, a, 2000);
        assert!(t1 < t2 && t2 < t3 && t3 < t4);
        assert_eq!((t2.wall_ms, t2.logical), (1000, 1));
    }
}
