//! The `.netrc` format, as curl and wget read it: `machine NAME`, then
//! `login`, `password` and `account` values; `default` for every other
//! host; `macdef NAME` and its body up to the next empty line, skipped.
//! Words are separated by white space; a word may be quoted (`"a b"`, with
//! `\"`, `\\`, `\n`, `\t` escapes, as curl 7.84 reads them); `#` at the start
//! of a word comments out the rest of the line.
//!
//! Invariants: parsing never panics and takes time linear in the text; no
//! error quotes a word of the file (any of them may be a password), only
//! the line it is on and the keyword it belongs to.

use std::fmt;

/// A parsed `.netrc`: the entries in file order, and the `default` one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Netrc {
    machines: Vec<(String, Login)>,
    default: Option<Login>,
}

/// One entry's credentials. Debug output leaves the password out.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Login {
    pub login: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let password = self.password.as_ref().map(|_| "<redacted>");
        f.debug_struct("Login").field("login", &self.login).field("password", &password).finish()
    }
}

/// What is wrong with a `.netrc`, and on which line (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
}

impl Netrc {
    /// The entry for `host` (ASCII case ignored), the first one if the file
    /// names it twice, else the `default` entry.
    pub fn lookup(&self, host: &str) -> Option<&Login> {
        let named = self.machines.iter().find(|(name, _)| name.eq_ignore_ascii_case(host));
        named.map(|(_, login)| login).or(self.default.as_ref())
    }

    /// Whether any entry holds a password.
    pub fn has_password(&self) -> bool {
        self.machines.iter().map(|(_, l)| l).chain(&self.default).any(|l| l.password.is_some())
    }

    pub fn parse(text: &str) -> Result<Netrc, ParseError> {
        let mut words = Words { text, pos: 0, line: 1 };
        let mut netrc = Netrc::default();
        // The entry being filled: a machine's index, or the default.
        let mut current: Option<Option<usize>> = None;
        while let Some((word, line)) = words.next()? {
            let error = |reason| Err(ParseError { line, reason });
            match word.as_str() {
                "machine" => {
                    let Some((name, _)) = words.next()? else { return error("`machine` has no host name") };
                    netrc.machines.push((name, Login::default()));
                    current = Some(Some(netrc.machines.len() - 1));
                }
                "default" => {
                    if netrc.default.is_some() {
                        return error("a second `default` entry");
                    }
                    netrc.default = Some(Login::default());
                    current = Some(None);
                }
                "macdef" => {
                    if words.next()?.is_none() {
                        return error("`macdef` has no name");
                    }
                    words.skip_macro();
                    current = None;
                }
                key @ ("login" | "password" | "account") => {
                    let entry = match current {
                        Some(Some(i)) => &mut netrc.machines[i].1,
                        Some(None) => netrc.default.get_or_insert_default(),
                        None => {
                            return error("a `login`, `password` or `account` outside any `machine` entry");
                        }
                    };
                    let Some((value, _)) = words.next()? else {
                        return error(match key {
                            "login" => "`login` has no value",
                            "password" => "`password` has no value",
                            _ => "`account` has no value",
                        });
                    };
                    match key {
                        "login" => entry.login = Some(value),
                        "password" => entry.password = Some(value),
                        _ => {}
                    }
                }
                _ => {
                    return error(
                        "a word that is not a keyword (machine, default, login, password, account, macdef); \
                         a value with spaces needs double quotes",
                    );
                }
            }
        }
        Ok(netrc)
    }
}

/// The words of a `.netrc`, each with the line it starts on.
struct Words<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

impl Words<'_> {
    fn next(&mut self) -> Result<Option<(String, usize)>, ParseError> {
        let bytes = self.text.as_bytes();
        loop {
            match bytes.get(self.pos) {
                None => return Ok(None),
                Some(b'\n') => self.line += 1,
                Some(b) if b.is_ascii_whitespace() => {}
                Some(b'#') => {
                    while bytes.get(self.pos).is_some_and(|&b| b != b'\n') {
                        self.pos += 1;
                    }
                    continue;
                }
                Some(_) => break,
            }
            self.pos += 1;
        }
        let line = self.line;
        if bytes[self.pos] == b'"' {
            return self.quoted().map(|word| Some((word, line)));
        }
        let start = self.pos;
        while bytes.get(self.pos).is_some_and(|b| !b.is_ascii_whitespace()) {
            self.pos += 1;
        }
        // Ends at ASCII white space or the end: a char boundary.
        Ok(Some((self.text[start..self.pos].to_owned(), line)))
    }

    /// A `"`-quoted word, the opening quote at `pos`.
    fn quoted(&mut self) -> Result<String, ParseError> {
        let line = self.line;
        let mut word = String::new();
        let mut chars = self.text[self.pos + 1..].char_indices();
        let unclosed = ParseError { line, reason: "a quoted value has no closing '\"'" };
        loop {
            let Some((_, c)) = chars.next() else { return Err(unclosed) };
            match c {
                '"' => break,
                '\n' => return Err(unclosed),
                '\\' => match chars.next() {
                    Some((_, 'n')) => word.push('\n'),
                    Some((_, 'r')) => word.push('\r'),
                    Some((_, 't')) => word.push('\t'),
                    Some((_, '\n')) | None => return Err(unclosed),
                    Some((_, other)) => word.push(other),
                },
                c => word.push(c),
            }
        }
        self.pos += 1 + chars.offset();
        Ok(word)
    }

    /// A macro's body: up to the first empty line (or the end).
    fn skip_macro(&mut self) {
        let bytes = self.text.as_bytes();
        // The rest of the `macdef` line.
        while let Some(&b) = bytes.get(self.pos) {
            self.pos += 1;
            if b == b'\n' {
                self.line += 1;
                break;
            }
        }
        let mut blank = true;
        while let Some(&b) = bytes.get(self.pos) {
            self.pos += 1;
            if b == b'\n' {
                self.line += 1;
                if blank {
                    return;
                }
                blank = true;
            } else if b != b'\r' {
                blank = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(l: &str, p: &str) -> Login {
        Login { login: Some(l.into()), password: Some(p.into()) }
    }

    #[test]
    fn entries_and_default() {
        let text = "# comment\nmachine a.example login alice password \"s e\\\"c\"\n\
                    machine B.example\n  login bob\n  password pw # note\n  account x\n\
                    macdef init\ncd /\nls\n\nmachine c login carol\ndefault login anon password guest\n";
        let netrc = Netrc::parse(text).unwrap();
        assert_eq!(netrc.lookup("a.example"), Some(&login("alice", "s e\"c")));
        assert_eq!(netrc.lookup("b.EXAMPLE"), Some(&login("bob", "pw")));
        assert_eq!(netrc.lookup("c"), Some(&Login { login: Some("carol".into()), password: None }));
        assert_eq!(netrc.lookup("elsewhere"), Some(&login("anon", "guest")));
        assert!(netrc.has_password());
        assert_eq!(Netrc::parse("machine a login b").unwrap().lookup("z"), None);
        assert_eq!(
            Netrc::parse("machine a login b machine a login c").unwrap().lookup("a"),
            Some(&Login { login: Some("b".into()), password: None })
        );
    }

    #[test]
    fn errors_name_the_line_and_never_a_word() {
        let cases = [
            ("machine", 1, "`machine` has no host name"),
            ("machine a\nlogin", 2, "`login` has no value"),
            ("machine a\n\npassword", 3, "`password` has no value"),
            ("login x", 1, "a `login`, `password` or `account` outside any `machine` entry"),
            ("machine a password my secret", 1, "a word that is not a keyword"),
            ("machine a password \"secret", 1, "a quoted value has no closing"),
            ("default\ndefault", 2, "a second `default` entry"),
            ("macdef", 1, "`macdef` has no name"),
        ];
        for (text, line, reason) in cases {
            let error = Netrc::parse(text).unwrap_err();
            assert_eq!(error.line, line, "{text:?}");
            assert!(error.reason.starts_with(reason), "{text:?}: {}", error.reason);
            assert!(!error.reason.contains("secret"));
        }
        assert!(!format!("{:?}", login("u", "secret")).contains("secret"));
    }
}
