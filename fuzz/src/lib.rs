//! Shared code of the walrus fuzz targets.
//!
//! Each target is a thin wrapper around a `check` function here, so the same
//! checks can replay the committed seeds under `cargo test` and the seed
//! generator (`examples/gen_seeds.rs`) can build inputs in exactly the byte
//! layout the targets parse.

pub mod alloc;
pub mod chain;
pub mod converge;
pub mod engine_automerge;
pub mod envelope;
pub mod gossip;
pub mod harness;
pub mod op_codec;
pub mod page;
pub mod record_decode;
pub mod recover_dir;
pub mod sync_exchange;

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

/// A fresh temporary directory for one input, under [`recover_dir::temp_base`].
pub(crate) fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("walrus-fuzz-").tempdir_in(recover_dir::temp_base()).expect("creating a temp dir")
}

/// Installs (once per process) a tracing subscriber that enables every span
/// and event and formats their fields into nothing. Without a subscriber
/// `tracing` never evaluates the fields, so the library's logging code
/// (arithmetic and `Display` of hostile values included) would go unfuzzed.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // Fails only if another subscriber is installed; that one logs then.
    ONCE.call_once(|| drop(tracing::subscriber::set_global_default(Sink)));
}

struct Sink;

impl tracing::Subscriber for Sink {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        span.record(&mut Format);
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Format);
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        event.record(&mut Format);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

struct Format;

impl tracing::field::Visit for Format {
    fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::io::Write;
        // Formatting is where a `Debug` or `Display` implementation would panic.
        let _ = write!(std::io::sink(), "{value:?}");
    }
}
