//! redb can panic on a damaged file (an assertion on a page it reads).
//! Every store operation that touches redb runs inside [`guard`], which
//! turns such a panic into [`StoreError::Corruption`]: a corrupt file is a
//! typed error, never a crash.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use crate::error::StoreError;

thread_local! {
    static GUARDED: Cell<u32> = const { Cell::new(0) };
}

/// Run `f`; a panic inside it becomes `Corruption` naming `path`.
pub(crate) fn guard<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    GUARDED.with(|g| g.set(g.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    r.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown".into());
        Err(StoreError::Corruption {
            path: path.to_path_buf(),
            message: format!(
                "the storage engine failed reading the file ({what}); the file is damaged"
            ),
        })
    })
}

/// Install a panic hook that stays silent for panics the store turns into
/// errors, and prints one line (no backtrace) for any other.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if GUARDED.with(|g| g.get()) > 0 {
            return;
        }
        eprintln!("internal error: {info}; please report it");
    }));
}
