//! The bus between nodes, on Redis: one multiplexed connection per node (the redis crate's
//! connection manager, which reconnects and resubscribes by itself), subscribed to the node's own
//! channel `ea:node:<node>` and to `ea:all`, where revocations are told to every node.
//!
//! Keys:
//! - `ea:presence:<agent>` = `<node> <conn> <updated> <version>`, expiring after the presence TTL
//!   unless the holding node renews it (every third of the TTL, one script call per thousand
//!   agents): a dead node's agents stop being "connected" within the TTL.
//! - `ea:cb:<callback>` = the node where a request waits, for as long as it waits.
//!
//! Forwarding a frame and routing a reply are each one script call (read the node, publish to
//! it); `PUBLISH` counts the receivers, so a frame for a node that is gone is known undelivered.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use edge_agent_wire::Callback;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, PushKind, Script, Value};
use tokio::sync::{mpsc, Notify};

use super::{Bus, BusError, Held, Inbound};
use edge_agent_wire::AgentStatus;

use crate::model::agent::StatusRow;

/// How long one Redis call may take.
const CALL_LIMIT: Duration = Duration::from_secs(3);
/// The channel every node listens on.
const ALL: &str = "ea:all";
/// Records renewed per script call.
const REFRESH_BATCH: usize = 1000;

/// Forgets the record KEYS[1] if it is this node's (ARGV[1], its prefix): 1; 0 when there is
/// none; -1 when it names another node.
const RELEASE: &str = "local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if string.sub(v, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return -1";

/// ARGV: ttl ms, then (prefix, value) per key: renews a record that is absent or still this node's.
const REFRESH: &str = "for i, key in ipairs(KEYS) do
  local prefix, value = ARGV[2 * i], ARGV[2 * i + 1]
  local v = redis.call('GET', key)
  if (not v) or string.sub(v, 1, #prefix) == prefix then redis.call('SET', key, value, 'PX', ARGV[1]) end
end
return #KEYS";

/// Publishes ARGV[1] to the node named at the start of KEYS[1]; -1 when there is none.
const PUBLISH_TO_HOLDER: &str = "local v = redis.call('GET', KEYS[1])
if not v then return -1 end
local node = string.match(v, '^(%S+)')
return redis.call('PUBLISH', 'ea:node:' .. node, ARGV[1])";

pub struct RedisBus {
    conn: ConnectionManager,
    node: String,
    ttl: Duration,
    release: Script,
    refresh: Script,
    publish: Script,
    /// Woken when the connection dropped, so that the records are renewed as soon as it is back.
    pub reconnected: Arc<Notify>,
}

fn presence_key(agent: &str) -> String {
    format!("ea:presence:{agent}")
}

fn callback_key(callback: &Callback) -> String {
    format!("ea:cb:{callback}")
}

async fn bounded<T>(f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, BusError> {
    Ok(tokio::time::timeout(CALL_LIMIT, f).await.map_err(|_| BusError::Timeout(CALL_LIMIT))??)
}

/// The message of a pub/sub push, if it is one this node understands.
fn inbound(push: redis::PushInfo) -> Option<Inbound> {
    if push.kind != PushKind::Message {
        return None;
    }
    let payload = match push.data.get(1)? {
        Value::BulkString(bytes) => bytes.clone(),
        _ => return None,
    };
    serde_json::from_slice(&payload).ok()
}

impl RedisBus {
    /// Connects as node `node` (failing within seconds when Redis cannot be reached); the frames
    /// other nodes send to this one arrive on the returned receiver.
    pub async fn connect(
        url: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<(RedisBus, mpsc::UnboundedReceiver<Inbound>), BusError> {
        let client = super::redis_tls::client(url)?;
        let (push_tx, mut push_rx) = mpsc::unbounded_channel::<redis::PushInfo>();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let mut conn = bounded(client.get_connection_manager_with_config(config))
            .await
            .map_err(|e| super::redis_tls::connect_failed(url, e))?;
        bounded(conn.subscribe(format!("ea:node:{node}"))).await?;
        bounded(conn.subscribe(ALL)).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let reconnected = Arc::new(Notify::new());
        let wake = reconnected.clone();
        tokio::spawn(async move {
            while let Some(push) = push_rx.recv().await {
                if push.kind == PushKind::Disconnection {
                    tracing::warn!("lost the connection to Redis; reconnecting");
                    wake.notify_one();
                } else if let Some(msg) = inbound(push) {
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
            }
        });
        let bus = RedisBus {
            conn,
            node: node.to_string(),
            ttl,
            release: Script::new(RELEASE),
            refresh: Script::new(REFRESH),
            publish: Script::new(PUBLISH_TO_HOLDER),
            reconnected,
        };
        Ok((bus, rx))
    }

    /// What every record this node wrote starts with. Records are this node's whichever of its
    /// sockets they name: the hub holds or releases an agent as a whole.
    fn prefix(&self) -> String {
        format!("{} ", self.node)
    }

    /// The presence record of each agent, in the order asked (one MGET).
    async fn records(&self, ids: &[String]) -> Result<Vec<Option<String>>, BusError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let mut c = self.conn.clone();
        let keys: Vec<String> = ids.iter().map(|id| presence_key(id)).collect();
        bounded(c.mget(keys)).await
    }

    fn value(&self, held: &Held) -> String {
        format!("{}{} {} {}", self.prefix(), held.conn, held.status.updated, held.status.version)
    }
}

/// A Redis URL without its password, for messages.
pub fn redact(url: &str) -> String {
    edge_agent_base::secret::redact_url(url)
}

fn parse_presence(value: &str) -> Option<StatusRow> {
    // The version comes last: it is the agent's text and may hold spaces.
    let mut fields = value.splitn(4, ' ');
    let (_node, _conn, updated, version) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    Some(StatusRow { status: AgentStatus::Connected, version: version.into(), updated: updated.into() })
}

/// `<node> <conn>`: the socket a presence record names.
fn socket_of(value: &str) -> Option<String> {
    let mut fields = value.splitn(3, ' ');
    let (node, conn) = (fields.next()?, fields.next()?);
    Some(format!("{node} {conn}"))
}

#[async_trait]
impl Bus for RedisBus {
    async fn hold(&self, held: &Held) -> Result<(), BusError> {
        let mut c = self.conn.clone();
        let ttl = self.ttl.as_millis() as u64;
        bounded(c.pset_ex::<_, _, ()>(presence_key(&held.agent), self.value(held), ttl)).await
    }

    async fn release(&self, agent: &str, _conn: u64) -> Result<bool, BusError> {
        let mut c = self.conn.clone();
        let mut inv = self.release.key(presence_key(agent));
        inv.arg(self.prefix());
        bounded(inv.invoke_async::<i64>(&mut c)).await.map(|n| n == -1)
    }

    async fn refresh(&self, held: &[Held]) -> Result<(), BusError> {
        if held.is_empty() {
            // Nothing to renew, but the connection is checked all the same (and re-made if lost).
            let mut c = self.conn.clone();
            return bounded(redis::cmd("PING").query_async::<()>(&mut c)).await;
        }
        for chunk in held.chunks(REFRESH_BATCH) {
            let mut inv = self.refresh.prepare_invoke();
            inv.arg(self.ttl.as_millis() as u64);
            for h in chunk {
                inv.key(presence_key(&h.agent)).arg(self.prefix()).arg(self.value(h));
            }
            let mut c = self.conn.clone();
            bounded(inv.invoke_async::<i64>(&mut c)).await?;
        }
        Ok(())
    }

    fn record_ttl(&self) -> Option<Duration> {
        Some(self.ttl)
    }

    async fn presence(&self, ids: &[String]) -> Result<Vec<Option<StatusRow>>, BusError> {
        let values = self.records(ids).await?;
        Ok(values.into_iter().map(|v| v.as_deref().and_then(parse_presence)).collect())
    }

    async fn where_held(&self, ids: &[String]) -> Result<Vec<Option<String>>, BusError> {
        let values = self.records(ids).await?;
        Ok(values.into_iter().map(|v| v.as_deref().and_then(socket_of)).collect())
    }

    async fn forward(&self, agent: &str, frame: &str) -> Result<bool, BusError> {
        let msg = serde_json::to_string(&Inbound::Deliver { agent: agent.into(), frame: frame.into() })
            .expect("a bus message serializes");
        let mut c = self.conn.clone();
        let mut inv = self.publish.key(presence_key(agent));
        inv.arg(msg);
        let receivers: i64 = bounded(inv.invoke_async(&mut c)).await?;
        Ok(receivers > 0)
    }

    async fn expect_reply(&self, callback: &Callback, wait: Duration) -> Result<(), BusError> {
        let mut c = self.conn.clone();
        let ms = (wait + Duration::from_secs(1)).as_millis() as u64;
        bounded(c.pset_ex::<_, _, ()>(callback_key(callback), &self.node, ms)).await
    }

    async fn route_reply(&self, callback: &Callback, frame: &str) -> Result<bool, BusError> {
        let msg = serde_json::to_string(&Inbound::Reply { callback: callback.clone(), frame: frame.into() })
            .expect("a bus message serializes");
        let mut c = self.conn.clone();
        let mut inv = self.publish.key(callback_key(callback));
        inv.arg(msg);
        let receivers: i64 = bounded(inv.invoke_async(&mut c)).await?;
        Ok(receivers > 0)
    }

    async fn broadcast(&self, msg: &Inbound) -> Result<(), BusError> {
        let msg = serde_json::to_string(msg).expect("a bus message serializes");
        let mut c = self.conn.clone();
        bounded(c.publish::<_, _, i64>(ALL, msg)).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_records_round_trip() {
        let s = parse_presence("n1 7 2026-11-29T07:00:00.000Z 1.4.2").unwrap();
        assert_eq!((s.status, s.version.as_str()), (AgentStatus::Connected, "1.4.2"));
        assert_eq!(s.updated, "2026-11-29T07:00:00.000Z");
        assert_eq!(parse_presence("n1 7"), None);
        let msg = Inbound::Reply { callback: "Agent/a-1".into(), frame: "{}".into() };
        let text = serde_json::to_string(&msg).unwrap();
        assert_eq!(serde_json::from_str::<Inbound>(&text).unwrap(), msg);
    }
}
