//! The bus of a single node: every socket is in this process, which the hub already knows, so
//! there is nothing to record and nobody else to reach.

use std::time::Duration;

use async_trait::async_trait;
use edge_agent_wire::Callback;

use super::{Bus, BusError, Held, Inbound};
use crate::model::agent::StatusRow;

pub struct LocalBus;

#[async_trait]
impl Bus for LocalBus {
    async fn hold(&self, _: &Held) -> Result<(), BusError> {
        Ok(())
    }
    async fn release(&self, _: &str, _: u64) -> Result<bool, BusError> {
        Ok(false)
    }
    async fn refresh(&self, _: &[Held]) -> Result<(), BusError> {
        Ok(())
    }
    fn record_ttl(&self) -> Option<Duration> {
        None
    }
    async fn presence(&self, ids: &[String]) -> Result<Vec<Option<StatusRow>>, BusError> {
        Ok(vec![None; ids.len()])
    }
    async fn where_held(&self, ids: &[String]) -> Result<Vec<Option<String>>, BusError> {
        Ok(vec![None; ids.len()])
    }
    async fn forward(&self, _: &str, _: &str) -> Result<bool, BusError> {
        Ok(false)
    }
    async fn expect_reply(&self, _: &Callback, _: Duration) -> Result<(), BusError> {
        Ok(())
    }
    async fn route_reply(&self, _: &Callback, _: &str) -> Result<bool, BusError> {
        Ok(false)
    }
    async fn broadcast(&self, _: &Inbound) -> Result<(), BusError> {
        Ok(())
    }
}
