//! Secrets never printed or reported (SPEC "Output"): URL passwords are
//! replaced by `***`. Header values never reach output at all; the types
//! that carry them ([`crate::cli::HeaderLine`], sensitive `HeaderValue`s)
//! redact their own Debug output.

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

/// A URL string that may not even parse: redact `user:password@` by text.
pub fn url_str(text: &str) -> String {
    if let Ok(parsed) = Url::parse(text) {
        return url(&parsed);
    }
    let Some(scheme_end) = text.find("://").map(|i| i + 3) else {
        return text.to_owned();
    };
    let authority_end = text[scheme_end..].find(['/', '?', '#']).map_or(text.len(), |i| scheme_end + i);
    let authority = &text[scheme_end..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{}{}:***{}", &text[..scheme_end], &authority[..colon], &text[scheme_end + at..])
        }
        _ => text.to_owned(),
    }
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
            ("http://u:secret@[bad/x", "http://u:***@[bad/x"),
            ("no scheme", "no scheme"),
        ];
        for (input, want) in cases {
            assert_eq!(url_str(input), want, "{input}");
        }
    }
}
