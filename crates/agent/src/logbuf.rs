//! A bounded in-memory ring of recent log records, filled by a `tracing` layer, read by
//! `agent:logs:request`. Memory stays flat: the oldest record goes when a new one comes.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

pub const DEFAULT_CAPACITY: usize = 500;

#[derive(Clone)]
pub struct LogBuffer {
    inner: Arc<Mutex<VecDeque<Value>>>,
    capacity: usize,
}

impl LogBuffer {
    pub fn new(capacity: usize) -> Self {
        LogBuffer { inner: Arc::new(Mutex::new(VecDeque::with_capacity(capacity.min(64)))), capacity }
    }

    pub fn push(&self, record: Value) {
        let mut q = self.inner.lock().unwrap();
        if q.len() == self.capacity {
            q.pop_front();
        }
        q.push_back(record);
    }

    /// The newest `limit` records, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<Value> {
        let q = self.inner.lock().unwrap();
        q.iter().skip(q.len().saturating_sub(limit)).cloned().collect()
    }
}

impl<S: Subscriber> Layer<S> for LogBuffer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut visitor = Fields { msg: String::new(), fields: Map::new() };
        event.record(&mut visitor);
        let mut record = Map::new();
        record.insert("level".into(), json!(meta.level().as_str()));
        record.insert("msg".into(), json!(visitor.msg));
        record.insert("timestamp".into(), json!(edge_agent_base::time::now_iso()));
        record.insert("target".into(), json!(meta.target()));
        record.extend(visitor.fields);
        self.push(Value::Object(record));
    }
}

struct Fields {
    msg: String,
    fields: Map<String, Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, json!(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.put(field, json!(s));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.msg = value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
        } else {
            self.fields.insert(field.name().to_string(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn keeps_the_newest_records_with_their_fields() {
        let buf = LogBuffer::new(3);
        let subscriber = tracing_subscriber::registry().with(buf.clone());
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..5 {
                tracing::info!(attempt = i, "try {i}");
            }
        });
        let recent = buf.recent(10);
        assert_eq!(recent.len(), 3);
        assert_eq!(recent[0]["msg"], "try 2");
        assert_eq!(recent[2]["attempt"], 4);
        assert_eq!(recent[2]["level"], "INFO");
        assert_eq!(buf.recent(1)[0]["msg"], "try 4");
    }
}
