//! The JSON ticket file, the embedded default store (`--tickets FILE`).
//!
//! Format: `{"tickets": {"<sha256 hex>": {"uid": ..., "streams": [...], "expiresAt":
//! "RFC 3339", "revoked": false, "maxConnections": 2, "updatedAt": "RFC 3339"}}}`.
//! A missing file is an empty store. Writers (`mediarelay ticket ...`) take an exclusive
//! `flock` on `FILE.lock`, write a temporary file, fsync it and rename it over the file, so
//! the relay never reads a half-written file.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{id_hex, parse_id_hex, StoreError, TicketId, TicketRecord, TicketStore};

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    tickets: BTreeMap<String, TicketRecord>,
}

/// A ticket file.
pub struct FileStore {
    path: PathBuf,
    /// (mtime, size, inode) at the last load (`Some(None)`: the file was absent), to skip
    /// unchanged files; `None` before the first load.
    seen: Mutex<Option<Option<(SystemTime, u64, u64)>>>,
}

impl FileStore {
    /// A store at `path` (the file need not exist yet).
    pub fn new(path: PathBuf) -> Self {
        FileStore {
            path,
            seen: Mutex::new(None),
        }
    }

    fn read(&self) -> Result<Vec<(TicketId, TicketRecord)>, StoreError> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Io(format!("{}: {e}", self.path.display()))),
        };
        parse(&text).map_err(|e| StoreError::Malformed(format!("{}: {e}", self.path.display())))
    }

    fn write(&self, records: &[(TicketId, TicketRecord)]) -> Result<(), StoreError> {
        let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", self.path.display()));
        let mut out = FileFormat::default();
        for (id, r) in records {
            out.tickets.insert(id_hex(id), r.clone());
        }
        let mut text =
            serde_json::to_vec_pretty(&out).map_err(|e| StoreError::Io(e.to_string()))?;
        text.push(b'\n');
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Run `f` on the records under the writers' lock and write the result.
    fn modify(
        &self,
        f: impl FnOnce(&mut Vec<(TicketId, TicketRecord)>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let lock_path = self.path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Io(format!("{}: {e}", lock_path.display())))?;
        if crate::sys::flock_exclusive(lock.as_raw_fd()).is_err() {
            return Err(StoreError::Io(format!(
                "{}: cannot lock",
                lock_path.display()
            )));
        }
        let mut records = self.read()?;
        f(&mut records)?;
        self.write(&records)
    }
}

/// Parse the file's text; errors say where (line and column) and what.
pub fn parse(text: &[u8]) -> Result<Vec<(TicketId, TicketRecord)>, String> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let f: FileFormat = serde_json::from_slice(text)
        .map_err(|e| format!("line {} column {}: {e}", e.line(), e.column()))?;
    let unknown = unknown_fields(text);
    if !unknown.is_empty() {
        // Ignored, as the contract's other fields are; named, since a misspelt `revoked`
        // or `maxConnections` is ignored too.
        tracing::warn!(fields = ?unknown, "ticket records have fields the relay ignores");
    }
    f.tickets
        .into_iter()
        .map(|(k, r)| {
            parse_id_hex(&k)
                .map(|id| (id, r))
                .ok_or_else(|| format!("ticket id `{k}` is not a lowercase SHA-256 hex string"))
        })
        .collect()
}

/// Field names of the file's ticket records that PROTOCOL.md's ticket table does not list.
fn unknown_fields(text: &[u8]) -> std::collections::BTreeSet<String> {
    const KNOWN: [&str; 7] = [
        "uid",
        "streams",
        "expiresAt",
        "revoked",
        "maxConnections",
        "updatedAt",
        "publish",
    ];
    let Ok(serde_json::Value::Object(file)) = serde_json::from_slice(text) else {
        return Default::default();
    };
    let Some(serde_json::Value::Object(tickets)) = file.get("tickets") else {
        return Default::default();
    };
    tickets
        .values()
        .filter_map(serde_json::Value::as_object)
        .flat_map(|record| record.keys())
        .filter(|k| !KNOWN.contains(&k.as_str()))
        .cloned()
        .collect()
}

impl FileStore {
    /// The whole file, or `None` if it has not changed since the last call.
    pub fn load_if_changed(&self) -> Result<Option<Vec<(TicketId, TicketRecord)>>, StoreError> {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => Some((
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
                m.ino(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::Io(format!("{}: {e}", self.path.display()))),
        };
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| StoreError::Io("lock".into()))?;
        if *seen == Some(stamp) {
            return Ok(None);
        }
        // Record the stamp even when parsing fails, so a malformed file is reported once
        // per change rather than on every poll.
        *seen = Some(stamp);
        drop(seen);
        self.read().map(Some)
    }
}

impl TicketStore for FileStore {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn insert(&self, id: TicketId, record: TicketRecord) -> Result<(), StoreError> {
        self.modify(|records| {
            records.retain(|(i, _)| *i != id);
            records.push((id, record));
            Ok(())
        })
    }

    fn revoke(&self, id: TicketId) -> Result<(), StoreError> {
        self.modify(|records| {
            let r = records
                .iter_mut()
                .find(|(i, _)| *i == id)
                .ok_or_else(|| StoreError::NotFound(id_hex(&id)))?;
            r.1.revoked = true;
            r.1.updated_at = SystemTime::now();
            Ok(())
        })
    }

    fn list(&self) -> Result<Vec<(TicketId, TicketRecord)>, StoreError> {
        self.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tickets::ticket_id;
    use std::time::Duration;

    fn rec() -> TicketRecord {
        TicketRecord {
            uid: "bob".into(),
            streams: vec!["live/cam1".into()],
            expires_at: SystemTime::now() + Duration::from_secs(3600),
            revoked: false,
            max_connections: Some(2),
            publish: Vec::new(),
            updated_at: SystemTime::now(),
        }
    }

    #[test]
    fn round_trip_and_change_detection() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("t.json"));
        assert_eq!(store.load_if_changed().unwrap().unwrap().len(), 0);
        assert!(store.load_if_changed().unwrap().is_none());
        let id = ticket_id("x");
        store.insert(id, rec()).unwrap();
        let loaded = store.load_if_changed().unwrap().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].1.uid, "bob");
        store.revoke(id).unwrap();
        assert!(store.list().unwrap()[0].1.revoked);
        assert!(matches!(
            store.revoke([9; 32]),
            Err(StoreError::NotFound(_))
        ));
        let text = std::fs::read_to_string(dir.path().join("t.json")).unwrap();
        assert!(text.contains("expiresAt") && text.contains(&id_hex(&id)));
    }

    #[test]
    fn malformed_says_where() {
        let e = parse(b"{\"tickets\": {\n  \"ab\": 3}}").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = parse(b"{\"tickets\": {}, \"extra\": 1}").unwrap_err();
        assert!(e.contains("extra"), "{e}");
        let good = format!(
            "{{\"tickets\":{{\"{}\":{{\"uid\":\"u\",\"streams\":[],\"expiresAt\":\"2030-01-01T00:00:00Z\",\"updatedAt\":\"2026-01-01T00:00:00.123456789Z\"}}}}}}",
            "a".repeat(64)
        );
        assert_eq!(parse(good.as_bytes()).unwrap().len(), 1);
        // A record's fields that the contract does not list are ignored (and named).
        let extra = good.replace("\"uid\":\"u\"", "\"uid\":\"u\",\"note\":\"from the CMS\"");
        assert_ne!(extra, good);
        assert_eq!(parse(extra.as_bytes()).unwrap()[0].1.uid, "u");
        assert_eq!(
            unknown_fields(extra.as_bytes())
                .into_iter()
                .collect::<Vec<_>>(),
            ["note"]
        );
        assert!(unknown_fields(good.as_bytes()).is_empty());
        let upper = good.replace(&"a".repeat(64), &"A".repeat(64));
        assert!(parse(upper.as_bytes()).is_err());
    }

    #[test]
    fn publish_rights_load_and_save() {
        let with_publish = format!(
            "{{\"tickets\":{{\"{}\":{{\"uid\":\"enc\",\"streams\":[],\"publish\":[\"live/cam1\"],\"expiresAt\":\"2030-01-01T00:00:00Z\",\"updatedAt\":\"2026-01-01T00:00:00Z\"}}}}}}",
            "c".repeat(64)
        );
        let loaded = parse(with_publish.as_bytes()).unwrap();
        assert_eq!(loaded[0].1.publish, vec!["live/cam1"]);
        assert!(loaded[0].1.covers_publish("live/cam1/seg-0000000001.m4s"));
        assert!(!loaded[0].1.covers_publish("live/cam2/seg-0000000001.m4s"));
        // Saved without the field when there are no rights.
        let json = serde_json::to_string(&rec()).unwrap();
        assert!(!json.contains("publish"), "{json}");
    }
}
