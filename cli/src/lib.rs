//! Code the `walrus` binary shares with the package's benchmarks. The
//! command-line tool itself is the `walrus` binary target; this library is
//! not meant for other crates (use the `walrus` library).

pub mod sync_bench;
pub mod trace;
pub mod trace_bench;

/// Log segments the tool creates (`walrus doc`, `walrus node`). Opening a
/// log reads the unused, preallocated rest of its last segment (to find a
/// torn tail), so every command pays for the segment size; 4 MiB keeps that
/// small. Replicas created with other sizes open normally.
pub const SEGMENT_SIZE: u64 = 4 << 20;
