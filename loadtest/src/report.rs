//! What the load generator says: the server's own figures from /proc, the progress line
//! every second while a scenario runs (a bar when stdout is a terminal), the final report as
//! a human table or one JSON object, and HdrHistogram percentile files.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A fresh latency histogram (microseconds, up to 60 s).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

/// p50/p90/p99/p99.9/max of a microsecond histogram, in milliseconds.
pub fn percentiles_ms(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "p50": ms(h.value_at_quantile(0.5)),
        "p90": ms(h.value_at_quantile(0.9)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "count": h.len(),
    })
}

/// The server's processes, as given by `--server-pid` (one or several, comma-separated:
/// nginx's master and workers, say).
#[derive(Clone, Debug, Default)]
pub struct Server {
    pub pids: Vec<u32>,
}

/// Server figures from /proc: CPU seconds (utime + stime) and resident memory, summed over
/// its processes.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kib: u64,
}

impl Server {
    pub fn sample(&self) -> Option<ProcSample> {
        if self.pids.is_empty() {
            return None;
        }
        let mut total = ProcSample {
            cpu_s: 0.0,
            rss_kib: 0,
        };
        for &pid in &self.pids {
            let s = proc_sample(pid)?;
            total.cpu_s += s.cpu_s;
            total.rss_kib += s.rss_kib;
        }
        Some(total)
    }
}

/// This process's own CPU seconds (the load client's), to show when it is the bottleneck.
pub fn own_cpu_s() -> Option<f64> {
    proc_sample(std::process::id()).map(|s| s.cpu_s)
}

fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state(0) ... utime(11) stime(12), in clock ticks
    // (USER_HZ, 100 on Linux).
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(ProcSample {
        cpu_s: ticks / 100.0,
        rss_kib,
    })
}

/// Adds the server's CPU over the run (and per GB of `bytes`) to a report.
pub fn add_server_cpu(
    report: &mut Value,
    before: Option<ProcSample>,
    after: Option<ProcSample>,
    bytes: u64,
) {
    if let (Some(b), Some(a)) = (before, after) {
        let cpu = a.cpu_s - b.cpu_s;
        report["server_cpu_seconds"] = round(cpu, 3).into();
        if bytes > 0 {
            report["server_cpu_seconds_per_gb"] = round(cpu / (bytes as f64 / 1e9), 4).into();
        }
        report["server_rss_kib"] = a.rss_kib.into();
    }
}

pub fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// A line of progress every second until dropped: a bar (when stdout is a terminal and the
/// scenario knows how far along it is) or a plain line on stderr.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// `status()` returns the fraction done (if known) and the line to print.
    pub fn start<F>(status: F) -> Progress
    where
        F: Fn() -> (Option<f64>, String) + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let tty = std::io::stdout().is_terminal();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut next = started + Duration::from_secs(1);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if Instant::now() < next {
                        continue;
                    }
                    next += Duration::from_secs(1);
                    let (fraction, line) = status();
                    let t = started.elapsed().as_secs_f64();
                    if tty {
                        let bar = fraction.map_or_else(String::new, |f| {
                            let f = f.clamp(0.0, 1.0);
                            let filled = (f * 30.0).round() as usize;
                            format!(
                                "[{}{}] {:>3.0}% ",
                                "#".repeat(filled),
                                ".".repeat(30 - filled),
                                f * 100.0
                            )
                        });
                        let mut out = std::io::stdout().lock();
                        let _ = write!(out, "\r\x1b[2K{bar}{t:>5.0}s {line}");
                        let _ = out.flush();
                    } else {
                        eprintln!("[{t:>5.1}s] {line}");
                    }
                }
                if tty {
                    let mut out = std::io::stdout().lock();
                    let _ = write!(out, "\r\x1b[2K");
                    let _ = out.flush();
                }
            })
        };
        Progress {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Human-readable rate: `2.13 GB/s`.
pub fn si(v: f64, unit: &str) -> String {
    let (d, p) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    format!("{:.2} {p}{unit}", v / d)
}

/// Prints the report: one JSON object with `--json`, else a two-column table with nested
/// objects flattened (`lag_ms.p99`) and byte rates also shown in SI units.
pub fn print(json: bool, report: &Value) {
    if json {
        println!("{report}");
        return;
    }
    let mut rows = Vec::new();
    flatten("", report, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let title = report
        .get("scenario")
        .and_then(Value::as_str)
        .unwrap_or("report");
    let rule = "-".repeat(width + 24);
    println!("{rule}\n mediarelay-load: {title}\n{rule}");
    for (k, v) in rows {
        println!(" {k:<width$}  {v}");
    }
    println!("{rule}");
}

fn flatten(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rows);
            }
        }
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            let shown = if prefix.ends_with("bytes_per_s") {
                format!("{}  ({})", n, si(f, "B/s"))
            } else {
                n.to_string()
            };
            rows.push((prefix.to_string(), shown));
        }
        Value::String(s) => rows.push((prefix.to_string(), s.clone())),
        other => rows.push((prefix.to_string(), other.to_string())),
    }
}

/// Percentile distribution in HdrHistogram's text format (values in milliseconds).
pub fn write_hgrm(h: &Histogram<u64>, path: &std::path::Path) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0u64;
    for v in h.iter_quantiles(1) {
        let q = v.quantile_iterated_to();
        total += v.count_since_last_iteration();
        let inv = if q < 1.0 {
            1.0 / (1.0 - q)
        } else {
            f64::INFINITY
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:14.2}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
            inv
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    std::fs::write(path, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_nested_reports() {
        let mut rows = Vec::new();
        flatten(
            "",
            &json!({"a": 1, "lag_ms": {"p99": 2.5}, "received_bytes_per_s": 2.0e9}),
            &mut rows,
        );
        assert_eq!(rows[0], ("a".into(), "1".into()));
        assert_eq!(rows[1], ("lag_ms.p99".into(), "2.5".into()));
        assert_eq!(rows[2].1, "2000000000.0  (2.00 GB/s)");
    }

    #[test]
    fn reads_this_process_from_proc() {
        let s = Server {
            pids: vec![std::process::id()],
        }
        .sample()
        .expect("own /proc entry");
        assert!(s.rss_kib > 0);
    }
}
