//! Sets `RAFTKV_GIT_COMMIT` for `--version`: `$RAFTKV_GIT_COMMIT` when the build
//! environment gives it (a Nix build, which has no `.git`), else `git rev-parse` of
//! the checkout, else `unknown`. Reruns when HEAD moves.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RAFTKV_GIT_COMMIT");
    let commit = match std::env::var("RAFTKV_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => from_git().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=RAFTKV_GIT_COMMIT={commit}");
}

/// The checkout's commit (12 hex digits), watching the files that change with it.
fn from_git() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // HEAD names a branch whose ref file (or packed-refs) moves with each commit; in a
    // worktree these live in different git directories, which --git-path resolves.
    let mut watched =
        vec![git(&["rev-parse", "--git-path", "HEAD"])?, git(&["rev-parse", "--git-path", "packed-refs"])?];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.extend(git(&["rev-parse", "--git-path", &branch]));
    }
    for path in watched {
        // Relative to the directory git ran in: this package's. Only files that exist:
        // cargo reruns the script on every build for one that does not.
        let path = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?).join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(commit)
}
