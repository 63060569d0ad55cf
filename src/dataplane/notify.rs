//! A one-waiter wake-up cell for tasks on the same worker thread (no atomics, no
//! allocation): a connection's "something to write" signal, a `get`'s "room in the queue".

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

/// Set-and-wake flag with one waiting task.
#[derive(Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Raise the flag and wake the waiter.
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Ready (and lower the flag) if raised, else remember `cx`'s waker.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.set.replace(false) {
            return Poll::Ready(());
        }
        let mut slot = self.waker.borrow_mut();
        match slot.as_ref() {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Wait until raised.
    pub async fn wait(&self) {
        poll_fn(|cx| self.poll_take(cx)).await;
    }
}
