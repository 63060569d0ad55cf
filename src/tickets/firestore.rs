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

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::snapshot::TicketCell;
use super::{id_hex, parse_id_hex, StoreError, TicketId, TicketRecord, TicketStore};
use crate::gcp::{self, random_unit, retryable, Backoff, HttpClient, TokenSource};

/// OAuth scope for Firestore.
pub const SCOPE: &str = "https://www.googleapis.com/auth/datastore";

/// Which collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub project: String,
    pub database: String,
    pub collection: String,
}

impl Target {
    /// Parse `firestore://PROJECT/COLLECTION` or `firestore://PROJECT/DATABASE/COLLECTION`.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("firestore://")
            .ok_or_else(|| format!("`{url}` is not a firestore:// URL"))?;
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let ok = |s: &str| !s.is_empty() && !s.contains(['?', '#', ' ']);
        let (project, database, collection) = match parts.as_slice() {
            [p, c] => (*p, "(default)", *c),
            [p, d, c] => (*p, *d, *c),
            _ => {
                return Err(format!(
                    "`{url}`: expected firestore://PROJECT/COLLECTION or firestore://PROJECT/DATABASE/COLLECTION"
                ))
            }
        };
        if !(ok(project) && ok(database) && ok(collection)) {
            return Err(format!("`{url}` has an empty or invalid part"));
        }
        Ok(Target {
            project: project.into(),
            database: database.into(),
            collection: collection.into(),
        })
    }

    /// `projects/P/databases/D`.
    pub fn database_path(&self) -> String {
        format!("projects/{}/databases/{}", self.project, self.database)
    }

    /// `projects/P/databases/D/documents`.
    pub fn root(&self) -> String {
        format!("{}/documents", self.database_path())
    }

    /// The document name of a ticket id.
    pub fn doc_name(&self, id: &TicketId) -> String {
        format!("{}/{}/{}", self.root(), self.collection, id_hex(id))
    }
}

/// Errors talking to Firestore.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("not found")]
    NotFound,
    #[error("Firestore refused the credentials ({0}); serving needs roles/datastore.viewer, the ticket CLI roles/datastore.user")]
    Denied(u16),
    #[error("{0}")]
    Failed(String),
}

/// A Firestore REST client for one collection.
pub struct Firestore {
    pub target: Target,
    base: String,
    client: HttpClient,
    tokens: Arc<TokenSource>,
    deadline: Duration,
    backoff: Backoff,
}

/// A decoded ticket document.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub id: TicketId,
    pub record: TicketRecord,
    /// `updatedAt` exactly as stored (nanosecond precision, for the sync cursor).
    pub updated_raw: String,
    pub name: String,
}

#[derive(Deserialize)]
struct Document {
    name: String,
    #[serde(default)]
    fields: serde_json::Map<String, Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListResponse {
    #[serde(default)]
    documents: Vec<Document>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct QueryItem {
    #[serde(default)]
    document: Option<Document>,
}

impl Firestore {
    /// A client; `emulator` is `FIRESTORE_EMULATOR_HOST` when set. Token refresh runs on
    /// `runtime`.
    pub fn new(
        target: Target,
        emulator: Option<&str>,
        runtime: &tokio::runtime::Handle,
    ) -> Firestore {
        let (base, tokens) = match emulator.map(str::trim).filter(|e| !e.is_empty()) {
            Some(e) => {
                let host = e.trim_end_matches('/');
                let base = if host.starts_with("http://") || host.starts_with("https://") {
                    format!("{host}/v1")
                } else {
                    format!("http://{host}/v1")
                };
                (base, TokenSource::fixed(Some("Bearer owner")))
            }
            None => (
                "https://firestore.googleapis.com/v1".to_string(),
                TokenSource::google(SCOPE, runtime),
            ),
        };
        Firestore {
            target,
            base,
            client: gcp::http_client(8, Duration::from_secs(3), 64 * 1024),
            tokens,
            deadline: Duration::from_secs(10),
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
        }
    }

    /// Whether requests carry Google credentials (not an emulator).
    pub fn uses_google_credentials(&self) -> bool {
        self.tokens.is_google()
    }

    /// Wait for a first access token (one-shot CLI use).
    pub async fn wait_for_token(&self) {
        self.tokens.wait(Duration::from_secs(10)).await
    }

    /// One request with retries on retryable statuses and connection errors.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Value>,
    ) -> Result<Bytes, FsError> {
        let url = format!("{}/{path_and_query}", self.base);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let deadline = Instant::now() + self.deadline;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let why = match self.once(&method, &url, body.clone(), deadline).await {
                Ok(b) => return Ok(b),
                Err(Err(e)) => return Err(e),
                Err(Ok(())) => format!("attempt {tries} failed or timed out"),
            };
            let wait = self.backoff.delay(tries, random_unit());
            if Instant::now() + wait >= deadline {
                return Err(FsError::Failed(format!("{method} {path_and_query}: {why}")));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt. `Err(Ok(()))`: retry; `Err(Err(e))`: give up with `e`.
    async fn once(
        &self,
        method: &Method,
        url: &str,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Bytes, Result<(), FsError>> {
        let mut req = hyper::Request::builder()
            .method(method.clone())
            .uri(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("mediarelay/", env!("CARGO_PKG_VERSION")),
            );
        match self.tokens.header() {
            Ok(Some(h)) => req = req.header(hyper::header::AUTHORIZATION, h),
            Ok(None) => {}
            Err(why) => {
                return Err(Err(FsError::Failed(format!(
                    "Firestore credentials: {why}"
                ))))
            }
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Err(FsError::Failed(format!("request: {e}"))))?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(5));
        let attempt = async {
            let resp = self.client.request(req).await.map_err(|_| ())?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), 64 << 20)
                .collect()
                .await
                .map_err(|_| ())?
                .to_bytes();
            Ok::<_, ()>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(left, attempt).await {
            Ok(Ok(r)) => r,
            Ok(Err(())) | Err(_) => return Err(Ok(())),
        };
        match status {
            StatusCode::OK => Ok(bytes),
            StatusCode::NOT_FOUND => Err(Err(FsError::NotFound)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(Err(FsError::Denied(status.as_u16())))
            }
            s if retryable(s) => Err(Ok(())),
            s => Err(Err(FsError::Failed(format!(
                "Firestore answered {s}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            )))),
        }
    }

    fn decode_list(&self, bytes: Bytes) -> Result<ListResponse, FsError> {
        let mut raw = bytes.to_vec();
        simd_json::serde::from_slice(&mut raw)
            .map_err(|e| FsError::Failed(format!("list response: {e}")))
    }

    /// Every document of the collection, paged. Malformed documents are logged and skipped.
    pub async fn list_all(&self, page_size: u32) -> Result<Vec<Decoded>, FsError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!(
                "{}/{}?pageSize={page_size}",
                self.target.root(),
                gcp::encode(&self.target.collection)
            );
            if let Some(t) = &token {
                path.push_str("&pageToken=");
                path.push_str(&gcp::encode(t));
            }
            let page = self.decode_list(self.call(Method::GET, &path, None).await?)?;
            out.extend(page.documents.into_iter().filter_map(decode_logged));
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Documents whose `updatedAt` sorts after `cursor` (the last seen `updatedAt` and
    /// document name), oldest first, all pages.
    pub async fn changes_since(&self, cursor: &Cursor) -> Result<Vec<Decoded>, FsError> {
        const PAGE: usize = 1000;
        let mut out = Vec::new();
        let mut cursor = cursor.clone();
        loop {
            let query = json!({"structuredQuery": {
                "from": [{"collectionId": self.target.collection}],
                "where": {"fieldFilter": {
                    "field": {"fieldPath": "updatedAt"},
                    "op": "GREATER_THAN_OR_EQUAL",
                    "value": {"timestampValue": cursor.updated_at}}},
                "orderBy": [
                    {"field": {"fieldPath": "updatedAt"}, "direction": "ASCENDING"},
                    {"field": {"fieldPath": "__name__"}, "direction": "ASCENDING"}],
                "startAt": {"values": [
                    {"timestampValue": cursor.updated_at},
                    {"referenceValue": cursor.name}], "before": false},
                "limit": PAGE}});
            let path = format!("{}:runQuery", self.target.root());
            let bytes = self.call(Method::POST, &path, Some(query)).await?;
            let mut raw = bytes.to_vec();
            let items: Vec<QueryItem> = simd_json::serde::from_slice(&mut raw)
                .map_err(|e| FsError::Failed(format!("runQuery response: {e}")))?;
            let docs: Vec<Document> = items.into_iter().filter_map(|i| i.document).collect();
            let full = docs.len() == PAGE;
            for d in docs {
                // Advance the cursor over malformed documents too.
                if let Some(Value::Object(v)) = d.fields.get("updatedAt") {
                    if let Some(Value::String(ts)) = v.get("timestampValue") {
                        cursor = Cursor {
                            updated_at: ts.clone(),
                            name: d.name.clone(),
                        };
                    }
                }
                if let Some(dec) = decode_logged(d) {
                    out.push(dec);
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// One document by ticket id.
    pub async fn get(&self, id: &TicketId) -> Result<Option<Decoded>, FsError> {
        match self
            .call(Method::GET, &self.target.doc_name(id), None)
            .await
        {
            Ok(bytes) => {
                let mut raw = bytes.to_vec();
                let doc: Document = simd_json::serde::from_slice(&mut raw)
                    .map_err(|e| FsError::Failed(format!("document: {e}")))?;
                Ok(decode_logged(doc))
            }
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write a ticket; `updatedAt` is set to the commit time by the server.
    pub async fn upsert(&self, id: &TicketId, r: &TicketRecord) -> Result<(), FsError> {
        let mut fields = json!({
            "uid": {"stringValue": r.uid},
            "streams": {"arrayValue": if r.streams.is_empty() { json!({}) } else {
                json!({"values": r.streams.iter().map(|s| json!({"stringValue": s})).collect::<Vec<_>>()})
            }},
            "expiresAt": {"timestampValue": humantime::format_rfc3339_micros(r.expires_at).to_string()},
            "revoked": {"booleanValue": r.revoked},
        });
        if let Some(m) = r.max_connections {
            fields["maxConnections"] = json!({"integerValue": m.to_string()});
        }
        let write = json!({"writes": [{
            "update": {"name": self.target.doc_name(id), "fields": fields},
            "updateTransforms": [{"fieldPath": "updatedAt", "setToServerValue": "REQUEST_TIME"}]}]});
        let path = format!("{}/documents:commit", self.target.database_path());
        self.call(Method::POST, &path, Some(write))
            .await
            .map(|_| ())
    }

    /// Mark a ticket revoked (the document must exist).
    pub async fn revoke(&self, id: &TicketId) -> Result<(), FsError> {
        let write = json!({"writes": [{
            "update": {"name": self.target.doc_name(id), "fields": {"revoked": {"booleanValue": true}}},
            "updateMask": {"fieldPaths": ["revoked"]},
            "currentDocument": {"exists": true},
            "updateTransforms": [{"fieldPath": "updatedAt", "setToServerValue": "REQUEST_TIME"}]}]});
        let path = format!("{}/documents:commit", self.target.database_path());
        self.call(Method::POST, &path, Some(write))
            .await
            .map(|_| ())
    }
}

/// Where incremental sync continues: the last `updatedAt` seen and its document's name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    pub updated_at: String,
    pub name: String,
}

impl Cursor {
    /// The cursor after a set of documents (the newest `updatedAt`, ties by name).
    pub fn after(docs: &[Decoded]) -> Option<Cursor> {
        docs.iter()
            .max_by(|a, b| {
                a.record
                    .updated_at
                    .cmp(&b.record.updated_at)
                    .then_with(|| a.name.cmp(&b.name))
            })
            .map(|d| Cursor {
                updated_at: d.updated_raw.clone(),
                name: d.name.clone(),
            })
    }
}

fn decode_logged(doc: Document) -> Option<Decoded> {
    match decode(&doc) {
        Ok(d) => Some(d),
        Err(why) => {
            tracing::warn!(document = %doc.name, "skipping malformed ticket document: {why}");
            None
        }
    }
}

/// Turn a Firestore document into a ticket record (PROTOCOL.md's ticket table).
fn decode(doc: &Document) -> Result<Decoded, String> {
    let id_str = doc.name.rsplit('/').next().unwrap_or_default();
    let id = parse_id_hex(id_str).ok_or("document id is not a lowercase SHA-256 hex string")?;
    let field = |name: &str, kind: &str| -> Result<Option<&Value>, String> {
        match doc.fields.get(name) {
            None => Ok(None),
            Some(Value::Object(v)) => match v.get(kind) {
                Some(x) if v.len() == 1 => Ok(Some(x)),
                _ => Err(format!("`{name}` must be a {kind}")),
            },
            Some(_) => Err(format!("`{name}` is not a Firestore value")),
        }
    };
    let need = |name: &str, kind: &str| -> Result<&Value, String> {
        field(name, kind)?.ok_or_else(|| format!("`{name}` is missing"))
    };
    let ts = |name: &str| -> Result<(SystemTime, String), String> {
        let s = need(name, "timestampValue")?
            .as_str()
            .ok_or_else(|| format!("`{name}` must be a timestamp string"))?;
        let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("`{name}`: {e}"))?;
        Ok((t, s.to_string()))
    };
    let uid = need("uid", "stringValue")?
        .as_str()
        .ok_or("`uid` must be a string")?
        .to_string();
    let streams = match need("streams", "arrayValue")? {
        Value::Object(a) => match a.get("values") {
            None => Vec::new(),
            Some(Value::Array(vals)) => vals
                .iter()
                .map(|v| {
                    v.get("stringValue")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or("`streams` must hold strings")
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("`streams` must be an array".into()),
        },
        _ => return Err("`streams` must be an array".into()),
    };
    let (expires_at, _) = ts("expiresAt")?;
    let (updated_at, updated_raw) = ts("updatedAt")?;
    let revoked = match field("revoked", "booleanValue")? {
        None => false,
        Some(v) => v.as_bool().ok_or("`revoked` must be a bool")?,
    };
    let max_connections = match field("maxConnections", "integerValue")? {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or("`maxConnections` must be an integer string from 0 to 2^32-1")?,
        ),
    };
    Ok(Decoded {
        id,
        record: TicketRecord {
            uid,
            streams,
            expires_at,
            revoked,
            max_connections,
            updated_at,
        },
        updated_raw,
        name: doc.name.clone(),
    })
}

/// Settings of the sync loop.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub sync_interval: Duration,
    pub full_resync_interval: Duration,
    pub snapshot_file: PathBuf,
    pub page_size: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    cursor: Option<Cursor>,
    tickets: std::collections::BTreeMap<String, TicketRecord>,
}

fn persist(path: &Path, cell: &TicketCell, cursor: &Option<Cursor>) -> std::io::Result<()> {
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
type Restored = (Vec<(TicketId, TicketRecord)>, Option<Cursor>);

fn load_persisted(path: &Path) -> Option<Restored> {
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

/// Keep `cell` in sync with the collection, forever (run on the control runtime).
pub async fn sync_forever(fs: Arc<Firestore>, cell: Arc<TicketCell>, settings: SyncSettings) {
    let mut cursor: Option<Cursor> = None;
    if let Some((records, c)) = load_persisted(&settings.snapshot_file) {
        tracing::info!(
            tickets = records.len(),
            file = %settings.snapshot_file.display(),
            "ticket snapshot loaded from the last run"
        );
        cell.publish(records);
        cursor = c;
    }
    let mut failures = 0u32;
    let mut last_full: Option<Instant> = None;
    // The persisted file holds the whole collection: write it after a full load at once,
    // and after incremental changes at most every PERSIST_EVERY.
    const PERSIST_EVERY: Duration = Duration::from_secs(10);
    let mut dirty = false;
    let mut persisted_at: Option<Instant> = None;
    loop {
        let full_due = last_full.is_none_or(|t| t.elapsed() >= settings.full_resync_interval);
        let result = if full_due {
            match fs.list_all(settings.page_size).await {
                Ok(docs) => {
                    let n = docs.len();
                    let next = Cursor::after(&docs).or(cursor.clone());
                    cell.publish(docs.into_iter().map(|d| (d.id, d.record)).collect());
                    cursor = next;
                    last_full = Some(Instant::now());
                    tracing::info!(tickets = n, "ticket snapshot: full load from Firestore");
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        } else {
            let from = cursor.clone().unwrap_or(Cursor {
                updated_at: "1970-01-01T00:00:00Z".into(),
                name: String::new(),
            });
            match fs.changes_since(&from).await {
                Ok(docs) if docs.is_empty() => Ok(false),
                Ok(docs) => {
                    if let Some(c) = Cursor::after(&docs) {
                        cursor = Some(c);
                    }
                    tracing::debug!(changes = docs.len(), "ticket snapshot: incremental sync");
                    cell.apply(docs.into_iter().map(|d| (d.id, Some(d.record))).collect());
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(changed) => {
                if failures > 0 {
                    tracing::info!(failures, "Firestore sync recovered");
                }
                failures = 0;
                cell.mark_synced();
                dirty |= changed;
                let due = full_due || persisted_at.is_none_or(|t| t.elapsed() >= PERSIST_EVERY);
                if dirty && due {
                    dirty = false;
                    persisted_at = Some(Instant::now());
                    let (path, c, cl) =
                        (settings.snapshot_file.clone(), cursor.clone(), cell.clone());
                    let saved = tokio::task::spawn_blocking(move || persist(&path, &cl, &c)).await;
                    if let Ok(Err(e)) = saved {
                        tracing::warn!(file = %settings.snapshot_file.display(), "cannot persist the ticket snapshot: {e}");
                    }
                }
                tokio::time::sleep(settings.sync_interval).await;
            }
            Err(e) => {
                failures += 1;
                cell.sync_errors.fetch_add(1, Ordering::Relaxed);
                // Log the first failure, then every 30th; back off up to 30 s.
                if failures == 1 || failures % 30 == 0 {
                    tracing::error!(
                        failures,
                        "Firestore sync failed, serving the last snapshot: {e}"
                    );
                }
                let wait = (settings.sync_interval * failures.min(30)).min(Duration::from_secs(30));
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Point lookups of tickets missing from the snapshot.
pub struct FirestoreLookup {
    fs: Arc<Firestore>,
    cell: Arc<TicketCell>,
    runtime: tokio::runtime::Handle,
    negative_ttl: Duration,
    rate: f64,
    state: Arc<Mutex<LookupState>>,
}

type Waiters = Vec<tokio::sync::oneshot::Sender<Option<Arc<TicketRecord>>>>;

struct LookupState {
    inflight: HashMap<TicketId, Waiters>,
    negative: HashMap<TicketId, Instant>,
    tokens: f64,
    refilled: Instant,
}

impl FirestoreLookup {
    /// Lookups of at most `rate` per second (burst `rate`), misses remembered `negative_ttl`.
    pub fn new(
        fs: Arc<Firestore>,
        cell: Arc<TicketCell>,
        runtime: tokio::runtime::Handle,
        negative_ttl: Duration,
        rate: f64,
    ) -> FirestoreLookup {
        FirestoreLookup {
            fs,
            cell,
            runtime,
            negative_ttl,
            rate,
            state: Arc::new(Mutex::new(LookupState {
                inflight: HashMap::new(),
                negative: HashMap::new(),
                tokens: rate,
                refilled: Instant::now(),
            })),
        }
    }

    fn count(&self, i: usize) {
        self.cell.lookups[i].fetch_add(1, Ordering::Relaxed);
    }
}

impl super::Lookup for FirestoreLookup {
    fn find(&self, id: TicketId) -> Pin<Box<dyn Future<Output = Option<Arc<TicketRecord>>>>> {
        let now = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let Ok(mut st) = self.state.lock() else {
                return Box::pin(async { None });
            };
            if st.negative.get(&id).is_some_and(|until| *until > now) {
                self.count(1);
                return Box::pin(async { None });
            }
            if let Some(waiters) = st.inflight.get_mut(&id) {
                waiters.push(tx);
                return Box::pin(async move { rx.await.ok().flatten() });
            }
            let elapsed = now.duration_since(st.refilled).as_secs_f64();
            st.tokens = (st.tokens + elapsed * self.rate).min(self.rate.max(1.0));
            st.refilled = now;
            if st.tokens < 1.0 {
                self.count(2);
                return Box::pin(async { None });
            }
            st.tokens -= 1.0;
            if st.negative.len() > 100_000 {
                st.negative.retain(|_, until| *until > now);
            }
            st.inflight.insert(id, vec![tx]);
        }
        let (fs, cell) = (self.fs.clone(), self.cell.clone());
        let ttl = self.negative_ttl;
        let state = self.state.clone();
        self.runtime.spawn(async move {
            let result = fs.get(&id).await;
            let (found, outcome) = match result {
                Ok(Some(d)) => (Some(Arc::new(d.record)), 0),
                Ok(None) => (None, 1),
                Err(e) => {
                    tracing::warn!("ticket lookup failed: {e}");
                    (None, 3)
                }
            };
            cell.lookups[outcome].fetch_add(1, Ordering::Relaxed);
            if let Some(r) = &found {
                cell.remember(id, r.clone());
            }
            let waiters = {
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                if outcome == 1 {
                    st.negative.insert(id, Instant::now() + ttl);
                }
                st.inflight.remove(&id).unwrap_or_default()
            };
            for w in waiters {
                let _ = w.send(found.clone());
            }
        });
        Box::pin(async move { rx.await.ok().flatten() })
    }
}

/// The ticket CLI's view of a Firestore collection.
pub struct FirestoreStore {
    fs: Firestore,
    runtime: tokio::runtime::Runtime,
}

impl FirestoreStore {
    /// Open `url` (honouring `FIRESTORE_EMULATOR_HOST`).
    pub fn open(url: &str) -> Result<FirestoreStore, StoreError> {
        let target = Target::parse(url).map_err(StoreError::Io)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("firestore://proj/tickets").unwrap();
        assert_eq!(t.database, "(default)");
        assert_eq!(t.root(), "projects/proj/databases/(default)/documents");
        let t = Target::parse("firestore://proj/other-db/tix/").unwrap();
        assert_eq!(
            (t.database.as_str(), t.collection.as_str()),
            ("other-db", "tix")
        );
        assert_eq!(
            t.doc_name(&[0xab; 32]),
            format!(
                "projects/proj/databases/other-db/documents/tix/{}",
                "ab".repeat(32)
            )
        );
        assert!(Target::parse("firestore://proj").is_err());
        assert!(Target::parse("firestore://a/b/c/d").is_err());
        assert!(Target::parse("firestore:///x").is_err());
    }

    fn doc(fields: Value) -> Document {
        Document {
            name: format!(
                "projects/p/databases/(default)/documents/tickets/{}",
                "a".repeat(64)
            ),
            fields: fields.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn documents_decode() {
        let d = decode(&doc(json!({
            "uid": {"stringValue": "alice"},
            "streams": {"arrayValue": {"values": [{"stringValue": "live/*"}]}},
            "expiresAt": {"timestampValue": "2030-01-01T00:00:00Z"},
            "updatedAt": {"timestampValue": "2026-11-24T15:00:00.123456789Z"},
            "revoked": {"booleanValue": true},
            "maxConnections": {"integerValue": "3"}
        })))
        .unwrap();
        assert_eq!(d.record.uid, "alice");
        assert_eq!(d.record.streams, vec!["live/*"]);
        assert!(d.record.revoked);
        assert_eq!(d.record.max_connections, Some(3));
        assert_eq!(d.updated_raw, "2026-11-24T15:00:00.123456789Z");
        // An empty array is `{}`; optional fields may be absent.
        let d = decode(&doc(json!({
            "uid": {"stringValue": "bob"},
            "streams": {"arrayValue": {}},
            "expiresAt": {"timestampValue": "2030-01-01T00:00:00Z"},
            "updatedAt": {"timestampValue": "2026-11-24T15:00:00Z"}
        })))
        .unwrap();
        assert!(d.record.streams.is_empty() && !d.record.revoked);
        for bad in [
            json!({"uid": {"stringValue": "x"}}),
            json!({"uid": {"integerValue": "1"}, "streams": {"arrayValue": {}},
                   "expiresAt": {"timestampValue": "2030-01-01T00:00:00Z"},
                   "updatedAt": {"timestampValue": "2026-11-24T15:00:00Z"}}),
            json!({"uid": {"stringValue": "x"}, "streams": {"arrayValue": {"values": [{"integerValue": "1"}]}},
                   "expiresAt": {"timestampValue": "2030-01-01T00:00:00Z"},
                   "updatedAt": {"timestampValue": "2026-11-24T15:00:00Z"}}),
            json!({"uid": {"stringValue": "x"}, "streams": {"arrayValue": {}},
                   "expiresAt": {"timestampValue": "soon"},
                   "updatedAt": {"timestampValue": "2026-11-24T15:00:00Z"}}),
            json!({"uid": {"stringValue": "x"}, "streams": {"arrayValue": {}},
                   "expiresAt": {"timestampValue": "2030-01-01T00:00:00Z"},
                   "updatedAt": {"timestampValue": "2026-11-24T15:00:00Z"},
                   "maxConnections": {"integerValue": 3}}),
        ] {
            assert!(decode(&doc(bad.clone())).is_err(), "{bad}");
        }
        let mut wrong_id = doc(json!({}));
        wrong_id.name = "projects/p/databases/(default)/documents/tickets/NOTHEX".into();
        assert!(decode(&wrong_id).unwrap_err().contains("SHA-256"));
    }
}
