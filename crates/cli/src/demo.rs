//! `raftkv demo`: the failure scenario on one machine, in one command.
//!
//! 1. start a 3-node cluster and validate;
//! 2. kill -9 the leader (found via status), time the first write committed by a new
//!    leader, validate with the node down;
//! 3. restart the killed node and watch it catch up;
//! 4. stop a second node (SIGTERM) and validate with the remaining majority;
//! 5. restore it, verify all data written so far, wait until every node caught up;
//! 6. clean up.
//!
//! Every wait is a deadline-bounded poll of a condition; the whole demo is bounded by
//! `--max-time`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use raftkv_client::local::{LocalCluster, LocalClusterOptions, ServerCommand};
use raftkv_client::table::Table;
use raftkv_client::{Client, ClientOptions, NodeId, NodeStatus};

use crate::up::{STOP_GRACE, shutdown_signal};
use crate::validate::{self, ValidateArgs};
use crate::{CliError, CliResult, Global};
use raftkv_client::duration::parse_duration;

const NODES: usize = 3;
const STEPS: usize = 6;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where the nodes keep their data and logs (default: a new temporary directory).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the data directory afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Upper bound on the whole demo.
    #[arg(long, value_parser = parse_duration, default_value = "120s", value_name = "DURATION")]
    pub max_time: Duration,
    /// Length of each validation's concurrent phase.
    #[arg(long, value_parser = parse_duration, default_value = "3s", value_name = "DURATION")]
    pub validate_duration: Duration,
}

struct Row {
    step: String,
    result: String,
    duration: Duration,
}

/// The numbered steps: which one runs, and how the finished ones went.
struct Steps {
    rows: Vec<Row>,
    current: Option<(String, Instant)>,
}

impl Steps {
    fn begin(&mut self, n: usize, title: &str) {
        println!();
        println!("Step {n}/{STEPS}: {title}");
        self.current = Some((format!("{n}. {title}"), Instant::now()));
    }

    fn done(&mut self, result: impl Into<String>) {
        if let Some((step, start)) = self.current.take() {
            let result = result.into();
            println!("   ok: {result}");
            self.rows.push(Row { step, result, duration: start.elapsed() });
        }
    }

    fn fail(&mut self, reason: &str) -> String {
        let (step, start) = self.current.take().unwrap_or_else(|| ("setup".into(), Instant::now()));
        self.rows.push(Row { step: step.clone(), result: format!("FAILED: {reason}"), duration: start.elapsed() });
        step
    }
}

struct Demo {
    dir: PathBuf,
    deadline: Instant,
    timeout: Duration,
    validate_duration: Duration,
    cluster: Option<LocalCluster>,
    data_files: Vec<PathBuf>,
}

pub async fn command(global: &Global, args: DemoArgs) -> CliResult {
    let start = Instant::now();
    let (dir, tempdir) = match &args.data_dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(d).map(|mut e| e.next().is_some()).unwrap_or(true) {
                return Err(CliError::failed(format!("error: --data-dir {} exists and is not empty", d.display())));
            }
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("raftkv-demo-")
                .tempdir()
                .map_err(|e| CliError::failed(format!("error: cannot create a temporary directory: {e}")))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    println!("raftkv demo: {NODES} nodes on 127.0.0.1, data and logs in {}", dir.display());

    let mut demo = Demo {
        dir: dir.clone(),
        deadline: start + args.max_time,
        timeout: global.timeout,
        validate_duration: args.validate_duration,
        cluster: None,
        data_files: Vec::new(),
    };
    let mut steps = Steps { rows: Vec::new(), current: None };
    let outcome = tokio::select! {
        r = tokio::time::timeout(args.max_time, demo.run(&mut steps)) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("the demo did not finish within --max-time {:?}", args.max_time)),
        },
        _ = shutdown_signal() => Err("interrupted".into()),
    };
    let failed_step = outcome.as_ref().err().map(|reason| (steps.fail(reason), reason.clone()));

    // Step 6 runs whatever happened before.
    steps.begin(STEPS, "clean up");
    let cleanup = demo.cleanup().await;
    let keep = args.keep || failed_step.is_some();
    match (&tempdir, keep) {
        (Some(_), true) | (None, _) => println!("   data and logs kept in {}", dir.display()),
        (Some(_), false) => println!("   removing {}", dir.display()),
    }
    if let (Some(t), true) = (tempdir, keep) {
        let _ = t.keep();
    }
    let cleanup_failure = match cleanup {
        Ok(summary) => {
            steps.done(summary);
            None
        }
        Err(reason) => Some((steps.fail(&reason), reason)),
    };

    print_table(&steps.rows, start.elapsed());
    match failed_step.or(cleanup_failure) {
        None => {
            println!("DEMO PASSED");
            Ok(())
        }
        Some((step, reason)) => {
            println!("DEMO FAILED: {step}: {reason}");
            println!("(node logs: {}/node-<id>.log)", dir.display());
            Err(CliError { code: 1, message: String::new() })
        }
    }
}

fn print_table(rows: &[Row], total: Duration) {
    let mut t = Table::new(&["STEP", "RESULT", "DURATION"]).right(&[2]);
    for r in rows {
        t.row([r.step.clone(), truncate(&r.result, 100), format!("{} ms", r.duration.as_millis())]);
    }
    t.row(["total".to_string(), String::new(), format!("{} ms", total.as_millis())]);
    println!();
    print!("{}", t.render());
}

/// At most `max` characters, the cut marked with `...`.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max.saturating_sub(3)).collect::<String>() + "..."
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl Demo {
    fn remaining(&self, cap: Duration) -> Duration {
        self.deadline.saturating_duration_since(Instant::now()).min(cap)
    }

    fn cluster(&self) -> Result<&LocalCluster, String> {
        self.cluster.as_ref().ok_or_else(|| "the cluster is not running".to_string())
    }

    fn cluster_mut(&mut self) -> Result<&mut LocalCluster, String> {
        self.cluster.as_mut().ok_or_else(|| "the cluster is not running".to_string())
    }

    async fn run(&mut self, steps: &mut Steps) -> Result<(), String> {
        self.start_and_validate(steps).await?;
        let killed = self.kill_the_leader(steps).await?;
        self.restart_and_catch_up(steps, killed).await?;
        let victim = self.stop_a_follower(steps, killed).await?;
        self.restore_and_verify(steps, victim).await
    }

    /// Step 1.
    async fn start_and_validate(&mut self, steps: &mut Steps) -> Result<(), String> {
        steps.begin(1, "start a 3-node cluster and validate");
        let command = ServerCommand::locate().map_err(|e| format!("no server to run: {e}"))?;
        println!("   server: {}", command_text(&command));
        let started = Instant::now();
        self.cluster = Some(
            LocalCluster::start(LocalClusterOptions {
                nodes: NODES,
                base_port: None,
                dir: self.dir.clone(),
                command,
                extra_args: Vec::new(),
            })
            .map_err(|e| format!("cannot start the nodes: {e}"))?,
        );
        for n in self.cluster()?.nodes() {
            println!("   node {} listening on {} (pid {})", n.id(), n.addr(), n.pid().unwrap_or(0));
        }
        let leader = self.wait_for_leader().await?;
        println!(
            "   leader elected: node {} in term {} ({} ms after start)",
            leader.id,
            leader.term,
            ms(started.elapsed())
        );
        let report = self.validate(1).await?;
        steps.done(format!("leader node {}; {} writes, {} reads validated", leader.id, report.writes, report.reads));
        Ok(())
    }

    /// Step 2; returns the killed node.
    async fn kill_the_leader(&mut self, steps: &mut Steps) -> Result<NodeId, String> {
        steps.begin(2, "kill -9 the leader, time the failover, validate with the node down");
        let leader = self.wait_for_leader().await?;
        let killed = leader.id;
        let node = self.cluster_mut()?.node_mut(killed).ok_or(format!("status named unknown node {killed}"))?;
        println!("   status says the leader is node {killed} (pid {}); kill -9", node.pid().unwrap_or(0));
        let kill_time = Instant::now();
        node.kill().await.map_err(|e| format!("kill -9 node {killed}: {e}"))?;
        let client =
            Client::new(self.cluster()?.endpoints(), ClientOptions::with_timeout(self.remaining(FAILOVER_MAX)))
                .map_err(|e| e.to_string())?;
        let key = format!("demo/after-kill/{:08x}", rand::random::<u32>());
        let out = client.put(key.clone(), "committed").await.map_err(|e| format!("first write after the kill: {e}"))?;
        let failover = kill_time.elapsed();
        println!(
            "   leader killed -> first write committed on new leader in {} ms (node {}, term {}, index {})",
            ms(failover),
            out.leader,
            out.term,
            out.index
        );
        let file = self.dir.join("data-failover.tsv");
        validate::write_data_file(&file, &[(key, "committed".to_string())].into())?;
        self.data_files.push(file);
        let report = self.validate(2).await?;
        steps.done(format!(
            "killed node {killed}; new leader node {} after {} ms; {} writes validated",
            out.leader,
            ms(failover),
            report.writes
        ));
        Ok(killed)
    }

    /// Step 3.
    async fn restart_and_catch_up(&mut self, steps: &mut Steps, killed: NodeId) -> Result<(), String> {
        steps.begin(3, &format!("restart node {killed} and watch it catch up"));
        self.cluster_mut()?
            .node_mut(killed)
            .ok_or("node vanished")?
            .restart()
            .await
            .map_err(|e| format!("restart node {killed}: {e}"))?;
        let leader = self.wait_for_leader().await?;
        let target = leader.commit_index;
        println!("   node {killed} restarted; leader node {} has commit index {target}", leader.id);
        let caught = Instant::now();
        let s = self.cluster()?.wait_applied(killed, target, self.remaining(CATCH_UP_MAX)).await?;
        println!(
            "   node {killed} caught up: applied index {} >= leader's commit index {target} ({} ms)",
            s.applied_index,
            ms(caught.elapsed())
        );
        steps.done(format!("node {killed} applied {} >= leader commit {target}", s.applied_index));
        Ok(())
    }

    /// Step 4; returns the stopped node.
    async fn stop_a_follower(&mut self, steps: &mut Steps, killed: NodeId) -> Result<NodeId, String> {
        let leader = self.wait_for_leader().await?;
        let victim = (1..=NODES as NodeId)
            .find(|id| *id != killed && *id != leader.id)
            .or_else(|| (1..=NODES as NodeId).find(|id| *id != killed))
            .ok_or("no node to stop")?;
        steps.begin(4, &format!("stop node {victim} (SIGTERM) and validate with the remaining majority"));
        let node = self.cluster_mut()?.node_mut(victim).ok_or("node vanished")?;
        let stopping = Instant::now();
        let status = node.terminate(STOP_GRACE).await.map_err(|e| format!("stop node {victim}: {e}"))?;
        println!(
            "   node {victim} stopped ({}) in {} ms; leader is node {}",
            status.map_or("killed after the grace period".to_string(), |s| s.to_string()),
            ms(stopping.elapsed()),
            leader.id
        );
        let report = self.validate(4).await?;
        steps.done(format!("node {victim} down; {} writes, {} reads validated", report.writes, report.reads));
        Ok(victim)
    }

    /// Step 5.
    async fn restore_and_verify(&mut self, steps: &mut Steps, victim: NodeId) -> Result<(), String> {
        steps.begin(5, &format!("restore node {victim}, verify all data, wait for every node to catch up"));
        self.cluster_mut()?
            .node_mut(victim)
            .ok_or("node vanished")?
            .restart()
            .await
            .map_err(|e| format!("restart node {victim}: {e}"))?;
        let verified = validate::verify_data(
            &self.cluster()?.endpoints(),
            self.timeout,
            self.remaining(Duration::from_secs(30)),
            &self.data_files,
            false,
        )
        .await?;
        println!("   all {verified} keys written in steps 1-4 read back with their values");
        let leader = self.wait_for_leader().await?;
        let target = leader.commit_index;
        for id in 1..=NODES as NodeId {
            let s = self.cluster()?.wait_applied(id, target, self.remaining(CATCH_UP_MAX)).await?;
            println!("   node {id}: applied index {} >= leader's commit index {target}", s.applied_index);
        }
        steps.done(format!("{verified} keys verified; all {NODES} nodes at index >= {target}"));
        Ok(())
    }

    async fn wait_for_leader(&self) -> Result<NodeStatus, String> {
        self.cluster()?.wait_for_leader(self.remaining(Duration::from_secs(30))).await
    }

    /// One validation run (quiet), verifying every earlier data file first and adding
    /// its own.
    async fn validate(&mut self, step: usize) -> Result<validate::Report, String> {
        let file = self.dir.join(format!("data-step{step}.tsv"));
        let args = ValidateArgs {
            run_id: Some(format!("demo-step{step}-{:08x}", rand::random::<u32>())),
            duration: self.validate_duration,
            retry_deadline: self.remaining(Duration::from_secs(30)),
            write_data: Some(file.clone()),
            expect_data: self.data_files.clone(),
            quiet: true,
            ..ValidateArgs::defaults()
        };
        let endpoints = self.cluster()?.endpoints();
        let report = validate::run(&endpoints, ClientOptions::with_timeout(self.timeout), &args)
            .await
            .map_err(|e| format!("validation: {e}"))?;
        println!("   validation SUCCESS: {}", report.summary());
        self.data_files.push(file);
        Ok(report)
    }

    /// Stops every node concurrently (SIGTERM, then SIGKILL after the grace period).
    async fn cleanup(&mut self) -> Result<String, String> {
        let Some(cluster) = self.cluster.as_mut() else { return Ok("nothing was started".into()) };
        let ids: Vec<NodeId> = cluster.nodes().iter().map(|n| n.id()).collect();
        let mut running = Vec::new();
        for id in ids {
            if let Some(node) = cluster.node_mut(id)
                && node.is_running()
            {
                running.push(id);
            }
        }
        let results = cluster.stop_nodes(&running, STOP_GRACE).await;
        let mut stopped = Vec::new();
        let mut failures = Vec::new();
        for (id, result) in running.iter().zip(results) {
            match result {
                Ok(Some(s)) if s.success() => stopped.push(format!("node {id}")),
                Ok(Some(s)) => failures.push(format!("node {id} exited with {s}")),
                Ok(None) => failures.push(format!("node {id} had to be killed")),
                Err(e) => failures.push(format!("node {id}: {e}")),
            }
        }
        println!("   stopped: {}", if stopped.is_empty() { "-".to_string() } else { stopped.join(", ") });
        if failures.is_empty() {
            Ok(format!("{} nodes stopped cleanly", stopped.len()))
        } else {
            Err(failures.join("; "))
        }
    }
}

/// Upper bounds of single waits (each also bounded by what is left of --max-time).
const FAILOVER_MAX: Duration = Duration::from_secs(20);
const CATCH_UP_MAX: Duration = Duration::from_secs(30);

fn command_text(c: &ServerCommand) -> String {
    std::iter::once(c.program.display().to_string())
        .chain(c.args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_results_are_cut_at_a_character() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééééé", 4), "é...");
        assert_eq!(truncate("abcdefghij", 10), "abcdefghij");
    }
}
