//! Tests of the write-ahead log (`walrus::wal`), one module per concern.

mod concurrency;
mod faults;
mod helpers;
mod power_loss;
mod recovery;
mod repair;
