//! The single-operation commands: put, get, delete, cas, scan, status, transfer-leader.
//! (`member` is in `member.rs`.)

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raftkv_client::{Client, ClientError, NodeStatus, WriteOutcome, WriteResult};
use serde_json::json;

use crate::{CliError, CliResult, Global};

/// A client for the global endpoints and timeout.
pub fn client(global: &Global) -> Result<Client, CliError> {
    Client::new(global.endpoints.clone(), global.client_options()?).map_err(CliError::from)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes raw bytes and a newline to stdout (values need not be UTF-8).
fn print_bytes(b: &[u8]) -> CliResult {
    let mut out = std::io::stdout().lock();
    out.write_all(b).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()).map_err(write_error)
}

fn write_error(e: std::io::Error) -> CliError {
    CliError::failed(format!("error: cannot write output: {e}"))
}

fn outcome_json(o: &WriteOutcome) -> serde_json::Value {
    let result = match &o.result {
        WriteResult::Put { existed } => json!({"op": "put", "existed": existed}),
        WriteResult::Delete { existed } => json!({"op": "delete", "existed": existed}),
        WriteResult::Cas { swapped, current } => {
            json!({"op": "cas", "swapped": swapped, "current": current.as_deref().map(text)})
        }
    };
    json!({
        "index": o.index,
        "term": o.term,
        "leader": o.leader,
        "duplicate": o.duplicate,
        "result": result,
    })
}

fn print_outcome(global: &Global, o: &WriteOutcome) {
    if global.json {
        println!("{}", outcome_json(o));
    } else {
        println!("index={} term={} leader={}", o.index, o.term, o.leader);
    }
}

pub async fn put(global: &Global, key: String, value: Option<String>, file: Option<PathBuf>) -> CliResult {
    let value = match (value, file) {
        (Some(v), _) => Bytes::from(v),
        (None, Some(path)) => read_value(&path)?,
        (None, None) => return Err(CliError { code: 2, message: "error: put takes VALUE or --value-file".into() }),
    };
    let o = client(global)?.put(key, value).await?;
    print_outcome(global, &o);
    Ok(())
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

pub async fn delete(global: &Global, key: String) -> CliResult {
    let o = client(global)?.delete(key).await?;
    print_outcome(global, &o);
    Ok(())
}

pub async fn cas(global: &Global, key: String, expected: Option<String>, new: String) -> CliResult {
    let o = client(global)?.cas(key, expected.map(Bytes::from), new).await?;
    print_outcome(global, &o);
    match o.cas_result() {
        Some((true, _)) => Ok(()),
        Some((false, current)) => {
            let mut err = std::io::stderr().lock();
            let _ = match current {
                Some(v) => err.write_all(&v).and_then(|()| err.write_all(b"\n")),
                None => err.write_all(b"not found\n"),
            };
            Err(CliError { code: 1, message: String::new() })
        }
        None => Err(CliError::failed("error: the server answered a cas with a non-cas result")),
    }
}

pub async fn get(global: &Global, key: String, stale: bool) -> CliResult {
    let reply = client(global)?.get_meta(key.clone(), stale).await?;
    if global.json {
        println!(
            "{}",
            json!({
                "key": key,
                "value": reply.value.as_deref().map(text),
                "found": reply.value.is_some(),
                "index": reply.index,
                "node": reply.node,
                "leader": reply.leader,
            })
        );
    }
    match reply.value {
        Some(v) if !global.json => print_bytes(&v),
        Some(_) => Ok(()),
        None => Err(CliError::failed("not found")),
    }
}

pub async fn scan(global: &Global, prefix: String, limit: u32, stale: bool) -> CliResult {
    let reply = client(global)?.scan(prefix, limit, stale).await?;
    if global.json {
        let items: Vec<_> = reply.items.iter().map(|(k, v)| json!({"key": text(k), "value": text(v)})).collect();
        println!("{}", json!({"items": items, "more": reply.more, "index": reply.index, "node": reply.node}));
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    for (k, v) in &reply.items {
        out.write_all(k)
            .and_then(|()| out.write_all(b"\t"))
            .and_then(|()| out.write_all(v))
            .and_then(|()| out.write_all(b"\n"))
            .map_err(write_error)?;
    }
    out.flush().map_err(write_error)?;
    if reply.more {
        eprintln!(
            "(more pairs follow: a page stops at --limit pairs or once its keys and values reach {} MiB; \
             raise --limit or narrow the prefix)",
            raftkv_kv::MAX_SCAN_BYTES >> 20
        );
    }
    Ok(())
}

pub async fn transfer_leader(global: &Global, target: Option<u64>) -> CliResult {
    let id = client(global)?.transfer_leader(target).await?;
    println!("leadership transferring to node {id}");
    Ok(())
}

pub async fn status(global: &Global) -> CliResult {
    let statuses = client(global)?.status_all().await;
    if global.json {
        let rows: Vec<_> = statuses.iter().map(|(e, s)| status_json(e, s)).collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        print!("{}", status_table(&statuses));
    }
    if statuses.iter().any(|(_, s)| s.is_ok()) { Ok(()) } else { Err(CliError::failed("error: no endpoint answered")) }
}

fn status_json(endpoint: &str, s: &Result<NodeStatus, ClientError>) -> serde_json::Value {
    match s {
        Ok(s) => json!({
            "endpoint": endpoint,
            "reachable": true,
            "id": s.id,
            "role": s.role,
            "term": s.term,
            "leader": s.leader,
            "commit_index": s.commit_index,
            "applied_index": s.applied_index,
            "last_index": s.last_index,
            "snapshot_index": s.snapshot_index,
            "cluster_id": s.cluster_id,
        }),
        Err(e) => json!({"endpoint": endpoint, "reachable": false, "error": e.to_string()}),
    }
}

/// An aligned table, one row per endpoint.
pub fn status_table(statuses: &[(String, Result<NodeStatus, ClientError>)]) -> String {
    let header = ["ENDPOINT", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "CLUSTER", "REACHABLE"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for (endpoint, s) in statuses {
        rows.push(match s {
            Ok(s) => vec![
                endpoint.clone(),
                s.id.to_string(),
                s.role.to_lowercase(),
                s.term.to_string(),
                s.leader.map_or("-".into(), |l| l.to_string()),
                s.commit_index.to_string(),
                s.applied_index.to_string(),
                // Hex, as the servers log it; 0: a joining node that has no cluster yet.
                if s.cluster_id == 0 { "-".into() } else { format!("{:016x}", s.cluster_id) },
                "yes".into(),
            ],
            Err(e) => {
                let mut row = vec![endpoint.clone()];
                row.extend(std::iter::repeat_n("-".to_string(), header.len() - 2));
                row.push(format!("no ({})", e.to_string().trim_start_matches("unreachable: ")));
                row
            }
        });
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_is_aligned_and_shows_unreachable_nodes() {
        let up = NodeStatus {
            id: 1,
            role: "Leader".into(),
            term: 12,
            leader: Some(1),
            commit_index: 100,
            applied_index: 99,
            last_index: 100,
            snapshot_index: 0,
            peers: vec![],
            cluster_id: 7,
            recovering: false,
        };
        let rows = vec![
            ("127.0.0.1:7001".to_string(), Ok(up)),
            ("127.0.0.1:7002".to_string(), Err(ClientError::Unreachable("127.0.0.1:7002: refused".into()))),
        ];
        let table = status_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0]
                .starts_with("ENDPOINT        ID  ROLE    TERM  LEADER  COMMIT  APPLIED  CLUSTER           REACHABLE"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("127.0.0.1:7001  1   leader  12    1       100     99       0000000000000007  yes"),
            "{table}"
        );
        assert!(lines[2].contains("no (127.0.0.1:7002: refused)"), "{table}");
        let col = |l: &str| l.find("REACHABLE").or_else(|| l.find("yes")).or_else(|| l.find("no ("));
        assert_eq!(col(lines[0]), col(lines[1]));
        assert_eq!(col(lines[0]), col(lines[2]));
    }
}
