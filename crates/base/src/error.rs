//! Errors as people read them: with their causes.

/// An error with its causes, `outer: inner: root`: an HTTP client error alone often says only
/// "error sending request", and the certificate or connection problem is in its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
