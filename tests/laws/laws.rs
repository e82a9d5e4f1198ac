//! Merge laws and convergence of every ready-made document, over random
//! multi-actor histories, through the seed-based entry points apps use for
//! their own types (`walrus::testing`). Failing seeds proptest found are kept
//! in `laws.proptest-regressions`, next to this file, and re-run first.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use walrus::replica::{CounterDoc, KvDoc, RegisterDoc, SetDoc};
use walrus::testing::{check_convergence_seed, check_laws_seed, counter_op, kv_op, register_op, set_op};

/// The saved failing seeds sit next to this file (proptest's default would
/// look beside the test crate's directory, as `tests/` holds a `main.rs`).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn kv_laws(seed: u64) { check_laws_seed::<KvDoc>(&kv_op, seed); }
    #[test]
    fn set_laws(seed: u64) { check_laws_seed::<SetDoc>(&set_op, seed); }
    #[test]
    fn counter_laws(seed: u64) { check_laws_seed::<CounterDoc>(&counter_op, seed); }
    #[test]
    fn register_laws(seed: u64) { check_laws_seed::<RegisterDoc>(&register_op, seed); }
}

proptest! {
    #![proptest_config(config(8))]

    #[test]
    fn kv_converges(seed: u64) { check_convergence_seed::<KvDoc>(&kv_op, seed); }
    #[test]
    fn set_converges(seed: u64) { check_convergence_seed::<SetDoc>(&set_op, seed); }
    #[test]
    fn counter_converges(seed: u64) { check_convergence_seed::<CounterDoc>(&counter_op, seed); }
    #[test]
    fn register_converges(seed: u64) { check_convergence_seed::<RegisterDoc>(&register_op, seed); }
}
