//! The io driver: one monoio runtime per thread, io_uring or, where io_uring cannot be set
//! up and the configuration allows it, epoll.

use std::future::Future;

use crate::config::DriverChoice;

/// A runtime that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `driver = "io_uring"` and io_uring is not available.
    #[error("io_uring unavailable: {0}")]
    IoUringUnavailable(std::io::Error),
    /// Neither driver could start.
    #[error("cannot start the epoll driver: {0}")]
    Epoll(std::io::Error),
}

/// Run `main` to completion on a new monoio runtime of the configured driver: io_uring, or
/// epoll where io_uring cannot be set up and the configuration allows it. `on_driver` hears
/// which one before `main` starts; `loud` logs the fallback.
pub fn block_on<F: Future>(
    choice: DriverChoice,
    pool: &monoio::blocking::DefaultThreadPool,
    loud: bool,
    on_driver: impl FnOnce(&'static str),
    main: F,
) -> Result<F::Output, RuntimeError> {
    if choice != DriverChoice::Epoll {
        let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(1024)
            .attach_thread_pool(Box::new(pool.clone()))
            .build();
        match built {
            Ok(mut rt) => {
                on_driver("io_uring");
                return Ok(rt.block_on(main));
            }
            Err(e) if choice == DriverChoice::Auto => {
                if loud {
                    tracing::warn!("io_uring unavailable ({e}); falling back to epoll");
                }
            }
            Err(e) => return Err(RuntimeError::IoUringUnavailable(e)),
        }
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .attach_thread_pool(Box::new(pool.clone()))
        .build()
        .map_err(RuntimeError::Epoll)?;
    on_driver("epoll");
    Ok(rt.block_on(main))
}

/// Let every other ready task run once before this one goes on (monoio 0.2 has no public
/// `yield_now`): wake ourselves and return `Pending` once.
pub async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

/// Run `task` so that a panic in it ends that task alone, with an error log naming the
/// task's type, instead of the worker's runtime and every connection on it. Used for every
/// task a worker spawns.
pub fn contained<F: Future<Output = ()>>(task: F) -> impl Future<Output = ()> {
    use futures_util::FutureExt;
    // Wrapped in place: no second copy of the task's state, no allocation, and nothing
    // stored beside it (the name comes from the type).
    std::panic::AssertUnwindSafe(task)
        .catch_unwind()
        .map(|outcome| {
            if let Err(panic) = outcome {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    task = std::any::type_name::<F>(),
                    "a task panicked (a bug; other connections are unaffected): {why}"
                );
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_ends_alone() {
        let pool = monoio::blocking::DefaultThreadPool::new(1);
        let done = block_on(
            crate::config::DriverChoice::Epoll,
            &pool,
            false,
            |_| {},
            async {
                contained(async { panic!("boom") }).await;
                contained(async {}).await;
                true
            },
        )
        .unwrap();
        assert!(done);
    }
}
