//! The Firestore REST client: [`Target`] (which collection, parsed from a
//! `firestore://` URL) and [`Firestore`], which sends the requests (list, `runQuery`,
//! get, commit), supplies credentials (gcp_auth tokens, or `Bearer owner` for the
//! emulator named by `FIRESTORE_EMULATOR_HOST`) and retries retryable failures.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::decode::{decode_logged, Decoded, Document};
use super::sync::Cursor;
use crate::gcp::{self, random_unit, retryable, Backoff, HttpClient, TokenSource};
use crate::tickets::{id_hex, TicketId, TicketRecord};

/// OAuth scope for Firestore.
pub const SCOPE: &str = "https://www.googleapis.com/auth/datastore";

/// Which collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub project: String,
    pub database: String,
    pub collection: String,
}

/// Why a `--tickets` URL does not name a Firestore collection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("`{0}` is not a firestore:// URL")]
    NotFirestore(String),
    #[error(
        "`{0}`: expected firestore://PROJECT/COLLECTION or firestore://PROJECT/DATABASE/COLLECTION"
    )]
    Shape(String),
    #[error("`{0}` has an empty or invalid part")]
    InvalidPart(String),
}

impl Target {
    /// Parse `firestore://PROJECT/COLLECTION` or `firestore://PROJECT/DATABASE/COLLECTION`.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let rest = url
            .strip_prefix("firestore://")
            .ok_or_else(|| TargetError::NotFirestore(url.to_string()))?;
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let ok = |s: &str| !s.is_empty() && !s.contains(['?', '#', ' ']);
        let (project, database, collection) = match parts.as_slice() {
            [p, c] => (*p, "(default)", *c),
            [p, d, c] => (*p, *d, *c),
            _ => return Err(TargetError::Shape(url.to_string())),
        };
        if !(ok(project) && ok(database) && ok(collection)) {
            return Err(TargetError::InvalidPart(url.to_string()));
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
    /// The time the query read at (every item of one answer has the same).
    #[serde(default, rename = "readTime")]
    read_time: Option<String>,
}

/// One item of a `runAggregationQuery` answer.
#[derive(Deserialize)]
struct AggregationItem {
    #[serde(default)]
    result: Option<AggregationResult>,
}

#[derive(Deserialize)]
struct AggregationResult {
    #[serde(rename = "aggregateFields")]
    aggregate_fields: HashMap<String, Value>,
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
        self.tokens.wait(Duration::from_secs(10)).await;
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

    /// Documents whose `updatedAt` is at or after `from.updated_at`, oldest first, all
    /// pages, and the time the first page was read at (the server's clock). With a
    /// `from.name`, only documents after (`updatedAt`, name) `from` are returned; without
    /// one, every document at `from.updated_at` is.
    pub async fn changes_since(
        &self,
        from: &Cursor,
    ) -> Result<(Vec<Decoded>, Option<String>), FsError> {
        const PAGE: usize = 1000;
        let mut out = Vec::new();
        let mut cursor = from.clone();
        let mut read_time = None;
        loop {
            let mut query = json!({"structuredQuery": {
                "from": [{"collectionId": self.target.collection}],
                "where": {"fieldFilter": {
                    "field": {"fieldPath": "updatedAt"},
                    "op": "GREATER_THAN_OR_EQUAL",
                    "value": {"timestampValue": from.updated_at}}},
                "orderBy": [
                    {"field": {"fieldPath": "updatedAt"}, "direction": "ASCENDING"},
                    {"field": {"fieldPath": "__name__"}, "direction": "ASCENDING"}],
                "limit": PAGE}});
            // A cursor needs a document name: Firestore refuses an empty reference (400
            // "Resource name \"\" lacks \"projects\""), as an empty collection would give.
            if !cursor.name.is_empty() {
                query["structuredQuery"]["startAt"] = json!({"values": [
                    {"timestampValue": cursor.updated_at},
                    {"referenceValue": cursor.name}], "before": false});
            }
            let path = format!("{}:runQuery", self.target.root());
            let bytes = self.call(Method::POST, &path, Some(query)).await?;
            let mut raw = bytes.to_vec();
            let items: Vec<QueryItem> = simd_json::serde::from_slice(&mut raw)
                .map_err(|e| FsError::Failed(format!("runQuery response: {e}")))?;
            if read_time.is_none() {
                read_time = items.iter().find_map(|i| i.read_time.clone());
            }
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
            if !full || cursor.name.is_empty() {
                return Ok((out, read_time));
            }
        }
    }

    /// How many documents of the collection have an `updatedAt` at or before `until`
    /// (a count aggregation: about one document read per 1,000 counted).
    pub async fn count_until(&self, until: &str) -> Result<u64, FsError> {
        let query = json!({"structuredAggregationQuery": {
            "structuredQuery": {
                "from": [{"collectionId": self.target.collection}],
                "where": {"fieldFilter": {
                    "field": {"fieldPath": "updatedAt"},
                    "op": "LESS_THAN_OR_EQUAL",
                    "value": {"timestampValue": until}}}},
            "aggregations": [{"alias": "n", "count": {}}]}});
        let path = format!("{}:runAggregationQuery", self.target.root());
        let bytes = self.call(Method::POST, &path, Some(query)).await?;
        let items: Vec<AggregationItem> = serde_json::from_slice(&bytes)
            .map_err(|e| FsError::Failed(format!("runAggregationQuery response: {e}")))?;
        items
            .into_iter()
            .find_map(|i| {
                let mut result = i.result?;
                let v = result.aggregate_fields.remove("n")?;
                v.get("integerValue")?.as_str()?.parse().ok()
            })
            .ok_or_else(|| FsError::Failed("runAggregationQuery answered no count".into()))
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
        if !r.publish.is_empty() {
            fields["publish"] = json!({"arrayValue": {"values":
                r.publish.iter().map(|s| json!({"stringValue": s})).collect::<Vec<_>>()}});
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
        // The messages callers print (`tickets: {e}`) keep their wording.
        assert_eq!(
            Target::parse("gs://b/c").unwrap_err().to_string(),
            "`gs://b/c` is not a firestore:// URL"
        );
        assert_eq!(
            Target::parse("firestore://proj").unwrap_err(),
            TargetError::Shape("firestore://proj".into())
        );
        assert_eq!(
            Target::parse("firestore:///x").unwrap_err().to_string(),
            "`firestore:///x` has an empty or invalid part"
        );
    }
}
