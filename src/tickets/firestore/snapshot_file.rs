//! The local copy of the ticket snapshot: after changes the sync loop writes the whole
//! collection and its sync cursor to a JSON file (temp file, fsync, rename), and at start
//! it reads that file back so tickets validate before Firestore answers.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::sync::Cursor;
use crate::tickets::snapshot::TicketCell;
use crate::tickets::{id_hex, parse_id_hex, TicketId, TicketRecord};

/// The file's JSON: the sync cursor and the records by ticket id (hex).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    cursor: Option<Cursor>,
    tickets: BTreeMap<String, TicketRecord>,
}

/// Write `cell`'s current snapshot and `cursor` to `path` atomically (temp file, fsync,
/// rename). Blocking: the sync loop runs it with `spawn_blocking`.
pub(super) fn persist(
    path: &Path,
    cell: &TicketCell,
    cursor: &Option<Cursor>,
) -> std::io::Result<()> {
    use std::io::Write;
    let snap = cell.load();
    let tickets = snap
        .records()
        .into_iter()
        .map(|(id, r)| (id_hex(&id), (*r).clone()))
        .collect();
    let data = serde_json::to_vec(&Persisted {
        cursor: cursor.clone(),
        tickets,
    })?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Records and sync cursor read back from a persisted snapshot.
pub(super) type Restored = (Vec<(TicketId, TicketRecord)>, Option<Cursor>);

/// The snapshot persisted at `path`, or `None` if there is none or it cannot be read
/// (logged). Entries whose key is not a ticket id are dropped.
pub(super) fn load_persisted(path: &Path) -> Option<Restored> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice::<Persisted>(&text) {
        Ok(p) => {
            let records = p
                .tickets
                .into_iter()
                .filter_map(|(k, r)| parse_id_hex(&k).map(|id| (id, r)))
                .collect();
            Some((records, p.cursor))
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), "ignoring unreadable ticket snapshot file: {e}");
            None
        }
    }
}
