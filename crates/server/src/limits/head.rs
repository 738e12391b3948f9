//! A connection's first request head, read before hyper takes the connection. An HTTP/1
//! connection in hyper holds two 8 KiB buffers from its start; a peer that trickles its headers
//! or sends half a request line would hold them too. Read here first, such a peer holds only
//! what it sent, and hyper gets those bytes back (`Counted::replay`) once the head is whole.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest request head, request line included: read here up to this, and hyper answers a
/// longer one 431.
pub const MAX_HEAD: usize = 64 * 1024;

/// Reads until the end of the first request head (a blank line), the head limit, or EOF: what
/// was read, or None when the peer closed without sending anything.
pub async fn first_head<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Option<Bytes>> {
    let mut buf = BytesMut::with_capacity(512);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        let before = buf.len();
        if io.read_buf(&mut buf).await? == 0 {
            return Ok((!buf.is_empty()).then(|| buf.freeze()));
        }
        // The blank line may straddle what was there and what came. Lines may end in a bare LF
        // (which the parser takes too): `\n\n` and `\n\r\n` end a head as `\r\n\r\n` does.
        let from = before.saturating_sub(2);
        let blank = |w: &[u8]| w.starts_with(b"\n\n") || w == b"\n\r\n";
        if buf[from..].windows(3).any(blank) || buf[from..].ends_with(b"\n\n") || buf.len() >= MAX_HEAD {
            return Ok(Some(buf.freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn the_head_is_read_whole() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            for part in [&b"GET / HTTP/1.1\r\nHost: x\r"[..], b"\n", b"\r", b"\nbody"] {
                client.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let head = first_head(&mut server).await.unwrap().unwrap();
        assert!(head.starts_with(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "{head:?}");
        drop(writer.await.unwrap());
    }

    /// Lines that end in a bare LF end the head at their blank line, not at the header timeout.
    #[tokio::test]
    async fn a_head_with_bare_lf_line_endings_ends_at_its_blank_line() {
        for head in [&b"GET / HTTP/1.1\nHost: x\n\n"[..], b"GET / HTTP/1.1\r\nHost: x\n\r\n", b"GET / HTTP/1.0\n\n"] {
            let (mut client, mut server) = tokio::io::duplex(1024);
            for byte in head {
                client.write_all(&[*byte]).await.unwrap();
            }
            // The client keeps its end open: only the blank line can end the read.
            let read = tokio::time::timeout(std::time::Duration::from_secs(2), first_head(&mut server)).await;
            assert_eq!(&read.expect("the head ended").unwrap().unwrap()[..], head);
            drop(client);
        }
    }

    #[tokio::test]
    async fn a_peer_that_sends_nothing_gives_none() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert_eq!(first_head(&mut server).await.unwrap(), None);
    }
}
