//! Checking the signatures of a batch of remote operations, on several
//! threads when there are many: verification costs far more than applying.

use std::sync::Mutex;

use super::{Document, EnvelopeError, OpEnvelope};

/// Batches of remote operations at least this large are verified on
/// several threads.
const PARALLEL_VERIFY_MIN: usize = 64;
/// Remote operations are verified in rounds of this many, so a batch with a
/// bad signature costs at most one more round.
pub(super) const VERIFY_ROUND: usize = 1024;
/// Most threads verifying one batch.
const MAX_VERIFY_THREADS: usize = 8;

/// Checks the signatures (for document `doc`) of the operations in `ops`
/// whose flag in `todo` is set, on several threads if there are many.
/// `None` where it was not checked (the caller then checks it itself).
#[allow(clippy::type_complexity)]
pub(super) fn verify_batch<D: Document>(
    doc: &str,
    ops: Vec<OpEnvelope<D::Operation>>,
    todo: Vec<bool>,
) -> Vec<(OpEnvelope<D::Operation>, Option<bool>)> {
    let count = todo.iter().filter(|&&t| t).count();
    if count < PARALLEL_VERIFY_MIN {
        return ops.into_iter().map(|env| (env, None)).collect();
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_VERIFY_THREADS);
    if threads < 2 {
        return ops.into_iter().map(|env| (env, None)).collect();
    }
    let per_thread = ops.len().div_ceil(threads);
    // Operations are `Send` but need not be `Sync`: each thread takes
    // its own share out of a slot.
    type Share<O> = Vec<(OpEnvelope<O>, bool)>;
    let mut slots: Vec<Mutex<Option<Share<D::Operation>>>> = Vec::new();
    let mut items = ops.into_iter().zip(todo);
    loop {
        let share: Share<D::Operation> = items.by_ref().take(per_thread).collect();
        if share.is_empty() {
            break;
        }
        slots.push(Mutex::new(Some(share)));
    }
    let take = |slots: &[Mutex<Option<Share<D::Operation>>>], i: usize| {
        slots.get(i).and_then(|m| m.lock().unwrap_or_else(|p| p.into_inner()).take())
    };
    let verify = move |share: Share<D::Operation>| -> Vec<(OpEnvelope<D::Operation>, Option<bool>)> {
        share
            .into_iter()
            // An operation its own type cannot encode again is left for
            // the caller, which tells that local failure from a forgery.
            .map(|(env, check)| {
                let ok = if check {
                    match env.verify(doc) {
                        Ok(()) => Some(true),
                        Err(EnvelopeError::Encode(_)) => None,
                        Err(_) => Some(false),
                    }
                } else {
                    None
                };
                (ok, env)
            })
            .map(|(ok, env)| (env, ok))
            .collect()
    };
    let results = std::thread::scope(|scope| {
        let slots = &slots;
        // Share 0 on this thread, the others on their own. A thread that
        // cannot be created (resource limits) leaves its share in its
        // slot: verified inline later, in order.
        let handles: Vec<_> = (1..slots.len())
            .map(|i| std::thread::Builder::new().spawn_scoped(scope, move || take(slots, i).map(verify)).ok())
            .collect();
        let mut results = vec![take(slots, 0).map(verify)];
        for h in handles {
            results.push(match h.map(|h| h.join()) {
                Some(Ok(r)) => r,
                // Only an operation type's `Serialize` could panic here:
                // pass it on, as verifying on this thread would.
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                None => None,
            });
        }
        results
    });
    let mut out = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Some(part) => out.extend(part),
            None => out.extend(take(&slots, i).into_iter().flatten().map(|(env, _)| (env, None))),
        }
    }
    out
}
