//! Progress of long commands, drawn on standard error only when it is a
//! terminal: pipes, scripts and tests see exactly the output they saw before.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How often a spinner moves while the work gives no news of its own.
const TICK: Duration = Duration::from_millis(120);

/// A bar drawing `template`, or a hidden one when standard error is not a
/// terminal (every call on it then does nothing).
fn bar(template: &str, what: impl Into<Cow<'static, str>>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bar = ProgressBar::new_spinner().with_style(style).with_message(what);
    bar.enable_steady_tick(TICK);
    bar
}

/// A spinner with the elapsed time, for one step that reports no progress
/// of its own (scanning a log, carrying out a repair). Clear it with
/// `finish_and_clear` before printing the step's result.
pub fn spinner(what: impl Into<Cow<'static, str>>) -> ProgressBar {
    bar("{spinner} {msg} ({elapsed})", what)
}

/// A running count of items done (`inc`).
pub fn counter(what: impl Into<Cow<'static, str>>) -> ProgressBar {
    bar("{spinner} {msg}: {human_pos} ({elapsed})", what)
}
