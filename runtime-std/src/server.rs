//! The threaded runtime (`serve --runtime std`). Not written yet.

use crate::serve::ServeError;
use crate::settings::Settings;

/// Serves until SIGINT or SIGTERM, then finishes the requests in flight and
/// returns.
pub fn serve(settings: Settings) -> Result<(), ServeError> {
    let _ = settings;
    Err(ServeError::new("the std runtime is not written yet"))
}
