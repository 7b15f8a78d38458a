//! The stop request long loops check: set once (by the binary's Ctrl-C handler), a run stops at
//! its next safe point; temporary outputs are then removed and nothing is renamed into place.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Interrupted;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Ask the running command to stop; true when a stop was already requested.
pub fn request() -> bool {
    REQUESTED.swap(true, Ordering::SeqCst)
}

/// Return `Err(Interrupted)` once Ctrl-C was pressed. Long loops call this between batches.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Whether Ctrl-C was pressed, for library loops that take a stop check.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
