//! Mapping keys to origin URLs without letting a key choose where the request
//! goes.
//!
//! The template's `{key}` is replaced by the key suffix as **one**
//! percent-encoded path segment: every byte outside RFC 3986's unreserved set
//! (`A-Z a-z 0-9 - . _ ~`) is encoded, so `/`, `?`, `#`, `%`, `:` and `@` in
//! a key cannot start another segment, a query, a fragment or an authority.
//! Suffixes that would still be read as something else (`.` and `..`, which
//! servers treat as dot-segments), empty ones and control characters are
//! refused. After substitution the URL is parsed again and must have the
//! template's scheme, host, port and exactly the expected path, so even a
//! parser quirk cannot move the request.

use reqwest::Url;

use crate::records::limits::MAX_KEY_BYTES;

/// Stands in for `{key}` while the template is parsed: only unreserved
/// characters, so no URL parser changes it, and long enough to be unique.
const MARKER: &str = "tierkv-key-7f3a9c1e5b";

/// A validated URL template.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    /// The template with `{key}` replaced by [`MARKER`], as the parser wrote
    /// it back.
    parsed: Url,
    /// `parsed` serialized, split around the marker.
    before: String,
    after: String,
    /// The expected path, split around the marker.
    path_before: String,
    path_after: String,
}

impl UrlTemplate {
    /// Validates a template: `http` or `https`, a host, no credentials, no
    /// fragment, exactly one `{key}`, in the path. The message never repeats
    /// the URL, which may hold credentials.
    pub fn parse(template: &str) -> Result<Self, String> {
        let count = template.matches("{key}").count();
        if count != 1 {
            return Err(format!(
                "the URL must contain exactly one {{key}} (it has {count})"
            ));
        }
        if template.contains(MARKER) {
            return Err(format!("the URL must not contain {MARKER:?}"));
        }
        let substituted = template.replacen("{key}", MARKER, 1);
        let parsed = Url::parse(&substituted).map_err(|error| {
            format!("not a valid URL ({error}); write it like \"https://api.example.com/items/{{key}}\"")
        })?;
        if parsed.scheme().contains(MARKER) {
            return Err("{key} may appear only in the path".into());
        }
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(format!(
                "the scheme is {:?}; it must be http:// or https://",
                parsed.scheme()
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(
                "the URL must not hold credentials (user:password@); send them in headers".into(),
            );
        }
        let Some(host) = parsed.host_str() else {
            return Err("the URL has no host".into());
        };
        if host.contains(MARKER) {
            return Err("{key} may appear only in the path, not in the host".into());
        }
        if parsed.query().is_some_and(|query| query.contains(MARKER))
            || parsed
                .fragment()
                .is_some_and(|fragment| fragment.contains(MARKER))
        {
            return Err("{key} may appear only in the path, not in the query or fragment".into());
        }
        if parsed.fragment().is_some() {
            return Err("the URL must not have a fragment (#...); it is never sent".into());
        }
        let path = parsed.path();
        let Some((path_before, path_after)) = path.split_once(MARKER) else {
            // Where else could it be? The port does not parse with letters,
            // so this is defensive.
            return Err("{key} may appear only in the path".into());
        };
        let (path_before, path_after) = (path_before.to_string(), path_after.to_string());
        let serialized = parsed.as_str();
        if serialized.matches(MARKER).count() != 1 {
            return Err("{key} may appear only in the path".into());
        }
        let (before, after) = serialized
            .split_once(MARKER)
            .map(|(before, after)| (before.to_string(), after.to_string()))
            .ok_or_else(|| "{key} may appear only in the path".to_string())?;
        Ok(Self {
            parsed,
            before,
            after,
            path_before,
            path_after,
        })
    }

    /// The URL for a key suffix (the key after the origin's prefix).
    pub fn url_for(&self, suffix: &str) -> Result<Url, String> {
        check_suffix(suffix)?;
        let segment = encode_segment(suffix);
        let url = Url::parse(&format!("{}{segment}{}", self.before, self.after))
            .map_err(|_| "the key does not make a valid URL".to_string())?;
        let expected_path = format!("{}{segment}{}", self.path_before, self.path_after);
        if url.scheme() != self.parsed.scheme()
            || url.host() != self.parsed.host()
            || url.port_or_known_default() != self.parsed.port_or_known_default()
            || url.path() != expected_path
            || url.query() != self.parsed.query()
            || url.fragment().is_some()
        {
            return Err("the key would change the URL beyond its path segment".into());
        }
        Ok(url)
    }
}

/// Refuses suffixes no encoding makes safe. Messages never repeat the key.
fn check_suffix(suffix: &str) -> Result<(), String> {
    if suffix.is_empty() {
        return Err("the key is the origin's prefix itself; nothing is left for {key}".into());
    }
    if suffix == "." || suffix == ".." {
        return Err("the key after the prefix is a dot-segment (\".\" or \"..\")".into());
    }
    if suffix.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key after the prefix is {} bytes; the key limit is {MAX_KEY_BYTES}",
            suffix.len()
        ));
    }
    if let Some(position) = suffix.chars().position(char::is_control) {
        return Err(format!(
            "the key has a control character (at character {position})"
        ));
    }
    Ok(())
}

/// Percent-encodes every byte outside RFC 3986's unreserved set.
pub fn encode_segment(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xF)] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything outside unreserved is encoded, byte by byte.
    #[test]
    fn encodes_all_but_unreserved() {
        assert_eq!(encode_segment("aZ09-._~"), "aZ09-._~");
        assert_eq!(
            encode_segment("a/b?c#d%e:f@g h"),
            "a%2Fb%3Fc%23d%25e%3Af%40g%20h"
        );
        assert_eq!(encode_segment("é"), "%C3%A9");
        assert_eq!(encode_segment("%2e%2e"), "%252e%252e");
    }

    /// Dangerous suffixes land in one segment of the template's path.
    #[test]
    fn keys_stay_in_one_segment() {
        let template = UrlTemplate::parse("https://api.example.com/v1/{key}.json?x=1").unwrap();
        for (suffix, path) in [
            ("users", "/v1/users.json"),
            ("../admin", "/v1/..%2Fadmin.json"),
            ("a/../../b", "/v1/a%2F..%2F..%2Fb.json"),
            ("?x=1", "/v1/%3Fx%3D1.json"),
            ("#frag", "/v1/%23frag.json"),
            ("%2F", "/v1/%252F.json"),
            (
                "http://evil.example/",
                "/v1/http%3A%2F%2Fevil.example%2F.json",
            ),
            ("@evil", "/v1/%40evil.json"),
            ("...", "/v1/....json"),
        ] {
            let url = template.url_for(suffix).unwrap();
            assert_eq!(url.host_str(), Some("api.example.com"), "{suffix}");
            assert_eq!(url.path(), path, "{suffix}");
            assert_eq!(url.query(), Some("x=1"), "{suffix}");
        }
    }

    /// A key that would complete a dot-segment the template started
    /// (`%2e%2` + `E` is `..` to a URL parser) is refused by the path check,
    /// not sent to the parent path.
    #[test]
    fn parser_normalisation_is_refused() {
        let template = UrlTemplate::parse("http://h/a/%2e%2{key}").unwrap();
        let error = template.url_for("E").unwrap_err();
        assert!(error.contains("beyond its path segment"), "{error}");
        assert_eq!(template.url_for("x").unwrap().path(), "/a/%2e%2x");
        let template = UrlTemplate::parse("http://h/a/.{key}").unwrap();
        assert_eq!(template.url_for(".x").unwrap().path(), "/a/..x");
        assert!(template.url_for(".").unwrap_err().contains("dot-segment"));
    }

    /// Refused suffixes say why without repeating the key.
    #[test]
    fn refuses_unsafe_suffixes() {
        let template = UrlTemplate::parse("http://h/{key}").unwrap();
        assert!(template
            .url_for("")
            .unwrap_err()
            .contains("nothing is left"));
        assert!(template.url_for(".").unwrap_err().contains("dot-segment"));
        assert!(template.url_for("..").unwrap_err().contains("dot-segment"));
        assert!(template
            .url_for("a\nb")
            .unwrap_err()
            .contains("control character"));
        assert!(template
            .url_for("a\0")
            .unwrap_err()
            .contains("control character"));
        assert!(template
            .url_for("\u{7f}")
            .unwrap_err()
            .contains("control character"));
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(template.url_for(&long).unwrap_err().contains("512"));
    }
}
