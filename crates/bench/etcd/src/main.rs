//! `raftkv-bench`: the load generator of `raftkv bench`, with a second backend that
//! drives an etcd cluster through its v3 gRPC API with the identical workload, so the
//! two are measured the same way. It lives in its own crate so that neither the server
//! nor the `raftkv` CLI links etcd-client.
//!
//! ```sh
//! raftkv-bench --target etcd --endpoints 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 \
//!     --clients 64 --duration 10s --json
//! ```

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};
use raftkv_bench::{Backend, BenchArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Target {
    Raftkv,
    Etcd,
}

#[derive(Parser, Debug)]
#[command(name = "raftkv-bench", version, about = "Benchmark raftkv or etcd with the same workload")]
struct Cli {
    /// The store to benchmark.
    #[arg(long, value_enum, default_value = "raftkv")]
    target: Target,
    /// The store's members, HOST:PORT,... (raftkv: its client ports; etcd: its client URLs' host:port).
    #[arg(long, env = "BENCH_ENDPOINTS", value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    bench: BenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.bench.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.target {
            Target::Raftkv => {
                let backend = raftkv_bench::raftkv::RaftKvBackend::new(
                    cli.endpoints.clone(),
                    None,
                    cli.bench.via_follower,
                    cli.bench.batch_in_flight,
                )
                .await?;
                raftkv_bench::run(backend, &cli.bench).await
            }
            Target::Etcd if cli.bench.via_follower => anyhow::bail!("--via-follower is for --target raftkv"),
            Target::Etcd => raftkv_bench::run(EtcdBackend::new(cli.endpoints.clone()).await?, &cli.bench).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(report) => {
            if cli.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// etcd through its v3 API: each connection is a gRPC channel to the leader (found
/// once, as raftkv's backend does), or, for stale (serializable) reads, to member
/// `index % members`. Puts and linearizable gets go to the leader.
struct EtcdBackend {
    endpoints: Vec<String>,
    leader: String,
}

fn url(endpoint: &str) -> String {
    if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") }
}

async fn connect(endpoint: &str) -> anyhow::Result<Client> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_keep_alive_while_idle(false);
    Client::connect([url(endpoint)], Some(opts)).await.with_context(|| format!("connect to etcd at {endpoint}"))
}

impl EtcdBackend {
    async fn new(endpoints: Vec<String>) -> anyhow::Result<EtcdBackend> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut last = String::new();
            for ep in &endpoints {
                match connect(ep).await {
                    Ok(mut c) => match c.status().await {
                        Ok(s) if s.header().is_some_and(|h| h.member_id() == s.leader()) => {
                            return Ok(EtcdBackend { endpoints: endpoints.clone(), leader: ep.clone() });
                        }
                        Ok(_) => {}
                        Err(e) => last = format!("{ep}: {e}"),
                    },
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if std::time::Instant::now() >= deadline {
                bail!("no etcd leader among {endpoints:?} ({last})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[derive(Clone)]
struct Conn {
    leader: KvClient,
    reads: KvClient,
}

impl Backend for EtcdBackend {
    type Conn = Conn;
    type Session = ();

    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn connect(&self, index: usize, _count: usize, stale_reads: bool) -> anyhow::Result<Conn> {
        let leader = connect(&self.leader).await?.kv_client();
        let reads = if stale_reads {
            connect(&self.endpoints[index % self.endpoints.len()]).await?.kv_client()
        } else {
            leader.clone()
        };
        Ok(Conn { leader, reads })
    }

    fn session(&self, _index: usize) {}

    async fn put(&self, conn: &Conn, _: &mut (), key: Bytes, value: Bytes, timeout: Duration) -> Result<(), String> {
        let mut kv = conn.leader.clone();
        match tokio::time::timeout(timeout, kv.put(key.to_vec(), value.to_vec(), None)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {timeout:?}")),
        }
    }

    async fn get(&self, conn: &Conn, _: &mut (), key: Bytes, stale: bool, timeout: Duration) -> Result<(), String> {
        let (mut kv, opts) = if stale {
            (conn.reads.clone(), Some(GetOptions::new().with_serializable()))
        } else {
            (conn.leader.clone(), None)
        };
        match tokio::time::timeout(timeout, kv.get(key.to_vec(), opts)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {timeout:?}")),
        }
    }
}
