//! What a registry's answers carry besides its documents, read without an HTTP client (so the
//! fuzz harness builds them without reqwest): the `WWW-Authenticate` challenge of a 401, the
//! token service's JSON, and where a `206`'s `Content-Range` starts. The client of the
//! `registry` feature reads every one through these.

use std::collections::HashMap;

/// Parses `Scheme k="v", k2=v2` (RFC 7235 auth-params, quoted strings with escapes).
pub fn parse_challenge(h: &str) -> Option<(String, HashMap<String, String>)> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_string();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
    Some((scheme.to_string(), params))
}

/// The token of a token service's answer (`{"token": …}` or OAuth2's `{"access_token": …}`,
/// <https://distribution.github.io/distribution/spec/auth/token/>), or why there is none.
pub fn parse_token(body: &[u8]) -> Result<String, &'static str> {
    #[derive(serde::Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
    }
    let t: Token = serde_json::from_slice(body).map_err(|_| "token service answered no JSON")?;
    t.token
        .or(t.access_token)
        .ok_or("token service answered no token")
}

/// The first byte a `Content-Range: bytes FIRST-LAST/LENGTH` header gives (RFC 9110, 14.4).
pub fn content_range_start(header: &str) -> Option<u64> {
    header
        .strip_prefix("bytes ")
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_quotes_and_commas() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .expect("parse");
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#).expect("parse");
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("Basic", "Registry Realm")
        );
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn a_token_answer_gives_its_token_or_says_why_not() {
        assert_eq!(
            parse_token(br#"{"token": "t1", "expires_in": 60}"#),
            Ok("t1".into())
        );
        assert_eq!(parse_token(br#"{"access_token": "a1"}"#), Ok("a1".into()));
        assert_eq!(
            parse_token(br#"{"expires_in": 60}"#),
            Err("token service answered no token")
        );
        assert_eq!(
            parse_token(b"<html>"),
            Err("token service answered no JSON")
        );
    }

    #[test]
    fn a_content_range_gives_its_first_byte() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/*"), Some(0));
        for bad in ["bytes */200", "100-199/200", "bytes -1-5/9", ""] {
            assert_eq!(content_range_start(bad), None, "{bad}");
        }
    }
}
