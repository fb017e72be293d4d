//! The options every command takes (under their own help heading), how they are
//! checked at parse time, and the CLI's errors and exit codes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use raftkv_client::duration::parse_duration;
use raftkv_client::{ClientError, ClientOptions};

pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

/// The CLI's own environment variables for its TLS files. The server reads
/// `RAFTKV_TLS_*` for its node certificate; the CLI's are a client certificate.
pub const TLS_ENV: [(&str, &str); 3] = [
    ("RAFTKV_CLI_TLS_CERT", "RAFTKV_TLS_CERT"),
    ("RAFTKV_CLI_TLS_KEY", "RAFTKV_TLS_KEY"),
    ("RAFTKV_CLI_TLS_CA", "RAFTKV_TLS_CA"),
];

/// How a command prints what it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Plain lines: a value as it is, `key<TAB>value` pairs, comma-separated rows.
    Simple,
    /// An aligned table with a header.
    Table,
    /// One JSON document; keys and values base64 (or hex with --hex), as its
    /// `encoding` field says.
    Json,
}

/// Options every command accepts.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Cluster members to contact, as HOST:PORT,HOST:PORT (any members; the leader is
    /// found from their answers).
    #[arg(
        long,
        global = true,
        env = "RAFTKV_ENDPOINTS",
        value_delimiter = ',',
        value_name = "HOST:PORT,...",
        value_parser = parse_endpoint,
        default_value = DEFAULT_ENDPOINTS
    )]
    pub endpoints: Vec<String>,

    /// Overall deadline of one operation, retries included (e.g. 5s, 500ms, 2m, 1m30s).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub timeout: Duration,

    /// Output format [default: each command's own: simple for put/get/scan, table for
    /// status, member list and endpoint status/hashkv].
    #[arg(short = 'o', long, global = true, value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,

    /// Same as --output json.
    #[arg(long, global = true, conflicts_with = "output")]
    pub json: bool,

    /// Keys and values are hex: on the command line (KEY, VALUE, PREFIX, --from) and in
    /// every output format (JSON's `encoding` is then "hex" instead of "base64").
    #[arg(long, global = true)]
    pub hex: bool,

    /// Mutual TLS to the servers: this client's certificate (PEM, from `raftkv certs`).
    /// Give --tls-cert, --tls-key and --tls-ca together, or none (plaintext).
    #[arg(long, global = true, env = "RAFTKV_CLI_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, env = "RAFTKV_CLI_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// The cluster CA (PEM) the servers' certificates must be signed by.
    #[arg(long, global = true, env = "RAFTKV_CLI_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

impl Global {
    /// The output format: --output (or --json), else the command's `default`.
    pub fn output(&self, default: Output) -> Output {
        if self.json { Output::Json } else { self.output.unwrap_or(default) }
    }

    /// Whether the user chose a format or --hex (for commands that print no data).
    pub fn formats_given(&self) -> bool {
        self.json || self.output.is_some() || self.hex
    }

    /// The TLS flags loaded (`None`: plaintext). A missing flag or a bad file is a
    /// usage error (exit 2) naming it.
    pub fn tls(&self) -> Result<Option<raftkv_rpc::TlsConfig>, CliError> {
        let (cert, key, ca) = self.tls_paths();
        let files = raftkv_server::tls_files(cert.as_ref(), key.as_ref(), ca.as_ref()).map_err(CliError::usage)?;
        files.map(|f| raftkv_rpc::TlsConfig::load(&f).map_err(|e| CliError::usage(format!("TLS: {e}")))).transpose()
    }

    /// The TLS files from the flags or `RAFTKV_CLI_TLS_*`; when none is given, from the
    /// server's `RAFTKV_TLS_*` as before, with a warning (they will stop being read).
    fn tls_paths(&self) -> (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>) {
        if self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_ca.is_some() {
            return (self.tls_cert.clone(), self.tls_key.clone(), self.tls_ca.clone());
        }
        let legacy = TLS_ENV.map(|(_, old)| std::env::var_os(old).filter(|v| !v.is_empty()).map(PathBuf::from));
        if legacy.iter().any(Option::is_some) {
            eprintln!(
                "warning: reading the TLS files from RAFTKV_TLS_CERT/KEY/CA, the server's variables; set \
                 RAFTKV_CLI_TLS_CERT/KEY/CA for the CLI (RAFTKV_TLS_* will stop being read by the CLI)"
            );
        }
        let [cert, key, ca] = legacy;
        (cert, key, ca)
    }

    /// Client options for the global timeout and TLS flags.
    pub fn client_options(&self) -> Result<ClientOptions, CliError> {
        Ok(ClientOptions { tls: self.tls()?, ..ClientOptions::with_timeout(self.timeout) })
    }
}

/// One endpoint, `HOST:PORT` (the host is not resolved here).
pub fn parse_endpoint(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("an empty endpoint; give HOST:PORT,HOST:PORT with no empty entries".into());
    }
    parse_host_port(s)
}

/// `HOST:PORT` (the host is not resolved: the node may not exist yet).
pub fn parse_host_port(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (host, port) = s.rsplit_once(':').ok_or("expected HOST:PORT, e.g. 10.0.0.4:6000 (no :PORT)")?;
    if host.is_empty() {
        return Err("expected HOST:PORT, e.g. 10.0.0.4:6000 (no host)".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(format!("the port '{port}' is not a number in 1..=65535")),
    }
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

    /// A usage error (exit 2).
    pub fn usage(message: impl std::fmt::Display) -> Self {
        CliError { code: 2, message: format!("error: {message}") }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let code = if e.is_deadline() { 3 } else { 1 };
        CliError { code, message: format!("error: {e}") }
    }
}

pub type CliResult = Result<(), CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_addresses_are_checked() {
        assert_eq!(parse_host_port("raft-3.raft-service:6000").as_deref(), Ok("raft-3.raft-service:6000"));
        assert_eq!(parse_host_port("[::1]:6000").as_deref(), Ok("[::1]:6000"));
        for bad in ["10.0.0.4", ":6000", "h:0", "h:port", "h:70000"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
        assert!(parse_endpoint("").unwrap_err().contains("empty"));
        assert!(parse_endpoint(" ").unwrap_err().contains("empty"));
    }
}
