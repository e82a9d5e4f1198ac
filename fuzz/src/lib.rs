//! Shared code of the walrus fuzz targets.
//!
//! Each target is a thin wrapper around a `check` function here, so the same
//! checks can replay the committed seeds under `cargo test` and the seed
//! generator (`examples/gen_seeds.rs`) can build inputs in exactly the byte
//! layout the targets parse.

pub mod decode;
pub mod recover;
pub mod sync;

/// Reads fuzz input front to back. Reads past the end yield zeros or
/// shorter slices, so every input means something.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.take(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}
