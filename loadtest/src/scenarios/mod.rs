//! The scenarios, one module each, and what they share: client threads with one monoio
//! runtime each, and splitting N connections over them.

pub mod connect;
pub mod idle;
pub mod live;
pub mod vod;

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Runs `f(thread_index)` on `threads` threads, each inside its own monoio runtime
/// (io_uring where the kernel has it, epoll otherwise).
pub fn run_threads<F, Fut>(threads: usize, f: F) -> Vec<std::thread::JoinHandle<()>>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    (0..threads)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("monoio runtime");
                rt.block_on(f(i));
            })
        })
        .collect()
}

/// How many of `n` items thread `t` of `threads` takes, and the index of its first.
pub fn share(n: usize, threads: usize, t: usize) -> (usize, usize) {
    let per = n.div_ceil(threads.max(1));
    let first = (t * per).min(n);
    (per.min(n - first), first)
}

/// Counts by kind (close codes, error codes, HTTP statuses), merged from many tasks.
#[derive(Default)]
pub struct Kinds(Mutex<BTreeMap<String, u64>>);

impl Kinds {
    pub fn add_all(&self, local: BTreeMap<String, u64>) {
        if let Ok(mut m) = self.0.lock() {
            for (k, v) in local {
                *m.entry(k).or_default() += v;
            }
        }
    }

    pub fn json(&self) -> serde_json::Value {
        self.0
            .lock()
            .map(|m| serde_json::json!(*m))
            .unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.0.lock().map(|m| m.values().sum()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_item_once() {
        for (n, threads) in [(0, 2), (1, 2), (5, 2), (1000, 3), (7, 7), (3, 8)] {
            let mut seen = Vec::new();
            for t in 0..threads {
                let (k, first) = share(n, threads, t);
                seen.extend(first..first + k);
            }
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "{n} over {threads}");
        }
    }
}
