//! `fieldgate probe`: one HTTP GET to the admin endpoint, for a container's health check
//! in an image that has no shell, curl or wget.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// GETs `path` from `addr`; `Ok(true)` when the answer's status is 200.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all that is needed: `HTTP/1.1 200 OK`.
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_200_is_healthy_and_anything_else_is_not() {
        for (answer, healthy) in [
            (&b"HTTP/1.1 200 OK\r\n\r\n"[..], true),
            (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", false),
        ] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (mut c, _) = l.accept().unwrap();
                let mut req = [0u8; 256];
                let n = c.read(&mut req).unwrap();
                assert!(req[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
                c.write_all(answer).unwrap();
            });
            assert_eq!(
                probe(addr, "/healthz", Duration::from_secs(2)).unwrap(),
                healthy
            );
            server.join().unwrap();
        }
        // Nobody listening: an error, not healthy.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(probe(free, "/healthz", Duration::from_millis(500)).is_err());
    }
}
