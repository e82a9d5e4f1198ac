//! Code the `walrus` binary shares with the package's benchmarks. The
//! command-line tool itself is the `walrus` binary target; this library is
//! not meant for other crates (use the `walrus` library).

pub mod sync_bench;
