//! The executables under test, `raftkv-server` and `raftkv`: built once per test binary
//! when missing or older than their sources.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// The executables under test, in the test executable's `target/<profile>` directory.
pub struct Binaries {
    pub server: PathBuf,
    pub cli: PathBuf,
}

/// Set to skip the build (use whatever executables exist).
pub const NO_BUILD_ENV: &str = "RAFTKV_TESTS_NO_BUILD";

/// The executables, built first (once per test binary) if either is missing or older
/// than a source file of the crates they are built from. Concurrent builds from
/// several test binaries are serialized by cargo's own lock on the target directory.
pub fn binaries() -> &'static Binaries {
    // A failure is kept too: the other tests of this binary fail at once, not build again.
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    match BINARIES.get_or_init(locate_or_build) {
        Ok(b) => b,
        Err(e) => panic!("cannot provide the raftkv executables: {e}"),
    }
}

/// The workspace root (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

fn locate_or_build() -> Result<Binaries, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // <target>/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in <target>/<profile>/deps", exe.display()))?
        .to_path_buf();
    let bin = |name: &str| profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let bins = Binaries { server: bin("raftkv-server"), cli: bin("raftkv") };
    let exists = bins.server.is_file() && bins.cli.is_file();
    if std::env::var_os(NO_BUILD_ENV).is_some_and(|v| !v.is_empty()) {
        return if exists {
            Ok(bins)
        } else {
            Err(format!("{NO_BUILD_ENV} is set but {} or {} is missing", bins.server.display(), bins.cli.display()))
        };
    }
    let newest = newest_source(&workspace_root());
    let fresh = |p: &Path| modified(p).is_some_and(|m| newest.is_none_or(|n| m >= n));
    if fresh(&bins.server) && fresh(&bins.cli) {
        return Ok(bins);
    }
    cargo_build(&profile_dir)?;
    if bins.server.is_file() && bins.cli.is_file() {
        Ok(bins)
    } else {
        Err(format!("cargo built, yet {} or {} is missing", bins.server.display(), bins.cli.display()))
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The crates under `crates/` that neither executable is built from.
const NOT_IN_THE_EXECUTABLES: [&str; 2] = ["sim", "xtask"];

/// The newest modification time of the sources the two executables are built from
/// (every crate under `crates/` but the simulator and xtask, and the workspace manifest
/// and lock).
fn newest_source(root: &Path) -> Option<SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "toml")
                && let Some(m) = modified(&path)
            {
                *newest = Some(newest.map_or(m, |n| n.max(m)));
            }
        }
    }
    let mut newest = [root.join("Cargo.toml"), root.join("Cargo.lock")].iter().filter_map(|p| modified(p)).max();
    let Ok(crates) = std::fs::read_dir(root.join("crates")) else { return newest };
    for dir in crates.flatten().map(|e| e.path()) {
        if dir.file_name().is_some_and(|n| NOT_IN_THE_EXECUTABLES.iter().any(|c| n == *c)) {
            continue;
        }
        walk(&dir.join("src"), &mut newest);
        for file in ["Cargo.toml", "build.rs"] {
            if let Some(m) = modified(&dir.join(file)) {
                newest = Some(newest.map_or(m, |n| n.max(m)));
            }
        }
    }
    newest
}

/// `cargo build -p raftkv-server -p raftkv` into the profile directory the test
/// executable lives in (`$CARGO` if set, as under `cargo test`).
fn cargo_build(profile_dir: &Path) -> Result<(), String> {
    let profile = profile_dir.file_name().and_then(|p| p.to_str()).ok_or("no profile directory name")?;
    let mut target_dir = profile_dir.parent().ok_or("no target directory")?.to_path_buf();
    let mut cmd = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cmd.current_dir(workspace_root()).args(["build", "-p", "raftkv-server", "-p", "raftkv"]);
    // Not the variables cargo test set for this test binary: a build script that reads
    // one (ring's reads CARGO_MANIFEST_DIR) would rebuild its crate here, and again in
    // the next plain cargo.
    let set_for_this_test = |name: &str| name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_MANIFEST_");
    for (name, _) in std::env::vars().filter(|(name, _)| set_for_this_test(name)) {
        cmd.env_remove(name);
    }
    for name in ["CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"] {
        cmd.env_remove(name);
    }
    // `<target>/<triple>/<profile>` when built with --target.
    if !target_dir.join("CACHEDIR.TAG").exists()
        && let Some(parent) = target_dir.parent().filter(|p| p.join("CACHEDIR.TAG").exists())
        && let Some(triple) = target_dir.file_name()
    {
        cmd.arg("--target").arg(triple);
        target_dir = parent.to_path_buf();
    }
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    cmd.arg("--target-dir").arg(&target_dir);
    eprintln!("building the executables under test: {cmd:?}");
    let started = Instant::now();
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    eprintln!("built in {:?}", started.elapsed());
    Ok(())
}
