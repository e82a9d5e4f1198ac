//! Checking a batch of remote operations: each actor's operations form
//! runs (consecutive, each following the one before by hash), and a run
//! is authentic up to each valid head signature in it. Checking the
//! hashes was done when the operations were decoded; here only the heads'
//! signatures are checked, on several threads when there are many.

use std::collections::BTreeMap;

use super::run::{MAX_RUN_BYTES, MAX_RUN_OPS};
use super::{ActorId, ChainHash, OpEnvelope, Signature};

/// Batches with at least this many head signatures are checked on several
/// threads.
const PARALLEL_VERIFY_MIN: usize = 32;
/// Most threads verifying one batch.
const MAX_VERIFY_THREADS: usize = 8;

/// For each operation of `ops` whose flag in `todo` is set: `Some(true)` if
/// a valid head signature of its actor, later in the same run, covers it;
/// `Some(false)` if none does (a bad head, no head before the run ends, or
/// a head that would cover more than [`MAX_RUN_OPS`] operations or
/// [`MAX_RUN_BYTES`] bytes: such a run could never be served on).
/// `None` where not asked.
pub(super) fn verify_runs<O>(ops: &[OpEnvelope<O>], todo: &[bool]) -> Vec<Option<bool>> {
    // Which heads to check, and their results.
    let heads: Vec<usize> =
        (0..ops.len()).filter(|&i| todo.get(i).copied().unwrap_or(false) && ops[i].signature().is_some()).collect();
    let jobs: Vec<(ActorId, ChainHash, Signature)> =
        heads.iter().filter_map(|&i| ops[i].signature().map(|s| (ops[i].actor(), ops[i].hash(), *s))).collect();
    let valid = check_all(&jobs);
    let mut head_ok: Vec<Option<bool>> = vec![None; ops.len()];
    for (i, ok) in heads.into_iter().zip(valid) {
        head_ok[i] = Some(ok);
    }

    let mut out = vec![None; ops.len()];
    // Per actor: the run being read (its last operation) and the
    // operations in it not yet covered by a head.
    let mut open: BTreeMap<ActorId, (usize, Vec<usize>, usize)> = BTreeMap::new();
    for (i, env) in ops.iter().enumerate() {
        if !todo.get(i).copied().unwrap_or(false) {
            continue;
        }
        let actor = env.actor();
        let continues = open.get(&actor).is_some_and(|(last, _, _)| env.follows(&ops[*last]));
        if !continues {
            // The run before ends here: what no head covered is unproven.
            if let Some((_, pending, _)) = open.remove(&actor) {
                pending.into_iter().for_each(|p| out[p] = Some(false));
            }
        }
        let (last, pending, bytes) = open.entry(actor).or_insert((i, Vec::new(), 0));
        *last = i;
        pending.push(i);
        *bytes += env.op_bytes().len();
        if let Some(ok) = head_ok[i] {
            let ok = ok && pending.len() <= MAX_RUN_OPS && *bytes <= MAX_RUN_BYTES;
            pending.drain(..).for_each(|p| out[p] = Some(ok));
            *bytes = 0;
        }
    }
    for (_, pending, _) in open.into_values() {
        pending.into_iter().for_each(|p| out[p] = Some(false));
    }
    out
}

/// Checks head signatures, on several threads if there are many.
fn check_all(jobs: &[(ActorId, ChainHash, Signature)]) -> Vec<bool> {
    let check = |part: &[(ActorId, ChainHash, Signature)]| -> Vec<bool> {
        part.iter().map(|(a, h, s)| h.verify_head(a, s)).collect()
    };
    if jobs.len() < PARALLEL_VERIFY_MIN {
        return check(jobs);
    }
    // Asked once: the answer reads cgroup files, costing more than a
    // signature check.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads =
        *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_VERIFY_THREADS));
    if threads < 2 {
        return check(jobs);
    }
    let per_thread = jobs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = jobs.chunks(per_thread);
        let first = parts.next().unwrap_or(&[]);
        // A thread that cannot be created (resource limits) leaves its
        // share to this one.
        let handles: Vec<_> =
            parts.map(|part| (part, std::thread::Builder::new().spawn_scoped(scope, move || check(part)))).collect();
        let mut out = check(first);
        for (part, h) in handles {
            match h.map(|h| h.join()) {
                Ok(Ok(r)) => out.extend(r),
                _ => out.extend(check(part)),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{ActorKey, ChainKey, KvDoc, KvOp};

    fn run(key: &ActorKey, n: u64, heads: &[u64]) -> Vec<OpEnvelope<KvOp>> {
        let chain = ChainKey::new("d");
        let mut prev = ChainHash::ZERO;
        (1..=n)
            .map(|seq| {
                let op = KvDoc::default().put_op(key.actor(), "k", "v");
                let mut env = OpEnvelope::encode::<KvDoc>(&chain, key.actor(), seq, prev, op, None).unwrap();
                if heads.contains(&seq) {
                    env.sign(key);
                }
                prev = env.hash();
                env
            })
            .collect()
    }

    #[test]
    fn a_head_covers_its_run_back_to_the_previous_head() {
        let key = ActorKey::from_seed([1; 32]);
        let ops = run(&key, 6, &[3, 5]);
        let got = verify_runs(&ops, &[true; 6]);
        assert_eq!(got, [Some(true), Some(true), Some(true), Some(true), Some(true), Some(false)]);
        // A gap ends a run: the operations before it need their own head.
        let gapped = vec![ops[0].clone(), ops[2].clone()];
        assert_eq!(verify_runs(&gapped, &[true, true]), [Some(false), Some(true)]);
        assert_eq!(verify_runs(&ops, &[false; 6]), [None; 6]);
    }

    #[test]
    fn a_forged_head_proves_nothing() {
        let key = ActorKey::from_seed([1; 32]);
        let mut ops = run(&key, 3, &[]);
        ops[2].set_signature(Some(Signature([5; 64])));
        assert_eq!(verify_runs(&ops, &[true; 3]), [Some(false); 3]);
        let many: Vec<_> = (0..80).flat_map(|_| run(&key, 1, &[1])).collect();
        assert!(verify_runs(&many, &[true; 80]).iter().all(|v| *v == Some(true)));
    }
}

#[cfg(test)]
mod limits {
    use super::*;
    use crate::replica::{ActorKey, ChainKey, KvDoc, KvOp};

    #[test]
    fn a_head_covering_more_than_a_run_may_hold_covers_nothing() {
        let key = ActorKey::from_seed([3; 32]);
        let chain = ChainKey::new("d");
        let n = MAX_RUN_OPS as u64 + 1;
        let mut prev = ChainHash::ZERO;
        let ops: Vec<OpEnvelope<KvOp>> = (1..=n)
            .map(|seq| {
                let op = KvOp::Del { key: String::new(), seen: Vec::new() };
                let mut env = OpEnvelope::encode::<KvDoc>(&chain, key.actor(), seq, prev, op, None).unwrap();
                if seq == n {
                    env.sign(&key);
                }
                prev = env.hash();
                env
            })
            .collect();
        let got = verify_runs(&ops, &vec![true; ops.len()]);
        assert!(got.iter().all(|v| *v == Some(false)), "a run of {n} operations under one head was taken");
        // One operation fewer is within the limit.
        let got = verify_runs(&ops[1..], &vec![true; ops.len() - 1]);
        assert!(got.iter().all(|v| *v == Some(true)), "a run of {} operations under one head was refused", n - 1);
    }
}
