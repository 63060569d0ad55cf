//! The Google Cloud Storage origin (`--storage gs://BUCKET[/PREFIX]`), over the JSON API v1.
//!
//! **Where it runs.** HTTP (hyper 1 + rustls, one keep-alive pool per host) and credentials
//! (gcp_auth, which needs tokio) live on a small dedicated tokio runtime, the *fetch
//! runtime*. A worker asks for an object by spawning the fetch there and awaiting its join
//! handle; the body is streamed straight into a pooled buffer sized from `Content-Length`
//! and comes back as the object's one `Bytes`. Workers never block and never hold a
//! connection; the pool is shared by all of them, so one keep-alive connection serves
//! segments for every worker.
//!
//! **Robustness.** Idempotent requests are retried on 408, 429, 5xx, connection errors and
//! per-attempt timeouts (a stalled response), with exponential backoff and full jitter,
//! bounded by a per-request deadline; 404 is `not_found`; 401/403 are `unavailable` with a
//! log line saying the credentials were refused. Only complete bodies whose length (and
//! crc32c, when the server sends one) match are returned. Objects over the size limit are
//! refused from their `Content-Length` without reading the body.
//!
//! **Credentials.** `STORAGE_EMULATOR_HOST=host:port` selects plain HTTP without
//! credentials. Otherwise gcp_auth finds them (`GOOGLE_APPLICATION_CREDENTIALS`, the
//! metadata server, gcloud user credentials) and a background task keeps an access token for
//! `devstorage.read_only` fresh ahead of expiry; requests read it from memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::pool;
use super::{headroom_for, Listing, Object, Origin, OriginError, OriginFuture, Stored};
use crate::gcp::{self, encode, random_unit, retryable, Backoff, HttpClient, TokenSource};

/// Size of each read from an origin connection: large reads keep the number of body
/// chunks (and wake-ups) per segment low.
const READ_BUF: usize = 256 * 1024;

/// Read-only scope for object downloads and listings.
pub const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

/// Settings of the GCS origin.
#[derive(Debug, Clone)]
pub struct GcsSettings {
    pub bucket: String,
    /// Object-name prefix ("" or ending in `/`).
    pub prefix: String,
    /// `https://storage.googleapis.com`, or the emulator's `http://host:port`.
    pub base: String,
    /// Whether to send credentials (not to the emulator).
    pub authenticate: bool,
    pub deadline: Duration,
    pub attempt_timeout: Duration,
    pub max_inflight: usize,
    pub threads: usize,
    /// Objects per listing page (`maxResults`).
    pub page_size: u32,
    /// Bodies larger than this are uploaded in a resumable session, in pieces of this size
    /// (a multiple of 256 KiB): each piece is retried on its own, within `attempt_timeout`.
    pub upload_chunk: usize,
}

impl GcsSettings {
    /// Parse `gs://BUCKET[/PREFIX]`, with the emulator from `emulator` (the value of
    /// `STORAGE_EMULATOR_HOST`, `host:port` or a URL).
    pub fn from_url(url: &str, emulator: Option<&str>) -> Result<GcsSettings, String> {
        let rest = url
            .strip_prefix("gs://")
            .ok_or_else(|| format!("`{url}` is not a gs:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=222).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !valid_bucket {
            return Err(format!("`{bucket}` is not a valid bucket name"));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let (base, authenticate) = match emulator.map(str::trim).filter(|e| !e.is_empty()) {
            Some(e) if e.starts_with("http://") || e.starts_with("https://") => {
                (e.trim_end_matches('/').to_string(), false)
            }
            Some(e) => (format!("http://{}", e.trim_end_matches('/')), false),
            None => ("https://storage.googleapis.com".to_string(), true),
        };
        Ok(GcsSettings {
            bucket: bucket.to_string(),
            prefix,
            base,
            authenticate,
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            max_inflight: 64,
            threads: 1,
            page_size: 1000,
            upload_chunk: 8 << 20,
        })
    }

    /// Download URL of an object.
    pub fn media_url(&self, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}?alt=media",
            self.base,
            encode(&self.bucket),
            encode(&format!("{}{key}", self.prefix))
        )
    }

    /// Metadata URL of an object, asking for its generation only.
    pub fn generation_url(&self, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}?fields=generation",
            self.base,
            encode(&self.bucket),
            encode(&format!("{}{key}", self.prefix))
        )
    }

    /// Upload URL of an object, for a single-request upload (`resumable: false`) or to
    /// start a resumable session; with `if_generation`, the upload fails with 412 unless the
    /// object's generation is that (0: no such object).
    pub fn upload_url(&self, key: &str, if_generation: Option<u64>, resumable: bool) -> String {
        let mut url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType={}&name={}&fields=crc32c%2Cgeneration",
            self.base,
            encode(&self.bucket),
            if resumable { "resumable" } else { "media" },
            encode(&format!("{}{key}", self.prefix)),
        );
        if let Some(g) = if_generation {
            url.push_str(&format!("&ifGenerationMatch={g}"));
        }
        url
    }

    /// URL of an object's resource (`DELETE` removes it).
    pub fn object_url(&self, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base,
            encode(&self.bucket),
            encode(&format!("{}{key}", self.prefix))
        )
    }

    /// Listing URL for the children of `prefix` (a key prefix ending in `/`).
    pub fn list_url(&self, prefix: &str, start_offset: Option<&str>, page: Option<&str>) -> String {
        let mut url = format!(
            "{}/storage/v1/b/{}/o?prefix={}&delimiter=%2F&maxResults={}&fields=items(name)%2CnextPageToken",
            self.base,
            encode(&self.bucket),
            encode(&format!("{}{prefix}", self.prefix)),
            self.page_size
        );
        if let Some(s) = start_offset {
            url.push_str("&startOffset=");
            url.push_str(&encode(&format!("{}{s}", self.prefix)));
        }
        if let Some(p) = page {
            url.push_str("&pageToken=");
            url.push_str(&encode(p));
        }
        url
    }
}

/// Most pages one listing follows (a stream's directory of 10 million objects at the
/// 1,000-object maximum page size): past that, or on a page token seen before, the listing
/// fails instead of looping.
const MAX_LIST_PAGES: usize = 10_000;

/// The crc32c from an `X-Goog-Hash` header value (`crc32c=<b64>,md5=<b64>`).
pub fn crc32c_of(header: &str) -> Option<u32> {
    use base64::Engine;
    header.split(',').find_map(|part| {
        let b64 = part.trim().strip_prefix("crc32c=")?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        Some(u32::from_be_bytes(raw.try_into().ok()?))
    })
}

/// `crc32c` as Cloud Storage writes it (base64 of the big-endian bytes).
pub fn crc32c_b64(crc: u32) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// Counters for metrics and tests.
#[derive(Default)]
pub struct GcsStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub failures: AtomicU64,
    /// HTTP requests sent, by kind ([`CALL_KINDS`]): what Cloud Storage bills.
    pub calls: [AtomicU64; CALL_KINDS.len()],
}

/// Kinds of Cloud Storage requests: `list` (`objects.list`, Class A), `get` (a download
/// that found the object, Class B), `get_not_found` (a download answered 404, generally
/// not billed), `metadata` (`objects.get` of the resource, Class B), `upload` (Class A),
/// `delete` (free).
pub const CALL_KINDS: [&str; 6] = [
    "list",
    "get",
    "get_not_found",
    "metadata",
    "upload",
    "delete",
];

impl GcsStats {
    fn call(&self, kind: &str) {
        if let Some(i) = CALL_KINDS.iter().position(|k| *k == kind) {
            self.calls[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Shared {
    settings: GcsSettings,
    client: HttpClient,
    tokens: Arc<TokenSource>,
    inflight: Semaphore,
    backoff: Backoff,
    stats: GcsStats,
}

/// The GCS origin.
pub struct GcsOrigin {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
    /// Pollers to wake when a notification says an object changed.
    wakers: super::watch::Wakers,
}

/// How one attempt ended.
enum Attempt<T> {
    Done(T),
    Fail(OriginError),
    Retry(String),
}

impl<T> Attempt<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Attempt<U> {
        match self {
            Attempt::Done(v) => Attempt::Done(f(v)),
            Attempt::Fail(e) => Attempt::Fail(e),
            Attempt::Retry(why) => Attempt::Retry(why),
        }
    }
}

/// Where a resumable upload stands: the first byte Cloud Storage has not persisted, and
/// whether the last piece's outcome is unknown (its request failed on the way).
struct Piece {
    offset: u64,
    unsure: bool,
}

/// Bytes a resumable session has persisted, from the `Range: bytes=0-N` of its 308 answer
/// (none: nothing yet).
fn persisted(headers: &hyper::HeaderMap) -> u64 {
    headers
        .get(hyper::header::RANGE)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.trim().strip_prefix("bytes=0-"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map_or(0, |last| last + 1)
}

/// A session URI answered 404 or 410: it expired or was cancelled; the publisher's request
/// fails (503) and its retry starts a new session.
fn session_lost<T>(status: StatusCode) -> Attempt<T> {
    Attempt::Fail(OriginError::Unavailable(format!(
        "the resumable upload session is gone ({status})"
    )))
}

/// The object's `Content-Type` for an upload.
fn content_type(obj: &Object) -> &str {
    obj.content_type
        .as_deref()
        .unwrap_or("application/octet-stream")
}

impl GcsOrigin {
    /// Start the fetch runtime (and the token refresher, for the real service).
    pub fn start(settings: GcsSettings) -> Result<GcsOrigin, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads.max(1))
            .thread_name("gcs-fetch")
            .enable_all()
            .build()
            .map_err(|e| format!("fetch runtime: {e}"))?;
        let client = gcp::http_client(settings.max_inflight, settings.attempt_timeout, READ_BUF);
        let tokens = if settings.authenticate {
            TokenSource::google(SCOPE, runtime.handle())
        } else {
            TokenSource::fixed(None)
        };
        let shared = Arc::new(Shared {
            inflight: Semaphore::new(settings.max_inflight.max(1)),
            settings,
            client,
            tokens,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
            stats: GcsStats::default(),
        });
        tracing::info!(
            bucket = %shared.settings.bucket,
            prefix = %shared.settings.prefix,
            endpoint = %shared.settings.base,
            "GCS origin"
        );
        Ok(GcsOrigin {
            shared,
            runtime,
            wakers: super::watch::Wakers::default(),
        })
    }

    /// Request counters.
    pub fn stats(&self) -> &GcsStats {
        &self.shared.stats
    }
}

impl GcsOrigin {
    /// Run `task` on the fetch runtime; the worker awaits its result (`what` names the task
    /// if the runtime drops it).
    fn on_runtime<T: Send + 'static>(
        &self,
        what: &'static str,
        task: impl std::future::Future<Output = Result<T, OriginError>> + Send + 'static,
    ) -> OriginFuture<'static, T> {
        let task = self.runtime.spawn(task);
        Box::pin(async move {
            task.await
                .unwrap_or_else(|e| Err(OriginError::Unavailable(format!("{what} task: {e}"))))
        })
    }
}

impl Drop for GcsOrigin {
    fn drop(&mut self) {
        // Tasks still in flight are abandoned; the process is ending.
        let rt = std::mem::replace(
            &mut self.runtime,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("empty runtime"),
        );
        rt.shutdown_background();
    }
}

impl Shared {
    fn bearer(&self) -> Result<Option<String>, OriginError> {
        self.tokens
            .header()
            .map_err(|why| OriginError::Unavailable(format!("GCS credentials: {why}")))
    }

    /// Run `attempt` until it is done, fails for good, or the deadline passes.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, OriginError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let _permit = self
            .inflight
            .acquire()
            .await
            .map_err(|_| OriginError::Unavailable("fetch runtime closed".into()))?;
        let deadline = Instant::now() + self.settings.deadline;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = left.min(self.settings.attempt_timeout);
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let why = match tokio::time::timeout(budget, attempt(budget)).await {
                Ok(Attempt::Done(v)) => return Ok(v),
                Ok(Attempt::Fail(e)) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                Ok(Attempt::Retry(why)) => why,
                Err(_) => format!("no answer within {budget:?}"),
            };
            let wait = self.backoff.delay(tries, random_unit());
            if Instant::now() + wait >= deadline {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tries, "GCS {what} failed: {why}");
                return Err(OriginError::Unavailable(format!(
                    "GCS {what}: {why} (after {tries} attempts)"
                )));
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(tries, "GCS {what}: {why}; retrying in {wait:?}");
            tokio::time::sleep(wait).await;
        }
    }

    /// GET `url`; a response other than 200 becomes the attempt's outcome (`what` names the
    /// request in logs).
    async fn get_ok<T>(
        &self,
        url: &str,
        what: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Attempt<T>> {
        let mut req = hyper::Request::get(url).header(
            hyper::header::USER_AGENT,
            concat!("mediarelay/", env!("CARGO_PKG_VERSION")),
        );
        match self.bearer() {
            Ok(Some(b)) => req = req.header(hyper::header::AUTHORIZATION, b),
            Ok(None) => {}
            Err(e) => return Err(Attempt::Fail(e)),
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| Attempt::Fail(OriginError::Unavailable(format!("request: {e}"))))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| Attempt::Retry(format!("connection: {e}")))?;
        match resp.status() {
            StatusCode::OK => Ok(resp),
            status => Err(self.status_outcome(status, what)),
        }
    }

    /// Map a non-success status to the attempt's outcome.
    fn status_outcome<T>(&self, status: StatusCode, what: &str) -> Attempt<T> {
        match status.as_u16() {
            404 => Attempt::Fail(OriginError::NotFound),
            401 | 403 => {
                tracing::error!(
                    status = status.as_u16(),
                    "GCS refused the credentials for {what} (the account needs roles/storage.objectViewer on the bucket)"
                );
                Attempt::Fail(OriginError::Unavailable(format!(
                    "GCS refused the credentials ({status})"
                )))
            }
            _ if retryable(status) => Attempt::Retry(format!("status {status}")),
            _ => Attempt::Fail(OriginError::Unavailable(format!("GCS answered {status}"))),
        }
    }

    async fn download_once(&self, key: &str, max: u64) -> Attempt<Object> {
        let url = self.settings.media_url(key);
        let resp = match self.get_ok(&url, "a download").await {
            Ok(r) => r,
            Err(outcome) => {
                let missing = matches!(outcome, Attempt::Fail(OriginError::NotFound));
                self.stats
                    .call(if missing { "get_not_found" } else { "get" });
                return outcome;
            }
        };
        self.stats.call("get");
        let headers = resp.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let length: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
        if let Some(len) = length {
            if len > max {
                // Dropping the response closes the connection without reading the body.
                return Attempt::Fail(OriginError::TooLarge { size: len, max });
            }
        }
        let crc = header("x-goog-hash").and_then(crc32c_of);
        let generation = header("x-goog-generation").and_then(|v| v.parse().ok());
        let content_type = header("content-type")
            .filter(|t| !t.is_empty())
            .map(Arc::<str>::from);
        let headroom = headroom_for(key);
        let expected = length.unwrap_or(0) as usize;
        let mut buf = pool::take(headroom + expected);
        buf.resize(headroom, 0);
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => return Attempt::Retry(format!("body: {e}")),
            };
            if let Some(data) = frame.data_ref() {
                let got = (buf.len() - headroom + data.len()) as u64;
                if got > max || length.is_some_and(|l| got > l) {
                    return Attempt::Retry(format!("body longer than announced ({got} bytes)"));
                }
                // The one copy from the HTTP client's buffer into the pooled payload buffer;
                // capacity was reserved from Content-Length, so it never reallocates.
                buf.extend_from_slice(data);
            }
        }
        let got = (buf.len() - headroom) as u64;
        if let Some(len) = length {
            if got != len {
                return Attempt::Retry(format!("body ended after {got} of {len} bytes"));
            }
        }
        if let Some(want) = crc {
            let have = crc32c::crc32c(&buf[headroom..]);
            if have != want {
                return Attempt::Retry(format!("crc32c mismatch ({have:08x} != {want:08x})"));
            }
        }
        let mut obj = Object::new(pool::freeze(buf), headroom, Arc::from(key));
        obj.content_type = content_type;
        obj.generation = generation;
        // Sealed into a payload file (when payload files are on) before it is cached.
        Attempt::Done(super::files::seal(obj))
    }

    async fn generation_once(&self, key: &str) -> Attempt<Option<u64>> {
        self.stats.call("metadata");
        let url = self.settings.generation_url(key);
        let resp = match self.get_ok(&url, "a metadata read").await {
            Ok(r) => r,
            Err(Attempt::Fail(OriginError::NotFound)) => return Attempt::Done(None),
            Err(outcome) => return outcome,
        };
        let body = match http_body_util::Limited::new(resp.into_body(), 64 << 10)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return Attempt::Retry(format!("metadata body: {e}")),
        };
        #[derive(Deserialize)]
        struct Meta {
            generation: String,
        }
        match serde_json::from_slice::<Meta>(&body).map(|m| m.generation.parse::<u64>()) {
            Ok(Ok(g)) => Attempt::Done(Some(g)),
            _ => Attempt::Fail(OriginError::Unavailable(
                "object metadata has no generation".into(),
            )),
        }
    }

    /// Send `req` (with the user agent and credentials added) and return the status, the
    /// headers and a bounded body.
    async fn send<T>(
        &self,
        req: hyper::http::request::Builder,
        body: Bytes,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), Attempt<T>> {
        let mut req = req.header(
            hyper::header::USER_AGENT,
            concat!("mediarelay/", env!("CARGO_PKG_VERSION")),
        );
        match self.bearer() {
            Ok(Some(b)) => req = req.header(hyper::header::AUTHORIZATION, b),
            Ok(None) => {}
            Err(e) => return Err(Attempt::Fail(e)),
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Attempt::Fail(OriginError::Unavailable(format!("request: {e}"))))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| Attempt::Retry(format!("connection: {e}")))?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, 64 << 10)
            .collect()
            .await
            .map_err(|e| Attempt::Retry(format!("response body: {e}")))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// Upload `obj` (crc32c `crc`): in one request, or in a resumable session when it is
    /// larger than `upload_chunk`. `false`: the object's generation is not `if_generation`.
    async fn upload(
        self: &Arc<Self>,
        obj: &Object,
        crc: u32,
        if_generation: Option<u64>,
    ) -> Result<bool, OriginError> {
        if obj.size() <= self.settings.upload_chunk {
            let (s, o) = (self.clone(), obj.clone());
            return self
                .with_retries("upload", move |_| {
                    let (s, o) = (s.clone(), o.clone());
                    async move { s.upload_once(&o, crc, if_generation).await }
                })
                .await;
        }
        let (s, o) = (self.clone(), obj.clone());
        let session = self
            .with_retries("upload session", move |_| {
                let (s, o) = (s.clone(), o.clone());
                async move { s.start_session(&o, if_generation).await }
            })
            .await?;
        let Some(uri) = session else {
            return Ok(false);
        };
        let uri: Arc<str> = Arc::from(uri);
        let progress = Arc::new(std::sync::Mutex::new(Piece {
            offset: 0,
            unsure: false,
        }));
        // Each piece is retried on its own; every `None` has moved the offset forward, so
        // the loop ends.
        loop {
            let (s, o, u, p) = (self.clone(), obj.clone(), uri.clone(), progress.clone());
            let done = self
                .with_retries("upload piece", move |_| {
                    let (s, o, u, p) = (s.clone(), o.clone(), u.clone(), p.clone());
                    async move { s.send_piece(&u, &o, crc, if_generation, &p).await }
                })
                .await?;
            if let Some(matched) = done {
                return Ok(matched);
            }
        }
    }

    /// One single-request upload of `obj` with its crc32c, which Cloud Storage checks
    /// before the object becomes visible (and which is checked again in the answer).
    /// `Done(false)`: the object's generation is not `if_generation` (412).
    async fn upload_once(
        &self,
        obj: &Object,
        crc: u32,
        if_generation: Option<u64>,
    ) -> Attempt<bool> {
        self.stats.call("upload");
        let req = hyper::Request::post(self.settings.upload_url(&obj.key, if_generation, false))
            .header(hyper::header::CONTENT_TYPE, content_type(obj))
            .header("x-goog-hash", format!("crc32c={}", crc32c_b64(crc)));
        match self.send(req, obj.payload()).await {
            Ok((status, _, body)) => self.upload_answer(status, &body, crc, if_generation),
            Err(outcome) => outcome,
        }
    }

    /// The outcome of the request that completes an upload: `Done(true)` when the object is
    /// stored with the body's crc32c, `Done(false)` on a failed `if_generation` (412).
    fn upload_answer(
        &self,
        status: StatusCode,
        body: &[u8],
        crc: u32,
        if_generation: Option<u64>,
    ) -> Attempt<bool> {
        match status.as_u16() {
            200 | 201 => {}
            412 if if_generation.is_some() => return Attempt::Done(false),
            // The upload was refused as sent: corrupted on the way (a crc32c mismatch).
            400 => {
                return Attempt::Retry(format!("upload refused: {}", String::from_utf8_lossy(body)))
            }
            _ => return self.status_outcome(status, "an upload"),
        }
        #[derive(Deserialize)]
        struct Uploaded {
            crc32c: Option<String>,
        }
        let stored = serde_json::from_slice::<Uploaded>(body)
            .ok()
            .and_then(|u| u.crc32c)
            .and_then(|c| crc32c_of(&format!("crc32c={c}")));
        match stored {
            Some(have) if have != crc => Attempt::Fail(OriginError::Unavailable(format!(
                "stored object's crc32c {have:08x} is not the body's {crc:08x}"
            ))),
            _ => Attempt::Done(true),
        }
    }

    /// Start a resumable upload session for `obj`: `Done(Some(session URI))`, or
    /// `Done(None)` when the object's generation is not `if_generation` (412).
    async fn start_session(
        &self,
        obj: &Object,
        if_generation: Option<u64>,
    ) -> Attempt<Option<String>> {
        self.stats.call("upload");
        let meta = serde_json::json!({ "contentType": content_type(obj) }).to_string();
        let req = hyper::Request::post(self.settings.upload_url(&obj.key, if_generation, true))
            .header(
                hyper::header::CONTENT_TYPE,
                "application/json; charset=UTF-8",
            )
            .header("x-upload-content-type", content_type(obj))
            .header("x-upload-content-length", obj.size());
        let (status, headers, _) = match self.send(req, Bytes::from(meta)).await {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        match status.as_u16() {
            200 | 201 => match headers
                .get(hyper::header::LOCATION)
                .and_then(|l| l.to_str().ok())
            {
                Some(uri) => Attempt::Done(Some(uri.to_string())),
                None => Attempt::Fail(OriginError::Unavailable(
                    "resumable upload started without a session URI".into(),
                )),
            },
            412 if if_generation.is_some() => Attempt::Done(None),
            _ => self.status_outcome(status, "an upload"),
        }
    }

    /// Send the piece of `obj` from `*offset` (at most `upload_chunk` bytes) to the session
    /// `uri`, after asking the session how much it holds when the last try failed
    /// (`*unsure`). Advances `*offset` to what Cloud Storage has persisted; the piece that
    /// ends the body carries the crc32c of the whole body, and its answer is the upload's.
    async fn send_piece(
        &self,
        uri: &str,
        obj: &Object,
        crc: u32,
        if_generation: Option<u64>,
        progress: &std::sync::Mutex<Piece>,
    ) -> Attempt<Option<bool>> {
        let total = obj.size() as u64;
        let (mut offset, unsure) = {
            let p = progress.lock().unwrap_or_else(|e| e.into_inner());
            (p.offset, p.unsure)
        };
        if unsure {
            // The last try failed on the way: ask the session what it holds (an empty PUT
            // with `bytes */total`) and go on from there.
            let req = hyper::Request::put(uri)
                .header(hyper::header::CONTENT_RANGE, format!("bytes */{total}"));
            let (status, headers, body) = match self.send(req, Bytes::new()).await {
                Ok(r) => r,
                Err(outcome) => return outcome,
            };
            match status.as_u16() {
                308 => offset = persisted(&headers),
                404 | 410 => return session_lost(status),
                // The upload is complete (its answer is the upload's), or the check failed
                // and `unsure` stays set for the next try.
                _ => {
                    return self
                        .upload_answer(status, &body, crc, if_generation)
                        .map(Some)
                }
            }
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            p.offset = offset;
            p.unsure = false;
        }
        let end = (offset + self.settings.upload_chunk as u64).min(total);
        let last = end == total;
        let range = if last {
            format!("bytes {offset}-{}/{total}", end - 1)
        } else {
            format!("bytes {offset}-{}/*", end - 1)
        };
        let mut req = hyper::Request::put(uri)
            .header(hyper::header::CONTENT_RANGE, range)
            .header(hyper::header::CONTENT_TYPE, content_type(obj));
        if last {
            req = req.header("x-goog-hash", format!("crc32c={}", crc32c_b64(crc)));
        }
        progress.lock().unwrap_or_else(|e| e.into_inner()).unsure = true;
        let piece = obj.payload().slice(offset as usize..end as usize);
        let (status, headers, body) = match self.send(req, piece).await {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
        match status.as_u16() {
            308 => {
                let now = persisted(&headers);
                if now <= offset {
                    // Nothing of the piece was kept: a retry after a pause, within the
                    // piece's deadline, so a session that never advances ends.
                    p.unsure = false;
                    return Attempt::Retry(format!(
                        "the upload session kept nothing past byte {offset}"
                    ));
                }
                p.offset = now;
                p.unsure = false;
                Attempt::Done(None)
            }
            404 | 410 => session_lost(status),
            // Done: the upload's answer (nothing is sent after it). Otherwise `unsure` stays
            // set and the next try asks the session first.
            _ => self
                .upload_answer(status, &body, crc, if_generation)
                .map(Some),
        }
    }

    async fn delete_once(&self, key: &str) -> Attempt<bool> {
        self.stats.call("delete");
        let req = hyper::Request::delete(self.settings.object_url(key));
        match self.send(req, Bytes::new()).await {
            Ok((status, _, _)) if status.is_success() => Attempt::Done(true),
            Ok((status, _, _)) if status.as_u16() == 404 => Attempt::Done(false),
            Ok((status, _, _)) => self.status_outcome(status, "a delete"),
            Err(outcome) => outcome,
        }
    }

    async fn list_page_once(
        &self,
        prefix: &str,
        start: Option<&str>,
        page: Option<&str>,
    ) -> Attempt<ListPage> {
        self.stats.call("list");
        let url = self.settings.list_url(prefix, start, page);
        // A listing of a missing prefix is an empty page, never a 404; a 404 here means the
        // bucket is missing.
        let resp = match self.get_ok(&url, "a listing").await {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let body = match http_body_util::Limited::new(resp.into_body(), 32 << 20)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return Attempt::Retry(format!("listing body: {e}")),
        };
        match parse_listing_page(&body) {
            Ok(p) => Attempt::Done(p),
            Err(e) => Attempt::Fail(e),
        }
    }
}

/// One page of an `objects.list` answer: its object names and the next page's token
/// (also the fuzzing entry point).
pub fn parse_listing(body: &[u8]) -> Result<(Vec<String>, Option<String>), OriginError> {
    parse_listing_page(body).map(|p| {
        (
            p.items.into_iter().map(|i| i.name).collect(),
            p.next_page_token,
        )
    })
}

fn parse_listing_page(body: &[u8]) -> Result<ListPage, OriginError> {
    let mut raw = body.to_vec();
    simd_json::serde::from_slice::<ListPage>(&mut raw)
        .map_err(|e| OriginError::Unavailable(format!("listing is not JSON: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    #[serde(default)]
    items: Vec<ListItem>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct ListItem {
    name: String,
}

impl Origin for GcsOrigin {
    fn backend(&self) -> &'static str {
        "gcs"
    }

    fn calls(&self) -> Vec<(&'static str, u64)> {
        CALL_KINDS
            .iter()
            .zip(&self.shared.stats.calls)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .collect()
    }

    fn lists_are_costly(&self) -> bool {
        true
    }

    fn watch(&self, prefix: &str) -> Option<super::watch::Changes> {
        Some(super::watch::Changes {
            event: self.wakers.watch(prefix),
            exact: true,
        })
    }

    fn unwatch(&self, prefix: &str) {
        self.wakers.unwatch(prefix);
    }

    fn wakers(&self) -> Option<&super::watch::Wakers> {
        Some(&self.wakers)
    }

    fn get<'a>(&'a self, key: &'a str, max_size: u64) -> OriginFuture<'a, Object> {
        let shared = self.shared.clone();
        let key = key.to_string();
        self.on_runtime("fetch", async move {
            let s = shared.clone();
            let started = Instant::now();
            let key_for_log = key.clone();
            let r = shared
                .with_retries("download", move |_| {
                    let s = s.clone();
                    let key = key.clone();
                    async move { s.download_once(&key, max_size).await }
                })
                .await;
            tracing::debug!(
                key = %key_for_log,
                micros = started.elapsed().as_micros() as u64,
                ok = r.is_ok(),
                "GCS download"
            );
            r
        })
    }

    fn put<'a>(&'a self, obj: &'a Object) -> OriginFuture<'a, Stored> {
        let shared = self.shared.clone();
        let obj = obj.clone();
        self.on_runtime("upload", async move {
            let crc = crc32c::crc32c(&obj.payload());
            // What is there now (a metadata read; a 404 is not billed), then an upload on the
            // condition that it is still that (`ifGenerationMatch`, 0: absent), so the answer
            // says truly whether the object was created or replaced. A write by someone else
            // in between (412) is then replaced unconditionally.
            let s = shared.clone();
            let k = obj.key.to_string();
            let before = shared
                .with_retries("metadata read", move |_| {
                    let (s, k) = (s.clone(), k.clone());
                    async move { s.generation_once(&k).await }
                })
                .await?;
            let matched = shared.upload(&obj, crc, Some(before.unwrap_or(0))).await?;
            if !matched {
                shared.upload(&obj, crc, None).await?;
            }
            Ok(if before.is_none() && matched {
                Stored::Created
            } else {
                Stored::Replaced
            })
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> OriginFuture<'a, bool> {
        let shared = self.shared.clone();
        let key = key.to_string();
        self.on_runtime("delete", async move {
            let s = shared.clone();
            shared
                .with_retries("delete", move |_| {
                    let (s, key) = (s.clone(), key.clone());
                    async move { s.delete_once(&key).await }
                })
                .await
        })
    }

    fn version<'a>(&'a self, key: &'a str) -> OriginFuture<'a, Option<u64>> {
        let shared = self.shared.clone();
        let key = key.to_string();
        self.on_runtime("fetch", async move {
            let s = shared.clone();
            shared
                .with_retries("metadata read", move |_| {
                    let s = s.clone();
                    let key = key.clone();
                    async move { s.generation_once(&key).await }
                })
                .await
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> OriginFuture<'a, Listing> {
        let shared = self.shared.clone();
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        self.on_runtime("listing", async move {
            let strip = shared.settings.prefix.clone();
            let mut keys = Vec::new();
            let mut page: Option<String> = None;
            // A listing that hands back a page token it gave before would never end.
            let mut tokens = std::collections::HashSet::new();
            loop {
                let s = shared.clone();
                let (p, st, pg) = (prefix.clone(), start_after.clone(), page.clone());
                let result = shared
                    .with_retries("listing", move |_| {
                        let (s, p, st, pg) = (s.clone(), p.clone(), st.clone(), pg.clone());
                        async move { s.list_page_once(&p, st.as_deref(), pg.as_deref()).await }
                    })
                    .await?;
                for item in result.items {
                    let Some(key) = item.name.strip_prefix(strip.as_str()) else {
                        continue;
                    };
                    // startOffset is inclusive; the trait's start is exclusive.
                    if start_after.as_deref().is_some_and(|s| key <= s) {
                        continue;
                    }
                    keys.push(key.to_string());
                }
                match result.next_page_token {
                    Some(t) if !t.is_empty() => {
                        if tokens.len() >= MAX_LIST_PAGES || !tokens.insert(t.clone()) {
                            tracing::warn!(prefix = %prefix, pages = tokens.len(), "GCS listing does not end: a page token repeats or too many pages");
                            return Err(OriginError::Unavailable(
                                "GCS listing does not end (a page token repeats)".into(),
                            ));
                        }
                        page = Some(t);
                    }
                    _ => break,
                }
            }
            keys.sort_unstable();
            Ok(keys)
        })
    }

    fn check_ready(&self) -> Result<(), OriginError> {
        if !self.shared.settings.authenticate {
            return Ok(());
        }
        match self.shared.bearer() {
            Ok(_) => Ok(()),
            Err(e) => Err(OriginError::Unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = GcsSettings::from_url("gs://media", None).unwrap();
        assert_eq!(s.base, "https://storage.googleapis.com");
        assert!(s.authenticate);
        assert_eq!(s.prefix, "");
        assert_eq!(
            s.media_url("live/cam 1/a+b%c ü.m4s"),
            "https://storage.googleapis.com/storage/v1/b/media/o/live%2Fcam%201%2Fa%2Bb%25c%20%C3%BC.m4s?alt=media"
        );
        assert_eq!(
            s.upload_url("live/a b.m4s", Some(0), false),
            "https://storage.googleapis.com/upload/storage/v1/b/media/o?uploadType=media&name=live%2Fa%20b.m4s&fields=crc32c%2Cgeneration&ifGenerationMatch=0"
        );
        assert_eq!(
            s.upload_url("v/big.mp4", None, true),
            "https://storage.googleapis.com/upload/storage/v1/b/media/o?uploadType=resumable&name=v%2Fbig.mp4&fields=crc32c%2Cgeneration"
        );
        assert_eq!(
            s.object_url("live/a b.m4s"),
            "https://storage.googleapis.com/storage/v1/b/media/o/live%2Fa%20b.m4s"
        );
        let s = GcsSettings::from_url("gs://media/some/root/", Some("127.0.0.1:4443")).unwrap();
        assert_eq!(s.base, "http://127.0.0.1:4443");
        assert!(!s.authenticate);
        assert_eq!(s.prefix, "some/root/");
        assert_eq!(
            s.media_url("k"),
            "http://127.0.0.1:4443/storage/v1/b/media/o/some%2Froot%2Fk?alt=media"
        );
        assert_eq!(
            s.list_url("live/cam1/", Some("live/cam1/seg-0000000003.m4s"), Some("tok/+=")),
            "http://127.0.0.1:4443/storage/v1/b/media/o?prefix=some%2Froot%2Flive%2Fcam1%2F&delimiter=%2F&maxResults=1000&fields=items(name)%2CnextPageToken&startOffset=some%2Froot%2Flive%2Fcam1%2Fseg-0000000003.m4s&pageToken=tok%2F%2B%3D"
        );
        let s = GcsSettings::from_url("gs://b-1", Some("http://localhost:9000/")).unwrap();
        assert_eq!(s.base, "http://localhost:9000");
        assert!(GcsSettings::from_url("gs://", None).is_err());
        assert!(GcsSettings::from_url("gs://Bad_Bucket", None).is_err());
        assert!(GcsSettings::from_url("s3://x", None).is_err());
    }

    #[test]
    fn resumable_progress() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(persisted(&h), 0, "a 308 without Range: nothing persisted");
        h.insert(hyper::header::RANGE, "bytes=0-262143".parse().unwrap());
        assert_eq!(persisted(&h), 262_144);
        h.insert(hyper::header::RANGE, "bytes=5-9".parse().unwrap());
        assert_eq!(persisted(&h), 0, "a range not from byte 0 is not progress");
        h.insert(hyper::header::RANGE, "bytes=0-x".parse().unwrap());
        assert_eq!(persisted(&h), 0);
    }

    #[test]
    fn hashes() {
        // crc32c("hello") = 0x9a71bb4c
        assert_eq!(crc32c::crc32c(b"hello"), 0x9a71bb4c);
        assert_eq!(
            crc32c_of("crc32c=mnG7TA==,md5=XUFAKrxLKna5cZ2REBfFkg=="),
            Some(0x9a71bb4c)
        );
        assert_eq!(crc32c_of("md5=XUFAKrxLKna5cZ2REBfFkg=="), None);
        assert_eq!(crc32c_of("crc32c=!!"), None);
    }
}
