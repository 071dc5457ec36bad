//! Helpers shared by the tests that drive real `rampart serve` processes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::time::Duration;

/// A minimal blocking HTTP/1.1 exchange: (status, body), or `None` if the node did not answer.
pub fn http(method: &str, addr: SocketAddr, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Node processes a test started and their data directory. When the test ends, passed or failed, the processes
/// are killed (SIGKILL) and reaped, and only then is the directory removed.
// Not every test binary that includes this module starts its processes this way.
#[allow(dead_code)]
pub struct Processes {
    pub children: Vec<Child>,
    pub dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl Processes {
    pub fn new() -> Processes {
        Processes { children: Vec::new(), dir: tempfile::tempdir().expect("temp dir") }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
