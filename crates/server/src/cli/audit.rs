//! `agent-server audit export --since DATE`: the audit trail from DATE on, oldest first, as
//! NDJSON (one FHIR `AuditEvent` a line, as FHIR bulk data writes them), read from the store page
//! by page so that a long trail never sits in memory.

use std::io::Write;

use crate::api::search::instant_filter;
use crate::store::{self, StoreConfig, StoreError};

const PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("--since: {0} (expected a date such as 2026-11-29 or 2026-11-29T07:00:00Z)")]
    Since(String),
    #[error("cannot write the export")]
    Write(#[source] std::io::Error),
}

/// Writes every event recorded at or after `since` to `out`; how many.
pub async fn export(config: &StoreConfig, since: &str, out: &mut dyn Write) -> Result<usize, ExportError> {
    let since = instant_filter(since, "--since").map_err(|e| ExportError::Since(e.0))?.low;
    let store = store::open(config).await?;
    let (mut after, mut written) = (None::<(String, String)>, 0);
    loop {
        let page = store.audit_since(&since, after.as_ref().map(|(r, i)| (r.as_str(), i.as_str())), PAGE).await?;
        for e in &page {
            serde_json::to_writer(&mut *out, &e.to_fhir()).map_err(|e| ExportError::Write(e.into()))?;
            out.write_all(b"\n").map_err(ExportError::Write)?;
        }
        written += page.len();
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some((last.recorded.clone(), last.id.clone())),
            _ => break,
        }
    }
    out.flush().map_err(ExportError::Write)?;
    Ok(written)
}
