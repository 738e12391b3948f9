//! A socket's queue of frames to send: bounded, many senders, one receiver, and nothing allocated
//! while it is empty. (A tokio channel allocates a block of 32 slots up front: 1.3 KiB for each of
//! thousands of idle sockets, whose queues are empty almost always.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Frames a queue holds before its senders wait.
const CAPACITY: usize = 16;

/// The socket is gone: the frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

struct Shared {
    state: Mutex<State>,
    /// A frame was queued, or the last sender left.
    queued: Notify,
    /// Room was made, or the receiver left.
    room: Notify,
}

struct State {
    frames: VecDeque<String>,
    senders: usize,
    receiver_gone: bool,
}

/// Queues frames; cloned for each sender.
pub struct Outbox(Arc<Shared>);

/// Takes the frames, in order, on the socket's task.
pub struct Inbox(Arc<Shared>);

/// A new empty queue.
pub fn queue() -> (Outbox, Inbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { frames: VecDeque::new(), senders: 1, receiver_gone: false }),
        queued: Notify::new(),
        room: Notify::new(),
    });
    (Outbox(shared.clone()), Inbox(shared))
}

impl Outbox {
    /// Queues `frame`, waiting for room while the queue is full; `Closed` once the socket is gone.
    pub async fn send(&self, frame: String) -> Result<(), Closed> {
        loop {
            // Registered before the look, so that room made in between is not missed.
            let room = self.0.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut s = self.0.state.lock().unwrap();
                if s.receiver_gone {
                    return Err(Closed);
                }
                if s.frames.len() < CAPACITY {
                    s.frames.push_back(frame);
                    drop(s);
                    self.0.queued.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Outbox {
        self.0.state.lock().unwrap().senders += 1;
        Outbox(self.0.clone())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let last = {
            let mut s = self.0.state.lock().unwrap();
            s.senders -= 1;
            s.senders == 0
        };
        if last {
            self.0.queued.notify_one();
        }
    }
}

impl Inbox {
    /// The next frame; None once it is empty and every sender has gone. Cancel-safe: a frame is
    /// taken only by the poll that returns it.
    pub async fn recv(&mut self) -> Option<String> {
        loop {
            let queued = self.0.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            {
                let mut s = self.0.state.lock().unwrap();
                if let Some(frame) = s.frames.pop_front() {
                    if s.frames.is_empty() {
                        // An idle socket keeps no buffer.
                        s.frames = VecDeque::new();
                    }
                    drop(s);
                    self.0.room.notify_waiters();
                    return Some(frame);
                }
                if s.senders == 0 {
                    return None;
                }
            }
            queued.await;
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().receiver_gone = true;
        self.0.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn frames_come_in_order_senders_wait_for_room_and_both_ends_see_the_other_go() {
        let (tx, mut rx) = queue();
        for i in 0..CAPACITY {
            tx.send(format!("{i}")).await.unwrap();
        }
        // Full: the next send waits until a frame is taken.
        let more = tx.clone();
        let waiting = tokio::spawn(async move { more.send("last".into()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a send to a full queue waits");
        assert_eq!(rx.recv().await.as_deref(), Some("0"));
        assert_eq!(waiting.await.unwrap(), Ok(()));
        let mut got = Vec::new();
        for _ in 0..CAPACITY {
            got.push(rx.recv().await.unwrap());
        }
        let want: Vec<String> = (1..CAPACITY).map(|i| i.to_string()).chain(["last".to_string()]).collect();
        assert_eq!(got, want);

        // Every sender gone: the receiver ends once the queue is empty.
        tx.send("after".into()).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.as_deref(), Some("after"));
        assert_eq!(rx.recv().await, None);

        // The receiver gone: senders get Closed, also one that was waiting for room.
        let (tx, rx) = queue();
        for i in 0..CAPACITY {
            tx.send(format!("{i}")).await.unwrap();
        }
        let blocked = tokio::spawn(async move { tx.send("x".into()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(rx);
        assert_eq!(blocked.await.unwrap(), Err(Closed));
    }

    #[tokio::test]
    async fn a_receiver_waiting_wakes_for_a_frame_from_another_task() {
        let (tx, mut rx) = queue();
        let reader = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send("hello".into()).await.unwrap();
        assert_eq!(reader.await.unwrap().as_deref(), Some("hello"));
    }
}
