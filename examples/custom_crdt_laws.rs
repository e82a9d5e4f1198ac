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
use walrus::{ActorId, Document, Replica, ReplicaOptions};

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
    //    The generator makes a random operation from the current state, the
    //    acting replica and a random number.
    let players = ["ada", "bob", "cy"];
    let reports = |doc: &HighScores, _actor: ActorId, r: u64| {
        let player = players[(r % 3) as usize].to_string();
        // Sometimes beat the current best, sometimes report a lower score.
        let best = doc.0.get(&player).copied().unwrap_or(0);
        let score = if r.is_multiple_of(2) { best + (r >> 8) % 50 } else { (r >> 8) % 1000 };
        Report { player, score }
    };
    walrus::testing::check_laws::<HighScores>(&reports);
    println!("HighScores passes the CRDT law checks");

    // 2. Replicate it like any other document.
    let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut a: Replica<HighScores> = Replica::open(a_dir.path(), ReplicaOptions::default())?;
    let mut b: Replica<HighScores> = Replica::open(b_dir.path(), ReplicaOptions::default())?;
    a.update(|_, _| Report { player: "ada".into(), score: 42 })?;
    b.update(|_, _| Report { player: "ada".into(), score: 17 })?;
    b.update(|_, _| Report { player: "bob".into(), score: 99 })?;
    // Exchange what each is missing (pages of ops_since, or a snapshot).
    walrus::testing::catch_up(&a, &mut b, 1 << 20);
    walrus::testing::catch_up(&b, &mut a, 1 << 20);
    println!("a: {:?}\nb: {:?}", a.doc().0, b.doc().0);
    assert_eq!(a.doc(), b.doc());
    Ok(())
}
