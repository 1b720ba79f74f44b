//! Text that is safe to print on a terminal. Records, database sessions and
//! error messages carry text that onlyone does not control (a command line
//! from a shared lock directory, an `application_name`, a host name): a
//! newline in it would forge a second line, an escape sequence would drive
//! the reader's terminal. Every human-readable line passes through here;
//! JSON output keeps the exact text (the serializer escapes it).

use std::borrow::Cow;
use std::fmt::Write;

/// True for characters that must not reach a terminal raw: the C0 controls,
/// DEL and the C1 controls, and the Unicode line separators and
/// bidirectional controls, which reorder or split what is shown.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Writes `c` as an escape: `\n`, `\r`, `\t`, `\xHH` below 0x80,
/// `\uHHHH` above (the forms of bash's `$'...'`).
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
    }
}

/// `text` with every control character replaced by its escape (`\n`,
/// `\x1b`, `\u009b`, ...). Everything else, backslashes included, is kept,
/// so that text escaped once is unchanged by a second pass.
///
/// ```
/// assert_eq!(onlyone::escape::controls("a\nb\x1b[2J"), "a\\nb\\x1b[2J");
/// ```
pub fn controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One word of a command line as a shell would need it: bare when it is
/// plain, in single quotes when it has spaces or quotes, and as bash's
/// `$'...'` when it has control characters, so that the line stays one
/// line and can be pasted back into a shell.
///
/// ```
/// use onlyone::escape::shell_word;
/// assert_eq!(shell_word("main.py"), "main.py");
/// assert_eq!(shell_word("a b"), "'a b'");
/// assert_eq!(shell_word("it's\n"), "$'it\\'s\\n'");
/// ```
pub fn shell_word(word: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b);
    if !word.is_empty() && word.bytes().all(plain) {
        return Cow::Borrowed(word);
    }
    if !word.chars().any(is_unsafe) {
        return Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")));
    }
    let mut out = String::from("$'");
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if is_unsafe(c) => push_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    out.push('\'');
    Cow::Owned(out)
}

/// A command as one shell-like line of [`shell_word`]s.
pub fn command_line(words: &[String]) -> String {
    words
        .iter()
        .map(|word| shell_word(word))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_c0_del_c1_and_bidi_controls() {
        assert_eq!(controls("plain text é"), "plain text é");
        assert_eq!(controls("a\tb\r\n"), "a\\tb\\r\\n");
        assert_eq!(controls("\x7f\u{9b}2J\u{202e}"), "\\x7f\\u009b2J\\u202e");
        assert_eq!(controls(r"C:\x"), r"C:\x");
    }

    #[test]
    fn escaping_twice_changes_nothing() {
        let once = controls("a\nb");
        assert_eq!(controls(&once), once);
        let word = shell_word("a\x1b[2J");
        assert_eq!(controls(&word), word);
    }

    #[test]
    fn quotes_words_as_a_shell_needs_them() {
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("sh"), "sh");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word("a\\b\x1b"), r"$'a\\b\x1b'");
        assert_eq!(
            command_line(&["echo".into(), "x\ny".into()]),
            r"echo $'x\ny'"
        );
    }
}
