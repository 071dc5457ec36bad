//! Helpers shared by the tests that drive real `rampart serve` processes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Runs a `rampart serve` that must be refused (exit within 20 s, unsuccessfully) and returns what it printed on
/// stderr.
#[allow(dead_code)]
pub fn refused(mut command: Command) -> String {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("rampart serve runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rampart serve started where it should have been refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().expect("piped").read_to_string(&mut stderr).expect("stderr");
    assert!(!status.success(), "{stderr}");
    stderr
}
