//! The ticket CLI's store on Firestore: [`FirestoreStore`] implements [`TicketStore`]
//! (issue, revoke, list) with one-shot requests on its own current-thread runtime.

use std::future::Future;

use super::client::{Firestore, FsError, Target};
use crate::tickets::{id_hex, StoreError, TicketId, TicketRecord, TicketStore};

/// The ticket CLI's view of a Firestore collection.
pub struct FirestoreStore {
    fs: Firestore,
    runtime: tokio::runtime::Runtime,
}

impl FirestoreStore {
    /// Open `url` (honouring `FIRESTORE_EMULATOR_HOST`).
    pub fn open(url: &str) -> Result<FirestoreStore, StoreError> {
        let target = Target::parse(url).map_err(|e| StoreError::Io(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let emulator = std::env::var("FIRESTORE_EMULATOR_HOST").ok();
        let fs = Firestore::new(target, emulator.as_deref(), runtime.handle());
        Ok(FirestoreStore { fs, runtime })
    }

    fn run<T>(&self, f: impl Future<Output = Result<T, FsError>>) -> Result<T, StoreError> {
        self.runtime
            .block_on(async {
                if self.fs.uses_google_credentials() {
                    self.fs.wait_for_token().await;
                }
                f.await
            })
            .map_err(|e| StoreError::Io(e.to_string()))
    }
}

impl TicketStore for FirestoreStore {
    fn describe(&self) -> String {
        format!(
            "Firestore {}/{}",
            self.fs.target.root(),
            self.fs.target.collection
        )
    }

    fn insert(&self, id: TicketId, record: TicketRecord) -> Result<(), StoreError> {
        self.run(self.fs.upsert(&id, &record))
    }

    fn revoke(&self, id: TicketId) -> Result<(), StoreError> {
        match self.runtime.block_on(async {
            if self.fs.uses_google_credentials() {
                self.fs.wait_for_token().await;
            }
            self.fs.revoke(&id).await
        }) {
            Ok(()) => Ok(()),
            Err(FsError::NotFound) => Err(StoreError::NotFound(id_hex(&id))),
            Err(e) => Err(StoreError::Io(e.to_string())),
        }
    }

    fn list(&self) -> Result<Vec<(TicketId, TicketRecord)>, StoreError> {
        let docs = self.run(self.fs.list_all(300))?;
        Ok(docs.into_iter().map(|d| (d.id, d.record)).collect())
    }
}
