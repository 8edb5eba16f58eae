//! Text for people: short, bounded descriptions of values and cut strings, used wherever an error
//! message quotes what a producer sent (every stage, and the dead-letter attributes).

use serde_json::Value;

/// A short, bounded description of a JSON value for error messages.
pub fn describe(cell: &Value) -> String {
    let text = match cell {
        Value::Null => return "null".into(),
        Value::Bool(b) => return format!("the boolean {b}"),
        Value::Number(n) => return format!("the number {n}"),
        Value::String(s) => format!("the text {s:?}"),
        Value::Array(_) => return "an array".into(),
        Value::Object(_) => return "an object".into(),
    };
    truncate_chars(&text, 64)
}

/// Cuts text to at most `max` characters, marking the cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// An error and its causes on one line (`outer: cause: root cause`), for the one log line
/// written where the error is handled.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some clients repeat their cause in their own message: say it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
