//! Fakes fail loudly: a fake runs its work through [`Panics::guard`], and the test calls
//! [`FakeHandle::join`] at the end, which re-raises the first panic inside the fake with its own
//! message (a panic in a server task would otherwise vanish and the test see only a timeout).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use tokio::task::JoinHandle;

/// The panics caught inside a fake.
#[derive(Clone, Default)]
pub struct Panics(Arc<Mutex<Vec<Box<dyn Any + Send>>>>);

impl Panics {
    /// Runs `f`, keeping its panic (if any) for [`FakeHandle::join`].
    pub async fn guard<F: Future>(&self, f: F) -> Option<F::Output> {
        match AssertUnwindSafe(f).catch_unwind().await {
            Ok(v) => Some(v),
            Err(payload) => {
                self.0.lock().unwrap().push(payload);
                None
            }
        }
    }
}

/// A running fake: its server task and the panics of its handlers.
pub struct FakeHandle {
    task: JoinHandle<()>,
    panics: Panics,
}

impl FakeHandle {
    pub fn new(task: JoinHandle<()>, panics: Panics) -> FakeHandle {
        FakeHandle { task, panics }
    }

    /// Stops the fake; re-raises the first panic that happened inside it.
    pub fn join(self) {
        let first = self.panics.0.lock().unwrap().drain(..).next();
        if self.task.is_finished() {
            let task = self.task;
            if let Some(Err(e)) = futures_util::FutureExt::now_or_never(task) {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        } else {
            self.task.abort();
        }
        if let Some(payload) = first {
            std::panic::resume_unwind(payload);
        }
    }
}
