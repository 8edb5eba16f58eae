//! Text for people: short, bounded descriptions of values and cut strings, used wherever an error
//! message quotes what a producer sent (every stage, and the dead-letter attributes).

use std::borrow::Cow;

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

/// Whether a character shows nothing on screen yet changes how text reads: zero-width
/// characters, bidirectional controls and the like (Unicode format characters). A key or id
/// holding one can pass for another on screen.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
    )
}

/// Text as a person should see it in a message: control and invisible characters written as
/// `\u{200B}`, so a look-alike key never passes for a known one on screen.
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() || is_invisible(c) {
            out.push_str(&format!("\\u{{{:04X}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_are_shown_escaped_and_plain_text_is_not_copied() {
        assert_eq!(visible("FRB\u{200B}"), "FRB\\u{200B}");
        assert_eq!(visible("\u{202E}BRF"), "\\u{202E}BRF");
        assert_eq!(visible("a\u{0000}b"), "a\\u{0000}b");
        assert!(matches!(visible("Federal Reserve"), Cow::Borrowed(_)));
        assert!(!is_invisible('é') && is_invisible('\u{FEFF}'));
    }
}
