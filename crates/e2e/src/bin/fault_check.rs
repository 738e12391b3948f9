//! `fault-check HISTORY…`: judges the recorded history of fault runs (`bench/faults.py`, the
//! `fault_suite` tests) against the cluster's invariants. Prints each violation and exits 1 when
//! there is one; prints what it judged and exits 0 otherwise.

use std::path::Path;
use std::process::ExitCode;

use edge_agent_e2e::faults::check::check;
use edge_agent_e2e::faults::history::{read, Event, Phase};

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        eprintln!("usage: fault-check HISTORY.jsonl…");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for path in &paths {
        let lines = match read(Path::new(path)) {
            Ok(lines) => lines,
            Err(e) => {
                eprintln!("fault-check: {e}");
                return ExitCode::from(2);
            }
        };
        let count = |f: fn(&Event) -> bool| lines.iter().filter(|l| f(&l.ev)).count();
        let faults = count(|e| matches!(e, Event::Fault { phase: Phase::Start, .. }));
        let calls = count(|e| matches!(e, Event::Invoke { .. }));
        let asked = count(|e| matches!(e, Event::Asked { .. }));
        let violations = check(&lines);
        println!(
            "{path}: {} lines, {faults} faults, {calls} client calls, {asked} upgrade requests received: {}",
            lines.len(),
            if violations.is_empty() { "no violation".to_string() } else { format!("{} violations", violations.len()) }
        );
        for v in &violations {
            println!("  {v}");
        }
        failed |= !violations.is_empty();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
