//! Google's Pub/Sub emulator (the `google-cloud-cli-pubsub-emulator` Debian package,
//! installed by scripts/test.sh) on a loopback port, and the REST calls tests make to it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::gcs::try_request;

const DEFAULT_BIN: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// A running emulator (its own process group: the command is a script that starts a JVM).
pub struct PubSub {
    child: Child,
    pub addr: SocketAddr,
    log: tempfile::NamedTempFile,
}

impl PubSub {
    /// Start one on a free port and wait until it answers.
    pub fn start() -> PubSub {
        let bin = std::env::var("PUBSUB_EMULATOR_BIN").unwrap_or_else(|_| DEFAULT_BIN.into());
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} is missing: scripts/test.sh installs Debian's google-cloud-cli-pubsub-emulator"
        );
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(&bin)
            .args(["--host=127.0.0.1", &format!("--port={port}")])
            .env("JAVA_OPTS", "-Xmx256m")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start the Pub/Sub emulator");
        let p = PubSub { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(
            try_request(addr, "GET", "/", "text/plain", b""),
            Ok((200, _))
        ) {
            assert!(
                Instant::now() < deadline,
                "the Pub/Sub emulator did not start: {}",
                std::fs::read_to_string(p.log.path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// Make `projects/{project}/topics/{topic}`.
    pub fn create_topic(&self, project: &str, topic: &str) {
        let (status, body) = try_request(
            self.addr,
            "PUT",
            &format!("/v1/projects/{project}/topics/{topic}"),
            "application/json",
            b"{}",
        )
        .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }

    /// The names of the project's subscriptions.
    pub fn subscriptions(&self, project: &str) -> Vec<String> {
        let (status, body) = try_request(
            self.addr,
            "GET",
            &format!("/v1/projects/{project}/subscriptions"),
            "application/json",
            b"",
        )
        .unwrap();
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["subscriptions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for PubSub {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}
