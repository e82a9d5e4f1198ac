//! A global allocator that remembers the largest single allocation, for
//! targets that check a decoder allocates in proportion to what it reads,
//! not to what its input claims. A fuzz target installs it
//! (`#[global_allocator] static A: Counting = Counting;`); elsewhere (the
//! seed replay under `cargo test`) [`largest_during`] measures nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The system allocator, measuring.
pub struct Counting;

static INSTALLED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counters are
// atomics that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

fn note(size: usize) {
    INSTALLED.store(true, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
}

/// Runs `f` and returns its result with the largest single allocation made
/// meanwhile (by any thread), or `None` if [`Counting`] is not installed.
pub fn largest_during<R>(f: impl FnOnce() -> R) -> (R, Option<usize>) {
    LARGEST.store(0, Ordering::Relaxed);
    let r = f();
    let largest = LARGEST.load(Ordering::Relaxed);
    (r, INSTALLED.load(Ordering::Relaxed).then_some(largest))
}
