//! Criterion micro-benchmarks of the per-frame and per-request hot paths.
//!
//!     cargo bench --bench hotpath
//!
//! - the media frame prefix (head + meta) for a 1 MiB segment, built once per segment;
//! - queueing a shared segment to a subscriber and gathering it for `writev`;
//! - parsing control messages with simd-json, and encoding a reply;
//! - a segment-cache hit.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use mediarelay::fanout::sendq::SendQueue;
use mediarelay::fanout::Seg;
use mediarelay::origin::cache::Cache;
use mediarelay::origin::fs::FsOrigin;
use mediarelay::origin::{headroom_for, Object};
use mediarelay::protocol::{parse, Reply};
use mediarelay::sys::MAX_IOV;

fn segment_object(size: usize) -> Object {
    let key = "live/cam1/seg-0000000042.m4s";
    let headroom = headroom_for(key);
    let mut v = vec![0u8; headroom + size];
    v[headroom..].fill(7);
    Object::new(Bytes::from(v), headroom, key.into())
}

fn bench(c: &mut Criterion) {
    let obj = segment_object(1 << 20);
    c.bench_function("segment frame prefix (1 MiB, once per segment)", |b| {
        b.iter(|| black_box(Seg::build("live/cam1", 42, black_box(&obj))));
    });

    let seg = Seg::build("live/cam1", 42, &obj);
    c.bench_function("queue a shared segment, gather, write it", |b| {
        let mut q = SendQueue::new(8 << 20);
        let now = Instant::now();
        b.iter(|| {
            q.push_segment(1, seg.clone(), now, |_, _| Bytes::new());
            let mut parts: [&[u8]; MAX_IOV] = [&[]; MAX_IOV];
            let (n, _) = q.gather(&mut parts, false);
            let total: usize = parts[..n].iter().map(|p| p.len()).sum();
            black_box(n);
            q.advance(total, now);
        });
    });

    let get = br#"{"op":"get","id":7,"key":"vod/movie/seg-0000000001.m4s"}"#;
    c.bench_function("parse a get", |b| {
        let mut buf = get.to_vec();
        b.iter(|| {
            buf.copy_from_slice(get);
            black_box(parse(&mut buf))
        });
    });
    let sub = br#"{"op":"subscribe","id":1,"stream":"live/cam1","from":"live"}"#;
    c.bench_function("parse a subscribe", |b| {
        let mut buf = sub.to_vec();
        b.iter(|| {
            buf.copy_from_slice(sub);
            black_box(parse(&mut buf))
        });
    });
    c.bench_function("encode a skipped reply", |b| {
        b.iter(|| {
            black_box(
                Reply::Skipped {
                    stream: "live/cam1",
                    from: 40,
                    to: 41,
                }
                .to_json(),
            )
        });
    });

    // A cache holding 1,000 objects, filled through the real origin on a worker runtime.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..1000 {
        std::fs::create_dir_all(dir.path().join("vod")).unwrap();
        std::fs::write(dir.path().join(format!("vod/{i}.bin")), [1u8; 4096]).unwrap();
    }
    let origin = Arc::new(FsOrigin::open(dir.path()).unwrap());
    let cache = Arc::new(Cache::new(origin, 512 << 20, 64 << 20));
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(1)))
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..1000 {
            cache.get(&format!("vod/{i}.bin")).await.unwrap();
        }
    });
    let keys: Vec<String> = (0..1000).map(|i| format!("vod/{i}.bin")).collect();
    let mut i = 0usize;
    c.bench_function("cache hit (1,000 objects)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(cache.lookup(&keys[i]).is_some())
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
