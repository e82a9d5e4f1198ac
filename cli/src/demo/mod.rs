//! `walrus demo`: three networked replicas converging through concurrent
//! writes, a partition, a crash and a lost disk; `walrus demo --log`: the
//! write-ahead log surviving SIGKILL.

mod log;
mod net;

use std::process::ExitCode;
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Printed pass/fail checks; the demo exits non-zero if any failed.
#[derive(Default)]
struct Checks {
    passed: usize,
    failed: usize,
}

impl Checks {
    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            self.passed += 1;
            println!("    [ok]   {what}");
        } else {
            self.failed += 1;
            println!("    [FAIL] {what}");
        }
    }

    fn finish(&self, started: Instant) -> ExitCode {
        println!(
            "\n  {} checks passed, {} failed, {:.1} s in all",
            self.passed,
            self.failed,
            started.elapsed().as_secs_f64()
        );
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

pub fn run(log: bool) -> Result<ExitCode> {
    if log {
        log::run()
    } else {
        net::run()
    }
}
