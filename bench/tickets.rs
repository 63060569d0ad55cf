//! The hot-path ticket check on a 1,000,000-ticket snapshot, and what building and swapping
//! such a snapshot costs.
//!
//!     cargo bench --bench tickets
//!
//! Prints, besides criterion's timings: the time to build and publish the snapshot, the
//! resident memory it adds per ticket (from /proc/self/status), the time to apply one
//! incremental change, and the allocations made by 1,000,000 checks (a counting allocator
//! wraps the system one for this binary).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use mediarelay::tickets::snapshot::TicketCell;
use mediarelay::tickets::{ticket_id, TicketRecord};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: usize = 1_000_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn record(i: usize) -> TicketRecord {
    let now = SystemTime::now();
    TicketRecord {
        uid: format!("user-{i}"),
        streams: vec!["live/*".into(), format!("vod/user-{i}/*")],
        expires_at: now + Duration::from_secs(3600),
        revoked: false,
        max_connections: None,
        publish: Vec::new(),
        updated_at: now,
    }
}

fn ticket(i: usize) -> String {
    // Shaped like real tickets: 43 characters of base64url.
    format!("{i:0>43}")
}

fn bench(c: &mut Criterion) {
    let cell = TicketCell::default();
    let start = rss_kib();
    let records: Vec<_> = (0..N).map(|i| (ticket_id(&ticket(i)), record(i))).collect();
    let decoded = rss_kib();
    let t = Instant::now();
    cell.publish(records);
    let build = t.elapsed();
    let after = rss_kib();
    let per = |kib: u64| (kib * 1024) as f64 / N as f64;
    println!("build + publish {N} tickets: {build:?}");
    println!(
        "resident memory per ticket: {:.0} bytes in all ({:.0} for the decoded records, {:.0} for the snapshot's map and shared records)",
        per(after.saturating_sub(start)),
        per(decoded.saturating_sub(start)),
        per(after.saturating_sub(decoded))
    );
    let t = Instant::now();
    cell.apply(vec![(ticket_id(&ticket(7)), Some(record(7)))]);
    println!(
        "apply one incremental change (new snapshot + swap): {:?}",
        t.elapsed()
    );

    let probe: Vec<String> = (0..1024).map(|i| ticket(i * 977)).collect();
    let now = SystemTime::now();
    let snap = cell.load_full();
    // Zero allocations on the hot path.
    let a0 = ALLOCS.load(Ordering::SeqCst);
    for i in 0..N {
        let ok = snap.check(Some(black_box(&probe[i & 1023])), now);
        black_box(ok.is_ok());
    }
    let allocs = ALLOCS.load(Ordering::SeqCst) - a0;
    println!("allocations during {N} checks: {allocs}");
    assert_eq!(allocs, 0, "the ticket check allocated");

    let mut i = 0usize;
    c.bench_function("ticket check, 1M-ticket snapshot", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(snap.check(Some(black_box(&probe[i & 1023])), now).is_ok())
        });
    });
    c.bench_function("ticket check, unknown ticket", |b| {
        b.iter(|| {
            black_box(
                snap.check(
                    Some(black_box("not-a-ticket-at-all-0000000000000000000000")),
                    now,
                )
                .is_err(),
            )
        });
    });
    c.bench_function("snapshot load (arc-swap guard)", |b| {
        b.iter(|| black_box(cell.load().len()));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
