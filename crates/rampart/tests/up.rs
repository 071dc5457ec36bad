//! `rampart up`: a local cluster in the foreground, its URLs printed, every node serving; SIGTERM stops it
//! cleanly (exit status 0, every node process gone, the ports free again).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::http;

#[test]
fn up_starts_a_cluster_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut up = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["up", "--nodes", "3", "--partitions", "8", "--http-base", "28000", "--peer-base", "28050"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("rampart up starts");
    let mut lines = BufReader::new(up.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        let done = line.contains("Ctrl-C stops");
        printed.push(line);
        if done {
            break;
        }
    }
    let urls: Vec<SocketAddr> = (1..=3).map(|i| SocketAddr::from(([127, 0, 0, 1], 28000 + i))).collect();
    for (i, url) in urls.iter().enumerate() {
        assert!(
            printed.iter().any(|l| l.contains(&format!("http://{url}"))),
            "n{} URL not printed: {printed:?}",
            i + 1
        );
        assert_eq!(http("GET", *url, "/readyz", None).map(|r| r.0), Some(200), "n{} not ready", i + 1);
    }
    let put = http("PUT", urls[0], "/v1/kv/up-test", Some(r#"{"value":"ok"}"#));
    assert_eq!(put.map(|r| r.0), Some(200));

    let status = Command::new("kill").args(["-TERM", &up.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = up.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "rampart up did not stop within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    for url in &urls {
        assert!(TcpStream::connect_timeout(url, Duration::from_millis(200)).is_err(), "{url} still answers");
    }
}
