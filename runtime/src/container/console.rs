//! The receiving end of an exec's terminal: a Unix socket the exec helper names as the OCI
//! runtime spec's `consoleSocket` (runtime.md, "Console socket"), on which the command's
//! pseudoterminal master arrives as `SCM_RIGHTS`, and what the agent does with that master
//! (its window size, tty_ioctl(4)).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// A listening console socket in a directory, removed when dropped.
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on a new socket `console-<random>.sock` in `dir`, readable and writable by its
    /// owner only. `dir` may be longer than a socket address holds (108 bytes): the socket
    /// is bound through `/proc/self/fd`.
    pub fn bind(dir: &Path) -> io::Result<Self> {
        use rustix::fs::{Mode, OFlags};
        let handle = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut id = [0u8; 8];
        rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty())?;
        let name = format!("console-{:016x}.sock", u64::from_ne_bytes(id));
        let short = Path::new("/proc/self/fd")
            .join(rustix::fd::AsRawFd::as_raw_fd(&handle).to_string())
            .join(&name);
        let listener = UnixListener::bind(&short)?;
        let path = dir.join(name);
        let socket = Self { listener, path };
        std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o600))?;
        socket.listener.set_nonblocking(true)?;
        Ok(socket)
    }

    /// Its path, for the helper's `--console-socket`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener (non-blocking), for the caller's event loop.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives one file descriptor sent on `connection` and checks it is a pseudoterminal
/// master (`/dev/ptmx`, or a devpts `ptmx` in a container: a character device of major 5,
/// minor 2). Errors: `WouldBlock` on a non-blocking socket with nothing yet, `UnexpectedEof`
/// when the peer closed without sending one, `InvalidData` for anything but a terminal master.
pub fn receive_master(connection: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::mem::MaybeUninit;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // libcontainer sends the name "/dev/ptmx" with the descriptor.
    let mut name = [0u8; 64];
    let got = recvmsg(
        connection,
        &mut [io::IoSliceMut::new(&mut name)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if fds.is_empty() {
        return Err(if got.bytes == 0 {
            io::ErrorKind::UnexpectedEof.into()
        } else {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no descriptor came with the message",
            )
        });
    }
    let master = fds.swap_remove(0);
    let st = rustix::fs::fstat(&master)?;
    let is_ptmx = rustix::fs::FileType::from_raw_mode(st.st_mode)
        == rustix::fs::FileType::CharacterDevice
        && rustix::fs::major(st.st_rdev) == 5
        && rustix::fs::minor(st.st_rdev) == 2;
    if !is_ptmx || !rustix::termios::isatty(&master) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the descriptor received is not a pseudoterminal master",
        ));
    }
    Ok(master)
}

/// A pseudoterminal master read and written asynchronously (on the tokio reactor).
#[derive(Debug)]
pub struct Terminal(tokio::io::unix::AsyncFd<OwnedFd>);

impl Terminal {
    /// Makes `master` non-blocking and registers it with the current tokio runtime (which
    /// must exist).
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK)?;
        // SAFETY: an `OwnedFd` is an open descriptor that stays open, the same one, until the
        // `AsyncFd` that owns it is dropped; its `as_raw_fd` always returns it.
        #[allow(unsafe_code)]
        let registered = unsafe { tokio::io::unix::AsyncFd::register(master) };
        registered.map(Self).map_err(io::Error::from)
    }

    /// Reads what the other side wrote; `Ok(0)` once every process holding the other side
    /// has closed it (the master then reads `EIO`).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.0.readable().await?;
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut *buf)?)) {
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Ok(0)
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `bytes` (as typed on the other side's terminal).
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut ready = self.0.writable().await?;
            match ready.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), bytes)?)) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Sets its window size: see [`set_window_size`].
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        set_window_size(self.0.get_ref(), rows, cols)
    }
}

/// Sets the window size of terminal `fd` (`TIOCSWINSZ`): the foreground process group of its
/// other side gets `SIGWINCH`.
pub fn set_window_size(fd: impl AsFd, rows: u16, cols: u16) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        fd,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_socket_in_a_long_directory_takes_a_terminal_master_and_only_that() {
        let tmp = tempfile::tempdir().expect("tmp");
        let deep = tmp.path().join("d".repeat(100)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).expect("mkdir");
        let socket = ConsoleSocket::bind(&deep).expect("bind");
        assert!(socket.path().as_os_str().len() > 108);
        let mode = std::fs::metadata(socket.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let send = |fd: BorrowedFd<'_>| {
            use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
            use std::mem::MaybeUninit;
            // As libcontainer does it, through a short name (here the directory's descriptor).
            let dir = std::fs::File::open(&deep).expect("dir");
            let short = format!(
                "/proc/self/fd/{}/{}",
                rustix::fd::AsRawFd::as_raw_fd(&dir),
                socket.path().file_name().expect("name").to_string_lossy()
            );
            let peer = std::os::unix::net::UnixStream::connect(short).expect("connect");
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [fd];
            assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
            sendmsg(
                &peer,
                &[io::IoSlice::new(b"/dev/ptmx")],
                &mut control,
                SendFlags::empty(),
            )
            .expect("sendmsg");
            let (conn, _) = loop {
                match socket.listener().accept() {
                    Ok(c) => break c,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            receive_master(conn.as_fd())
        };
        let master = rustix::fs::open(
            "/dev/ptmx",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .expect("/dev/ptmx");
        let got = send(master.as_fd()).expect("a master is taken");
        set_window_size(&got, 33, 101).expect("resize");
        let size = rustix::termios::tcgetwinsize(&master).expect("size");
        assert_eq!((size.ws_row, size.ws_col), (33, 101));

        let file = std::fs::File::open("/dev/null").expect("null");
        let refused = send(file.as_fd()).expect_err("not a terminal");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);

        let path = socket.path().to_path_buf();
        drop(socket);
        assert!(!path.exists());
    }
}
