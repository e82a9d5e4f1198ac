//! `walrus demo`, the README's main job: every check it prints must pass.

use std::process::Command;

use super::EXE;

#[test]
fn the_demo_passes_every_check() {
    let out = Command::new(EXE).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
    let summary = stdout.lines().find(|l| l.contains("checks passed")).unwrap_or_default();
    assert!(summary.contains(" 0 failed"), "no clean summary line in:\n{stdout}");
}
