//! Google Cloud plumbing shared by the GCS origin and the Firestore ticket store: the HTTP
//! client (hyper 1 + rustls, keep-alive), access tokens kept fresh in the background
//! (gcp_auth), percent-encoding, and the retry schedule. Runs on tokio (a fetch or control
//! runtime), never on a worker.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Characters left as they are in a path segment or query value: RFC 3986 unreserved.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode a value as one path segment or query value.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

/// The HTTP client type: rustls over a nodelay keep-alive connector, full bodies.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client keeping up to `max_idle` idle connections per host, reading `read_buf` bytes at
/// a time.
pub fn http_client(max_idle: usize, connect_timeout: Duration, read_buf: usize) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(max_idle)
        .http1_read_buf_exact_size(read_buf)
        .build(connector)
}

/// Retry schedule: exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before retry number `attempt` (1-based), given a uniform `random` in [0, 1).
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max);
        cap.mul_f64(random.clamp(0.0, 1.0))
    }
}

/// Whether a status is worth retrying (Google's retry guidance for idempotent requests).
pub fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 429 | 500 | 502 | 503 | 504)
}

/// A uniform random number in [0, 1).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Where a request's `Authorization` header comes from.
pub struct TokenSource {
    mode: Mode,
    token: RwLock<Option<String>>,
    error: RwLock<Option<String>>,
}

enum Mode {
    /// Fixed header value (an emulator), or none.
    Fixed(Option<String>),
    /// gcp_auth tokens (refreshed by a background task).
    Google,
}

impl TokenSource {
    /// No credentials, or a fixed `Authorization` value (emulators).
    pub fn fixed(header: Option<&str>) -> Arc<TokenSource> {
        Arc::new(TokenSource {
            mode: Mode::Fixed(header.map(str::to_string)),
            token: RwLock::new(None),
            error: RwLock::new(None),
        })
    }

    /// Tokens for `scope` from gcp_auth, refreshed by a task spawned on `runtime`.
    pub fn google(scope: &'static str, runtime: &tokio::runtime::Handle) -> Arc<TokenSource> {
        let source = Arc::new(TokenSource {
            mode: Mode::Google,
            token: RwLock::new(None),
            error: RwLock::new(Some("no access token yet".into())),
        });
        runtime.spawn(refresh(source.clone(), scope));
        source
    }

    /// Whether requests carry Google credentials.
    pub fn is_google(&self) -> bool {
        matches!(self.mode, Mode::Google)
    }

    /// The `Authorization` header value, if any; `Err` says why no token is available.
    pub fn header(&self) -> Result<Option<String>, String> {
        match &self.mode {
            Mode::Fixed(h) => Ok(h.clone()),
            Mode::Google => match self
                .token
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                Some(t) => Ok(Some(format!("Bearer {t}"))),
                None => Err(self
                    .error
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_default()),
            },
        }
    }

    /// Wait until a token is available or `timeout` passes (for one-shot CLI commands).
    pub async fn wait(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.header().is_err() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Keep an access token fresh: fetch one, sleep until five minutes before it expires, again.
async fn refresh(source: Arc<TokenSource>, scope: &'static str) {
    let set_error = |e: String| {
        *source.error.write().unwrap_or_else(|e| e.into_inner()) = Some(e);
    };
    let provider = loop {
        match gcp_auth::provider().await {
            Ok(p) => break p,
            Err(e) => {
                tracing::error!("Google credentials not found (retrying in 30s): {e}");
                set_error(format!("no credentials: {e}"));
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    };
    let mut failures = 0u32;
    loop {
        match provider.token(&[scope]).await {
            Ok(token) => {
                failures = 0;
                *source.token.write().unwrap_or_else(|e| e.into_inner()) =
                    Some(token.as_str().to_string());
                *source.error.write().unwrap_or_else(|e| e.into_inner()) = None;
                let left = (token.expires_at() - chrono::Utc::now())
                    .num_seconds()
                    .max(0) as u64;
                let wait = left.saturating_sub(300).clamp(10, 3000);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures % 10 == 0 {
                    tracing::error!(failures, scope, "access token refresh failed: {e}");
                }
                set_error(format!("token refresh failed: {e}"));
                tokio::time::sleep(Duration::from_secs(5 * u64::from(failures.min(12)))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(
            encode("live/cam 1/a+b%c ü"),
            "live%2Fcam%201%2Fa%2Bb%25c%20%C3%BC"
        );
        assert_eq!(encode("A-z_0.9~"), "A-z_0.9~");
    }

    #[test]
    fn retry_policy() {
        for s in [408, 409, 429, 500, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 412, 200] {
            assert!(!retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        assert_eq!(b.delay(1, 0.999_999).as_millis(), 99);
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay(10, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(60, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(2, 0.0), Duration::ZERO);
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn fixed_tokens() {
        assert_eq!(TokenSource::fixed(None).header(), Ok(None));
        assert_eq!(
            TokenSource::fixed(Some("Bearer owner")).header(),
            Ok(Some("Bearer owner".into()))
        );
    }
}
