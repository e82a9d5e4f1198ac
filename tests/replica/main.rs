//! Tests of durable replicas (`walrus::replica`), one module per concern.

mod basics;
mod fixtures;
mod fork_power_loss;
mod helpers;
mod power_loss;
mod recovery;
mod restore;
mod trust;
