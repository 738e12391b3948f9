//! The agent's logs: to stderr (coloured on a terminal) or appended to a file, as text or JSON,
//! filtered by `EDGE_AGENT_LOG` (default `info`), and kept in the in-memory buffer that answers
//! `agent:logs` ([`crate::logbuf`]).

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::logbuf::LogBuffer;

/// Logs to stderr, or appended to `file`, for the rest of the process.
pub fn init(format: LogFormat, buffer: LogBuffer, file: Option<&Path>) {
    let filter = EnvFilter::try_from_env("EDGE_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let opened = file.map(|f| {
        std::fs::create_dir_all(f.parent().unwrap_or(Path::new(".")))?;
        std::fs::OpenOptions::new().create(true).append(true).open(f)
    });
    let (writer, ansi) = match opened {
        Some(Ok(f)) => (BoxMakeWriter::new(std::sync::Mutex::new(f)), false),
        Some(Err(e)) => {
            eprintln!("agent: cannot open the log file {}: {e}; logging to stderr", file.unwrap().display());
            (BoxMakeWriter::new(std::io::stderr), false)
        }
        None => (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal()),
    };
    let (text, json) = match format {
        LogFormat::Text => (Some(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer)), None),
        LogFormat::Json => (None, Some(tracing_subscriber::fmt::layer().json().with_writer(writer))),
    };
    tracing_subscriber::registry().with(filter).with(text).with(json).with(buffer).init();
}
