//! Secrets kept out of what is printed or logged.

/// A URL fit to print or log: in `scheme://user:password@host...` the password becomes
/// `*****`; a userinfo without a password (`scheme://token@host`, often a secret itself)
/// becomes `*****` whole. Everything else is kept.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    // The authority ends at the first `/`, `?` or `#`; an `@` after it is not userinfo.
    let authority = rest.find(['/', '?', '#']).map_or(rest, |end| &rest[..end]);
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:*****{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => format!("{}*****{}", &url[..scheme_end], &rest[at..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:*****@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://*****@h/db");
        assert_eq!(redact_url("sqlite://./data/x.db"), "sqlite://./data/x.db");
        assert_eq!(
            redact_url("http://hook:t0k3n@127.0.0.1:8090/hooks?x=a@b"),
            "http://hook:*****@127.0.0.1:8090/hooks?x=a@b"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8090/p?next=u@h"),
            "http://127.0.0.1:8090/p?next=u@h",
            "an @ after the authority is not userinfo"
        );
    }
}
