//! The `raftkv` binary's contract: exit codes without a cluster. The demo end to end is
//! `tests/tests/demo.rs` (the fault tier).

use std::process::{Command, Output};

fn raftkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raftkv")).args(args).env_remove("RAFTKV_ENDPOINTS").output().expect("run raftkv")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A port nothing listens on (bound, then released).
fn dead_endpoint() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["cas", "k"][..],
        &["cas", "k", "a", "b", "c"],
        &["cas", "k", "--expect-absent", "a", "b"],
        &["--timeout", "5x", "get", "k"],
        &["no-such-command"],
        &["put", "only-key"],
    ] {
        let out = raftkv(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn deadline_without_a_leader_exits_3() {
    let ep = dead_endpoint();
    let out = raftkv(&["--endpoints", &ep, "--timeout", "300ms", "put", "k", "v"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("may or may not have been applied"), "{}", text(&out.stderr));
    let out = raftkv(&["--endpoints", &ep, "--timeout", "300ms", "get", "k"]);
    assert_eq!(out.status.code(), Some(3));
    let out = raftkv(&["--endpoints", &ep, "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("no ("), "{}", text(&out.stdout));
}

#[test]
fn invalid_input_exits_1_without_panicking() {
    let out = raftkv(&["--endpoints", &dead_endpoint(), "put", "", "v"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("rejected"), "{}", text(&out.stderr));
}
