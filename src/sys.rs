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

/// Non-blocking `writev` of `parts`: on the copying send path **this is the one copy of a
/// payload**, from the shared segment buffer into the kernel's socket buffer. Nothing in
/// user space copies it before. `more`: a `sendfile` of the same frame follows at once
/// (`MSG_MORE`, so the head and the payload leave in the same segments).
pub fn writev(fd: RawFd, parts: &[&[u8]], more: bool) -> io::Result<Io> {
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
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    let ret = unsafe { libc::sendmsg(fd, &msg, flags) };
    classify(ret)
}

/// Bound the bytes the socket `fd` holds not yet sent (`TCP_NOTSENT_LOWAT`): writes see a
/// full socket beyond it, and readiness waits for it to drain below.
pub fn set_unsent_limit(fd: RawFd, bytes: u32) -> io::Result<()> {
    let v = bytes as libc::c_int;
    // SAFETY: `v` is a valid c_int for the call; plain setsockopt on a socket the caller owns.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

/// Take the listening socket `fd` out of the listening state now (`shutdown(SHUT_RD)`):
/// connections waiting in its backlog are reset, a pending `accept` fails, and the address
/// is free at once. Closing it is not enough with io_uring: an `accept` still in flight
/// holds the socket, listening, until the ring is torn down after the process has exited,
/// and a relay restarted at once could not bind.
pub fn stop_listening(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain shutdown on a descriptor the caller owns.
    check(unsafe { libc::shutdown(fd, libc::SHUT_RD) })
}

/// Put the socket `fd` in non-blocking mode (for `sendfile`, which takes no flags).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })
}

/// `sendfile(2)` of `len` bytes of `file` from `offset` to the non-blocking socket `sock`:
/// the kernel queues references to the file's pages, **no copy of the payload** is made
/// on the sending side. `Done(0)` with `len > 0` means the file is shorter than expected.
pub fn sendfile(sock: RawFd, file: RawFd, offset: u64, len: usize) -> io::Result<Io> {
    let mut off = offset as libc::off_t;
    // SAFETY: `off` is a valid, writable off_t for the call; both descriptors are owned by
    // the caller and stay open during it. The socket is non-blocking, so the call returns
    // at once when its buffer is full.
    let ret = unsafe { libc::sendfile(sock, file, &mut off, len) };
    classify(ret)
}

/// A new anonymous file holding exactly `data`, sealed against every change
/// (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): its pages can be handed to
/// sockets with `sendfile` and mapped read-only, and nothing can modify or truncate them
/// while the kernel still holds them for data in flight.
pub fn sealed_memfd(data: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated literal; a non-negative return is a fresh
    // descriptor that we now own.
    let fd = unsafe {
        libc::memfd_create(
            c"mediarelay-payload".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // Size first (one allocation of the file's extent), then the bytes.
    // SAFETY: plain syscall on the descriptor we own.
    check(unsafe { libc::ftruncate(raw, data.len() as libc::off_t) })?;
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: `rest` is a valid slice for the call; the kernel only reads it.
        let n = unsafe { libc::pwrite(raw, rest.as_ptr().cast(), rest.len(), done as libc::off_t) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        done += n as usize;
    }
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: plain fcntl on the descriptor we own.
    check(unsafe { libc::fcntl(raw, libc::F_ADD_SEALS, seals) })?;
    Ok(fd)
}

/// A read-only shared mapping of a whole sealed file (see [`sealed_memfd`]): the bytes a
/// `Bytes` handle shows are the file's own pages, so a payload exists once in memory
/// whether it leaves by `sendfile` or by `writev`.
pub struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and its pages are sealed against every change, so
// sharing the pointer across threads shares immutable memory.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map the first `len` bytes of the sealed file `fd` read-only. `len` must be at most
    /// the file's size, which seals keep fixed.
    pub fn sealed(fd: RawFd, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping {
                ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(),
                len: 0,
            });
        }
        // The file must be sealed against shrinking, or a truncation could leave the
        // mapping over missing pages (SIGBUS).
        // SAFETY: plain fcntl on a descriptor the caller owns.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 || seals & libc::F_SEAL_WRITE == 0 {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid, writable stat for the call.
        check(unsafe { libc::fstat(fd, &mut st) })?;
        if (st.st_size as u64) < len as u64 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh read-only shared mapping of `len` bytes of a file sealed against
        // writes and shrinking; it is unmapped only in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr as *const u8,
            len,
        })
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` readable bytes mapped until Drop (or is dangling
        // with len 0), and sealed pages never change.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping made in `sealed`, once.
            unsafe {
                libc::munmap(self.ptr as *mut libc::c_void, self.len);
            }
        }
    }
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

/// Give the memory the allocator (mimalloc, the global allocator) holds free on the calling
/// thread back to the system: free pages are decommitted now rather than when the thread
/// next allocates.
pub fn return_free_memory() {
    // SAFETY: mi_collect only walks and trims the calling thread's own heap (and returns
    // free arena memory); it takes no pointer and may be called at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn unsent_limit_is_set_on_the_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        set_unsent_limit(s.as_raw_fd(), 64 << 10).unwrap();
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid and writable for the call.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!((rc, v), (0, 64 << 10));
    }

    #[test]
    fn sealed_memfd_refuses_changes() {
        let fd = sealed_memfd(b"hello").unwrap();
        let f = std::fs::File::from(fd);
        assert!(std::os::unix::fs::FileExt::write_at(&f, b"x", 0).is_err());
        assert!(f.set_len(0).is_err());
        assert!(f.set_len(10).is_err());
        let map = Mapping::sealed(f.as_raw_fd(), 5).unwrap();
        assert_eq!(map.as_ref(), b"hello");
        assert!(
            Mapping::sealed(f.as_raw_fd(), 6).is_err(),
            "longer than the file"
        );
    }
}
