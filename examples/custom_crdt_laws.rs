//! Bring your own CRDT: a "highest score per player" document, checked with
//! the same law tests walrus runs on its own documents, then replicated.
//!
//! ```sh
//! cargo run --example custom_crdt_laws --features testing
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;

use crdts::{CmRDT, CvRDT};
use serde::{Deserialize, Serialize};
use walrus::replica::{ActorId, Catchup, Document, Replica, ReplicaOptions};

/// For each player, the best score ever reported. Merge = pointwise max, so
/// any order of reports gives the same board.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct HighScores(BTreeMap<String, u64>);

/// "`player` scored `score`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Report {
    player: String,
    score: u64,
}

impl CmRDT for HighScores {
    type Op = Report;
    type Validation = Infallible;

    fn validate_op(&self, _op: &Report) -> Result<(), Infallible> {
        Ok(())
    }

    fn apply(&mut self, op: Report) {
        let best = self.0.entry(op.player).or_insert(0);
        *best = (*best).max(op.score);
    }
}

impl CvRDT for HighScores {
    type Validation = Infallible;

    fn validate_merge(&self, _other: &HighScores) -> Result<(), Infallible> {
        Ok(())
    }

    fn merge(&mut self, other: HighScores) {
        for (player, score) in other.0 {
            self.apply(Report { player, score });
        }
    }
}

// A BTreeMap serializes deterministically, so the default canonical
// encoding is right.
impl Document for HighScores {
    type Operation = Report;
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The laws: merge is commutative, associative, idempotent; delivery
    //    order does not matter; lossy replicas converge after catch-up.
    let players = ["ada", "bob", "cy"];
    walrus::testing::check_laws::<HighScores>(
        &|_doc: &HighScores, _actor: ActorId, r: u64| Report {
            player: players[(r % 3) as usize].to_string(),
            score: r % 1000,
        },
        32,
    );
    println!("HighScores passes the CRDT law checks");

    // 2. Replicate it like any other document.
    let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut a: Replica<HighScores> = Replica::open(a_dir.path(), ReplicaOptions::default())?;
    let mut b: Replica<HighScores> = Replica::open(b_dir.path(), ReplicaOptions::default())?;
    a.update(|_, _| Report { player: "ada".into(), score: 42 })?;
    b.update(|_, _| Report { player: "ada".into(), score: 17 })?;
    b.update(|_, _| Report { player: "bob".into(), score: 99 })?;
    for (from, to) in [(&a, &mut b)] {
        if let Catchup::Ops { ops, .. } = from.ops_since(to.clock(), 1 << 20)? {
            to.receive(ops)?;
        }
    }
    if let Catchup::Ops { ops, .. } = b.ops_since(a.clock(), 1 << 20)? {
        a.receive(ops)?;
    }
    println!("a: {:?}\nb: {:?}", a.doc().0, b.doc().0);
    assert_eq!(a.doc(), b.doc());
    Ok(())
}
