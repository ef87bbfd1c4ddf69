//! Runs inside test containers and reports what the container may do: `probe syscalls`
//! (errno of calls the default seccomp profile must refuse) and `probe fds` (descriptors
//! open above stderr); `probe serve PORT` is the connection benchmark's server (each
//! connection gets one byte, then is held until the client closes it). Linked against the host's C library, which the test image carries.

use std::fs;
use std::io::Error;

/// "ok" for a successful call, else the errno name the tests look for.
fn outcome(ret: libc::c_long) -> String {
    if ret >= 0 {
        return "ok".to_string();
    }
    match Error::last_os_error().raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(n) => format!("errno{n}"),
        None => "unknown".into(),
    }
}

fn syscalls() {
    // SAFETY: plain system calls with constant arguments and valid NUL-terminated strings;
    // no memory is handed to the kernel beyond those literals.
    #[allow(unsafe_code)]
    let (unshare, mount, keyctl) = unsafe {
        (
            libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS),
            libc::syscall(
                libc::SYS_mount,
                c"none".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null::<libc::c_void>(),
            ),
            // KEYCTL_GET_KEYRING_ID of the session keyring, creating it
            libc::syscall(libc::SYS_keyctl, 0, -3, 1),
        )
    };
    println!("unshare={}", outcome(unshare));
    println!("mount={}", outcome(mount));
    println!("keyctl={}", outcome(keyctl));
}

fn fds() {
    let me = std::process::id();
    let dir = format!("/proc/{me}/fd");
    for entry in fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let fd: u32 = name.parse().unwrap_or(0);
        // the directory being listed is ours, not inherited
        if fd > 2 && target != dir {
            println!("fd {fd} -> {target}");
        }
    }
    println!("done");
}

fn serve(port: Option<u16>) {
    use std::io::{Read, Write};
    let Some(port) = port else {
        eprintln!("usage: probe serve PORT");
        std::process::exit(2);
    };
    let listener = match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("probe serve: port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("serving on {port}");
    let threads: Vec<_> = (0..4)
        .filter_map(|_| listener.try_clone().ok())
        .map(|l| {
            std::thread::spawn(move || {
                for mut conn in l.incoming().flatten() {
                    let _ = conn.write_all(b"x");
                    let mut sink = [0u8; 64];
                    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("syscalls") => syscalls(),
        Some("fds") => fds(),
        Some("serve") => serve(std::env::args().nth(2).and_then(|p| p.parse().ok())),
        _ => {
            eprintln!("usage: probe syscalls|fds|serve PORT");
            std::process::exit(2);
        }
    }
}
