//! The automerge adapter (feature `automerge`).
