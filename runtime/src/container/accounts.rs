//! A container's user from its image's account files: `user[:group]` resolved against the
//! text of `/etc/passwd` and `/etc/group` (an image's content: hostile). Pure, so the fuzz
//! harness compiles it in by path; [`super::rootfs::resolve_user`] reads the files.

use std::io;

use serde::{Deserialize, Serialize};

/// The user a container runs as, resolved against its root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Home directory, for `HOME`.
    pub home: Option<String>,
}

/// Errors resolving a user.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name is not in the image.
    #[error("user '{0}' is not in the image's /etc/passwd")]
    UnknownUser(String),
    /// The group is not in the image.
    #[error("group '{0}' is not in the image's /etc/group")]
    UnknownGroup(String),
    /// A user or group id above [`MAX_ID`] (from the request or the image's account files).
    #[error("{what} id {id} is out of range: at most {MAX_ID} (the kernel takes 4294967295 as \"leave unchanged\", which would keep the container's process root)")]
    IdOutOfRange {
        /// `user` or `group`.
        what: &'static str,
        /// The id.
        id: u32,
    },
    /// Reading the image failed.
    #[error("reading the image's account files: {0}")]
    Io(#[from] io::Error),
}

/// The largest user or group id a container may run as, as runc and Docker allow (2³¹ − 1):
/// above it lies `(uid_t) -1`, which setresuid(2) reads as "leave unchanged".
pub const MAX_ID: u32 = i32::MAX as u32;

/// Resolves `user[:group]` (names or numbers; `0` when `None`) against an image's `/etc/passwd`
/// and `/etc/group` (their text, of any content: the image is hostile).
pub fn resolve(passwd: &str, groups: &str, spec: Option<&str>) -> Result<ResolvedUser, UserError> {
    let spec = spec.unwrap_or("0");
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // name:password:uid:gid:gecos:home:shell
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let entry = match user.parse::<u32>() {
        Ok(uid) => entries.iter().find(|f| f[2].parse() == Ok(uid)),
        Err(_) => Some(
            entries
                .iter()
                .find(|f| f[0] == user)
                .ok_or_else(|| UserError::UnknownUser(user.to_string()))?,
        ),
    };
    let uid = match (user.parse::<u32>(), entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(f)) => f[2]
            .parse()
            .map_err(|_| UserError::UnknownUser(user.to_string()))?,
        (Err(_), None) => return Err(UserError::UnknownUser(user.to_string())),
    };
    let name = entry.map(|f| f[0]);
    let home = entry.map(|f| f[5].to_string()).filter(|h| !h.is_empty());
    // name:password:gid:member,member
    let group_entries: Vec<Vec<&str>> = groups
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        },
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    let mut additional_gids: Vec<u32> = match (name, group) {
        (Some(n), None) => group_entries
            .iter()
            .filter(|f| f[3].split(',').any(|m| m == n))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    if uid > MAX_ID {
        return Err(UserError::IdOutOfRange {
            what: "user",
            id: uid,
        });
    }
    if let Some(id) = std::iter::once(gid)
        .chain(additional_gids.iter().copied())
        .find(|g| *g > MAX_ID)
    {
        return Err(UserError::IdOutOfRange { what: "group", id });
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}
