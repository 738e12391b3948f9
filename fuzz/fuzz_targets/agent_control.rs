//! The request line of the agent's control socket (`daemon::control::read_ask`), as the host's
//! `agent upgrade` writes it and anyone with the socket's permissions could: any bytes give a
//! request or an error; a request is one whole line of at most `MAX_ASK` bytes, nothing after
//! its newline is taken (an offline bundle's bytes follow it), and it reads back the same from
//! its own JSON.
#![no_main]

use std::sync::OnceLock;

use edge_agent::control::UpgradeAsk;
use edge_agent::daemon::control::{read_ask, MAX_ASK};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, BufReader};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let mut reader = BufReader::new(data);
    let (got, rest) = runtime().block_on(async {
        let got = read_ask(&mut reader).await;
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        (got, rest)
    });
    let Ok(ask) = got else { return };
    let end = data.iter().position(|b| *b == b'\n').expect("a request is a whole line");
    assert!((end as u64) < MAX_ASK, "a line of {} bytes was taken", end + 1);
    assert_eq!(rest, &data[end + 1..], "what follows the line is left for the bundle");
    let again: UpgradeAsk = serde_json::from_str(&serde_json::to_string(&ask).unwrap()).unwrap();
    assert_eq!(again, ask);
});
