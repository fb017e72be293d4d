//! The `raftkv` binary's contract without a cluster: exit codes, usage errors caught
//! at parse time, help, version, completions and manual pages, the CLI's own
//! environment variables. The demo end to end is `tests/tests/demo.rs` (the fault
//! tier).

use std::process::{Command, Output};

fn raftkv(args: &[&str]) -> Output {
    raftkv_env(args, &[])
}

/// `raftkv ARGS` with these environment variables (and none of the CLI's or the
/// server's from the caller's environment).
fn raftkv_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftkv"));
    for var in ["RAFTKV_ENDPOINTS", "RAFTKV_CLI_TLS_CERT", "RAFTKV_CLI_TLS_KEY", "RAFTKV_CLI_TLS_CA", "RAFTKV_TLS_CERT"]
    {
        cmd.env_remove(var);
    }
    cmd.env_remove("RAFTKV_TLS_KEY").env_remove("RAFTKV_TLS_CA").envs(env.iter().copied());
    cmd.args(args).output().expect("run raftkv")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A port nothing listens on (bound, then released).
fn dead_endpoint() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

#[test]
fn usage_errors_exit_2_at_once_naming_the_problem() {
    let dead = dead_endpoint();
    for (args, says) in [
        (&["cas", "k"][..], "required"),
        (&["cas", "k", "a", "b", "c"], "unexpected"),
        (&["cas", "k", "--expect-absent", "a", "b"], "exactly one value"),
        (&["--timeout", "5x", "get", "k"], "invalid duration '5x'"),
        (&["get", "k", "--timeout=-1s"], "invalid duration '-1s'"),
        (&["no-such-command"], "unrecognized subcommand"),
        (&["put", "only-key"], "required"),
        (&["--endpoints", "", "get", "k"], "an empty endpoint"),
        (&["--endpoints", &format!("{dead},,{dead}"), "get", "k"], "an empty endpoint"),
        (&["--endpoints", "no-port", "get", "k"], "expected HOST:PORT"),
        (&["--endpoints", "h:99999", "status"], "not a number in 1..=65535"),
        (&["--endpoints", &dead, "scan", "--limit", "0"], "at least 1 pair"),
        (&["--endpoints", &dead, "scan", "--limit", "10", "--all"], "cannot be used with"),
        (&["--endpoints", &dead, "-o", "yaml", "status"], "invalid value 'yaml'"),
        (&["--endpoints", &dead, "--hex", "get", "zz"], "KEY 'zz' is not hex"),
        (&["--endpoints", &dead, "-o", "json", "validate"], "apply to commands that print data"),
        (&["--endpoints", &dead, "transfer-leader", "0"], "non-zero"),
        (&["--endpoints", &dead, "endpoint", "health", "--max-lag", "x"], "invalid value 'x'"),
        (&["--endpoints", &dead, "bench", "--duration", "soon"], "invalid duration 'soon'"),
    ] {
        let start = std::time::Instant::now();
        let out = raftkv(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} should say {says:?}: {stderr}");
        // Refused before any attempt to reach a server (which would retry for 5 s).
        assert!(start.elapsed() < std::time::Duration::from_secs(3), "{args:?} took {:?}", start.elapsed());
    }
}

#[test]
fn help_puts_global_options_under_their_own_heading_once() {
    let top = text(&raftkv(&["--help"]).stdout);
    let global = top.find("Global options:").expect("a Global options heading");
    for flag in ["--endpoints", "--timeout", "--output", "--json", "--hex", "--tls-cert", "RAFTKV_CLI_TLS_CERT"] {
        assert!(top[global..].contains(flag), "{flag} under Global options: {top}");
    }
    assert!(top.contains("Examples:"), "{top}");
    for sub in
        [&["put", "--help"][..], &["scan", "--help"], &["endpoint", "health", "--help"], &["member", "add", "--help"]]
    {
        let help = text(&raftkv(sub).stdout);
        assert!(!help.contains("--endpoints <"), "{sub:?} lists the global options again: {help}");
        assert!(help.contains("Global options: --endpoints, --timeout, -o/--output"), "{sub:?}: {help}");
        assert!(help.contains("Examples:"), "{sub:?}: {help}");
    }
    // Every argument of every command is described.
    let put = text(&raftkv(&["put", "--help"]).stdout);
    assert!(put.contains("<KEY>    The key") && put.contains("[VALUE]  The value"), "{put}");
    assert!(text(&raftkv(&["certs", "--help"]).stdout).contains("certificate authority"));
}

#[test]
fn version_names_the_commit() {
    let out = text(&raftkv(&["--version"]).stdout);
    assert!(out.starts_with(&format!("raftkv {} (commit ", env!("CARGO_PKG_VERSION"))), "{out}");
    let in_git =
        Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok().filter(|o| o.status.success());
    if let Some(git) = in_git {
        // Built from this checkout (cargo reran the build script when HEAD moved).
        let commit = text(&git.stdout);
        assert!(out.contains(&format!("(commit {})", commit.trim())), "{out} vs HEAD {commit}");
    }
}

#[test]
fn completions_and_manual_pages() {
    // Each script's marker, and how it would offer the hidden `server` subcommand.
    let shells = [
        ("bash", "complete -F", "raftkv,server)"),
        ("zsh", "#compdef raftkv", "'server:"),
        ("fish", "complete -c raftkv", "-a \"server\""),
    ];
    for (shell, marker, offers_server) in shells {
        let out = raftkv(&["completion", shell]);
        let script = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        assert!(script.contains(marker), "{shell}: {script}");
        let option = |name: &str| if shell == "fish" { format!("-l {name}") } else { format!("--{name}") };
        for word in ["endpoint".to_string(), "hashkv".into(), option("endpoints"), option("from"), option("max-lag")] {
            assert!(script.contains(&word), "{shell} completion lacks {word}");
        }
        // The pattern that would offer `server` does offer `put`: so its absence means something.
        assert!(script.contains(&offers_server.replace("server", "put")), "{shell}: {script}");
        assert!(!script.contains(offers_server), "{shell}: the hidden server command is offered");
    }
    if Command::new("bash").arg("--version").output().is_ok() {
        // The bash script is valid bash.
        let script = text(&raftkv(&["completion", "bash"]).stdout);
        let check = Command::new("bash").args(["-n", "-c", &script]).output().unwrap();
        assert!(check.status.success(), "{}", text(&check.stderr));
    }
    let page = text(&raftkv(&["man"]).stdout);
    assert!(page.contains(&format!(".TH raftkv 1  \"raftkv {} (commit ", env!("CARGO_PKG_VERSION"))), "{page}");
    assert!(page.contains("endpoint") && page.contains("\\-\\-endpoints"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = raftkv(&["man", "--out", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for page in ["raftkv.1", "raftkv-put.1", "raftkv-endpoint.1", "raftkv-endpoint-hashkv.1", "raftkv-member-add.1"] {
        let body = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(body.contains(".TH"), "{page}: {body}");
    }
    assert!(!dir.path().join("raftkv-server.1").exists(), "no page for the hidden server command");
    let wrote = text(&out.stdout);
    let count = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(wrote.starts_with(&format!("wrote {count} manual pages")), "{wrote} ({count} files)");
}

#[test]
fn the_cli_reads_its_own_tls_variables() {
    let dead = dead_endpoint();
    // RAFTKV_CLI_TLS_CERT alone: the CLI took it, and asks for the other two.
    let out = raftkv_env(&["--endpoints", &dead, "get", "k"], &[("RAFTKV_CLI_TLS_CERT", "/nonexistent/client.pem")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("missing --tls-key, --tls-ca"), "{}", text(&out.stderr));
    // The server's variable still works for now, with a warning naming the CLI's.
    let out = raftkv_env(&["--endpoints", &dead, "get", "k"], &[("RAFTKV_TLS_CERT", "/nonexistent/node.pem")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("warning") && stderr.contains("RAFTKV_CLI_TLS_CERT"), "{stderr}");
    // A flag wins over both, and the server's variable is then not read at all.
    let out = raftkv_env(
        &["--endpoints", &dead, "--tls-cert", "/nonexistent/c.pem", "get", "k"],
        &[("RAFTKV_TLS_KEY", "/nonexistent/k.pem")],
    );
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("warning") && stderr.contains("missing --tls-key, --tls-ca"), "{stderr}");
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
