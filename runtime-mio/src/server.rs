//! The mio event-loop runtime (the default for `serve`). Not written yet.

use tokenizer_auth_runtime_std::serve::ServeError;
use tokenizer_auth_runtime_std::settings::Settings;

/// Serves until SIGINT or SIGTERM, then finishes the requests in flight and
/// returns.
pub fn serve(settings: Settings) -> Result<(), ServeError> {
    let _ = settings;
    Err(ServeError::new("the mio runtime is not written yet"))
}
