//! `raftkv up`: a local cluster whose nodes each serve `/metrics` on their own admin
//! port, the URLs printed; every URL answers with this node's metrics; SIGTERM stops
//! the cluster and `up` exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DEADLINE: Duration = Duration::from_secs(60);
const NODES: u16 = 3;

/// A base port with `2 * NODES` free ports from it (RPC then admin), found by trying.
/// The tests of this file run one at a time: each looks for free ports and then has
/// `up` bind them, and two at once found the same range (one `up` then saw its port
/// taken by the other test's probe).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn free_range() -> u16 {
    for base in (21_000..60_000).step_by(97) {
        let all_free = (0..2 * NODES).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {} consecutive free ports on 127.0.0.1", 2 * NODES);
}

fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect to {host}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {buf}"));
    (code, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// Stops `up` (SIGTERM) when the test ends, whichever way.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
            let _ = self.0.wait();
        }
    }
}

#[test]
fn up_prints_a_metrics_url_per_node_and_each_answers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let base = free_range();
    let admin = base + NODES;
    let mut up = Up(Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(["up", "--nodes", &NODES.to_string(), "--base-port", &base.to_string()])
        .args(["--admin-base-port", &admin.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run raftkv up"));
    let (tx, rx) = mpsc::channel();
    let stdout = up.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let mut out = Vec::new();
    while !out.iter().any(|l: &String| l.starts_with("press Ctrl-C")) {
        let left = DEADLINE.checked_sub(start.elapsed()).unwrap_or_else(|| panic!("up never got ready: {out:#?}"));
        out.push(rx.recv_timeout(left).unwrap_or_else(|_| panic!("up stopped printing: {out:#?}")));
    }
    let urls: Vec<&str> =
        out.iter().filter_map(|l| l.split_whitespace().skip_while(|w| *w != "metrics").nth(1)).collect();
    let want: Vec<String> = (0..NODES).map(|i| format!("http://127.0.0.1:{}/metrics", admin + i)).collect();
    assert_eq!(urls, want, "{out:#?}");
    for (i, url) in urls.iter().enumerate() {
        let (code, body) = http_get(url);
        assert_eq!(code, 200, "{url}: {body}");
        let id = format!("raftkv_term{{server_id=\"{}\"}}", i + 1);
        assert!(body.lines().any(|l| l.starts_with(&id)), "{url} has no {id}:\n{body}");
    }
    kill(Pid::from_raw(up.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = up.0.wait().unwrap();
    assert!(status.success(), "up exited {status}");
}

#[test]
fn up_refuses_admin_ports_that_overlap_the_rpc_ports() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let base = free_range();
    let out = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(["up", "--base-port", &base.to_string(), "--admin-base-port", &(base + 1).to_string(), "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--admin-base-port") && stderr.contains("overlaps"), "{stderr}");
}
