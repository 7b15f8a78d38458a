//! The stop request long loops check: set once (by the binary's handler for Ctrl-C and
//! SIGTERM), a run stops at its next safe point; temporary outputs are then removed and nothing
//! is renamed into place.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::error::Interrupted;

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// The signal that asked first (0 when none did).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Ask the running command to stop; true when a stop was already requested.
pub fn request() -> bool {
    REQUESTED.swap(true, Ordering::SeqCst)
}

/// Ask the running command to stop because of `signal` (SIGINT, SIGTERM); true when a stop
/// was already requested. The first signal is the one [`signal`] reports.
pub fn request_by(signal: i32) -> bool {
    let _ = SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    request()
}

/// The signal that asked the run to stop, if one did.
pub fn signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Return `Err(Interrupted)` once a stop was requested. Long loops call this between batches.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Whether a stop was requested, for library loops that take a stop check.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
