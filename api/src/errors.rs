//! How the binaries word an error for a person: the error and its causes, outermost first,
//! joined by `": "` as anyhow's `{:#}` does, with a cause left out when the text before it
//! already ends with it. Many error types (ours through `thiserror`'s `{source}`, and libraries'
//! alike) put their cause in their own message *and* give it as their source; printed as a
//! plain chain, `No such file or directory (os error 2)` then comes twice or three times.

use std::error::Error;

/// `e` and its causes as one line: `reading /etc/x: No such file or directory (os error 2)`.
///
/// A cause whose text the line already ends with is skipped (it was printed by the error
/// above it), and so is an empty one.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Wrap(String, Option<Box<dyn Error + 'static>>);

    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref()
        }
    }

    fn os_error() -> std::io::Error {
        std::io::Error::from_raw_os_error(2)
    }

    #[test]
    fn a_cause_already_in_the_message_above_it_is_said_once() {
        // As `CertError::Io` words itself: "{path}: {source}", the io error also its source,
        // under an outer error that names the directory.
        let io = os_error();
        let inner = Wrap(
            format!("/c/credential.json: {io}"),
            Some(Box::new(os_error())),
        );
        let outer = Wrap("no admin credential in /c".into(), Some(Box::new(inner)));
        assert_eq!(
            chain(&outer),
            "no admin credential in /c: /c/credential.json: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn causes_not_in_the_message_are_joined_as_anyhow_joins_them() {
        let inner = Wrap("connection refused".into(), None);
        let mid = Wrap("GET /v1/tasks on cp:7443".into(), Some(Box::new(inner)));
        let outer = Wrap("listing tasks".into(), Some(Box::new(mid)));
        assert_eq!(
            chain(&outer),
            "listing tasks: GET /v1/tasks on cp:7443: connection refused"
        );
        let e = anyhow::Error::new(os_error()).context("opening /x");
        assert_eq!(chain(e.as_ref()), format!("{e:#}"));
    }
}
