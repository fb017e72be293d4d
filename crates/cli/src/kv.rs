//! The key/value commands: put, get, delete, cas, scan, transfer-leader.

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::Args;
use raftkv_client::table::Table;
use raftkv_client::{Client, ScanPages, ScanReply, ScanStart, WriteOutcome, WriteResult};
use serde_json::json;

use crate::global::{CliError, CliResult, Global, Output};
use crate::output::{Codec, print_json, write_out};

/// A client for the global endpoints and timeout.
pub fn client(global: &Global) -> Result<Client, CliError> {
    Client::new(global.endpoints.clone(), global.client_options()?).map_err(CliError::from)
}

fn outcome_json(o: &WriteOutcome, codec: Codec) -> serde_json::Value {
    let result = match &o.result {
        WriteResult::Put { existed } => json!({"op": "put", "existed": existed}),
        WriteResult::Delete { existed } => json!({"op": "delete", "existed": existed}),
        WriteResult::Cas { swapped, current } => json!({
            "op": "cas",
            "swapped": swapped,
            "current": current.as_deref().map(|c| codec.json(c)),
            "encoding": codec.name(),
        }),
    };
    json!({"index": o.index, "term": o.term, "leader": o.leader, "duplicate": o.duplicate, "result": result})
}

/// What a write did, in a few words (the table's RESULT column).
fn outcome_words(result: &WriteResult) -> &'static str {
    match result {
        WriteResult::Put { existed: true } => "put (replaced)",
        WriteResult::Put { existed: false } => "put (new key)",
        WriteResult::Delete { existed: true } => "deleted",
        WriteResult::Delete { existed: false } => "delete (no such key)",
        WriteResult::Cas { swapped: true, .. } => "cas (swapped)",
        WriteResult::Cas { swapped: false, .. } => "cas (not swapped)",
    }
}

fn print_outcome(global: &Global, o: &WriteOutcome) -> CliResult {
    match global.output(Output::Simple) {
        Output::Simple => write_out(format!("index={} term={} leader={}\n", o.index, o.term, o.leader).as_bytes()),
        Output::Json => print_json(&outcome_json(o, Codec::of(global))),
        Output::Table => {
            let mut t = Table::new(&["INDEX", "TERM", "LEADER", "DUPLICATE", "RESULT"]);
            let duplicate = if o.duplicate { "yes" } else { "no" };
            t.row([
                o.index.to_string(),
                o.term.to_string(),
                o.leader.to_string(),
                duplicate.into(),
                outcome_words(&o.result).into(),
            ]);
            write_out(t.render().as_bytes())
        }
    }
}

pub async fn put(global: &Global, key: Bytes, value: Option<Bytes>, file: Option<PathBuf>) -> CliResult {
    let value = match (value, file) {
        (Some(v), _) => v,
        (None, Some(path)) => read_value(&path)?,
        (None, None) => return Err(CliError::usage("put takes VALUE or --value-file")),
    };
    let o = client(global)?.put(key, value).await?;
    print_outcome(global, &o)
}

/// Reads a value file (`-`: stdin), never more than one byte over
/// [`raftkv_kv::MAX_VALUE_LEN`].
fn read_value(path: &Path) -> Result<Bytes, CliError> {
    let limit = raftkv_kv::MAX_VALUE_LEN;
    let mut buf = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().lock().take(limit as u64 + 1).read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit as u64 + 1).read_to_end(&mut buf))
    };
    read.map_err(|e| CliError::failed(format!("error: cannot read --value-file {}: {e}", path.display())))?;
    if buf.len() > limit {
        return Err(CliError::failed(format!(
            "error: rejected: the value in --value-file {} is over {limit} bytes; the limit is {limit}",
            path.display()
        )));
    }
    Ok(Bytes::from(buf))
}

pub async fn delete(global: &Global, key: Bytes) -> CliResult {
    let o = client(global)?.delete(key).await?;
    print_outcome(global, &o)
}

pub async fn cas(global: &Global, key: Bytes, expected: Option<Bytes>, new: Bytes) -> CliResult {
    let o = client(global)?.cas(key, expected, new).await?;
    print_outcome(global, &o)?;
    match o.cas_result() {
        Some((true, _)) => Ok(()),
        // What was found instead, on stderr as it is (the outcome went to stdout).
        Some((false, current)) => {
            let mut found = current.map_or_else(|| b"not found".to_vec(), |v| Codec::of(global).raw(&v));
            found.push(b'\n');
            let _ = std::io::stderr().write_all(&found);
            Err(CliError { code: 1, message: String::new() })
        }
        None => Err(CliError::failed("error: the server answered a cas with a non-cas result")),
    }
}

pub async fn get(global: &Global, key: Bytes, stale: bool) -> CliResult {
    let reply = client(global)?.get_meta(key.clone(), stale).await?;
    let codec = Codec::of(global);
    match global.output(Output::Simple) {
        Output::Json => print_json(&json!({
            "key": codec.json(&key),
            "value": reply.value.as_deref().map(|v| codec.json(v)),
            "encoding": codec.name(),
            "found": reply.value.is_some(),
            "index": reply.index,
            "node": reply.node,
            "leader": reply.leader,
        }))?,
        Output::Table if reply.value.is_some() => {
            let mut t = Table::new(&["KEY", "VALUE", "INDEX", "NODE"]);
            let value = reply.value.as_deref().map(|v| codec.cell(v)).unwrap_or_default();
            t.row([codec.cell(&key), value, reply.index.to_string(), reply.node.to_string()]);
            write_out(t.render().as_bytes())?;
        }
        Output::Simple | Output::Table => {
            if let Some(v) = &reply.value {
                let mut line = codec.raw(v);
                line.push(b'\n');
                write_out(&line)?;
            }
        }
    }
    if reply.value.is_some() { Ok(()) } else { Err(CliError::failed("not found")) }
}

/// `raftkv scan` flags.
#[derive(Args, Debug, Clone)]
pub struct ScanArgs {
    /// Only keys that start with PREFIX (default: every key).
    #[arg(default_value = "")]
    pub prefix: String,
    /// Start at this key, or the first one after it (with PREFIX: among its keys).
    /// Continues a scan that stopped at --limit: it prints the key to go on from.
    #[arg(long, value_name = "KEY")]
    pub from: Option<String>,
    /// At most this many pairs in all (read in pages of up to 10000).
    #[arg(long, default_value_t = 1000, value_parser = parse_limit, conflicts_with = "all")]
    pub limit: u64,
    /// Every pair, however many (pages of up to 10000 pairs, each one linearizable
    /// read; together they are not one snapshot).
    #[arg(long)]
    pub all: bool,
    /// Read any node's local state, which may be stale.
    #[arg(long)]
    pub stale: bool,
}

/// `--limit`: a whole number of pairs, at least 1.
fn parse_limit(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("the limit is at least 1 pair (--all reads every pair)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number of pairs")),
    }
}

/// Where a scan's pairs go, page by page: simple and JSON stream, a table waits for
/// the last page.
struct ScanPrinter {
    format: Output,
    codec: Codec,
    table: Table,
    count: u64,
    pages: Vec<serde_json::Value>,
}

impl ScanPrinter {
    fn new(format: Output, codec: Codec) -> ScanPrinter {
        ScanPrinter { format, codec, table: Table::new(&["KEY", "VALUE"]), count: 0, pages: Vec::new() }
    }

    fn page(&mut self, page: &ScanReply) -> CliResult {
        let codec = self.codec;
        let mut out = Vec::new();
        if self.format == Output::Json && self.pages.is_empty() {
            out.extend(format!("{{\"encoding\":\"{}\",\"items\":[", codec.name()).bytes());
        }
        for (k, v) in &page.items {
            match self.format {
                Output::Simple => {
                    out.extend(codec.raw(k));
                    out.push(b'\t');
                    out.extend(codec.raw(v));
                    out.push(b'\n');
                }
                Output::Json => {
                    if self.count > 0 {
                        out.push(b',');
                    }
                    out.extend(json!({"key": codec.json(k), "value": codec.json(v)}).to_string().bytes());
                }
                Output::Table => self.table.row([codec.cell(k), codec.cell(v)]),
            }
            self.count += 1;
        }
        self.pages.push(json!({"index": page.index, "node": page.node, "count": page.items.len()}));
        write_out(&out)
    }

    fn finish(&mut self, scan: &ScanPages) -> CliResult {
        match self.format {
            Output::Simple => Ok(()),
            Output::Table => write_out(self.table.render().as_bytes()),
            Output::Json => {
                let next = scan.next_key().map(|k| self.codec.json(k));
                let first = self.pages.first().cloned().unwrap_or_default();
                let tail = format!(
                    "],\"count\":{},\"more\":{},\"next\":{},\"index\":{},\"node\":{},\"pages\":{}}}\n",
                    self.count,
                    scan.stopped_by_limit(),
                    next.unwrap_or_default(),
                    first["index"],
                    first["node"],
                    serde_json::Value::Array(std::mem::take(&mut self.pages))
                );
                write_out(tail.as_bytes())
            }
        }
    }
}

pub async fn scan(global: &Global, args: ScanArgs) -> CliResult {
    let codec = Codec::of(global);
    let prefix = codec.arg("PREFIX", &args.prefix)?;
    let start = match &args.from {
        Some(from) => ScanStart::AtOrAfter(codec.arg("--from", from)?),
        None => ScanStart::First,
    };
    let client = client(global)?;
    let mut pages = ScanPages::new(prefix, start, (!args.all).then_some(args.limit), args.stale);
    let mut printer = ScanPrinter::new(global.output(Output::Simple), codec);
    while let Some(page) = pages.next(&client).await? {
        printer.page(&page)?;
    }
    printer.finish(&pages)?;
    if pages.stopped_by_limit() {
        let how = match pages.next_key() {
            Some(next) => format!("continue with --from '{}', ", codec.cell(next)),
            None => String::new(),
        };
        eprintln!("(more pairs follow --limit {}: {how}raise --limit, or give --all)", args.limit);
    }
    Ok(())
}

pub async fn transfer_leader(global: &Global, target: Option<u64>) -> CliResult {
    let id = client(global)?.transfer_leader(target).await?;
    match global.output(Output::Simple) {
        Output::Json => print_json(&json!({ "leader": id })),
        Output::Simple | Output::Table => write_out(format!("leadership transferring to node {id}\n").as_bytes()),
    }
}
