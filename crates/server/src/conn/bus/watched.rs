//! A bus whose every failure is noted in the node's [`Outages`], and whose first success after
//! the connection was lost says it is back: the hub uses the bus through it, so no call site has
//! to remember.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use edge_agent_base::time::now_ms;
use edge_agent_wire::Callback;

use super::{Bus, BusError, Held, Inbound};
use crate::conn::outages::{Infra, Outages};
use crate::model::agent::StatusRow;

pub struct Watched {
    inner: Arc<dyn Bus>,
    outages: Arc<Outages>,
}

impl Watched {
    pub fn new(inner: Arc<dyn Bus>, outages: Arc<Outages>) -> Watched {
        Watched { inner, outages }
    }

    fn note<T>(&self, result: Result<T, BusError>) -> Result<T, BusError> {
        match &result {
            Ok(_) => self.outages.bus_back(now_ms()),
            Err(_) => self.outages.failed(Infra::Bus, now_ms()),
        }
        result
    }
}

#[async_trait]
impl Bus for Watched {
    async fn hold(&self, held: &Held) -> Result<(), BusError> {
        self.note(self.inner.hold(held).await)
    }
    async fn release(&self, agent: &str, conn: u64) -> Result<bool, BusError> {
        self.note(self.inner.release(agent, conn).await)
    }
    async fn refresh(&self, held: &[Held]) -> Result<(), BusError> {
        self.note(self.inner.refresh(held).await)
    }
    fn record_ttl(&self) -> Option<Duration> {
        self.inner.record_ttl()
    }
    async fn presence(&self, ids: &[String]) -> Result<Vec<Option<StatusRow>>, BusError> {
        self.note(self.inner.presence(ids).await)
    }
    async fn where_held(&self, ids: &[String]) -> Result<Vec<Option<String>>, BusError> {
        self.note(self.inner.where_held(ids).await)
    }
    async fn forward(&self, agent: &str, frame: &str) -> Result<bool, BusError> {
        self.note(self.inner.forward(agent, frame).await)
    }
    async fn expect_reply(&self, callback: &Callback, wait: Duration) -> Result<(), BusError> {
        self.note(self.inner.expect_reply(callback, wait).await)
    }
    async fn route_reply(&self, callback: &Callback, frame: &str) -> Result<bool, BusError> {
        self.note(self.inner.route_reply(callback, frame).await)
    }
    async fn broadcast(&self, msg: &Inbound) -> Result<(), BusError> {
        self.note(self.inner.broadcast(msg).await)
    }
}
