//! The loro adapter (feature `loro`).
