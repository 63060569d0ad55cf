//! `mediarelay demo` and `mediarelay watch`: something to watch on a fresh machine.
//!
//! `demo` starts the relay on its defaults with a live stream and watches the stream through
//! a real WebSocket connection. When ffmpeg is installed the stream is real video: ffmpeg's
//! HLS muxer pushes an H.264 test pattern in fMP4 through ingest (`PUT /ingest/t/...`), and
//! the demo prints the player page's address. Without ffmpeg (or with `--synthetic`) it
//! writes synthetic segments into the storage directory (each to a temporary name, then
//! renamed, as real uploaders do). `watch` is the client on its own, for any relay.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use super::{DemoArgs, WatchArgs};
use crate::config::{parse_bytes, parse_duration, Config};
use crate::protocol::keys::{segment_name, segment_name_seq, DEFAULT_SEGMENT_EXT};
use crate::tickets::{self, TicketRecord};

/// Run the demo.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let interval = parse_duration(&args.interval).context("--interval")?;
    let size = parse_bytes(&args.size).context("--size")? as usize;
    crate::protocol::keys::validate_stream(&args.stream).map_err(anyhow::Error::msg)?;
    let overrides = [
        ("server.listen", args.listen.clone()),
        ("server.admin", args.admin.clone()),
        ("storage.url", args.storage.display().to_string()),
        ("tickets.url", args.tickets.display().to_string()),
    ];
    let config = Config::load(None, std::env::vars(), &overrides)?;
    let _ = crate::control::init_logging(&config.log.level, &config.log.format);

    let dir = args.storage.join(&args.stream);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let ffmpeg = !args.synthetic && ffmpeg_installed();
    let now = SystemTime::now();
    let store = tickets::open_store(&args.tickets.display().to_string())?;
    let issue = |uid: &str, publish: Vec<String>| -> anyhow::Result<String> {
        let ticket = tickets::new_ticket()?;
        store.insert(
            tickets::ticket_id(&ticket),
            TicketRecord {
                uid: uid.into(),
                streams: vec![args.stream.clone()],
                expires_at: now + Duration::from_secs(24 * 3600),
                revoked: false,
                max_connections: None,
                publish,
                updated_at: now,
            },
        )?;
        Ok(ticket)
    };
    let ticket = issue("demo", Vec::new())?;
    let publisher = if ffmpeg {
        Some(issue("demo-encoder", vec![args.stream.clone()])?)
    } else {
        write_atomically(&dir, "init.mp4", b"mediarelay demo init segment\n")?;
        None
    };

    let (tx, rx) = flume::unbounded();
    control_c(tx.clone())?;
    let relay =
        std::thread::spawn(move || crate::control::serve(config, Some((tx, rx)), false, None));
    let start = next_seq(&dir);
    let (stream, count) = (args.stream.clone(), args.count);
    let mut encoder = None;
    match &publisher {
        Some(p) => {
            wait_listening(&args.listen, Duration::from_secs(10));
            let base = format!("http://{}/ingest/t/{p}/{stream}", args.listen);
            encoder = Some(push_with_ffmpeg(&base, start, count)?);
        }
        None => {
            let dir = dir.clone();
            std::thread::spawn(move || produce(&dir, start, count, size, interval));
        }
    }

    let url = format!("ws://{}/ws", args.listen);
    if ffmpeg {
        println!(
            "mediarelay demo: stream {stream}, H.264 test video pushed by ffmpeg through ingest"
        );
        println!(
            "  player:  http://{}/player?stream={stream}&ticket={ticket}",
            args.listen
        );
    } else {
        println!("mediarelay demo: stream {stream}, a {size}-byte segment every {interval:?} (synthetic: ffmpeg not found or --synthetic)");
    }
    println!("  ticket:  {ticket}");
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| {
            let cwd = std::env::current_dir().ok()?;
            Some(p.strip_prefix(&cwd).map(|r| r.to_path_buf()).unwrap_or(p))
        })
        .map_or_else(|| "mediarelay".to_string(), |p| p.display().to_string());
    println!("  watch:   {exe} watch --url {url} --stream {stream} --ticket={ticket}");
    println!("  metrics: curl -s http://{}/metrics", args.admin);
    println!("Watching (Ctrl-C stops):");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_millis(300));
    let watched = watch(WatchArgs {
        url,
        ticket,
        stream: args.stream,
        from: "live".into(),
        count,
        refresh_cmd: None,
    });
    if let Err(e) = &watched {
        eprintln!("watch: {e:#}");
    }
    if let Some(mut e) = encoder {
        let _ = e.kill();
        let _ = e.wait();
    }
    if count > 0 {
        // The demo was bounded: stop the relay too.
        signal_self();
    }
    relay
        .join()
        .map_err(|_| anyhow::anyhow!("relay thread panicked"))??;
    watched
}

fn control_c(tx: flume::Sender<()>) -> std::io::Result<()> {
    // SIGHUP has nothing to reload in the demo: nobody listens on `reload`.
    let (reload, _) = flume::unbounded();
    crate::control::on_signals(tx, reload)
}

fn signal_self() {
    // SIGTERM to ourselves goes through the same drain path as an operator's.
    let _ = std::process::Command::new("kill")
        .arg(std::process::id().to_string())
        .status();
}

fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, dir.join(name))
}

fn ffmpeg_installed() -> bool {
    std::process::Command::new("ffmpeg")
        .arg("-version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Wait until something accepts connections on `addr` (the relay starting).
fn wait_listening(addr: &str, at_most: Duration) {
    let until = std::time::Instant::now() + at_most;
    while TcpStream::connect(addr).is_err() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// ffmpeg pushing a live H.264 test pattern (about 1 s fMP4 segments numbered from
/// `start`) to the ingest URL `base`, in real time; `count` > 0 stops after that many
/// seconds. Its errors go to the terminal.
fn push_with_ffmpeg(base: &str, start: u64, count: u64) -> anyhow::Result<std::process::Child> {
    // A burnt-in clock (as scripts/make-test-media.sh draws it) where a font is installed.
    let mut source = "testsrc2=size=640x360:rate=25".to_string();
    let fonts = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
        "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    ];
    if let Some(font) = fonts.iter().find(|f| Path::new(f).exists()) {
        let dt = format!(
            "drawtext=fontfile={font}:fontcolor=white:box=1:boxcolor=black@0.6:boxborderw=6"
        );
        source.push_str(&format!(
            ",{dt}:fontsize=40:x=20:y=h-124:text='%{{localtime\\:%X}}',{dt}:fontsize=22:x=20:y=h-60:text='frame %{{n}}  t=%{{pts\\:hms}}'"
        ));
    }
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", &source]);
    if count > 0 {
        cmd.args(["-t", &count.to_string()]);
    }
    cmd.args([
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
    ])
    .args([
        "-b:v",
        "800k",
        "-g",
        "25",
        "-keyint_min",
        "25",
        "-pix_fmt",
        "yuv420p",
    ])
    .args(["-f", "hls", "-hls_time", "1", "-hls_list_size", "10"])
    .args([
        "-hls_segment_type",
        "fmp4",
        "-hls_fmp4_init_filename",
        "init.mp4",
    ])
    .args(["-start_number", &start.to_string()])
    .args(["-hls_segment_filename", &format!("{base}/seg-%010d.m4s")])
    .args(["-method", "PUT", &format!("{base}/index.m3u8")])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null());
    cmd.spawn().context("start ffmpeg")
}

fn next_seq(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            segment_name_seq(&name)
        })
        .max()
        .unwrap_or(0)
        + 1
}

fn produce(dir: &Path, start: u64, count: u64, size: usize, interval: Duration) {
    let mut seq = start;
    loop {
        let mut data = format!("mediarelay demo segment {seq}\n").into_bytes();
        data.resize(size.max(data.len()), (seq % 251) as u8);
        let name = segment_name(seq, DEFAULT_SEGMENT_EXT);
        if let Err(e) = write_atomically(dir, &name, &data) {
            eprintln!("demo producer: {e}");
            return;
        }
        if count > 0 && seq - start >= count {
            return;
        }
        seq += 1;
        std::thread::sleep(interval);
    }
}

/// Subscribe to a stream and print each segment as it arrives.
pub fn watch(args: WatchArgs) -> anyhow::Result<()> {
    use tungstenite::client::IntoClientRequest;
    use tungstenite::Message;

    let mut request = args.url.as_str().into_client_request().context("--url")?;
    let host = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| anyhow::anyhow!("--url has no host"))?;
    let addr = if host.contains(':') {
        host
    } else {
        format!("{host}:80")
    };
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", args.ticket)
            .parse()
            .context("--ticket")?,
    );
    let sock = TcpStream::connect(&addr).with_context(|| format!("connect {addr}"))?;
    let (mut ws, _) = tungstenite::client(request, sock).map_err(|e| anyhow::anyhow!("{e}"))?;
    let from = match args.from.parse::<u64>() {
        Ok(n) => serde_json::json!(n),
        Err(_) => serde_json::json!(args.from),
    };
    let sub = serde_json::json!({"op":"subscribe","id":1,"stream":args.stream,"from":from});
    ws.send(Message::Text(sub.to_string()))?;
    let mut seen = 0u64;
    loop {
        match ws.read()? {
            Message::Binary(b) => {
                let Some((meta, payload)) = split_media(&b) else {
                    println!("malformed media frame ({} bytes)", b.len());
                    continue;
                };
                let seq = meta.get("seq").and_then(|v| v.as_u64()).unwrap_or(0);
                let ts = meta.get("ts").and_then(|v| v.as_u64()).unwrap_or(0);
                let lag = crate::fanout::now_micros().saturating_sub(ts) as f64 / 1000.0;
                println!(
                    "seq {seq:>6}  {:>9} bytes  lag {lag:>8.3} ms  {}",
                    payload.len(),
                    meta.get("key").and_then(|v| v.as_str()).unwrap_or("")
                );
                if seq > 0 {
                    seen += 1;
                }
                if args.count > 0 && seen >= args.count {
                    return Ok(());
                }
            }
            Message::Text(t) => {
                println!("{t}");
                let expiring = serde_json::from_str::<serde_json::Value>(&t)
                    .is_ok_and(|v| v["op"] == "expiring");
                if let (true, Some(cmd)) = (expiring, &args.refresh_cmd) {
                    match new_ticket_from(cmd) {
                        Ok(ticket) => {
                            let msg = serde_json::json!({"op":"refresh","id":2,"ticket":ticket});
                            ws.send(Message::Text(msg.to_string()))?;
                        }
                        Err(e) => eprintln!("mediarelay watch: --refresh-cmd: {e:#}"),
                    }
                }
            }
            Message::Close(c) => {
                println!("closed: {c:?}");
                return Ok(());
            }
            _ => {}
        }
    }
}

/// Run `cmd` with `sh -c`; its trimmed standard output is the new ticket.
fn new_ticket_from(cmd: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run it")?;
    if !out.status.success() {
        anyhow::bail!("it exited with {}", out.status);
    }
    let ticket = String::from_utf8(out.stdout)
        .context("it printed something that is not UTF-8")?
        .trim()
        .to_string();
    if ticket.is_empty() {
        anyhow::bail!("it printed no ticket");
    }
    Ok(ticket)
}

/// Split a media frame into its meta object and payload.
pub fn split_media(b: &[u8]) -> Option<(serde_json::Value, &[u8])> {
    let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let meta = serde_json::from_slice(b.get(4..4 + n)?).ok()?;
    Some((meta, &b[4 + n..]))
}
