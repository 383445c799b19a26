//! [`WhenWoken`]: a future polled again only after its own waker fired.
//!
//! A connection's loop wakes for every read and write, and polls each of
//! its branches every time; a pending `watch` wait takes its channel's lock
//! on each such poll. Wrapped, it costs an atomic load instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

pin_project_lite::pin_project! {
    /// Polls `fut` on the first poll and then only once it has woken the task.
    pub(crate) struct WhenWoken<F> {
        #[pin]
        fut: F,
        flag: Arc<Flag>,
    }
}

/// Set by `fut`'s waker; remembers the task to wake.
#[derive(Default)]
pub(crate) struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

impl<F> WhenWoken<F> {
    /// Wraps `fut`.
    pub(crate) fn new(fut: F) -> Self {
        let flag = Arc::new(Flag::default());
        // The first poll goes through.
        flag.woken.store(true, Ordering::Relaxed);
        WhenWoken { fut, flag }
    }
}

impl<F> WhenWoken<F> {
    /// The wrapped future, to change it (e.g. reset a timer); it is polled
    /// on the next poll whether or not it woke the task.
    pub(crate) fn inner(self: Pin<&mut Self>) -> Pin<&mut F> {
        let this = self.project();
        this.flag.woken.store(true, Ordering::Release);
        this.fut
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !this.flag.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        {
            let mut task = this
                .flag
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let waker = Waker::from(this.flag.clone());
        this.fut.poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wrapped_future_completes_when_its_own_waker_fires() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let waiting = tokio::spawn(WhenWoken::new(rx));
        tokio::task::yield_now().await;
        tx.send(7).unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), 7);
    }
}
