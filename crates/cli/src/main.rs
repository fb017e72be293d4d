//! `raftkv`: the command line of raftkv.
//!
//! Exit codes: 0 success; 1 failure (including "not found", a cas that did not swap,
//! an unhealthy endpoint and differing digests); 2 usage error; 3 outcome unknown
//! (the deadline passed: a write may or may not have been applied, or no leader
//! answered a read).

mod certs;
mod demo;
mod docs;
mod endpoint;
mod fault;
mod global;
mod kv;
mod member;
mod output;
mod up;
mod validate;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches as _, Parser, Subcommand};

pub use crate::global::{CliError, CliResult, Global};
use crate::output::Codec;

/// `--version`: the package version and the git commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RAFTKV_GIT_COMMIT"), ")");

const EXAMPLES: &str = "\
Examples:
  raftkv up                                  start a local 3-node cluster (Ctrl-C stops it)
  raftkv put greeting hello                  write a key
  raftkv get greeting                        read it back (linearizable)
  raftkv scan users/ --all -o json           every key under a prefix, as JSON
  raftkv endpoint health                     is every node healthy? (exit 1 if not)
  raftkv endpoint hashkv                     do the replicas hold the same state?
  raftkv --endpoints 10.0.0.1:6000 status    the nodes' roles, terms and indexes

Environment: RAFTKV_ENDPOINTS (--endpoints) and RAFTKV_CLI_TLS_CERT, RAFTKV_CLI_TLS_KEY,
RAFTKV_CLI_TLS_CA (--tls-cert, --tls-key, --tls-ca: the CLI's client certificate; the
server's own certificate variables are RAFTKV_TLS_*).";

#[derive(Parser, Debug)]
#[command(
    name = "raftkv",
    version = VERSION,
    about = "raftkv: a replicated key/value store on Raft",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Set KEY to VALUE (or to the bytes of --value-file). Prints
    /// `index=<n> term=<t> leader=<id>`.
    #[command(after_help = "Examples:\n  raftkv put config/mode fast\n  raftkv put blob --value-file photo.jpg\n  \
                            raftkv --hex put 6b6579 00ff10")]
    Put {
        /// The key: 1 to 4096 bytes.
        key: String,
        /// The value: at most 1 MiB.
        #[arg(required_unless_present = "value_file")]
        value: Option<String>,
        /// Read the value from this file (`-`: stdin) instead; at most 1048576 bytes.
        #[arg(long, value_name = "PATH", conflicts_with = "value")]
        value_file: Option<std::path::PathBuf>,
    },
    /// Print KEY's value (linearizable unless --stale). Exit 1 with `not found` if absent.
    #[command(
        after_help = "Examples:\n  raftkv get config/mode\n  raftkv get blob -o json   (the value in base64)\n  \
                            raftkv get config/mode --stale"
    )]
    Get {
        /// The key to read.
        key: String,
        /// Read any node's local state, which may be stale.
        #[arg(long)]
        stale: bool,
    },
    /// Remove KEY. Prints `index=<n> term=<t> leader=<id>`.
    Delete {
        /// The key to remove (removing an absent key succeeds).
        key: String,
    },
    /// Set KEY to NEW if its value is EXPECTED (`cas KEY EXPECTED NEW`) or if it is
    /// absent (`cas KEY --expect-absent NEW`). Exit 1, with the current value (or
    /// `not found`) on stderr, if it did not swap.
    #[command(after_help = "Examples:\n  raftkv cas counter 41 42\n  raftkv cas lock --expect-absent owner-7")]
    Cas {
        /// The key to swap.
        key: String,
        /// EXPECTED NEW, or just NEW with --expect-absent.
        #[arg(value_name = "EXPECTED NEW", num_args = 1..=2, required = true)]
        values: Vec<String>,
        /// Swap only if KEY is absent.
        #[arg(long)]
        expect_absent: bool,
    },
    /// Print the pairs whose key starts with PREFIX, in key order, one `key<TAB>value`
    /// per line. Pages through any number of keys, each page one linearizable read.
    #[command(after_help = "Examples:\n  raftkv scan users/\n  raftkv scan users/ --from users/m --limit 50\n  \
                            raftkv scan --all -o json > dump.json")]
    Scan(kv::ScanArgs),
    /// Show every member's id, version, role, term, leader, commit and applied index,
    /// and the id of the cluster it belongs to: the endpoints asked directly, the
    /// other members through an endpoint that answered (`via`), so one endpoint shows
    /// the whole cluster. `endpoint status` asks the endpoints only.
    #[command(after_help = "Examples:\n  raftkv status\n  raftkv status -o json")]
    Status,
    /// Check each endpoint: its status, its health, its state machine digest.
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCmd),
    /// Show or change the cluster's members (list, add, promote, remove).
    #[command(subcommand)]
    Member(member::MemberCmd),
    /// Inject faults into a running cluster (partition, delay-fsync, pause), list and
    /// heal them: for development clusters started with --enable-faults. Every fault
    /// heals by itself after its duration.
    #[command(subcommand)]
    Fault(fault::FaultCmd),
    /// Ask the leader to hand leadership to TARGET (or to the most caught-up peer).
    TransferLeader {
        /// The node to hand leadership to (default: the most caught-up voter).
        #[arg(value_parser = member::parse_id)]
        target: Option<u64>,
    },
    /// Check the cluster end to end: writes, linearizable reads, cas, delete, and a
    /// concurrent phase. Ends with SUCCESS (exit 0) or FAILURE: <reason> (exit 1).
    Validate(validate::ValidateArgs),
    /// Start a local cluster of server processes; Ctrl-C stops it.
    Up(up::UpArgs),
    /// Run the failure scenario end to end on this machine: start, validate, kill the
    /// leader, restart, stop a node, restore, verify.
    Demo(demo::DemoArgs),
    /// Load the cluster (closed loop, or open loop with --rate) and report throughput,
    /// latency percentiles and errors (a table, or JSON with -o json).
    Bench(raftkv_bench::BenchArgs),
    /// Generate a development certificate authority and node and client certificates
    /// for mutual TLS between the servers and from clients.
    #[command(
        long_about = "Generate a development certificate authority (ca.pem, ca-key.pem) and, signed by it, a \
                      certificate and key per node (node-<NODE>.pem, node-<NODE>-key.pem) and one for clients \
                      (client.pem, client-key.pem), for mutual TLS. Servers take --tls-cert node-<ID>.pem \
                      --tls-key node-<ID>-key.pem --tls-ca ca.pem; the CLI takes --tls-cert client.pem --tls-key \
                      client-key.pem --tls-ca ca.pem. For production, use your own CA: a node certificate's common \
                      name must be raftkv-node-<name>, a client's raftkv-client-<name>.",
        after_help = "Examples:\n  raftkv certs --out tls --node 1,2,3\n  \
                      raftkv certs --out tls --node pods --host '*.raft-service.default.svc'"
    )]
    Certs(certs::CertsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(docs::CompletionArgs),
    /// Print the manual page (roff), or write one per command into a directory.
    Man(docs::ManArgs),
    /// Run one server node in this process (what `up` and `demo` start when no
    /// `raftkv-server` executable is beside this one).
    #[command(hide = true)]
    Server(Box<raftkv_server::ServerArgs>),
}

impl Cmd {
    /// The name of a command that prints no data (so takes no output format).
    fn without_data(&self) -> Option<&'static str> {
        match self {
            Cmd::Validate(_) => Some("validate"),
            Cmd::Up(_) => Some("up"),
            Cmd::Demo(_) => Some("demo"),
            Cmd::Certs(_) => Some("certs"),
            Cmd::Completion(_) => Some("completion"),
            Cmd::Man(_) => Some("man"),
            Cmd::Server(_) => Some("server"),
            _ => None,
        }
    }
}

/// The global options, as a subcommand's help names them instead of listing them.
const GLOBAL_POINTER: &str = "Global options: --endpoints, --timeout, -o/--output, --json, --hex, --tls-cert, --tls-key, --tls-ca (see raftkv --help)";

/// The command line as parsed and as its help shows it: every subcommand's help lists
/// its own options and names the global ones in one line (`raftkv --help` describes
/// them). Each subcommand gets hidden copies of the global options before clap
/// propagates them (it leaves alone a subcommand's own copy), so they still parse
/// anywhere on the line.
fn cli_command() -> clap::Command {
    fn point_to_globals(cmd: clap::Command, globals: &[clap::Arg]) -> clap::Command {
        // `server` is the server's own command line (its --tls-* are the node's).
        if cmd.is_hide_set() {
            return cmd;
        }
        let after = cmd.get_after_help().map(|h| format!("{h}\n\n")).unwrap_or_default();
        let cmd = globals
            .iter()
            .fold(cmd, |cmd, a| cmd.arg(a.clone().hide(true)))
            .after_help(format!("{after}{GLOBAL_POINTER}"));
        let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
        names.iter().fold(cmd, |cmd, name| cmd.mut_subcommand(name, |sub| point_to_globals(sub, globals)))
    }
    let cli = Cli::command();
    let globals: Vec<clap::Arg> = cli.get_arguments().filter(|a| a.is_global_set()).cloned().collect();
    let names: Vec<String> = cli.get_subcommands().map(|s| s.get_name().to_string()).collect();
    names.iter().fold(cli, |cli, name| cli.mut_subcommand(name, |sub| point_to_globals(sub, &globals)))
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&cli_command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some(name) = cli.command.without_data()
        && cli.global.formats_given()
    {
        return exit(Err(usage_error(name, "--output, --json and --hex apply to commands that print data")));
    }
    let command = match cli.command {
        Cmd::Server(args) => return run_server(*args),
        Cmd::Certs(args) => return exit(certs::command(args)),
        Cmd::Completion(args) => return exit(docs::completion(Cli::command(), &args)),
        Cmd::Man(args) => return exit(docs::man(cli_command(), &args)),
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
    exit(result)
}

/// The exit code of a result, its message (if any) on stderr.
fn exit(result: CliResult) -> ExitCode {
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
    let codec = Codec::of(&global);
    match command {
        Cmd::Put { key, value, value_file } => {
            let value = value.map(|v| codec.arg("VALUE", &v)).transpose()?;
            kv::put(&global, codec.arg("KEY", &key)?, value, value_file).await
        }
        Cmd::Get { key, stale } => kv::get(&global, codec.arg("KEY", &key)?, stale).await,
        Cmd::Delete { key } => kv::delete(&global, codec.arg("KEY", &key)?).await,
        Cmd::Cas { key, values, expect_absent } => {
            let (expected, new) = match (expect_absent, values.as_slice()) {
                (true, [new]) => (None, codec.arg("NEW", new)?),
                (false, [expected, new]) => (Some(codec.arg("EXPECTED", expected)?), codec.arg("NEW", new)?),
                (true, _) => {
                    return Err(usage_error("cas", "cas KEY --expect-absent NEW takes exactly one value after KEY"));
                }
                (false, _) => {
                    return Err(usage_error("cas", "cas takes KEY EXPECTED NEW (or KEY --expect-absent NEW)"));
                }
            };
            kv::cas(&global, codec.arg("KEY", &key)?, expected, new).await
        }
        Cmd::Scan(args) => kv::scan(&global, args).await,
        Cmd::Status => endpoint::status(&global, true).await,
        Cmd::Endpoint(cmd) => endpoint::command(&global, cmd).await,
        Cmd::TransferLeader { target } => kv::transfer_leader(&global, target).await,
        Cmd::Member(cmd) => member::command(&global, cmd).await,
        Cmd::Fault(cmd) => fault::command(&global, cmd).await,
        Cmd::Validate(args) => validate::command(&global, args).await,
        Cmd::Up(args) => up::command(&global, args).await,
        Cmd::Demo(args) => demo::command(&global, args).await,
        Cmd::Bench(args) => bench(&global, args).await,
        Cmd::Server(_) | Cmd::Certs(_) | Cmd::Completion(_) | Cmd::Man(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// `raftkv bench`: the raftkv backend of the load generator (crates/bench).
async fn bench(global: &Global, args: raftkv_bench::BenchArgs) -> CliResult {
    args.validate().map_err(CliError::usage)?;
    let failed = |e: anyhow::Error| CliError::failed(format!("error: {e:#}"));
    let backend = raftkv_bench::raftkv::RaftKvBackend::new(
        global.endpoints.clone(),
        global.tls()?,
        args.via_follower,
        args.batch_in_flight,
    )
    .await
    .map_err(failed)?;
    let report = raftkv_bench::run(backend, &args).await.map_err(failed)?;
    let text = match global.output(global::Output::Table) {
        global::Output::Json => report.to_json() + "\n",
        global::Output::Table | global::Output::Simple => report.table(),
    };
    output::write_out(text.as_bytes())
}

/// A usage error of `subcommand`, reported like clap's own (exit 2).
fn usage_error(subcommand: &str, message: &str) -> CliError {
    let mut cli = cli_command();
    let mut cmd = cli.find_subcommand_mut(subcommand).cloned().unwrap_or(cli);
    let err = cmd.error(clap::error::ErrorKind::ArgumentConflict, message);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        // clap's own checks (unique names, valid defaults, ...) over every subcommand.
        cli_command().debug_assert();
    }

    #[test]
    fn every_command_and_argument_is_described() {
        fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && path != " raftkv" {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set() && a.get_help().is_none()) {
                missing.push(format!("{path} {}", arg.get_id()));
            }
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                check(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        check(&cli_command(), "", &mut missing);
        assert!(missing.is_empty(), "without a description: {missing:?}");
    }

    #[test]
    fn global_options_parse_anywhere_and_keep_the_servers_own() {
        let parse = |args: &[&str]| {
            let matches = cli_command().try_get_matches_from(args).map_err(|e| e.to_string())?;
            Cli::from_arg_matches(&matches).map_err(|e| e.to_string())
        };
        let cli = parse(&["raftkv", "member", "list", "-o", "json", "--endpoints", "h:1,h:2"]).unwrap();
        assert_eq!(
            (cli.global.output, cli.global.endpoints),
            (Some(global::Output::Json), vec!["h:1".into(), "h:2".into()])
        );
        let cli = parse(&["raftkv", "--hex", "endpoint", "health", "--timeout", "2s"]).unwrap();
        assert!(cli.global.hex && cli.global.timeout == Duration::from_secs(2));
        // The hidden server command keeps its own --tls-cert (the node's certificate).
        let cli = parse(&["raftkv", "server", "--help"]).unwrap_err();
        assert!(cli.contains("--tls-cert"), "{cli}");
    }
}
