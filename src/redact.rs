//! Hiding secrets in URLs before they are shown: the database URL appears in error messages,
//! logs, `roster-sync config` and the demo's banner, and its password must never. A webhook
//! URL is shown as its origin only (`webhook_origin`): receivers put credentials anywhere in
//! the path and query (Slack's `/services/T…/B…/token`, `?token=`, `?code=`, `?sig=`), so no
//! part of it after the port is safe to show.
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

/// A webhook URL as `scheme://host[:port]` and nothing else: the user info, path, query and
/// fragment may all carry a credential. A text that is not a URL with a host is shown as a
/// placeholder, since it may be a secret pasted in the wrong place.
pub fn webhook_origin(url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return "(not a URL; not shown)".to_owned();
    };
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return "(not a URL with a host; not shown)".to_owned();
    };
    match uri.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_origin_keeps_scheme_host_and_port_only() {
        let cases = [
            (
                "https://hooks.slack.com/services/T000/B000/XXXXXXXX",
                "https://hooks.slack.com",
            ),
            (
                "https://h.example/in?token=t&code=c&sig=s",
                "https://h.example",
            ),
            ("https://u:p@h.example:8443/x#f", "https://h.example:8443"),
            ("http://[::1]:9/x", "http://[::1]:9"),
        ];
        for (url, shown) in cases {
            assert_eq!(webhook_origin(url), shown);
        }
        for not_url in ["whsec_secret pasted here", "", "/relative/path?token=t"] {
            let shown = webhook_origin(not_url);
            assert!(shown.contains("not shown"), "{shown}");
        }
    }

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
