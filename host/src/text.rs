//! Text the host did not write: bounded and escaped before it is stored,
//! logged or printed.
//!
//! Guests write log lines and retry, reject and trap messages; producers
//! write ids, subjects and sources. None of it may forge a line of the
//! host's log, move a terminal's cursor, or grow a record past what its
//! broker can hold. So:
//!
//! - [`escape`] writes every control character (C0, DEL, C1: newlines,
//!   escape sequences, bells) and every bidirectional-text control (which
//!   reorders what a terminal shows) as a visible escape (`\n`,
//!   `\u{1b}`, `\u{202e}`), and is applied wherever such text is logged
//!   or printed;
//! - [`clean`] escapes and then cuts to a byte budget at a character
//!   boundary, with a marker that says how much was cut; guest text is
//!   cleaned once, where it crosses the sandbox boundary, to the sizes
//!   below (documented in `docs/security.md`).

use std::borrow::Cow;
use std::fmt::Write as _;

/// The longest log line a step can write, bytes (after escaping).
pub const MAX_LOG_LINE: usize = 4096;
/// The longest retry, reject or trap message kept, bytes (after escaping).
pub const MAX_MESSAGE: usize = 4096;
/// The longest dead-letter reason a broker stores, bytes: a guest's
/// message plus the host's words around it.
pub const MAX_REASON: usize = 8192;

/// `s` with every control character written as an escape; borrowed when
/// there was none (the usual case).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A character that acts on a terminal or a log rather than showing:
/// controls, and the bidirectional marks, embeddings, overrides and
/// isolates.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` escaped, then cut to at most `max` bytes (a marker included).
pub fn clean(s: &str, max: usize) -> String {
    let escaped = escape(s);
    if escaped.len() <= max {
        return escaped.into_owned();
    }
    let marker = format!("… [{} bytes cut]", escaped.len());
    let mut cut = max.saturating_sub(marker.len());
    while !escaped.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + marker.len());
    out.push_str(&escaped[..cut]);
    out.push_str(&marker);
    out
}

/// `s` escaped and cut to [`MAX_MESSAGE`].
pub fn message(s: &str) -> String {
    clean(s, MAX_MESSAGE)
}

/// Whether `s` holds a control character (which CloudEvents attribute
/// values may not).
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_else_changes() {
        assert!(matches!(escape("plain ünïcode"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nb\r\t\u{1b}[2J\u{7}\u{9b}\u{7f}\u{202e}"),
            "a\\nb\\r\\t\\u{1b}[2J\\u{7}\\u{9b}\\u{7f}\\u{202e}"
        );
    }

    #[test]
    fn long_text_is_cut_at_a_character_with_a_marker() {
        let s = "é".repeat(10_000);
        let c = clean(&s, 100);
        assert!(c.len() <= 100, "{}", c.len());
        assert!(c.ends_with("… [20000 bytes cut]"), "{c}");
        assert!(c.starts_with("éé"));
        assert_eq!(clean("short", 100), "short");
        // Escaping counts against the budget: no output is ever longer.
        let c = clean(&"\n".repeat(5000), 64);
        assert!(c.len() <= 64 && c.starts_with("\\n\\n"), "{c}");
    }
}
