//! Hiding secrets in URLs before they are shown: the database URL appears in error messages,
//! logs, `roster-sync config` and the demo's banner, and its password must never.
//!
//! A leaf: it depends on nothing in the crate, so `config`, `store` and the commands can all
//! use it.

/// `url` with the password (in the user info, or a `password=` query parameter) replaced by
/// `***`, for messages and logs. When unsure where the user info ends, it hides more.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let (head, rest) = url.split_at(scheme_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    // The user info ends at the last '@': a password may hold '/', '?' or '#' unencoded.
    let rest = match rest.rfind('@') {
        Some(at) => {
            let user_info = &rest[..at];
            match user_info.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(user_info),
            }
            &rest[at..]
        }
        None => rest,
    };
    let Some((before_query, query)) = rest.split_once('?') else {
        out.push_str(rest);
        return out;
    };
    out.push_str(before_query);
    out.push('?');
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                out.push_str(key);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_the_password_of_the_user_info() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/roster"),
            "postgres://app:***@db:5432/roster"
        );
    }

    #[test]
    fn redact_url_hides_a_password_holding_url_delimiters() {
        let shown = redact_url("postgresql://app:p@ss/w?rd#x@db/roster?sslmode=require");
        assert_eq!(shown, "postgresql://app:***@db/roster?sslmode=require");
    }

    #[test]
    fn redact_url_hides_a_password_query_parameter() {
        let shown = redact_url("postgres://db/roster?user=app&password=hunter2&sslmode=require");
        assert_eq!(
            shown,
            "postgres://db/roster?user=app&password=***&sslmode=require"
        );
    }

    #[test]
    fn redact_url_leaves_urls_without_password_alone() {
        for url in [
            "postgres://app@db/roster",
            "sqlite://data/roster.db",
            "sqlite:roster.db",
            "",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
