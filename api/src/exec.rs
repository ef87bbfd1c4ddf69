//! `flotilla exec`: a command run in a task's container, its standard streams carried between
//! the operator and the node through the control plane.
//!
//! The operator's `POST /v1/tasks/{id}/exec` is an HTTP/1.1 upgrade (RFC 9110, 7.8) to
//! [`UPGRADE`]; the control plane opens a stream on the node's own session, sends
//! [`crate::ServerPush::Exec`] (one JSON frame, an [`ExecRequest`]) and from then on both legs
//! carry [`ExecFrame`]s, which the control plane passes through unchanged. The node answers
//! [`ExecFrame::Started`] or [`ExecFrame::Error`] first; the operator's side sees the upgrade
//! only after `Started`.
//!
//! An `ExecFrame` is a 1-byte kind, a 4-byte big-endian payload length and the payload, at
//! most [`MAX_CHUNK`] bytes: standard streams are bytes, not text, so they are not JSON.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::FrameError;

/// The protocol the operator's request upgrades to (`Upgrade:` header).
pub const UPGRADE: &str = "flotilla-exec/1";

/// Largest payload of one [`ExecFrame`] (64 KiB).
pub const MAX_CHUNK: usize = 64 * 1024;

/// Most arguments a command may have.
pub const MAX_ARGS: usize = 256;

/// Most bytes the arguments of a command may take in a URL's query, percent-encoded (RFC 3986,
/// 2.1: a byte other than an unreserved character takes three): HTTP servers refuse longer
/// request lines (414).
pub const MAX_COMMAND_BYTES: usize = 48 * 1024;

/// Exit code of `flotilla exec` when the command could not be run at all (as `docker exec`).
pub const CANNOT_RUN: i32 = 126;

/// A terminal's size in character cells (`struct winsize`, tty_ioctl(4)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What to run, as the control plane asks a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRequest {
    /// Task id.
    pub task: String,
    /// The container by its name in the task definition; the task's only container, or its
    /// first essential one, when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The command and its arguments (no shell is added).
    pub command: Vec<String>,
    /// Run it on a terminal (its output then comes as stdout only).
    #[serde(default)]
    pub tty: bool,
    /// Pass the operator's standard input (otherwise the command reads `/dev/null`).
    #[serde(default)]
    pub stdin: bool,
    /// The terminal's size at the start (with `tty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<WindowSize>,
    /// The admin who asked (as the control plane read it from the client certificate): for
    /// the node's log.
    #[serde(default)]
    pub admin: String,
}

impl ExecRequest {
    /// Problems with the command, each naming what is wrong: empty, too many arguments, too
    /// long, or an argument with a NUL byte (execve(2) cannot pass it).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.command.is_empty() {
            out.push("command: a command to run is required (after --)".to_string());
        }
        if self.command.len() > MAX_ARGS {
            out.push(format!(
                "command: {} arguments; at most {MAX_ARGS}",
                self.command.len()
            ));
        }
        let encoded: usize = self
            .command
            .iter()
            .map(|a| {
                "&command=".len()
                    + a.bytes()
                        .map(|b| {
                            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                                1
                            } else {
                                3
                            }
                        })
                        .sum::<usize>()
            })
            .sum();
        if encoded > MAX_COMMAND_BYTES {
            out.push(format!(
                "command: {encoded} bytes once encoded in the request; at most \
                 {MAX_COMMAND_BYTES}"
            ));
        }
        if let Some(i) = self.command.iter().position(|a| a.contains('\0')) {
            out.push(format!("command: argument {i} contains a NUL byte"));
        }
        if let Some(c) = &self.container {
            // ECS's rule for a container's name (RegisterTaskDefinition, ContainerDefinition
            // `name`): what events and logs show of it is then always plain.
            let valid = !c.is_empty()
                && c.len() <= 255
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                out.push(format!(
                    "container: {c:?} is not a container name (1-255 letters, digits, '-' and \
                     '_')"
                ));
            }
        }
        if let Some(s) = self.size {
            if s.rows == 0 || s.cols == 0 {
                out.push(format!(
                    "size: {}x{} (rows x columns) is not a terminal size",
                    s.rows, s.cols
                ));
            }
        }
        out
    }

    /// The command as an event or a log shows it: arguments with spaces or quotes quoted,
    /// control characters escaped, cut at 200 characters.
    pub fn shown(&self) -> String {
        let mut out = String::new();
        for (i, a) in self.command.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_graphic() && !"'\"\\$`".contains(c));
            if plain {
                out.push_str(a);
            } else {
                out.push_str(&format!("{a:?}"));
            }
        }
        if out.chars().count() > 200 {
            out = out.chars().take(199).collect();
            out.push('…');
        }
        out
    }
}

/// One frame of an exec's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecFrame {
    /// Operator → node: bytes for the command's standard input.
    Stdin(Vec<u8>),
    /// Operator → node: standard input ended.
    StdinEnd,
    /// Operator → node: the terminal's new size.
    Resize(WindowSize),
    /// Node → operator: the command started in this container (its name in the task
    /// definition).
    Started(String),
    /// Node → operator: bytes the command wrote to standard output (or its terminal).
    Stdout(Vec<u8>),
    /// Node → operator: bytes the command wrote to standard error.
    Stderr(Vec<u8>),
    /// Node → operator, last: the command's exit code (128 + N when signal N ended it).
    Exit(i32),
    /// Node → operator, last: the command could not be run, or the node ended it.
    Error(String),
}

const STDIN: u8 = 0;
const STDIN_END: u8 = 1;
const RESIZE: u8 = 2;
const STARTED: u8 = 16;
const STDOUT: u8 = 17;
const STDERR: u8 = 18;
const EXIT: u8 = 19;
const ERROR: u8 = 20;

impl ExecFrame {
    /// The frame's kind as logs name it (`stdout`, `resize` …), without its payload.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Stdin(_) => "stdin",
            Self::StdinEnd => "stdin-end",
            Self::Resize(_) => "resize",
            Self::Started(_) => "started",
            Self::Stdout(_) => "stdout",
            Self::Stderr(_) => "stderr",
            Self::Exit(_) => "exit",
            Self::Error(_) => "error",
        }
    }

    /// The frame's bytes: kind, length, payload. A payload over [`MAX_CHUNK`] is refused.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        use std::borrow::Cow;
        let (kind, payload): (u8, Cow<'_, [u8]>) = match self {
            Self::Stdin(b) => (STDIN, b.into()),
            Self::StdinEnd => (STDIN_END, (&[][..]).into()),
            Self::Resize(s) => (
                RESIZE,
                [s.rows.to_be_bytes(), s.cols.to_be_bytes()].concat().into(),
            ),
            Self::Started(name) => (STARTED, name.as_bytes().into()),
            Self::Stdout(b) => (STDOUT, b.into()),
            Self::Stderr(b) => (STDERR, b.into()),
            Self::Exit(code) => (EXIT, code.to_be_bytes().to_vec().into()),
            Self::Error(why) => (ERROR, why.as_bytes().into()),
        };
        if payload.len() > MAX_CHUNK {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                limit: MAX_CHUNK,
            });
        }
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// A frame from its kind and payload; malformed ones are refused, naming the kind.
    fn decode(kind: u8, payload: Vec<u8>) -> Result<Self, FrameError> {
        let malformed = |what: &str| {
            FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("malformed exec frame: {what}"),
            ))
        };
        let text = |p: Vec<u8>| String::from_utf8(p).map_err(|_| malformed("text not UTF-8"));
        Ok(match kind {
            STDIN => Self::Stdin(payload),
            STDIN_END if payload.is_empty() => Self::StdinEnd,
            RESIZE => match payload[..] {
                [r0, r1, c0, c1] => Self::Resize(WindowSize {
                    rows: u16::from_be_bytes([r0, r1]),
                    cols: u16::from_be_bytes([c0, c1]),
                }),
                _ => return Err(malformed("a resize is 4 bytes")),
            },
            STARTED => Self::Started(text(payload)?),
            STDOUT => Self::Stdout(payload),
            STDERR => Self::Stderr(payload),
            EXIT => match payload[..] {
                [a, b, c, d] => Self::Exit(i32::from_be_bytes([a, b, c, d])),
                _ => return Err(malformed("an exit code is 4 bytes")),
            },
            ERROR => Self::Error(text(payload)?),
            other => return Err(malformed(&format!("unknown kind {other}"))),
        })
    }
}

/// Writes one frame (and flushes).
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, frame: &ExecFrame) -> Result<(), FrameError> {
    w.write_all(&frame.encode()?).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `None` when the stream ends cleanly between frames. A length over
/// [`MAX_CHUNK`] is refused before the payload is read.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<ExecFrame>, FrameError> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_CHUNK {
        return Err(FrameError::TooLarge {
            len,
            limit: MAX_CHUNK,
        });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    ExecFrame::decode(head[0], payload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_hostile_ones_are_refused() {
        let frames = [
            ExecFrame::Stdin(b"echo hi\n".to_vec()),
            ExecFrame::StdinEnd,
            ExecFrame::Resize(WindowSize {
                rows: 40,
                cols: 132,
            }),
            ExecFrame::Started("web".into()),
            ExecFrame::Stdout(vec![0, 255, 10]),
            ExecFrame::Stderr(Vec::new()),
            ExecFrame::Exit(-1),
            ExecFrame::Exit(137),
            ExecFrame::Error("no such container".into()),
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            write(&mut bytes, f).await.expect("write");
        }
        let mut r = &bytes[..];
        for f in &frames {
            assert_eq!(read(&mut r).await.expect("read").as_ref(), Some(f));
        }
        assert_eq!(read(&mut r).await.expect("end"), None);

        assert!(matches!(
            ExecFrame::Stdout(vec![0; MAX_CHUNK + 1]).encode(),
            Err(FrameError::TooLarge { .. })
        ));
        let hostile: [&[u8]; 6] = [
            &[STDOUT, 0xff, 0xff, 0xff, 0xff],
            &[99, 0, 0, 0, 0],
            &[RESIZE, 0, 0, 0, 3, 1, 2, 3],
            &[EXIT, 0, 0, 0, 0],
            &[ERROR, 0, 0, 0, 1, 0xff],
            &[STDIN, 0, 0, 0, 9, 1],
        ];
        for h in hostile {
            let mut r = h;
            assert!(read(&mut r).await.is_err(), "{h:?}");
        }
    }

    #[test]
    fn commands_are_checked_and_shown_quoted() {
        let req = |command: &[&str]| ExecRequest {
            task: "t".into(),
            container: None,
            command: command.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin: false,
            size: None,
            admin: "alice".into(),
        };
        assert!(req(&["sh"]).problems().is_empty());
        assert!(req(&[]).problems()[0].contains("required"));
        assert!(req(&["a\0b"]).problems()[0].contains("NUL"));
        let many: Vec<&str> = vec!["x"; MAX_ARGS + 1];
        assert!(req(&many).problems()[0].contains("arguments"));
        // Counted as sent: "é" is 6 bytes in a query, a space 3.
        let wide = "é".repeat(MAX_COMMAND_BYTES / 6);
        assert!(req(&[&wide]).problems()[0].contains("once encoded"));
        assert!(req(&[&"e".repeat(MAX_COMMAND_BYTES / 2)])
            .problems()
            .is_empty());
        let mut named = req(&["sh"]);
        named.container = Some("web_1-a".into());
        assert!(named.problems().is_empty());
        for bad in ["", "x\n\u{1b}[31mRED", "a b", &"c".repeat(256)] {
            named.container = Some(bad.to_string());
            assert!(named.problems()[0].starts_with("container:"), "{bad:?}");
        }
        let mut zero = req(&["sh"]);
        zero.size = Some(WindowSize { rows: 0, cols: 80 });
        assert!(zero.problems()[0].starts_with("size"));
        assert_eq!(
            req(&["sh", "-c", "echo $((6*7))"]).shown(),
            r#"sh -c "echo $((6*7))""#
        );
        assert!(req(&[&"y".repeat(500)]).shown().ends_with('…'));
    }
}
