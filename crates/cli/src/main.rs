//! `raftkv`: the command line of raftkv.
//!
//! Exit codes: 0 success; 1 failure (including "not found" and a cas that did not
//! swap); 2 usage error; 3 outcome unknown (the deadline passed: a write may or may
//! not have been applied, or no leader answered a read).

mod certs;
mod demo;
mod duration;
mod kv;
mod member;
mod up;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use raftkv_client::{ClientError, ClientOptions};

use crate::duration::parse_duration;

pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

#[derive(Parser, Debug)]
#[command(name = "raftkv", version, about = "raftkv: a replicated key/value store on Raft", propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Cmd,
}

/// Options every command accepts.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Cluster members to contact, as HOST:PORT,HOST:PORT (any members; the leader is
    /// found from their answers).
    #[arg(
        long,
        global = true,
        env = "RAFTKV_ENDPOINTS",
        value_delimiter = ',',
        value_name = "HOST:PORT,...",
        default_value = DEFAULT_ENDPOINTS
    )]
    pub endpoints: Vec<String>,

    /// Overall deadline of one operation, retries included (e.g. 5s, 500ms, 2m).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub timeout: Duration,

    /// Print machine-readable JSON (put, delete, cas, get, scan, status, member).
    #[arg(long, global = true)]
    pub json: bool,

    /// Mutual TLS to the servers: this client's certificate (PEM, from `raftkv certs`).
    /// Give --tls-cert, --tls-key and --tls-ca together, or none (plaintext).
    #[arg(long, global = true, env = "RAFTKV_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, env = "RAFTKV_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// The cluster CA (PEM) the servers' certificates must be signed by.
    #[arg(long, global = true, env = "RAFTKV_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

impl Global {
    /// The TLS flags loaded (`None`: plaintext). A missing flag or a bad file is a
    /// usage error (exit 2) naming it.
    pub fn tls(&self) -> Result<Option<raftkv_rpc::TlsConfig>, CliError> {
        let usage = |message: String| CliError { code: 2, message: format!("error: {message}") };
        let files = raftkv_server::tls_files(self.tls_cert.as_ref(), self.tls_key.as_ref(), self.tls_ca.as_ref())
            .map_err(usage)?;
        files.map(|f| raftkv_rpc::TlsConfig::load(&f).map_err(|e| usage(format!("TLS: {e}")))).transpose()
    }

    /// Client options for the global timeout and TLS flags.
    pub fn client_options(&self) -> Result<ClientOptions, CliError> {
        Ok(ClientOptions { tls: self.tls()?, ..ClientOptions::with_timeout(self.timeout) })
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Set KEY to VALUE (or to the bytes of --value-file). Prints
    /// `index=<n> term=<t> leader=<id>`.
    Put {
        key: String,
        #[arg(required_unless_present = "value_file")]
        value: Option<String>,
        /// Read the value from this file (`-`: stdin) instead; at most 1048576 bytes.
        #[arg(long, value_name = "PATH", conflicts_with = "value")]
        value_file: Option<std::path::PathBuf>,
    },
    /// Print KEY's value (linearizable unless --stale). Exit 1 with `not found` if absent.
    Get {
        key: String,
        /// Read any node's local state, which may be stale.
        #[arg(long)]
        stale: bool,
    },
    /// Remove KEY. Prints `index=<n> term=<t> leader=<id>`.
    Delete { key: String },
    /// Set KEY to NEW if its value is EXPECTED (`cas KEY EXPECTED NEW`) or if it is
    /// absent (`cas KEY --expect-absent NEW`). Exit 1, with the current value (or
    /// `not found`) on stderr, if it did not swap.
    Cas {
        key: String,
        /// EXPECTED NEW, or just NEW with --expect-absent.
        #[arg(value_name = "EXPECTED NEW", num_args = 1..=2, required = true)]
        values: Vec<String>,
        /// Swap only if KEY is absent.
        #[arg(long)]
        expect_absent: bool,
    },
    /// Print the pairs whose key starts with PREFIX, one `key<TAB>value` per line.
    Scan {
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many pairs.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Read any node's local state, which may be stale.
        #[arg(long)]
        stale: bool,
    },
    /// Show every endpoint's id, role, term, leader, commit and applied index, and the
    /// id of the cluster it belongs to.
    Status,
    /// Show or change the cluster's members (list, add, promote, remove).
    #[command(subcommand)]
    Member(member::MemberCmd),
    /// Ask the leader to hand leadership to TARGET (or to the most caught-up peer).
    TransferLeader { target: Option<u64> },
    /// Check the cluster end to end: writes, linearizable reads, cas, delete, and a
    /// concurrent phase. Ends with SUCCESS (exit 0) or FAILURE: <reason> (exit 1).
    Validate(validate::ValidateArgs),
    /// Start a local cluster of server processes; Ctrl-C stops it.
    Up(up::UpArgs),
    /// Run the failure scenario end to end on this machine: start, validate, kill the
    /// leader, restart, stop a node, restore, verify.
    Demo(demo::DemoArgs),
    /// Load the cluster (closed loop, or open loop with --rate) and report throughput,
    /// latency percentiles and errors (--json for JSON).
    Bench(raftkv_bench::BenchArgs),
    /// Generate a development CA and node and client certificates for mutual TLS
    /// (servers: --tls-cert node-<ID>.pem --tls-key node-<ID>-key.pem --tls-ca ca.pem).
    Certs(certs::CertsArgs),
    /// Run one server node in this process (what `up` and `demo` start when no
    /// `raftkv-server` executable is beside this one).
    #[command(hide = true)]
    Server(Box<raftkv_server::ServerArgs>),
}

/// A failed command: its message and exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn failed(message: impl Into<String>) -> Self {
        CliError { code: 1, message: message.into() }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let code = if e.is_deadline() { 3 } else { 1 };
        CliError { code, message: format!("error: {e}") }
    }
}

pub type CliResult = Result<(), CliError>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Cmd::Server(args) => return run_server(*args),
        Cmd::Certs(args) => {
            return match certs::command(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{}", e.message);
                    ExitCode::from(e.code)
                }
            };
        }
        command => command,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let telemetry = {
        // Inside the runtime: the gRPC exporter's connection lives on it.
        let _entered = runtime.enter();
        init_tracing()
    };
    let result = runtime.block_on(run(cli.global, command));
    // Export the spans still queued while the runtime (and the exporter's connection)
    // still runs: a short-lived command would otherwise lose them.
    telemetry.shutdown();
    // Do not wait for lingering connection tasks.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("{}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}

async fn run(global: Global, command: Cmd) -> CliResult {
    match command {
        Cmd::Put { key, value, value_file } => kv::put(&global, key, value, value_file).await,
        Cmd::Get { key, stale } => kv::get(&global, key, stale).await,
        Cmd::Delete { key } => kv::delete(&global, key).await,
        Cmd::Cas { key, values, expect_absent } => {
            let (expected, new) = match (expect_absent, values.as_slice()) {
                (true, [new]) => (None, new.clone()),
                (false, [expected, new]) => (Some(expected.clone()), new.clone()),
                (true, _) => return Err(usage("cas KEY --expect-absent NEW takes exactly one value after KEY")),
                (false, _) => return Err(usage("cas takes KEY EXPECTED NEW (or KEY --expect-absent NEW)")),
            };
            kv::cas(&global, key, expected, new).await
        }
        Cmd::Scan { prefix, limit, stale } => kv::scan(&global, prefix, limit, stale).await,
        Cmd::Status => kv::status(&global).await,
        Cmd::TransferLeader { target } => kv::transfer_leader(&global, target).await,
        Cmd::Member(cmd) => member::command(&global, cmd).await,
        Cmd::Validate(args) => validate::command(&global, args).await,
        Cmd::Up(args) => up::command(&global, args).await,
        Cmd::Demo(args) => demo::command(&global, args).await,
        Cmd::Bench(args) => bench(&global, args).await,
        Cmd::Server(_) | Cmd::Certs(_) => unreachable!("handled before the runtime starts"),
    }
}

/// `raftkv bench`: the raftkv backend of the load generator (crates/bench).
async fn bench(global: &Global, args: raftkv_bench::BenchArgs) -> CliResult {
    args.validate().map_err(|e| CliError { code: 2, message: format!("error: {e}") })?;
    let failed = |e: anyhow::Error| CliError::failed(format!("error: {e:#}"));
    let backend =
        raftkv_bench::raftkv::RaftKvBackend::new(global.endpoints.clone(), global.tls()?).await.map_err(failed)?;
    let report = raftkv_bench::run(backend, &args).await.map_err(failed)?;
    print!("{}", if global.json { report.to_json() + "\n" } else { report.table() });
    Ok(())
}

/// A usage error of `cas`, reported like clap's own (exit 2).
fn usage(message: &str) -> CliError {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    cli.build();
    let mut cmd = cli.find_subcommand_mut("cas").cloned().unwrap_or(cli);
    let err = cmd.error(clap::error::ErrorKind::WrongNumberOfValues, message);
    CliError { code: 2, message: err.render().to_string().trim_end().to_string() }
}

fn run_server(args: raftkv_server::ServerArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(raftkv_server::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr only when RUST_LOG is set; OpenTelemetry traces (service
/// `raftkv-cli`) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
fn init_tracing() -> raftkv_telemetry::Telemetry {
    raftkv_telemetry::init(raftkv_telemetry::Options::new("raftkv-cli", raftkv_telemetry::LogOutput::TextIfRustLog))
}
