//! `raftkv validate`: an end-to-end check of a running cluster, also run in-process by
//! `raftkv demo`.
//!
//! 1. With `--expect-data`, every key in the files still has its value (linearizable
//!    reads): no acknowledged data was lost.
//! 2. Sequential: writes, reads back, an overwrite, a swapping and a failing cas, a
//!    cas on an absent key, a delete.
//! 3. Concurrent: `--clients` clients for `--duration`, each writing only its own keys
//!    (so the order of a key's writes is known exactly) and reading everyone's. Every
//!    linearizable read must return a value written by a put invoked before the read
//!    completed, and no value older than one acknowledged before the read began; at
//!    the end every key reads as its last acknowledged write.
//!
//! Writes whose outcome is unknown are retried with the same seq until
//! `--retry-deadline`; an outcome still unknown then is a failure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use raftkv_client::{Client, ClientError, ClientOptions, GetReply, NodeId, WriteOp, WriteOutcome};

use crate::{CliError, CliResult, Global};
use raftkv_client::duration::parse_duration;

#[derive(Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Names this run's keys, `validate/<run-id>/...` (default: random).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Keys written in the sequential phase (at least 3).
    #[arg(long, default_value_t = 5)]
    pub keys: usize,
    /// Concurrent clients in the concurrent phase (0 skips it).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Length of the concurrent phase.
    #[arg(long, value_parser = parse_duration, default_value = "3s", value_name = "DURATION")]
    pub duration: Duration,
    /// How long an operation whose outcome is unknown is retried (same seq) before the
    /// run fails.
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    pub retry_deadline: Duration,
    /// Write the keys and values this run committed to FILE (`key<TAB>value` lines).
    #[arg(long, value_name = "FILE")]
    pub write_data: Option<PathBuf>,
    /// First verify that every key in FILE still has its value (repeatable).
    #[arg(long, value_name = "FILE")]
    pub expect_data: Vec<PathBuf>,
    /// Only print the summary, not one line per operation.
    #[arg(long)]
    pub quiet: bool,
}

impl ValidateArgs {
    /// The defaults, as `raftkv validate` with no flags.
    pub fn defaults() -> Self {
        ValidateArgs {
            run_id: None,
            keys: 5,
            clients: 4,
            duration: Duration::from_secs(3),
            retry_deadline: Duration::from_secs(30),
            write_data: None,
            expect_data: Vec::new(),
            quiet: false,
        }
    }
}

/// What a successful run did.
#[derive(Debug, Default)]
pub struct Report {
    pub run_id: String,
    pub writes: u64,
    pub reads: u64,
    pub expected_verified: usize,
    /// Leaders that answered.
    pub leaders: BTreeSet<NodeId>,
    /// Keys and values committed and still current at the end.
    pub data: BTreeMap<String, String>,
}

impl Report {
    pub fn summary(&self) -> String {
        let leaders: Vec<String> = self.leaders.iter().map(|l| l.to_string()).collect();
        format!(
            "run {}: {} writes, {} reads, {} keys committed, {} expected keys verified, leaders seen: {}",
            self.run_id,
            self.writes,
            self.reads,
            self.data.len(),
            self.expected_verified,
            if leaders.is_empty() { "-".to_string() } else { leaders.join(",") }
        )
    }
}

pub async fn command(global: &Global, args: ValidateArgs) -> CliResult {
    let opts = global.client_options()?;
    match run(&global.endpoints, opts, &args).await {
        Ok(report) => {
            println!("{}", report.summary());
            println!("SUCCESS");
            Ok(())
        }
        Err(reason) => {
            println!("FAILURE: {reason}");
            Err(CliError { code: 1, message: String::new() })
        }
    }
}

/// Runs the validation; `Err` is the reason it failed.
/// `opts`: the clients' deadlines (and TLS).
pub async fn run(endpoints: &[String], opts: ClientOptions, args: &ValidateArgs) -> Result<Report, String> {
    let run_id = args.run_id.clone().unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let v =
        Validator { endpoints: endpoints.to_vec(), opts, retry_deadline: args.retry_deadline, verbose: !args.quiet };
    let client = v.client()?;
    let mut report = Report { run_id: run_id.clone(), ..Report::default() };

    // 1. Data from earlier runs.
    v.verify(&client, &args.expect_data, &mut report).await?;

    // 2. Sequential.
    let prefix = format!("validate/{run_id}");
    let n = args.keys.max(3);
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}/k{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let value = format!("v{i}-{run_id}");
        v.put(&client, key, &value, &mut report).await?;
        report.data.insert(key.clone(), value);
    }
    for key in &keys {
        v.expect_read(&client, key, report.data.get(key).cloned(), &mut report).await?;
    }
    // Overwrite.
    let value = format!("v0-overwritten-{run_id}");
    v.put(&client, &keys[0], &value, &mut report).await?;
    report.data.insert(keys[0].clone(), value.clone());
    v.expect_read(&client, &keys[0], Some(value), &mut report).await?;
    // A cas that swaps, then one that must not.
    let old = report.data[&keys[1]].clone();
    let new = format!("v1-swapped-{run_id}");
    let (swapped, _) = v.cas(&client, &keys[1], Some(&old), &new, &mut report).await?;
    if !swapped {
        return Err(format!("cas {} from {old:?} to {new:?} did not swap", keys[1]));
    }
    report.data.insert(keys[1].clone(), new.clone());
    v.expect_read(&client, &keys[1], Some(new.clone()), &mut report).await?;
    let (swapped, current) = v.cas(&client, &keys[1], Some("no-such-value"), "never", &mut report).await?;
    if swapped || current.as_deref() != Some(new.as_str()) {
        return Err(format!(
            "cas {} expecting a wrong value: swapped={swapped}, current={} (expected no swap and {new:?})",
            keys[1],
            show(&current)
        ));
    }
    v.expect_read(&client, &keys[1], Some(new), &mut report).await?;
    // A cas on an absent key.
    let absent_key = format!("{prefix}/created");
    let (swapped, current) = v.cas(&client, &absent_key, None, "created", &mut report).await?;
    if !swapped {
        return Err(format!("cas {absent_key} expecting absent did not swap (current {})", show(&current)));
    }
    report.data.insert(absent_key.clone(), "created".into());
    v.expect_read(&client, &absent_key, Some("created".into()), &mut report).await?;
    // A delete.
    let deleted = &keys[2];
    v.delete(&client, deleted, &mut report).await?;
    report.data.remove(deleted);
    v.expect_read(&client, deleted, None, &mut report).await?;

    // 3. Concurrent.
    if args.clients > 0 && !args.duration.is_zero() {
        v.concurrent(&prefix, args.clients, args.duration, &mut report).await?;
    }

    if let Some(file) = &args.write_data {
        write_data_file(file, &report.data)?;
    }
    Ok(report)
}

/// Verifies, with linearizable reads, that every key in `files` has its value there;
/// returns how many keys were checked.
pub async fn verify_data(
    endpoints: &[String],
    timeout: Duration,
    retry_deadline: Duration,
    files: &[PathBuf],
    verbose: bool,
) -> Result<usize, String> {
    let v = Validator {
        endpoints: endpoints.to_vec(),
        opts: ClientOptions::with_timeout(timeout),
        retry_deadline,
        verbose,
    };
    let mut report = Report::default();
    v.verify(&v.client()?, files, &mut report).await?;
    Ok(report.expected_verified)
}

fn show(v: &Option<String>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "absent".into(),
    }
}

/// Reads `key<TAB>value` lines (blank lines ignored).
pub fn read_data_file(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut data = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) =
            line.split_once('\t').ok_or_else(|| format!("{}:{}: expected key<TAB>value", path.display(), i + 1))?;
        data.insert(k.to_string(), v.to_string());
    }
    Ok(data)
}

pub fn write_data_file(path: &Path, data: &BTreeMap<String, String>) -> Result<(), String> {
    let text: String = data.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect();
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// One put, as the concurrent phase saw it.
struct WriteRec {
    value: String,
    invoked: Instant,
    acked: Option<Instant>,
}

struct ReadRec {
    key: String,
    value: Option<String>,
    invoked: Instant,
    completed: Instant,
}

type History = Arc<Mutex<HashMap<String, Vec<WriteRec>>>>;

#[derive(Clone)]
struct Validator {
    endpoints: Vec<String>,
    opts: ClientOptions,
    retry_deadline: Duration,
    verbose: bool,
}

impl Validator {
    fn client(&self) -> Result<Client, String> {
        Client::new(self.endpoints.clone(), self.opts.clone()).map_err(|e| e.to_string())
    }

    fn line(&self, s: String) {
        if self.verbose {
            println!("{s}");
        }
    }

    /// A write, retried with the same seq while its outcome is unknown.
    async fn write(&self, client: &Client, op: WriteOp, report: &mut Report) -> Result<WriteOutcome, String> {
        let what = describe(&op);
        let start = Instant::now();
        let mut res = client.write(op).await;
        loop {
            match res {
                Ok(o) => {
                    report.writes += 1;
                    report.leaders.insert(o.leader);
                    return Ok(o);
                }
                Err(ClientError::Unknown(m)) => {
                    if start.elapsed() >= self.retry_deadline {
                        return Err(format!("{what}: outcome still unknown after {:?}: {m}", self.retry_deadline));
                    }
                    self.line(format!("retry {what} (outcome unknown so far, same seq)"));
                    res = match client.retry_unknown().await {
                        Ok(Some(o)) => Ok(o),
                        Ok(None) => return Err(format!("{what}: lost track of the unknown write")),
                        Err(e) => Err(e),
                    };
                }
                Err(e) => return Err(format!("{what}: {e}")),
            }
        }
    }

    async fn put(&self, client: &Client, key: &str, value: &str, report: &mut Report) -> Result<WriteOutcome, String> {
        let op = WriteOp::Put { key: Bytes::from(key.to_string()), value: Bytes::from(value.to_string()) };
        let o = self.write(client, op, report).await?;
        self.line(format!("put key={key} index={} term={} leader={}", o.index, o.term, o.leader));
        Ok(o)
    }

    async fn delete(&self, client: &Client, key: &str, report: &mut Report) -> Result<(), String> {
        let o = self.write(client, WriteOp::Delete { key: Bytes::from(key.to_string()) }, report).await?;
        self.line(format!("delete key={key} index={} term={} leader={}", o.index, o.term, o.leader));
        Ok(())
    }

    async fn cas(
        &self,
        client: &Client,
        key: &str,
        expected: Option<&str>,
        new: &str,
        report: &mut Report,
    ) -> Result<(bool, Option<String>), String> {
        let op = WriteOp::Cas {
            key: Bytes::from(key.to_string()),
            expected: expected.map(|e| Bytes::from(e.to_string())),
            new: Bytes::from(new.to_string()),
        };
        let o = self.write(client, op, report).await?;
        let (swapped, current) = o.cas_result().ok_or_else(|| format!("cas {key}: the reply is not a cas result"))?;
        let current = current.map(|c| String::from_utf8_lossy(&c).into_owned());
        self.line(format!(
            "cas key={key} {} index={} term={} leader={}",
            if swapped { "swapped" } else { "not-swapped" },
            o.index,
            o.term,
            o.leader
        ));
        Ok((swapped, current))
    }

    /// A linearizable read, retried while no leader answers.
    async fn get_reply(&self, client: &Client, key: &str) -> Result<GetReply, String> {
        let start = Instant::now();
        loop {
            match client.get_meta(key.to_string(), false).await {
                Ok(r) => return Ok(r),
                Err(e @ ClientError::NoLeader(_)) if start.elapsed() < self.retry_deadline => {
                    self.line(format!("retry get key={key} ({e})"));
                }
                Err(e) => return Err(format!("get {key}: {e}")),
            }
        }
    }

    async fn get(&self, client: &Client, key: &str, report: &mut Report) -> Result<Option<String>, String> {
        let r = self.get_reply(client, key).await?;
        report.reads += 1;
        let leader = r.leader.unwrap_or(r.node);
        report.leaders.insert(leader);
        self.line(format!("get key={key} {} leader={leader}", if r.value.is_some() { "ok" } else { "absent" }));
        Ok(r.value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn verify(&self, client: &Client, files: &[PathBuf], report: &mut Report) -> CResult {
        let mut expected = BTreeMap::new();
        for file in files {
            expected.extend(read_data_file(file)?);
        }
        for (key, value) in &expected {
            let got = self.get(client, key, report).await?;
            if got.as_deref() != Some(value.as_str()) {
                return Err(format!("data lost: key {key} should be {value:?} but is {}", show(&got)));
            }
            report.expected_verified += 1;
        }
        Ok(())
    }

    async fn expect_read(
        &self,
        client: &Client,
        key: &str,
        want: Option<String>,
        report: &mut Report,
    ) -> Result<(), String> {
        let got = self.get(client, key, report).await?;
        if got != want {
            return Err(format!("read {key}: expected {} but got {}", show(&want), show(&got)));
        }
        Ok(())
    }

    async fn concurrent(&self, prefix: &str, clients: usize, duration: Duration, report: &mut Report) -> CResult {
        const KEYS_PER_CLIENT: usize = 2;
        let owned: Vec<Vec<String>> =
            (0..clients).map(|c| (0..KEYS_PER_CLIENT).map(|k| format!("{prefix}/c{c}/k{k}")).collect()).collect();
        let all: Arc<Vec<String>> = Arc::new(owned.iter().flatten().cloned().collect());
        let history: History = Arc::new(Mutex::new(all.iter().map(|k| (k.clone(), Vec::new())).collect()));
        let end = Instant::now() + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for (c, mine) in owned.into_iter().enumerate() {
            let (v, all, history) = (self.clone(), all.clone(), history.clone());
            let run_tag = prefix.rsplit('/').next().unwrap_or_default().to_string();
            tasks.spawn(async move { v.worker(c, mine, all, history, end, run_tag).await });
        }
        let mut reads = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (worker_report, worker_reads) = joined.map_err(|e| format!("a client task failed: {e}"))??;
            report.writes += worker_report.writes;
            report.reads += worker_report.reads;
            report.leaders.extend(worker_report.leaders);
            reads.extend(worker_reads);
        }
        let history = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
        for r in &reads {
            check_read(r, &history[&r.key])?;
        }
        // Final state: each key reads as its single writer's last acknowledged write.
        let client = self.client()?;
        for key in all.iter() {
            let want = history[key].last().map(|w| w.value.clone());
            self.expect_read(&client, key, want.clone(), report).await?;
            if let Some(v) = want {
                report.data.insert(key.clone(), v);
            }
        }
        self.line(format!("concurrent phase: {} reads checked against {} keys", reads.len(), all.len()));
        Ok(())
    }

    async fn worker(
        self,
        c: usize,
        mine: Vec<String>,
        all: Arc<Vec<String>>,
        history: History,
        end: Instant,
        run_tag: String,
    ) -> Result<(Report, Vec<ReadRec>), String> {
        let client = self.client()?;
        let mut report = Report::default();
        let mut reads = Vec::new();
        let mut n = 0u64;
        while Instant::now() < end {
            n += 1;
            let key = &mine[rand::random_range(0..mine.len())];
            let value = format!("c{c}-{n}-{run_tag}");
            let invoked = Instant::now();
            with_history(&history, key, |h| h.push(WriteRec { value: value.clone(), invoked, acked: None }));
            self.put(&client, key, &value, &mut report).await.map_err(|e| format!("client {c}: {e}"))?;
            let acked = Instant::now();
            with_history(&history, key, |h| {
                if let Some(last) = h.last_mut() {
                    last.acked = Some(acked);
                }
            });

            let key = &all[rand::random_range(0..all.len())];
            let invoked = Instant::now();
            let value = self.get(&client, key, &mut report).await.map_err(|e| format!("client {c}: {e}"))?;
            reads.push(ReadRec { key: key.clone(), value, invoked, completed: Instant::now() });
        }
        Ok((report, reads))
    }
}

type CResult = Result<(), String>;

fn with_history(history: &History, key: &str, f: impl FnOnce(&mut Vec<WriteRec>)) {
    let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(recs) = h.get_mut(key) {
        f(recs);
    }
}

/// Checks one linearizable read against the (single writer's, hence totally ordered)
/// writes of its key.
fn check_read(r: &ReadRec, writes: &[WriteRec]) -> CResult {
    // Writes acknowledged before the read began: the read must not be older than the
    // last of them.
    let floor = writes.iter().rposition(|w| w.acked.is_some_and(|a| a < r.invoked));
    match &r.value {
        None => match floor {
            None => Ok(()),
            Some(i) => Err(format!(
                "linearizability: read of {} returned absent, but {:?} was acknowledged before the read began",
                r.key, writes[i].value
            )),
        },
        Some(v) => {
            let i = writes.iter().position(|w| &w.value == v).ok_or_else(|| {
                format!("linearizability: read of {} returned {v:?}, which no put to that key wrote", r.key)
            })?;
            if writes[i].invoked > r.completed {
                return Err(format!(
                    "linearizability: read of {} returned {v:?} before the put that wrote it was invoked",
                    r.key
                ));
            }
            if let Some(f) = floor.filter(|f| *f > i) {
                return Err(format!(
                    "linearizability: read of {} returned stale {v:?}; {:?} was acknowledged before the read began",
                    r.key, writes[f].value
                ));
            }
            Ok(())
        }
    }
}

fn describe(op: &WriteOp) -> String {
    let key = String::from_utf8_lossy(op.key());
    match op {
        WriteOp::Put { .. } => format!("put {key}"),
        WriteOp::Delete { .. } => format!("delete {key}"),
        WriteOp::Cas { .. } => format!("cas {key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(value: &str, invoked: Instant, acked: Option<Instant>) -> WriteRec {
        WriteRec { value: value.into(), invoked, acked }
    }

    #[test]
    fn read_checks() {
        let t0 = Instant::now();
        let t = |ms: u64| t0 + Duration::from_millis(ms);
        let writes = vec![w("a", t(0), Some(t(10))), w("b", t(20), Some(t(30))), w("c", t(40), None)];
        let read = |value: Option<&str>, invoked, completed| ReadRec {
            key: "k".into(),
            value: value.map(String::from),
            invoked: t(invoked),
            completed: t(completed),
        };
        assert!(check_read(&read(None, 0, 5), &writes).is_ok());
        assert!(check_read(&read(None, 15, 16), &writes).is_err());
        assert!(check_read(&read(Some("a"), 5, 25), &writes).is_ok());
        assert!(check_read(&read(Some("a"), 35, 36), &writes).is_err(), "stale");
        assert!(check_read(&read(Some("b"), 15, 25), &writes).is_ok(), "concurrent with b");
        assert!(check_read(&read(Some("c"), 45, 46), &writes).is_ok(), "unacked but invoked");
        assert!(check_read(&read(Some("c"), 30, 35), &writes).is_err(), "from the future");
        assert!(check_read(&read(Some("zzz"), 30, 35), &writes).is_err());
    }

    #[test]
    fn data_files_round_trip() {
        let dir = std::env::temp_dir().join(format!("raftkv-validate-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data.tsv");
        let data: BTreeMap<String, String> =
            [("a".to_string(), "1".to_string()), ("b/c".to_string(), "x y".to_string())].into();
        write_data_file(&path, &data).unwrap();
        assert_eq!(read_data_file(&path).unwrap(), data);
        std::fs::write(&path, "no tab here\n").unwrap();
        assert!(read_data_file(&path).unwrap_err().contains(":1:"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
