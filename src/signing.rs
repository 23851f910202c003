//! Standard Webhooks signing and the checks `[[webhooks]]` entries must pass: the key a
//! `whsec_` secret stands for, the `webhook-signature` of a message, and which URLs may
//! receive events.
//!
//! A leaf: it imports only the leaf `redact` from the crate, so `config` (validation) and `sinks`
//! (delivery) can both use it. It never logs or quotes a secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit as _, Mac as _};

/// The prefix of a Standard Webhooks secret; the rest is base64 of the key.
pub const SECRET_PREFIX: &str = "whsec_";

/// Accepts `https://` URLs, and `http://` ones only towards this machine (tests, a local
/// relay): events are personal data and must not cross a network unencrypted.
///
/// # Errors
/// Why the URL is refused.
/// Messages name the URL by its origin only ([`crate::redact::webhook_origin`]): its path
/// and query may hold a credential.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("is not a URL ({e})"))?;
    let shown = crate::redact::webhook_origin(url);
    let host = uri
        .host()
        .ok_or_else(|| "is not an absolute URL with a host".to_owned())?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if ["localhost", "127.0.0.1", "[::1]", "::1"].contains(&host) => Ok(()),
        Some("http") => Err(format!(
            "{shown:?} must use https:// (http:// is only allowed to localhost)"
        )),
        _ => Err(format!("{shown:?} is not an https:// URL")),
    }
}

/// The HMAC key of a Standard Webhooks secret: the base64 after `whsec_`, 24..=64 bytes.
///
/// # Errors
/// Why the secret is refused; the message never quotes it.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("must start with {SECRET_PREFIX:?} (a Standard Webhooks secret)"))?;
    let key = BASE64
        .decode(encoded)
        .map_err(|_| format!("is not {SECRET_PREFIX:?} followed by base64"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "decodes to {} bytes; a secret is 24..=64 random bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")): the `webhook-signature`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail; an empty MAC would only fail
    // verification at the receiver.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::from("v1,");
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example in the Standard Webhooks specification's reference implementations.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_without_the_prefix_or_too_short_are_refused() {
        assert!(signing_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(signing_key("whsec_c2hvcnQ=").is_err());
        assert!(signing_key("whsec_***").is_err());
    }

    #[test]
    fn plain_http_is_only_accepted_towards_this_machine() {
        assert!(check_url("https://hooks.example.com/x").is_ok());
        assert!(check_url("http://127.0.0.1:8080/x").is_ok());
        assert!(check_url("http://localhost/x").is_ok());
        assert!(check_url("http://hooks.example.com/x").is_err());
        assert!(check_url("ftp://hooks.example.com/x").is_err());
        assert!(check_url("not a url").is_err());
    }
}
