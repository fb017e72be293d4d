//! `raftkv certs`: a development CA and the node and client certificates of mutual
//! TLS (see `raftkv_rpc::tls`). For production, use your own CA; the roles only need
//! the common names: `raftkv-node-<name>` for nodes, `raftkv-client-<name>` for clients.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{CliError, CliResult};

/// `raftkv certs` flags.
#[derive(Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory to write the PEM files to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// A node to make a certificate for: node-<NODE>.pem and node-<NODE>-key.pem, CN
    /// raftkv-node-<NODE> (usually its id; one shared name such as `pods` also works).
    /// Repeat or comma separate.
    #[arg(long = "node", value_name = "NODE", value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,

    /// A host name or IP address peers and clients dial the nodes at, added to every
    /// node certificate besides localhost and 127.0.0.1 (wildcards like
    /// `*.raft-service.default.svc` allowed). Repeat or comma separate.
    #[arg(long = "host", value_name = "NAME", value_delimiter = ',')]
    pub hosts: Vec<String>,

    /// The client certificate's name: client.pem and client-key.pem, CN
    /// raftkv-client-<NAME>.
    #[arg(long, value_name = "NAME", default_value = "cli")]
    pub client: String,

    /// Overwrite files that exist (otherwise refuse).
    #[arg(long)]
    pub force: bool,
}

/// How long the certificates are valid, in years from now (they start a day ago, to
/// tolerate clock skew).
const VALID_YEARS: i32 = 5;

pub fn command(args: CertsArgs) -> CliResult {
    let written = generate(&args).map_err(CliError::failed)?;
    println!("wrote {} files to {}:", written.len(), args.out.display());
    for f in &written {
        println!("  {}", f.display());
    }
    println!(
        "servers: --tls-cert node-<NODE>.pem --tls-key node-<NODE>-key.pem --tls-ca ca.pem\nclients: --tls-cert \
         client.pem --tls-key client-key.pem --tls-ca ca.pem\nkeep ca-key.pem secret (it signs new certificates); \
         the servers and clients do not need it"
    );
    Ok(())
}

/// Writes the files; returns their paths. Errors name the file or the bad value.
pub fn generate(args: &CertsArgs) -> Result<Vec<PathBuf>, String> {
    check_args_and_out_dir(args)?;
    let fail = |what: &str, e: rcgen::Error| format!("error: cannot make the {what}: {e}");
    let ((y0, m0, d0), (y1, m1, d1)) = validity_days();
    let (not_before, not_after) = (rcgen::date_time_ymd(y0, m0, d0), rcgen::date_time_ymd(y1, m1, d1));

    let ca_key = KeyPair::generate().map_err(|e| fail("CA key", e))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "raftkv development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (ca.not_before, ca.not_after) = (not_before, not_after);
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail("CA certificate", e))?;
    let issuer = Issuer::new(ca, &ca_key);

    let mut out = Vec::new();
    let mut write = |name: String, pem: String, private: bool| -> Result<(), String> {
        let path = args.out.join(name);
        write_file(&path, pem.as_bytes(), private)?;
        out.push(path);
        Ok(())
    };
    write("ca.pem".into(), ca_cert.pem(), false)?;
    write("ca-key.pem".into(), ca_key.serialize_pem(), true)?;

    let sans = subject_alt_names(args);
    for n in &args.nodes {
        let key = KeyPair::generate().map_err(|e| fail("node key", e))?;
        let mut p = CertificateParams::new(sans.clone()).map_err(|e| fail(&format!("certificate of node {n}"), e))?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, format!("{}{n}", raftkv_rpc::tls::NODE_CN_PREFIX));
        // A node is a server (to peers and clients) and a client (of its peers).
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        (p.not_before, p.not_after) = (not_before, not_after);
        let cert = p.signed_by(&key, &issuer).map_err(|e| fail(&format!("certificate of node {n}"), e))?;
        write(format!("node-{n}.pem"), cert.pem(), false)?;
        write(format!("node-{n}-key.pem"), key.serialize_pem(), true)?;
    }

    let key = KeyPair::generate().map_err(|e| fail("client key", e))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, format!("{}{}", raftkv_rpc::tls::CLIENT_CN_PREFIX, args.client));
    // Client authentication only: it cannot serve as a node.
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    (p.not_before, p.not_after) = (not_before, not_after);
    let cert = p.signed_by(&key, &issuer).map_err(|e| fail("client certificate", e))?;
    write("client.pem".into(), cert.pem(), false)?;
    write("client-key.pem".into(), key.serialize_pem(), true)?;
    Ok(out)
}

/// The hosts the node certificates are valid for: `--host`s, plus localhost and
/// 127.0.0.1 (for `raftkv up` and port-forwards).
fn subject_alt_names(args: &CertsArgs) -> Vec<String> {
    let mut sans: Vec<String> = args.hosts.iter().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect();
    for default in ["localhost", "127.0.0.1"] {
        if !sans.iter().any(|h| h == default) {
            sans.push(default.into());
        }
    }
    sans
}

/// Checks the names, that no file would be overwritten without `--force`, and
/// creates the output directory.
fn check_args_and_out_dir(args: &CertsArgs) -> Result<(), String> {
    for n in args.nodes.iter().chain([&args.client]) {
        check_name(n)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = args.nodes.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(format!("error: --node {dup} is given twice"));
    }
    let mut files = vec![("ca.pem".to_string(), false), ("ca-key.pem".to_string(), true)];
    for n in &args.nodes {
        files.push((format!("node-{n}.pem"), false));
        files.push((format!("node-{n}-key.pem"), true));
    }
    files.push(("client.pem".into(), false));
    files.push(("client-key.pem".into(), true));
    if !args.force
        && let Some((f, _)) = files.iter().find(|(f, _)| args.out.join(f).exists())
    {
        return Err(format!("error: {} exists; use --force to overwrite", args.out.join(f).display()));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("error: cannot create --out {}: {e}", args.out.display()))
}

/// Node and client names become file names and common names: letters, digits, `-`,
/// `_`, `.` (not leading), at most 64.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("error: '{name}' is not a valid name: use 1-64 letters, digits, '-', '_' or '.' (not leading)"))
    }
}

/// From one day ago to about [`VALID_YEARS`] from now, as (year, month, day).
fn validity_days() -> ((i32, u8, u8), (i32, u8, u8)) {
    let days = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    (civil_from_days(days - 1), civil_from_days(days + 365 * i64::from(VALID_YEARS)))
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), String> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
    #[cfg(unix)]
    if private {
        // An existing file (--force) keeps its mode on open: tighten it.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("error: cannot make {} private: {e}", path.display()))?;
    }
    f.write_all(data).and_then(|()| f.sync_all()).map_err(|e| format!("error: cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("1").is_ok());
        assert!(check_name("pods").is_ok());
        assert!(check_name("../x").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
    }
}
