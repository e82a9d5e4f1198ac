//! The yrs adapter (feature `yrs`).
