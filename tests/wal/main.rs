//! Tests of the write-ahead log (`walrus::wal`), one module per concern.

mod concurrency;
mod faults;
mod power_loss;
mod recovery;
mod repair;
