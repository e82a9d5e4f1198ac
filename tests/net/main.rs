//! End-to-end tests of `walrus::net`: real nodes on 127.0.0.1, one module
//! per concern, sharing the node set-up and scriptable peer of [`common`].

mod basics;
mod common;
mod disk_full;
mod docs;
mod trust;
