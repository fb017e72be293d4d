//! `--check-args`: the flags (and `RAFTKV_*` variables) parsed by the real parser and
//! resolved as a start would resolve them, printed instead of run. The offline checks
//! (tests/offline) run every server container's args of the manifests through it, so a
//! misspelt flag or a bad value fails there, not in a crash-looping pod.

use crate::args::{ServerArgs, tls_files};

/// What `args` resolve to, one `KEY VALUE` line each (`id`, `listen`, `advertise`,
/// `admin-listen` (`-` when off), `data-dir`, `peers`, `join`, `tls`, `faults` (`on` with
/// `--enable-faults` or `RAFTKV_ENABLE_FAULTS`, else `off`)). The TLS files are
/// only required to come together, not read: they exist in the pod, not here.
pub fn check_args(args: &ServerArgs) -> Result<String, String> {
    let tls = tls_files(args.tls_cert.as_ref(), args.tls_key.as_ref(), args.tls_ca.as_ref())?.is_some();
    let plain = ServerArgs { tls_cert: None, tls_key: None, tls_ca: None, ..args.clone() };
    let cfg = plain.resolve()?;
    let peers: Vec<String> = cfg.peers.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
    let lines = [
        ("id", cfg.id.to_string()),
        ("listen", cfg.listen),
        ("advertise", cfg.cluster.advertise),
        ("admin-listen", args.admin_listen.clone().unwrap_or_else(|| "-".into())),
        ("data-dir", cfg.data_dir.display().to_string()),
        ("peers", peers.join(",")),
        ("join", cfg.cluster.join.join(",")),
        ("tls", if tls { "on" } else { "off" }.into()),
        ("faults", if cfg.enable_faults { "on" } else { "off" }.into()),
    ];
    Ok(lines.iter().map(|(k, v)| format!("{k} {v}\n")).collect())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn check(args: &[&str]) -> Result<String, String> {
        let parsed = ServerArgs::try_parse_from(std::iter::once("raftkv-server").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        check_args(&parsed)
    }

    #[test]
    fn prints_what_the_kubernetes_flags_resolve_to() {
        let out = check(&[
            "--check-args",
            "--pod-name=raft-1",
            "--service=raft-service",
            "--replicas=3",
            "--data-dir=/data",
            "--admin-listen=0.0.0.0:9090",
        ])
        .unwrap();
        let want = "id 2\nlisten 0.0.0.0:6000\nadvertise raft-1.raft-service:6000\nadmin-listen 0.0.0.0:9090\n\
                    data-dir /data\npeers 1=raft-0.raft-service:6000,2=raft-1.raft-service:6000,\
                    3=raft-2.raft-service:6000\njoin \ntls off\nfaults off\n";
        assert_eq!(out, want);
    }

    /// The flags of a StatefulSet member, to which each test adds its own.
    const BASE: [&str; 5] = ["--check-args", "--pod-name=raft-0", "--service=s", "--replicas=3", "--data-dir=/d"];

    #[test]
    fn refuses_what_a_start_would_refuse_but_reads_no_tls_file() {
        let e = check(&[&BASE[..], &["--admin-listne=0.0.0.0:9090"]].concat()).unwrap_err();
        assert!(e.contains("--admin-listne"), "{e}");
        let e = check(&[&BASE[..], &["--admin-listen=9090"]].concat()).unwrap_err();
        assert!(e.contains("--admin-listen"), "{e}");
        let e =
            check(&["--check-args", "--pod-name=raft", "--service=s", "--replicas=3", "--data-dir=/d"]).unwrap_err();
        assert!(e.contains("must look like"), "{e}");
        let e = check(&[&BASE[..], &["--tls-cert=/nonexistent/c.pem"]].concat()).unwrap_err();
        assert!(e.contains("missing --tls-key, --tls-ca"), "{e}");
        let tls = ["--tls-cert=/nonexistent/c.pem", "--tls-key=/nonexistent/k.pem", "--tls-ca=/nonexistent/ca.pem"];
        assert!(check(&[&BASE[..], &tls[..]].concat()).unwrap().ends_with("tls on\nfaults off\n"));
    }

    #[test]
    fn says_whether_faults_are_enabled() {
        let on = check(&[&BASE[..], &["--enable-faults"]].concat()).unwrap();
        assert!(on.ends_with("\nfaults on\n"), "{on}");
        let e = check(&[&BASE[..], &["--enable-fault"]].concat()).unwrap_err();
        assert!(e.contains("--enable-fault"), "{e}");
    }
}
