//! Tickets in a Cloud Firestore collection (`--tickets firestore://PROJECT/COLLECTION` or
//! `firestore://PROJECT/DATABASE/COLLECTION`), through the REST API v1.
//!
//! The control plane (a tokio runtime on its own thread, never a worker) keeps the whole
//! collection as the workers' snapshot:
//! - at start it loads the snapshot persisted by the previous run, so the relay is ready and
//!   validates tickets even when Firestore is unreachable, then does a full, paginated load;
//! - every `sync_interval` a `runQuery` fetches the documents whose `updatedAt` is past the
//!   last one seen (ordered by `updatedAt`, `__name__`, paged with a cursor) and applies them
//!   as a delta; an unchanged collection costs one billed read per interval;
//! - every `full_resync_interval` a full load catches deleted documents;
//! - after each change the snapshot is written to a local file (temp file, fsync, rename).
//!
//! A ticket missing from the snapshot (issued since the last sync) gets one point lookup
//! ([`FirestoreLookup`]): coalesced per id, behind a negative cache and a global rate limit,
//! so a flood of unknown tickets cannot become a flood of reads.
//!
//! `FIRESTORE_EMULATOR_HOST=host:port` selects plain HTTP with `Authorization: Bearer owner`,
//! as Google's emulator expects; otherwise gcp_auth supplies tokens for the `datastore` scope.
//! Documents with wrong types or missing fields are skipped with a log line naming them.
//!
//! The code, one job a file:
//! - [`client`]: [`Target`] (the `firestore://` URL) and the REST client [`Firestore`]
//!   (requests, credentials, emulator, retries);
//! - [`decode`]: documents to ticket records ([`Decoded`], [`DecodeError`]);
//! - [`snapshot_file`]: writing and reading back the persisted snapshot;
//! - [`sync`]: [`SyncSettings`], the [`Cursor`] and the loop [`sync_forever`];
//! - [`lookup`]: [`FirestoreLookup`], point lookups of tickets missing from the snapshot;
//! - [`store`]: [`FirestoreStore`], the ticket CLI's [`TicketStore`](super::TicketStore).

pub mod client;
pub mod decode;
pub mod lookup;
pub mod snapshot_file;
pub mod store;
pub mod sync;

pub use client::{Firestore, FsError, Target, TargetError, SCOPE};
pub use decode::{decode_json, DecodeError, Decoded};
pub use lookup::FirestoreLookup;
pub use store::FirestoreStore;
pub use sync::{sync_forever, Cursor, SyncSettings};
