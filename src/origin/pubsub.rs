//! Cloud Storage notifications through Pub/Sub (`--notifications`): a thread of its own
//! (the control side, never a data-plane worker) long-polls a subscription with the REST
//! API (`pull`, `acknowledge`; `Authorization` from gcp_auth with the `pubsub` scope, or
//! none against the emulator at `PUBSUB_EMULATOR_HOST`), and wakes the poller of the stream
//! an object was written to ([`super::watch::Wakers`]), so discovery does not wait for its
//! next poll. Delivery is at least once and unordered: redeliveries are dropped by object,
//! generation and event, and the poller reads segments in seq order whatever wakes it. When
//! notifications stop (subscription deleted, Pub/Sub down), prediction and the backstop
//! listing keep discovering; `mediarelay_notifications_up` says so, and the log too.
//!
//! `pubsub://PROJECT/subscriptions/NAME` uses an operator's subscription;
//! `pubsub://PROJECT/topics/TOPIC` makes one for this relay (named after the host and a
//! random suffix, expiring after a day unused) and deletes it on a clean shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use super::Origin;
use crate::gcp::{self, encode, Backoff, HttpClient, TokenSource};

/// OAuth scope for Pub/Sub.
pub const SCOPE: &str = "https://www.googleapis.com/auth/pubsub";

/// Where notifications come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A topic: the relay makes (and deletes) its own subscription.
    Topic { project: String, topic: String },
    /// A subscription the operator made.
    Subscription { project: String, name: String },
}

impl Source {
    /// Parse `pubsub://PROJECT/topics/TOPIC` or `pubsub://PROJECT/subscriptions/NAME`.
    pub fn parse(url: &str) -> Result<Source, String> {
        let rest = url
            .strip_prefix("pubsub://")
            .ok_or_else(|| format!("`{url}`: expected pubsub://PROJECT/topics/TOPIC or pubsub://PROJECT/subscriptions/NAME"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~+%".contains(&b))
        };
        match parts.as_slice() {
            [p, "topics", t] if ok(p) && ok(t) => Ok(Source::Topic {
                project: p.to_string(),
                topic: t.to_string(),
            }),
            [p, "subscriptions", s] if ok(p) && ok(s) => Ok(Source::Subscription {
                project: p.to_string(),
                name: s.to_string(),
            }),
            _ => Err(format!(
                "`{url}`: expected pubsub://PROJECT/topics/TOPIC or pubsub://PROJECT/subscriptions/NAME"
            )),
        }
    }
}

/// The running notification thread; dropping it stops the thread (and deletes a
/// subscription it made).
pub struct Notifications {
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Puller {
    client: HttpClient,
    tokens: Arc<TokenSource>,
    base: String,
    project: String,
    subscription: String,
    /// Made by this relay (deleted on shutdown).
    own: bool,
    topic: Option<String>,
    bucket: String,
    prefix: String,
    origin: Arc<dyn Origin>,
}

/// Start pulling notifications for `origin` (a bucket `bucket` with key prefix `prefix`).
pub fn start(
    source: Source,
    bucket: String,
    prefix: String,
    origin: Arc<dyn Origin>,
) -> Result<Notifications, String> {
    if origin.wakers().is_none() {
        return Err("notifications need a gs:// storage".into());
    }
    let emulator = std::env::var("PUBSUB_EMULATOR_HOST")
        .ok()
        .filter(|e| !e.trim().is_empty());
    let base = match &emulator {
        Some(e) if e.starts_with("http") => e.trim_end_matches('/').to_string(),
        Some(e) => format!("http://{}", e.trim_end_matches('/')),
        None => "https://pubsub.googleapis.com".to_string(),
    };
    let (project, subscription, own, topic) = match source {
        Source::Subscription { project, name } => (project, name, false, None),
        Source::Topic { project, topic } => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .take(40)
                .collect::<String>();
            let mut suffix = [0u8; 4];
            getrandom::getrandom(&mut suffix).map_err(|e| e.to_string())?;
            let name = format!("mediarelay-{host}-{}", hex::encode(suffix));
            (project, name, true, Some(topic))
        }
    };
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("pubsub".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("notifications: runtime: {e}");
                    return;
                }
            };
            let tokens = if emulator.is_some() {
                TokenSource::fixed(None)
            } else {
                TokenSource::google(SCOPE, runtime.handle())
            };
            let puller = Puller {
                client: gcp::http_client(2, Duration::from_secs(5), 256 << 10),
                tokens,
                base,
                project,
                subscription,
                own,
                topic,
                bucket,
                prefix,
                origin,
            };
            runtime.block_on(puller.run(stopped));
        })
        .map_err(|e| e.to_string())?;
    Ok(Notifications {
        stop,
        thread: Some(thread),
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PullResponse {
    #[serde(default)]
    received_messages: Vec<Received>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Received {
    ack_id: String,
    #[serde(default)]
    message: Message,
}

#[derive(Deserialize, Default)]
struct Message {
    #[serde(default)]
    attributes: std::collections::HashMap<String, String>,
}

/// What one notification means for the relay: the key it names (under the origin's
/// prefix), or why it is ignored.
pub fn key_of(
    attributes: &std::collections::HashMap<String, String>,
    bucket: &str,
    prefix: &str,
) -> Option<String> {
    let event = attributes.get("eventType")?;
    if event != "OBJECT_FINALIZE" && event != "OBJECT_DELETE" {
        return None;
    }
    if attributes.get("bucketId")? != bucket {
        return None;
    }
    let key = attributes.get("objectId")?.strip_prefix(prefix)?;
    crate::protocol::keys::validate_key(key).ok()?;
    Some(key.to_string())
}

impl Puller {
    fn subscription_url(&self) -> String {
        format!(
            "{}/v1/projects/{}/subscriptions/{}",
            self.base,
            encode(&self.project),
            encode(&self.subscription)
        )
    }

    async fn call(
        &self,
        method: hyper::Method,
        url: &str,
        body: serde_json::Value,
    ) -> Result<(u16, Bytes), String> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(h) = self.tokens.header()? {
            req = req.header(hyper::header::AUTHORIZATION, h);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), 16 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// Make this relay's subscription (409: it exists already, fine).
    async fn create(&self) -> Result<(), String> {
        let Some(topic) = &self.topic else {
            return Ok(());
        };
        let body = serde_json::json!({
            "topic": format!("projects/{}/topics/{}", self.project, topic),
            "ackDeadlineSeconds": 30,
            "messageRetentionDuration": "600s",
            "expirationPolicy": {"ttl": "86400s"},
        });
        match self
            .call(hyper::Method::PUT, &self.subscription_url(), body)
            .await?
        {
            (200 | 409, _) => Ok(()),
            (status, body) => Err(format!(
                "creating subscription {}: {status} {}",
                self.subscription,
                String::from_utf8_lossy(&body)
            )),
        }
    }

    async fn pull(&self) -> Result<Vec<Received>, String> {
        let url = format!("{}:pull", self.subscription_url());
        let (status, body) = self
            .call(
                hyper::Method::POST,
                &url,
                serde_json::json!({"maxMessages": 1000}),
            )
            .await?;
        if status != 200 {
            return Err(format!("pull: {status} {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice::<PullResponse>(&body)
            .map(|r| r.received_messages)
            .map_err(|e| format!("pull answer: {e}"))
    }

    async fn ack(&self, ids: Vec<String>) -> Result<(), String> {
        let url = format!("{}:acknowledge", self.subscription_url());
        match self
            .call(
                hyper::Method::POST,
                &url,
                serde_json::json!({"ackIds": ids}),
            )
            .await?
        {
            (200, _) => Ok(()),
            (status, body) => Err(format!(
                "acknowledge: {status} {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    async fn run(self, stop: Arc<tokio::sync::Notify>) {
        let Some(wakers) = self.origin.wakers() else {
            return;
        };
        wakers.enabled.store(true, Ordering::Relaxed);
        let backoff = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        let mut created = !self.own;
        let mut failures = 0u32;
        loop {
            let step = async {
                if !created {
                    self.create().await?;
                    tracing::info!(subscription = %self.subscription, "notifications: subscription made");
                    created = true;
                }
                let messages = self.pull().await?;
                let mut ids = Vec::with_capacity(messages.len());
                for m in messages {
                    ids.push(m.ack_id);
                    wakers.received.fetch_add(1, Ordering::Relaxed);
                    let a = &m.message.attributes;
                    let Some(key) = key_of(a, &self.bucket, &self.prefix) else {
                        continue;
                    };
                    let id = format!(
                        "{}#{}#{}",
                        key,
                        a.get("objectGeneration").map_or("", String::as_str),
                        a.get("eventType").map_or("", String::as_str)
                    );
                    if wakers.seen_before(&id) {
                        wakers.duplicates.fetch_add(1, Ordering::Relaxed);
                    } else if wakers.wake(&key) {
                        wakers.woke.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !ids.is_empty() {
                    self.ack(ids).await?;
                }
                Ok::<(), String>(())
            };
            let outcome = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(90), step) => r.unwrap_or_else(|_| Err("no answer in 90 s".into())),
                _ = stop.notified() => break,
            };
            match outcome {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!("notifications: pulling again after {failures} failures");
                    }
                    failures = 0;
                    wakers.up.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    failures += 1;
                    wakers.errors.fetch_add(1, Ordering::Relaxed);
                    wakers.up.store(false, Ordering::Relaxed);
                    if failures == 1 || failures % 20 == 0 {
                        tracing::warn!(
                            failures,
                            "notifications failed, discovery relies on polling: {e}"
                        );
                    }
                    // A subscription deleted under us: make it again (ours only).
                    if e.contains("404") && self.own {
                        created = false;
                    }
                    let wait = backoff.delay(failures, gcp::random_unit());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.notified() => break,
                    }
                }
            }
        }
        wakers.up.store(false, Ordering::Relaxed);
        if self.own && created {
            match self
                .call(
                    hyper::Method::DELETE,
                    &self.subscription_url(),
                    serde_json::Value::Null,
                )
                .await
            {
                Ok((200 | 404, _)) => {
                    tracing::info!(subscription = %self.subscription, "notifications: subscription deleted");
                }
                Ok((status, _)) => {
                    tracing::warn!(status, "notifications: deleting the subscription");
                }
                Err(e) => tracing::warn!("notifications: deleting the subscription: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("pubsub://proj/topics/media-events"),
            Ok(Source::Topic {
                project: "proj".into(),
                topic: "media-events".into()
            })
        );
        assert_eq!(
            Source::parse("pubsub://proj/subscriptions/relay-a"),
            Ok(Source::Subscription {
                project: "proj".into(),
                name: "relay-a".into()
            })
        );
        for bad in [
            "proj/topics/t",
            "pubsub://proj/t",
            "pubsub://proj/topics/",
            "pubsub://p/queues/x",
            "pubsub://p/topics/a/b",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_a_notification_names() {
        let attrs = |event: &str, bucket: &str, object: &str| {
            [
                ("eventType", event),
                ("bucketId", bucket),
                ("objectId", object),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::HashMap<_, _>>()
        };
        let k = |a| key_of(&a, "media", "root/");
        assert_eq!(
            k(attrs(
                "OBJECT_FINALIZE",
                "media",
                "root/live/c/seg-0000000001.m4s"
            ))
            .as_deref(),
            Some("live/c/seg-0000000001.m4s")
        );
        assert!(k(attrs("OBJECT_DELETE", "media", "root/live/c/x")).is_some());
        assert_eq!(
            k(attrs("OBJECT_METADATA_UPDATE", "media", "root/live/c/x")),
            None
        );
        assert_eq!(k(attrs("OBJECT_FINALIZE", "other", "root/live/c/x")), None);
        assert_eq!(
            k(attrs("OBJECT_FINALIZE", "media", "elsewhere/live/c/x")),
            None
        );
        assert_eq!(k(attrs("OBJECT_FINALIZE", "media", "root/../x")), None);
        assert_eq!(key_of(&Default::default(), "media", ""), None);
    }
}
