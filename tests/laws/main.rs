//! CRDT laws and property tests of replicas, through the `walrus::testing`
//! harness apps use for their own document types.
//!
//! Needs the `testing` feature (`cargo test --all-features`).

mod laws;
mod props;
