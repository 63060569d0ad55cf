//! The local-directory origin, the embedded default (`--storage DIR`).
//!
//! Keys map to paths under the root. Files are opened with `openat2(RESOLVE_BENEATH)`
//! ([`crate::sys::open_beneath`]), so nothing outside the root is ever opened, whatever
//! symlinks the directory holds; sizes come from `statx` and bytes from `read` on the
//! worker's io_uring (through monoio), straight into a pooled buffer. Directory listings
//! (stream discovery) run on the blocking pool, never on a worker; inotify wakes discovery
//! when a segment is renamed into a stream's directory ([`super::watch`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use monoio::buf::IoBufMut;

use super::pool;
use super::{headroom_for, Listing, Object, Origin, OriginError, OriginFuture, Stored};

/// Objects from a directory tree.
#[derive(Clone)]
pub struct FsOrigin {
    root: PathBuf,
    root_fd: Arc<OwnedFd>,
    /// Whether the kernel has openat2; without it paths are checked by canonicalizing.
    has_openat2: bool,
}

impl FsOrigin {
    /// Open `root` (created if missing, as the default `./media` should just work).
    pub fn open(root: &Path) -> io::Result<FsOrigin> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let dir = std::fs::File::open(&root)?;
        let root_fd = OwnedFd::from(dir);
        let has_openat2 = match crate::sys::open_beneath(root_fd.as_raw_fd(), ".") {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => false,
            Err(_) => true,
        };
        if !has_openat2 {
            tracing::warn!("openat2 is not available: storage paths are checked by canonicalizing");
        }
        Ok(FsOrigin {
            root,
            root_fd: Arc::new(root_fd),
            has_openat2,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn open_file(&self, key: &str) -> io::Result<std::fs::File> {
        if self.has_openat2 {
            return crate::sys::open_beneath(self.root_fd.as_raw_fd(), key).map(Into::into);
        }
        let path = self.root.join(key).canonicalize()?;
        if !path.starts_with(&self.root) {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        std::fs::File::open(path)
    }

    async fn read(&self, key: &str, max_size: u64) -> Result<Object, OriginError> {
        let std_file = self.open_file(key).map_err(map_open_error)?;
        // The object keeps its own file for `sendfile` when payload files are on (a dup,
        // since the runtime's file handle closes its descriptor).
        let own = if super::files::wanted(super::files::MIN_FILE_PAYLOAD) {
            std_file.try_clone().ok().map(OwnedFd::from)
        } else {
            None
        };
        let file = monoio::fs::File::from_std(std_file)
            .map_err(|e| OriginError::Unavailable(format!("register file: {e}")))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| OriginError::Unavailable(format!("stat: {e}")))?;
        if !meta.is_file() {
            return Err(OriginError::NotFound);
        }
        let size = meta.len();
        if size > max_size {
            return Err(OriginError::TooLarge {
                size,
                max: max_size,
            });
        }
        let size = size as usize;
        let headroom = headroom_for(key);
        let mut buf = pool::take(headroom + size);
        buf.resize(headroom, 0);
        let buf = if size > 0 {
            // The one write of the payload into user-space memory: the kernel fills the
            // pooled buffer behind the headroom.
            let (res, slice) = file
                .read_exact_at(buf.slice_mut(headroom..headroom + size), 0)
                .await;
            res.map_err(|e| OriginError::Unavailable(format!("read: {e}")))?;
            slice.into_inner()
        } else {
            buf
        };
        let _ = file.close().await;
        let key: Arc<str> = key.into();
        let mut obj = Object::new(pool::freeze(buf), headroom, key.clone());
        obj.content_type = content_type(&key).map(Arc::from);
        Ok(match own {
            Some(fd) => super::files::keep(obj, fd),
            None => obj,
        })
    }

    /// The directory `rel` (`""`: the root), opened beneath the root.
    fn dir_beneath(&self, rel: &str) -> io::Result<OwnedFd> {
        let rel = if rel.is_empty() { "." } else { rel };
        if self.has_openat2 {
            return crate::sys::open_beneath(self.root_fd.as_raw_fd(), rel);
        }
        let path = self.root.join(rel).canonicalize()?;
        if !path.starts_with(&self.root) {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        std::fs::File::open(path).map(OwnedFd::from)
    }

    /// The parent directory of `key`, made (one level at a time, each beneath the root, so
    /// a symlink cannot lead the new directories outside it) when `create`.
    fn parent_dir(&self, key: &str, create: bool) -> io::Result<(OwnedFd, String)> {
        let (parent, name) = key.rsplit_once('/').unwrap_or(("", key));
        let mut dir = self.dir_beneath("")?;
        let mut rel = String::new();
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(part);
            dir = match self.dir_beneath(&rel) {
                Ok(d) => d,
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    match crate::sys::mkdir_at(dir.as_raw_fd(), part) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    }
                    self.dir_beneath(&rel)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok((dir, name.to_string()))
    }

    /// Write `payload` to a temporary name beside `key`, flush it to disk, rename it into
    /// place and flush the directory: readers see the old object or the whole new one.
    fn put_blocking(&self, key: &str, payload: &[u8]) -> io::Result<Stored> {
        use std::io::Write;
        let (dir, name) = self.parent_dir(key, true)?;
        let mut suffix = [0u8; 8];
        getrandom::getrandom(&mut suffix).map_err(io::Error::other)?;
        // A dot name: never a segment name, never listed as one.
        let tmp = format!(".{name}.tmp-{}", hex::encode(suffix));
        let mut file = std::fs::File::from(crate::sys::create_at(dir.as_raw_fd(), &tmp)?);
        let cleanup = |e: io::Error| {
            let _ = crate::sys::unlink_at(dir.as_raw_fd(), &tmp);
            e
        };
        file.write_all(payload).map_err(cleanup)?;
        file.sync_all().map_err(cleanup)?;
        drop(file);
        let existed = self
            .open_file(key)
            .is_ok_and(|f| f.metadata().is_ok_and(|m| m.is_file()));
        crate::sys::rename_at(dir.as_raw_fd(), &tmp, &name).map_err(cleanup)?;
        std::fs::File::from(dir).sync_all()?;
        Ok(if existed {
            Stored::Replaced
        } else {
            Stored::Created
        })
    }

    fn delete_blocking(&self, key: &str) -> io::Result<bool> {
        let (dir, name) = match self.parent_dir(key, false) {
            Ok(d) => d,
            Err(e) => {
                return match map_open_error(e) {
                    OriginError::NotFound => Ok(false),
                    other => Err(io::Error::other(other.to_string())),
                }
            }
        };
        match crate::sys::unlink_at(dir.as_raw_fd(), &name) {
            Ok(()) => {
                std::fs::File::from(dir).sync_all()?;
                Ok(true)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EISDIR)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn list_blocking(
        root: &Path,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Listing, OriginError> {
        let dir = root.join(prefix.trim_end_matches('/'));
        let dir = match dir.canonicalize() {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(OriginError::Unavailable(format!("list: {e}"))),
        };
        if !dir.starts_with(root) {
            return Ok(Vec::new());
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Vec::new()),
            Err(e) => return Err(OriginError::Unavailable(format!("list: {e}"))),
        };
        let mut keys = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let key = format!("{prefix}{name}");
            if start_after.is_some_and(|s| key.as_str() <= s) {
                continue;
            }
            if entry
                .file_type()
                .is_ok_and(|t| t.is_file() || t.is_symlink())
            {
                keys.push(key);
            }
        }
        keys.sort_unstable();
        Ok(keys)
    }
}

fn map_open_error(e: io::Error) -> OriginError {
    match e.raw_os_error() {
        // EXDEV/ELOOP: the path tried to leave the root; report it as absent.
        Some(libc::ENOENT | libc::ENOTDIR | libc::EXDEV | libc::ELOOP | libc::EISDIR) => {
            OriginError::NotFound
        }
        Some(libc::EACCES | libc::EPERM) => OriginError::NotFound,
        _ => OriginError::Unavailable(format!("open: {e}")),
    }
}

/// Content type from the key's extension, for the common media files.
pub fn content_type(key: &str) -> Option<&'static str> {
    let ext = key.rsplit_once('.')?.1;
    Some(match ext {
        "m4s" => "video/iso.segment",
        "mp4" | "m4v" => "video/mp4",
        "m4a" => "audio/mp4",
        "ts" => "video/mp2t",
        "m3u8" => "application/vnd.apple.mpegurl",
        "mpd" => "application/dash+xml",
        "json" => "application/json",
        "txt" => "text/plain",
        _ => return None,
    })
}

impl Origin for FsOrigin {
    fn backend(&self) -> &'static str {
        "fs"
    }

    fn watch(&self, prefix: &str) -> Option<super::watch::Changes> {
        super::watch::DirWatcher::get()?.watch(&self.root, prefix)
    }

    fn unwatch(&self, prefix: &str) {
        if let Some(w) = super::watch::DirWatcher::get() {
            w.unwatch(&self.root.join(prefix));
        }
    }

    fn get<'a>(&'a self, key: &'a str, max_size: u64) -> OriginFuture<'a, Object> {
        Box::pin(self.read(key, max_size))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> OriginFuture<'a, Listing> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        Box::pin(async move {
            monoio::spawn_blocking(move || {
                Self::list_blocking(&root, &prefix, start_after.as_deref())
            })
            .await
            .unwrap_or_else(|_| Err(OriginError::Unavailable("listing task failed".into())))
        })
    }

    fn version<'a>(&'a self, key: &'a str) -> OriginFuture<'a, Option<u64>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        use std::os::unix::fs::MetadataExt;
        let found = match self.open_file(key).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() => Ok(Some(
                BuildHasherDefault::<DefaultHasher>::default().hash_one((
                    m.ino(),
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                )),
            )),
            Ok(_) => Ok(None),
            Err(e) => match map_open_error(e) {
                OriginError::NotFound => Ok(None),
                other => Err(other),
            },
        };
        Box::pin(std::future::ready(found))
    }

    fn put<'a>(&'a self, obj: &'a Object) -> OriginFuture<'a, Stored> {
        let this = self.clone();
        let key = obj.key.clone();
        let payload = obj.payload();
        Box::pin(async move {
            monoio::spawn_blocking(move || this.put_blocking(&key, &payload))
                .await
                .unwrap_or_else(|_| Err(io::Error::other("write task failed")))
                .map_err(|e| OriginError::Unavailable(format!("write: {e}")))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> OriginFuture<'a, bool> {
        let this = self.clone();
        let key = key.to_string();
        Box::pin(async move {
            monoio::spawn_blocking(move || this.delete_blocking(&key))
                .await
                .unwrap_or_else(|_| Err(io::Error::other("delete task failed")))
                .map_err(|e| OriginError::Unavailable(format!("delete: {e}")))
        })
    }

    fn check_ready(&self) -> Result<(), OriginError> {
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(OriginError::Unavailable(format!(
                "{} is not a directory",
                self.root.display()
            ))),
            Err(e) => Err(OriginError::Unavailable(format!(
                "{}: {e}",
                self.root.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(1)))
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn reads_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("live/cam1")).unwrap();
        std::fs::write(root.join("live/cam1/seg-0000000001.m4s"), b"abc").unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("dirlink")).unwrap();
        let o = FsOrigin::open(&root).unwrap();
        run(async {
            let obj = o.get("live/cam1/seg-0000000001.m4s", 100).await.unwrap();
            assert_eq!(&obj.payload()[..], b"abc");
            assert_eq!(obj.content_type.as_deref(), Some("video/iso.segment"));
            assert!(obj.headroom() >= headroom_for("live/cam1/seg-0000000001.m4s"));
            assert!(matches!(
                o.get("link", 100).await,
                Err(OriginError::NotFound)
            ));
            assert!(matches!(
                o.get("dirlink/secret", 100).await,
                Err(OriginError::NotFound)
            ));
            assert!(matches!(
                o.get("missing", 100).await,
                Err(OriginError::NotFound)
            ));
            assert!(matches!(
                o.get("live", 100).await,
                Err(OriginError::NotFound)
            ));
            assert!(matches!(
                o.get("live/cam1/seg-0000000001.m4s", 2).await,
                Err(OriginError::TooLarge { size: 3, max: 2 })
            ));
            let l = o.list("live/cam1/", None).await.unwrap();
            assert_eq!(l, vec!["live/cam1/seg-0000000001.m4s".to_string()]);
            let l = o
                .list("live/cam1/", Some("live/cam1/seg-0000000001.m4s"))
                .await
                .unwrap();
            assert!(l.is_empty());
            assert!(o.list("dirlink/", None).await.unwrap().is_empty());
            assert!(o.list("nothing/", None).await.unwrap().is_empty());
        });
    }

    #[test]
    fn writes_are_whole_and_stay_beneath_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dirlink")).unwrap();
        let o = FsOrigin::open(&root).unwrap();
        let obj = |key: &str, data: &[u8]| {
            let mut v = vec![0u8; 8];
            v.extend_from_slice(data);
            Object::new(bytes::Bytes::from(v), 8, key.into())
        };
        run(async {
            assert_eq!(
                o.put(&obj("live/a/b/seg", b"one")).await.unwrap(),
                Stored::Created
            );
            assert_eq!(
                o.put(&obj("live/a/b/seg", b"two")).await.unwrap(),
                Stored::Replaced
            );
            assert_eq!(std::fs::read(root.join("live/a/b/seg")).unwrap(), b"two");
            // No temporary file is left beside it.
            let names: Vec<_> = std::fs::read_dir(root.join("live/a/b"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("seg")]);
            // A symlinked directory cannot lead a write (or its new directories) outside.
            assert!(o.put(&obj("dirlink/x", b"no")).await.is_err());
            assert!(o.put(&obj("dirlink/new/x", b"no")).await.is_err());
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
            assert!(o.delete("live/a/b/seg").await.unwrap());
            assert!(!o.delete("live/a/b/seg").await.unwrap());
            assert!(!o.delete("missing/dir/x").await.unwrap());
        });
    }
}
