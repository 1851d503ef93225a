//! What every Wharf crate reports failures with: errors written out with their causes, and
//! the logging set-up both binaries share. Below everything else, so no layer reaches up
//! for them.

pub mod logging;

/// An error and its causes on one line, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors (kube's finalizer errors) already print their cause.
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) && !text.contains(&format!("{cause_text}:")) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
