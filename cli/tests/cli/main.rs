//! End-to-end tests of the `walrus` binary, driven as a user or a script
//! would: arguments, standard input, standard output and error, exit codes
//! and signals. One test crate, so the binary and the helpers below are
//! built once.
//!
//! - `log`: `walrus log …`, and SIGKILLed appenders losing no acknowledged record;
//! - `demo`: `walrus demo`, the main job, passes every check;
//! - `doc`: `walrus doc …` on replica directories;
//! - `node`: `walrus node` processes replicating over loopback;
//! - `logging`: `RUST_LOG` and the library's logs on standard error;
//! - `bench`: `walrus bench sync` at tiny sizes, and its JSON lines.

mod bench;
mod demo;
mod doc;
mod log;
mod logging;
mod node;

use std::path::Path;
use std::time::Duration;

/// The binary under test.
const EXE: &str = env!("CARGO_BIN_EXE_walrus");

/// How long to wait for a child's next line (or for convergence) before
/// declaring it hung. This only turns a hang into a failure; nothing waits
/// for it to elapse.
const PATIENCE: Duration = Duration::from_secs(60);

/// The signal `Child::kill` sends, as `ExitStatusExt::signal` reports it.
const SIGKILL: i32 = 9;

/// Copies the directory tree `from` to `to` (a backup restored elsewhere).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
