//! Running the `raftkv` CLI with a deadline, and reading its output.

use std::process::Stdio;
use std::time::{Duration, Instant};

use raftkv_client::local::{LocalCluster, SERVER_BIN_ENV};

use crate::bins::binaries;
use crate::test_cluster::text;

/// One run of the `raftkv` executable.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CliOutput {
    /// Everything about the run, for assertion messages.
    pub fn show(&self) -> String {
        format!(
            "exit code {:?} after {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    /// Asserts the exit code and returns self.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(self.code, Some(code), "{}", self.show());
        self
    }
}

/// Runs `raftkv ARGS` with `env` (`RAFTKV_ENDPOINTS` unset unless given there), killed
/// if it has not exited within `limit`.
pub async fn raftkv(args: &[&str], env: &[(&str, &str)], limit: Duration) -> CliOutput {
    let bins = binaries();
    let mut cmd = tokio::process::Command::new(&bins.cli);
    cmd.args(args)
        .env_remove("RAFTKV_ENDPOINTS")
        .env(SERVER_BIN_ENV, &bins.server)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("raftkv {args:?} did not exit within {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bins.cli.display()));
    CliOutput {
        code: out.status.code(),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
        elapsed: started.elapsed(),
    }
}

/// `--endpoints` for a cluster's nodes (plus any `extra` first).
pub fn endpoints_arg(extra: &[String], cluster: &LocalCluster) -> String {
    extra.iter().cloned().chain(cluster.endpoints()).collect::<Vec<_>>().join(",")
}

/// The number right after the first `marker` in `text`.
pub fn number_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// An address nothing listens on (a free port, bound then released).
pub fn dead_endpoint() -> String {
    format!("127.0.0.1:{}", raftkv_client::local::free_port().expect("free port"))
}
