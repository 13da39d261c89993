//! The async runtime a command runs on.

/// One thread for the short commands, all cores for a run.
pub(crate) fn runtime(
    multi_thread: bool,
) -> Result<tokio::runtime::Runtime, crate::failure::Failure> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| crate::failure::Failure::Other {
            message: format!("could not start the async runtime: {e}"),
            hint: None,
        })
}
