//! Ctrl-C handling: the first press asks the running command to stop at its next safe point
//! (temporary outputs are then removed and nothing is renamed into place); a second press
//! exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Interrupted;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Install the handler once per process. Failure to install (for example in an embedding
/// program that owns the signal) only means Ctrl-C behaves as the default.
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("curate: stopping after the current step (Ctrl-C again to abort)");
    });
}

/// Return `Err(Interrupted)` once Ctrl-C was pressed. Long loops call this between batches.
pub fn check() -> Result<(), Interrupted> {
    if REQUESTED.load(Ordering::SeqCst) {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Whether Ctrl-C was pressed, for library loops that take a stop check.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
