//! Helpers shared by the benchmarks.

use std::path::{Path, PathBuf};

/// The directory for benchmark data: the system temp directory unless it
/// is memory-backed (then `fdatasync` would measure nothing), else
/// `target/walrus-bench`.
pub fn bench_root() -> (PathBuf, String) {
    let tmp = std::env::temp_dir();
    let fs = fs_type(&tmp).unwrap_or_else(|| "unknown".into());
    if fs != "tmpfs" && fs != "ramfs" {
        return (tmp.clone(), format!("{} ({fs})", tmp.display()));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let root = target.join("walrus-bench");
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
    let fs2 = fs_type(&root).unwrap_or_else(|| "unknown".into());
    let note = format!("{} ({fs2}; {} is {fs})", root.display(), tmp.display());
    (root, note)
}

/// File system type of the mount holding `path`, from `/proc/self/mounts`.
pub fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_source), Some(mount), Some(fstype)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let mount = mount.replace("\\040", " ");
        if path.starts_with(&mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), fstype.to_string()));
        }
    }
    best.map(|(_, t)| t)
}
