//! Replays the committed seeds (and any other corpus or artifact files
//! present) through the targets' checks, so they run under plain
//! `cargo test` without a fuzzer.

use std::fs;
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [root.join("corpus").join(target), root.join("artifacts").join(target)] {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        files.extend(entries.map(|e| e.expect("listing").path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(files.iter().any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-"))));
    for path in files {
        let data = fs::read(&path).expect("reading an input");
        eprintln!("{}", path.display());
        check(&data);
    }
}

#[test]
fn record_decode_seeds() {
    replay("record_decode", walrus_fuzz::record_decode::check);
}

#[test]
fn recover_dir_seeds() {
    replay("recover_dir", walrus_fuzz::recover_dir::check);
}

#[test]
fn envelope_seeds() {
    replay("envelope", walrus_fuzz::envelope::check);
}

#[test]
fn gossip_seeds() {
    replay("gossip", walrus_fuzz::gossip::check);
}

#[test]
fn sync_exchange_seeds() {
    replay("sync_exchange", walrus_fuzz::sync_exchange::check);
}

#[test]
fn converge_seeds() {
    replay("converge", walrus_fuzz::converge::check);
}

#[test]
fn page_seeds() {
    replay("page", walrus_fuzz::page::check);
}

#[test]
fn chain_seeds() {
    replay("chain", walrus_fuzz::chain::check);
}

#[test]
fn op_codec_seeds() {
    replay("op_codec", walrus_fuzz::op_codec::check);
}

#[test]
fn engine_automerge_seeds() {
    replay("engine_automerge", walrus_fuzz::engine_automerge::check);
}
