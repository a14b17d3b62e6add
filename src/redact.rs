//! What text may be shown. Secrets are never printed or reported
//! (docs/contract.md, "Secrets and terminals"): URL passwords are
//! replaced by `***`. Header values never reach output at all; the types
//! that carry them ([`crate::cli::HeaderLine`], sensitive `HeaderValue`s)
//! redact their own Debug output, and errors about them do not quote them.
//!
//! Every text shown as a URL goes through [`url`] or [`url_str`]; a URL
//! that does not parse is redacted by its text, erring towards hiding more.
//! [`unprintable`] says which characters the output escapes.

use reqwest::Url;

/// A URL as it may be shown: any password replaced by `***`.
pub fn url(url: &Url) -> String {
    if url.password().is_none() {
        return url.as_str().to_owned();
    }
    let mut shown = url.clone();
    // Cannot fail: the URL already has a password, so it can hold one.
    let _ = shown.set_password(Some("***"));
    shown.into()
}

/// A URL given as text, which may not even parse. Unparseable text is
/// redacted by its shape, since a password with an unencoded `?`, `#`, `/`
/// or space is what makes it unparseable:
/// - up to the last `@`, everything after the authority's first `:` (or
///   all of it, without a `:`, since a lone user name may be a token);
/// - with no `@`, a port that is not a number: `http://user:pass word`
///   split at the space leaves `http://user:pass`.
pub fn url_str(text: &str) -> String {
    // Without a host, `user:pass@host` parses as scheme `user`.
    if let Ok(parsed) = Url::parse(text)
        && parsed.has_host()
    {
        return url(&parsed);
    }
    let start = text.find("//").map_or(0, |i| i + 2);
    let (head, rest) = text.split_at(start);
    if let Some(at) = rest.rfind('@') {
        let user_end = rest[..at].find(':').map_or(0, |colon| colon + 1);
        return format!("{head}{}***{}", &rest[..user_end], &rest[at..]);
    }
    let authority_end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind(':') {
        Some(colon)
            if !authority[colon + 1..].bytes().all(|b| b.is_ascii_digit())
                && !authority[colon..].contains(']') =>
        {
            format!("{head}{}***{}", &authority[..=colon], &rest[authority_end..])
        }
        _ => text.to_owned(),
    }
}

/// A path given on the command line, as it may be shown: one that is a
/// URL (`fetch https://user:pass@host/file`) is redacted as one.
pub fn path(path: &std::path::Path) -> String {
    let text = path.display().to_string();
    if text.contains("://") { url_str(&text) } else { text }
}

/// Whether `c` must not reach a terminal or a log raw: control
/// characters (C0, DEL, C1) and the Unicode controls that reorder or break
/// text (bidi marks, overrides and isolates, line and paragraph separators).
pub fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// A `serde_json` error message without the value it quotes: `invalid
/// type: string "Bearer x", expected a map` names the kind only, since a
/// value in the wrong place may be a header or a URL with a password.
pub fn json_error(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        let Some(rest) = message.strip_prefix(prefix) else { continue };
        let Some(expected) = rest.rfind(", expected ") else { continue };
        let kind = rest[..expected].split(['"', '`', '\'']).next().unwrap_or("").trim_end();
        return format!("{prefix}{kind}{}", &rest[expected..]);
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let cases = [
            ("http://u:secret@h/a", "http://u:***@h/a"),
            ("http://u@h/a", "http://u@h/a"),
            ("http://h/a?password=x", "http://h/a?password=x"),
            ("http://h:8080/a@b", "http://h:8080/a@b"),
            ("http://u:secret@[bad/x", "http://u:***@[bad/x"),
            ("http://u:se?cret@h:1/a", "http://u:***@h:1/a"),
            ("http://u:se#cret@h:1/a", "http://u:***@h:1/a"),
            ("http://u:se/cr@et@h/a", "http://u:***@h/a"),
            ("http://u:se cret@h/a", "http://u:***@h/a"),
            ("http://u:se\\cret@h:x/a", "http://u:***@h:x/a"),
            ("http://u:secret", "http://u:***"),
            ("http://[::1]:secret/a", "http://[::1]:***/a"),
            ("http://h:80x", "http://h:***"),
            ("http://h:99999/a", "http://h:99999/a"),
            ("https//u:secret@h/x", "https//u:***@h/x"),
            ("ht!tp://u:secret@h/x", "ht!tp://u:***@h/x"),
            ("u:secret@h/x", "u:***@h/x"),
            ("http://secret@[bad", "http://***@[bad"),
            ("no scheme", "no scheme"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(url_str(input), want, "{input}");
        }
    }

    #[test]
    fn json_errors_name_kinds_not_values() {
        let cases = [
            (
                r#"invalid type: string "Bearer x", expected a map at line 1 column 9"#,
                "invalid type: string, expected a map at line 1 column 9",
            ),
            (
                "invalid type: integer `1234`, expected a string at line 1 column 9",
                "invalid type: integer, expected a string at line 1 column 9",
            ),
            (
                r#"invalid value: string "a, expected b", expected u64 at line 1 column 9"#,
                "invalid value: string, expected u64 at line 1 column 9",
            ),
            ("missing field `url` at line 1 column 9", "missing field `url` at line 1 column 9"),
        ];
        for (input, want) in cases {
            assert_eq!(json_error(input), want, "{input}");
        }
    }
}
