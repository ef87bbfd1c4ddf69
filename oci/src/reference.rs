//! Image references (`[registry/]repository[:tag][@digest]`) with Docker's defaulting rules,
//! and the names the stores file images under.

use crate::digest::Digest;

/// Why a reference does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference '{reference}': {reason}")]
pub struct ReferenceError {
    /// As given.
    pub reference: String,
    /// The parser's complaint.
    pub reason: String,
}

/// Whether a reference starts with a registry host, by Docker's rule: a first path component
/// with a `.` or a `:`, or `localhost`.
pub fn has_registry(reference: &str) -> bool {
    match reference.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host[:port]; `docker.io` for unqualified names.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, when the reference has one.
    pub tag: Option<String>,
    /// Digest, when the reference pins one.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `reference` with Docker's defaulting rules (`busybox` is
    /// `docker.io/library/busybox:latest`).
    ///
    /// # Errors
    /// [`ReferenceError`] with the grammar's complaint (distribution-spec's reference grammar,
    /// `github.com/distribution/reference`) or a digest that is not `sha256:<64 hex>`.
    pub fn parse(reference: &str) -> Result<Self, ReferenceError> {
        let bad = |reason: String| ReferenceError {
            reference: reference.to_string(),
            reason,
        };
        let r: oci_spec::distribution::Reference =
            reference.parse().map_err(|e| bad(format!("{e}")))?;
        // The grammar lets a first component in capitals through as a registry host (Docker
        // reads it so), but it names no host here (`has_registry`): it would be a repository
        // in capitals, and a name no parser, registry or store takes back.
        if r.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad(
                "repository name must be lowercase (a registry host has a '.' or a ':', or is \
                 localhost)"
                    .into(),
            ));
        }
        let digest = r
            .digest()
            .map(|d| d.parse::<Digest>().map_err(|e| bad(e.to_string())))
            .transpose()?;
        let tag = match (r.tag(), &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        let registry = match r.registry() {
            "index.docker.io" | "registry-1.docker.io" => "docker.io",
            other => other,
        };
        Ok(Self {
            registry: registry.to_string(),
            repository: r.repository().to_string(),
            tag,
            digest,
        })
    }

    /// The canonical name of a plain `[host/]path[:tag]` reference without running the full
    /// grammar (whose regex takes tens of milliseconds to build); `None` when unsure. Only
    /// used to find images already stored, whose names the full parser produced.
    pub fn quick_name(reference: &str) -> Option<String> {
        if reference.is_empty()
            || reference.contains('@')
            || !reference
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/:._-".contains(&b))
        {
            return None;
        }
        let (first, rest) = match reference.split_once('/') {
            Some((f, r)) if f.contains('.') || f.contains(':') || f == "localhost" => {
                (f, r.to_string())
            }
            Some(_) => ("docker.io", reference.to_string()),
            None => ("docker.io", format!("library/{reference}")),
        };
        let last = rest.rsplit('/').next().unwrap_or_default();
        let tagged = if last.contains(':') {
            rest
        } else {
            format!("{rest}:latest")
        };
        Some(format!("{first}/{tagged}"))
    }

    /// The names under which a store looks `reference` up, in order: its canonical name, and
    /// for a short name (no registry: `bb:v1`, `team/app`) then its local name
    /// (`localhost/bb:v1`), as podman finds a local image by its short name. A name with a
    /// registry is looked up under its canonical name only. Every store (a node's, the control
    /// plane's) and every grant of an image to a node follows this one rule.
    ///
    /// # Errors
    /// [`ReferenceError`] when `reference` does not parse.
    pub fn lookup_names(reference: &str) -> Result<Vec<String>, ReferenceError> {
        let mut names = vec![Self::parse(reference)?.name()];
        if !has_registry(reference) {
            if let Ok(local) = Self::parse(&format!("localhost/{reference}")) {
                names.push(local.name());
            }
        }
        Ok(names)
    }

    /// How people write a canonical name `name` (Docker's "familiar" form, as `docker ps` and
    /// `docker images` show names): Docker Hub's `docker.io/` and its `library/` left out —
    /// `busybox:latest`, `demo/busybox:latest`; any other registry's names as they are.
    pub fn familiar(name: &str) -> &str {
        name.strip_prefix("docker.io/library/")
            .filter(|rest| !rest.contains('/'))
            .or_else(|| name.strip_prefix("docker.io/"))
            .unwrap_or(name)
    }

    /// The canonical name the store files the image under.
    pub fn name(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::ImageRef;

    #[test]
    fn a_name_in_capitals_is_refused_and_every_name_given_parses_to_itself() {
        for bad in ["linuQx/arm64/v8", "Team/app:v1", "MyRegistry/app"] {
            let e = ImageRef::parse(bad).expect_err(bad);
            assert!(e.reason.contains("lowercase"), "{bad}: {e}");
        }
        // A host may have capitals (hosts are not case-sensitive); a path may not.
        for good in [
            "busybox",
            "team/app:v1",
            "Reg.Example.com/app",
            "localhost:5000/a/b@sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        ] {
            let name = ImageRef::parse(good).expect(good).name();
            assert_eq!(ImageRef::parse(&name).map(|r| r.name()), Ok(name), "{good}");
        }
        assert!(ImageRef::parse("reg.example.com/App").is_err());
    }

    #[test]
    fn a_short_name_is_looked_up_canonical_first_then_local() {
        let names = |r: &str| ImageRef::lookup_names(r).expect("parses");
        assert_eq!(
            names("bb:v1"),
            ["docker.io/library/bb:v1", "localhost/bb:v1"]
        );
        assert_eq!(
            names("team/app"),
            ["docker.io/team/app:latest", "localhost/team/app:latest"]
        );
        // A registry given is the only place looked in.
        assert_eq!(names("localhost/bb:v1"), ["localhost/bb:v1"]);
        assert_eq!(
            names("docker.io/library/bb"),
            ["docker.io/library/bb:latest"]
        );
        assert_eq!(names("reg.lan:5000/bb:v1"), ["reg.lan:5000/bb:v1"]);
        assert!(ImageRef::lookup_names("BB:v1").is_err());
    }
}
