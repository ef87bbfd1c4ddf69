//! The device allowlist on cgroup v2: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`
//! attached to the container's cgroup, which the kernel asks before every `open` or `mknod`
//! of a device node by the container's processes (Documentation/admin-guide/cgroup-v2.rst,
//! "Device controller"). On v1 the same rules are the `devices` controller's, which
//! libcontainer writes itself.
//!
//! The rules are the list Docker applies by default (runc's `AllowedDevices` plus
//! `/dev/console`, as moby's default spec and libcontainer's v1 defaults have it): creating
//! any character or block device node is allowed (`mknod`, so
//! `CAP_MKNOD` is in the default capability set as on v1), opening only `/dev/null`, `zero`,
//! `full`, `random`, `urandom`, `tty`, `console`, `ptmx`, the pseudo-terminals and `net/tun`.
//! Everything else is refused with `EPERM`.
//!
//! The program is generated here (a dozen instructions per rule) and loaded with the `bpf(2)`
//! system call directly: no libbpf, no ELF object. It needs a kernel with
//! `CONFIG_CGROUP_BPF` and a real root (not an unprivileged container). Privileged containers
//! get no program, as on v1 they get an allow-all rule.

// `struct bpf_insn` packs its two register numbers in bitfields whose order follows the
// target's byte order; the encoding below is little-endian's (x86_64, aarch64, armv7).
#[cfg(target_endian = "big")]
compile_error!("devices.rs encodes eBPF instructions for little-endian targets only");

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A device's kind, as `bpf_cgroup_dev_ctx.access_type`'s low 16 bits give it
/// (`BPF_DEVCG_DEV_BLOCK`, `BPF_DEVCG_DEV_CHAR`, include/uapi/linux/bpf.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Block device.
    Block = 1,
    /// Character device.
    Char = 2,
}

/// `BPF_DEVCG_ACC_MKNOD`: create a device node.
pub const ACCESS_MKNOD: u32 = 1;
/// `BPF_DEVCG_ACC_READ`: open for reading.
pub const ACCESS_READ: u32 = 2;
/// `BPF_DEVCG_ACC_WRITE`: open for writing.
pub const ACCESS_WRITE: u32 = 4;
const ACCESS_ALL: u32 = ACCESS_MKNOD | ACCESS_READ | ACCESS_WRITE;

/// One allow rule; `None` matches any value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allow {
    /// Block or character device.
    pub kind: Option<DeviceKind>,
    /// Major number.
    pub major: Option<u32>,
    /// Minor number.
    pub minor: Option<u32>,
    /// `ACCESS_*` bits allowed; a request is allowed when it asks for no more than these.
    pub access: u32,
}

const fn char_dev(major: u32, minor: Option<u32>) -> Allow {
    Allow {
        kind: Some(DeviceKind::Char),
        major: Some(major),
        minor,
        access: ACCESS_ALL,
    }
}

/// Docker's default allowlist.
pub const DEFAULT_ALLOW: &[Allow] = &[
    // mknod of any node (what may then be opened is decided by the rules below)
    Allow {
        kind: Some(DeviceKind::Char),
        major: None,
        minor: None,
        access: ACCESS_MKNOD,
    },
    Allow {
        kind: Some(DeviceKind::Block),
        major: None,
        minor: None,
        access: ACCESS_MKNOD,
    },
    char_dev(1, Some(3)),    // /dev/null
    char_dev(1, Some(5)),    // /dev/zero
    char_dev(1, Some(7)),    // /dev/full
    char_dev(1, Some(8)),    // /dev/random
    char_dev(1, Some(9)),    // /dev/urandom
    char_dev(5, Some(0)),    // /dev/tty
    char_dev(5, Some(1)),    // /dev/console
    char_dev(5, Some(2)),    // /dev/ptmx
    char_dev(136, None),     // /dev/pts/*
    char_dev(10, Some(200)), // /dev/net/tun
];

// eBPF instruction classes and fields (include/uapi/linux/bpf_common.h, bpf.h).
const BPF_LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const BPF_ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const BPF_ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const BPF_ALU32_MOV_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const BPF_ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const BPF_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const BPF_JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const BPF_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// One `struct bpf_insn`: opcode, destination and source registers, offset, immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The program: allow (return 1) when a rule matches, else refuse (return 0).
///
/// Registers: r1 is the context (`struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
/// u32 minor; }`); r2 gets the device kind, r3 the requested access, r4 the major, r5 the
/// minor number.
pub fn program(rules: &[Allow]) -> Vec<Insn> {
    let mut p = vec![
        insn(BPF_LDX_MEM_W, 2, 1, 0, 0),
        insn(BPF_ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(BPF_LDX_MEM_W, 3, 1, 0, 0),
        insn(BPF_ALU32_RSH_K, 3, 0, 0, 16),
        insn(BPF_LDX_MEM_W, 4, 1, 4, 0),
        insn(BPF_LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        // Each test jumps past the rest of this rule when it fails.
        let mut tests: Vec<Vec<Insn>> = Vec::new();
        if let Some(kind) = rule.kind {
            tests.push(vec![insn(BPF_JNE_K, 2, 0, 0, kind as i32)]);
        }
        if rule.access & ACCESS_ALL != ACCESS_ALL {
            // (requested & allowed) != requested → asks for more than allowed.
            tests.push(vec![
                insn(BPF_ALU32_MOV_X, 1, 3, 0, 0),
                insn(BPF_ALU32_AND_K, 1, 0, 0, rule.access as i32),
                insn(BPF_JNE_X, 1, 3, 0, 0),
            ]);
        }
        if let Some(major) = rule.major {
            tests.push(vec![insn(BPF_JNE_K, 4, 0, 0, major as i32)]);
        }
        if let Some(minor) = rule.minor {
            tests.push(vec![insn(BPF_JNE_K, 5, 0, 0, minor as i32)]);
        }
        let allow = [
            insn(BPF_ALU32_MOV_K, 0, 0, 0, 1),
            insn(BPF_EXIT, 0, 0, 0, 0),
        ];
        let len: usize = tests.iter().map(Vec::len).sum::<usize>() + allow.len();
        let mut at = 0;
        for test in tests {
            at += test.len();
            let last = test.len() - 1;
            for (i, mut ins) in test.into_iter().enumerate() {
                if i == last {
                    // Jump offsets count from the next instruction.
                    ins.off = (len - at) as i16;
                }
                p.push(ins);
            }
        }
        p.extend(allow);
    }
    p.push(insn(BPF_ALU32_MOV_K, 0, 0, 0, 0));
    p.push(insn(BPF_EXIT, 0, 0, 0, 0));
    p
}

// bpf(2) commands and constants (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The first fields of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel reads the rest as 0.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `union bpf_attr` prefixes this module passes to the kernel.
trait BpfAttr {}
impl BpfAttr for ProgLoadAttr {}
impl BpfAttr for ProgAttachAttr {}

/// The fields of `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads the program for `rules` and attaches it to the cgroup directory `cgroup`, next to
/// the programs its ancestors attached with `BPF_F_ALLOW_MULTI` (all of them must allow;
/// systemd attaches its own so).
///
/// Errors are the kernel's, with the verifier's log when it refused the program. Kernels
/// before 5.11 charge BPF memory to `RLIMIT_MEMLOCK`, so the calling process's limit is
/// raised first (the shim's, never the container's).
pub fn attach(cgroup: &Path, rules: &[Allow]) -> io::Result<()> {
    let prog_fd = load(rules)?;
    let dir = std::fs::File::open(cgroup)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", cgroup.display())))?;
    let mut attach = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "attaching the device allowlist to {}: {e}",
                cgroup.display()
            ),
        )
    })?;
    // The attachment holds the program; our descriptor can go.
    Ok(())
}

/// Loads the program for `rules` (not attached anywhere): its descriptor. The agent's host
/// checks call it once on v2, so a kernel or a sandbox without `bpf(2)` is said at start.
pub fn load(rules: &[Allow]) -> io::Result<OwnedFd> {
    let prog = program(rules);
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"flotilla");
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Memlock,
        rustix::process::Rlimit {
            current: None,
            maximum: None,
        },
    );
    // Without a verifier log first (a log that overflows fails even a good program on
    // kernels before 6.4); with one only to say why it was refused.
    let mut log = Vec::new();
    let mut fd = Err(io::Error::from_raw_os_error(libc::EINVAL));
    for log_size in [0usize, 16 * 1024] {
        log = vec![0u8; log_size];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: prog.len() as u32,
            insns: prog.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(log_size > 0),
            log_size: log_size as u32,
            log_buf: if log_size > 0 {
                log.as_mut_ptr() as u64
            } else {
                0
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: BPF_CGROUP_DEVICE,
        };
        fd = bpf(BPF_PROG_LOAD, &mut attr);
        if fd.is_ok() {
            break;
        }
    }
    let fd = fd.map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let verifier: String = String::from_utf8_lossy(&log[..end])
            .chars()
            .take(400)
            .collect();
        io::Error::new(
            e.kind(),
            format!(
                "loading the device allowlist (an eBPF program; the kernel needs \
                 CONFIG_CGROUP_BPF and the agent real root): {e} {}",
                verifier.trim()
            ),
        )
    })?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    #[allow(unsafe_code)]
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bpf(cmd, attr, sizeof attr)`. The kernel may write back into `attr` (hence `&mut`).
fn bpf<T: BpfAttr>(cmd: libc::c_long, attr: &mut T) -> io::Result<i32> {
    // SAFETY: `T` is one of this module's `#[repr(C)]` prefixes of `union bpf_attr` (the
    // private `BpfAttr` trait), for `cmd`; it is exclusively borrowed for the call, its size
    // is passed with it, and every pointer in it (instructions, license, log buffer)
    // outlives the call.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prog` on one request, as the kernel would.
    fn evaluate(prog: &[Insn], kind: DeviceKind, access: u32, major: u32, minor: u32) -> bool {
        let ctx = [(access << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        while let Some(i) = prog.get(pc) {
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                BPF_LDX_MEM_W => r[dst] = ctx[(i.off / 4) as usize] as u64,
                BPF_ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                BPF_ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                BPF_ALU32_MOV_K => r[dst] = i.imm as u32 as u64,
                BPF_ALU32_MOV_X => r[dst] = r[src] as u32 as u64,
                BPF_JNE_K if r[dst] != i.imm as u32 as u64 => pc += i.off as usize,
                BPF_JNE_X if r[dst] != r[src] => pc += i.off as usize,
                BPF_JNE_K | BPF_JNE_X => {}
                BPF_EXIT => return r[0] == 1,
                other => panic!("opcode {other:#x} is not one this module emits"),
            }
        }
        false
    }

    #[test]
    fn the_default_allowlist_is_dockers() {
        let p = program(DEFAULT_ALLOW);
        let rw = ACCESS_READ | ACCESS_WRITE;
        let allowed = |kind, access, major, minor| evaluate(&p, kind, access, major, minor);
        use DeviceKind::*;
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            assert!(allowed(Char, rw, major, minor), "c {major}:{minor}");
            assert!(allowed(Char, ACCESS_ALL, major, minor), "c {major}:{minor}");
        }
        assert!(allowed(Char, rw, 136, 0));
        assert!(allowed(Char, rw, 136, 4095));
        assert!(allowed(Char, rw, 10, 200));
        // mknod of anything, opening only what is listed
        assert!(allowed(Char, ACCESS_MKNOD, 1, 1));
        assert!(allowed(Block, ACCESS_MKNOD, 8, 0));
        assert!(!allowed(Char, ACCESS_READ, 1, 1)); // /dev/mem
        assert!(!allowed(Char, rw, 1, 11)); // /dev/kmsg
        assert!(!allowed(Block, ACCESS_READ, 8, 0)); // /dev/sda
        assert!(!allowed(Block, ACCESS_MKNOD | ACCESS_READ, 8, 0));
        assert!(!allowed(Char, rw, 10, 229)); // /dev/fuse
        assert!(!allowed(Char, rw, 4, 0)); // /dev/tty0
    }

    #[test]
    fn jumps_land_on_the_next_rule() {
        let rules = [
            Allow {
                kind: Some(DeviceKind::Char),
                major: Some(7),
                minor: Some(9),
                access: ACCESS_READ,
            },
            Allow {
                kind: None,
                major: None,
                minor: Some(42),
                access: ACCESS_ALL,
            },
        ];
        let p = program(&rules);
        assert!(evaluate(&p, DeviceKind::Char, ACCESS_READ, 7, 9));
        assert!(!evaluate(&p, DeviceKind::Char, ACCESS_WRITE, 7, 9));
        assert!(!evaluate(&p, DeviceKind::Char, ACCESS_READ, 7, 8));
        assert!(evaluate(&p, DeviceKind::Block, ACCESS_ALL, 1, 42));
        assert!(evaluate(&p, DeviceKind::Char, ACCESS_WRITE, 7, 42));
        assert!(!evaluate(&p, DeviceKind::Block, ACCESS_READ, 7, 9));
        assert!(program(&[]).len() == 8 && !evaluate(&program(&[]), DeviceKind::Char, 2, 1, 3));
    }
}
