//! The few system calls the relay makes by hand, and the only `unsafe` in the crate.
//!
//! Sockets are driven readiness-style: a connection waits for readability or writability
//! through the runtime (an io_uring `PollAdd`, or epoll on the fallback driver) without
//! holding any buffer, then reads into the worker's scratch buffer and writes its queued
//! frames with non-blocking `recv`/`writev` calls made here. That is what keeps an idle
//! connection free of buffers. Local files are opened with `openat2(RESOLVE_BENEATH)` so the
//! kernel itself refuses any path, symlinks included, that leaves the storage root.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Outcome of one non-blocking socket call.
pub enum Io {
    /// This many bytes moved (0 from `recv` means the peer closed its side).
    Done(usize),
    /// The socket is not ready; wait for readiness and try again.
    WouldBlock,
}

fn classify(ret: isize) -> io::Result<Io> {
    if ret >= 0 {
        return Ok(Io::Done(ret as usize));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => Ok(Io::WouldBlock),
        _ => Err(err),
    }
}

/// Non-blocking `recv` into `buf`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Io> {
    // SAFETY: `buf` is a valid, writable slice for its whole length during the call, and
    // MSG_DONTWAIT makes the call return at once whatever the socket's blocking mode.
    let ret = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    classify(ret)
}

/// Most iovecs handed to one `writev` (far below the kernel's IOV_MAX of 1024).
pub const MAX_IOV: usize = 64;

/// Non-blocking `writev` of `parts`: **this is the one copy of a payload**, from the shared
/// segment buffer into the kernel's socket buffer. Nothing in user space copies it before.
pub fn writev(fd: RawFd, parts: &[&[u8]]) -> io::Result<Io> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOV];
    let n = parts.len().min(MAX_IOV);
    for (slot, part) in iov.iter_mut().zip(&parts[..n]) {
        slot.iov_base = part.as_ptr() as *mut libc::c_void;
        slot.iov_len = part.len();
    }
    let msg = libc::msghdr {
        msg_name: std::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: iov.as_mut_ptr(),
        msg_iovlen: n as _,
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    };
    // SAFETY: every iovec points into a slice borrowed for the duration of the call and
    // is only read by the kernel; `msg` lives on this stack frame. sendmsg is used instead
    // of writev for MSG_DONTWAIT and MSG_NOSIGNAL (no SIGPIPE on a reset peer).
    let ret = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    classify(ret)
}

/// Shut down the sending side, so the peer sees our close frame followed by EOF.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall on a descriptor we own; errors (already closed) are irrelevant.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

/// Open `rel` (a validated, relative key) read-only beneath the directory `root`.
///
/// `RESOLVE_BENEATH` makes the kernel reject `..`, absolute paths and symlinks that lead
/// outside `root`; `RESOLVE_NO_MAGICLINKS` rejects `/proc`-style links. Kernels without
/// `openat2` (before 5.6) get `ENOSYS`, and the caller falls back to a checked path.
pub fn open_beneath(root: RawFd, rel: &str) -> io::Result<OwnedFd> {
    let path = CString::new(rel).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is a plain C struct for which all-zero bytes are a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `path` is a NUL-terminated string and `how` a correctly sized open_how, both
    // alive for the call; a non-negative return is a fresh descriptor that we now own.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

fn c_name(name: &str) -> io::Result<CString> {
    // One path component: no separator, nothing that walks up.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Create the directory `name` (one component) in the directory `dir`.
pub fn mkdir_at(dir: RawFd, name: &str) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: `name` is a NUL-terminated string alive for the call.
    check(unsafe { libc::mkdirat(dir, name.as_ptr(), 0o755) })
}

/// Create the new file `name` (one component, which must not exist) in the directory
/// `dir`, open for writing.
pub fn create_at(dir: RawFd, name: &str) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: `name` is a NUL-terminated string alive for the call; a non-negative return
    // is a fresh descriptor that we now own.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags, 0o644 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Rename `from` to `to` (both one component) inside the directory `dir`, replacing `to`.
pub fn rename_at(dir: RawFd, from: &str, to: &str) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    // SAFETY: both names are NUL-terminated strings alive for the call.
    check(unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) })
}

/// Remove the file `name` (one component) from the directory `dir`.
pub fn unlink_at(dir: RawFd, name: &str) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: `name` is a NUL-terminated string alive for the call.
    check(unsafe { libc::unlinkat(dir, name.as_ptr(), 0) })
}

/// Take an exclusive advisory lock on `fd`, waiting for it (released when `fd` closes).
pub fn flock_exclusive(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor the caller owns.
    let ret = unsafe { libc::flock(fd, libc::LOCK_EX) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The process's soft limit on open files (`RLIMIT_NOFILE`), if it can be read.
pub fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}
