//! Golden protocol tests, in the style of etcd-raft's datadriven interaction tests.
//!
//! Each file in `tests/testdata/` is a scenario: a list of directives, each a command
//! line, a `----` line, and the output the command is expected to produce, ended by a
//! blank line. The commands (see `env.rs`) drive a few [`raftkv_raft::RawNode`]s step by
//! step over a scripted network; the output lists every message, state change and
//! Ready. Any change of a protocol decision shows up as a diff here.
//!
//! `RAFTKV_REWRITE=1 cargo test -p raftkv-raft --test golden` writes the actual output
//! into the files instead of comparing; review the result with `git diff`.

mod describe;
mod env;
mod script;

use std::path::{Path, PathBuf};

use script::{Chunk, Script};

/// The environment variable that turns comparison into rewriting.
const REWRITE_VAR: &str = "RAFTKV_REWRITE";

fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("testdata")
}

fn rewrite_requested() -> bool {
    std::env::var(REWRITE_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Runs every directive of `script` against a fresh environment and returns the
/// actual output of each, in order.
fn run_script(path: &Path, script: &Script) -> Vec<String> {
    let mut env = env::Env::new();
    let mut outputs = Vec::new();
    for chunk in &script.chunks {
        if let Chunk::Directive(d) = chunk {
            let output = match env.run(&d.command) {
                Ok(output) => output,
                Err(e) => panic!("{}:{}: `{}`: {e}", path.display(), d.line, d.command.text),
            };
            assert!(
                !output.lines().any(|l| l.trim().is_empty()),
                "{}:{}: the harness produced a blank output line (it would end the directive)",
                path.display(),
                d.line
            );
            outputs.push(output);
        }
    }
    outputs
}

/// Runs one scenario file: compares (or, in rewrite mode, rewrites) its outputs.
fn run_file(name: &str) {
    let path = testdata_dir().join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let script = Script::parse(&text).unwrap_or_else(|e| panic!("{}:{e}", path.display()));
    let actual = run_script(&path, &script);
    if rewrite_requested() {
        let rewritten = script.render(&actual);
        if rewritten != text {
            std::fs::write(&path, rewritten).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            eprintln!("rewrote {}", path.display());
        }
        return;
    }
    let report = script::mismatches(&path, &script, &actual);
    if !report.is_empty() {
        panic!(
            "{report}\nIf the change is intended, rerun with {REWRITE_VAR}=1 to rewrite the expected output, then review it with git diff."
        );
    }
}

/// One test per scenario, so a failure names its file.
macro_rules! golden_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_file(stringify!($name));
            }
        )*
        const SCENARIOS: &[&str] = &[$(stringify!($name)),*];
    };
}

golden_tests!(
    election_prevote,
    check_quorum,
    log_conflict,
    read_index,
    recovery_nonce_reuse,
    transfer_leader,
    snapshot_install,
    snapshot_too_large,
    confchange_add_promote_remove,
    confchange_add_voter_stall,
    confchange_remove_leader,
    wiped_member,
    lagging_follower_new_leader,
    vote_stale_log,
);

/// A scenario file that no test runs would silently stop guarding anything.
#[test]
fn every_scenario_file_has_a_test() {
    let mut unlisted = Vec::new();
    for entry in std::fs::read_dir(testdata_dir()).expect("testdata dir") {
        let name = entry.expect("dir entry").file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".txt")
            && !SCENARIOS.contains(&stem)
        {
            unlisted.push(name);
        }
    }
    assert!(unlisted.is_empty(), "scenario files without a test in golden_tests!: {unlisted:?}");
}

/// The comparison itself must catch a changed output, and point at the directive.
#[test]
fn a_changed_output_is_reported_with_a_diff() {
    let text = "# a comment\n\nadd-nodes 1 voters=(1)\n----\nok\n\nraft-state\n----\n1: follower term=9\n";
    let script = Script::parse(text).expect("parses");
    let path = Path::new("inline.txt");
    let actual = run_script(path, &script);
    let report = script::mismatches(path, &script, &actual);
    assert!(report.contains("inline.txt:7: raft-state"), "{report}");
    assert!(report.contains("-1: follower term=9"), "{report}");
    assert!(report.contains("+1: follower term=1"), "{report}");
    assert!(!report.contains("add-nodes"), "only the changed directive is reported: {report}");
    // Rendering the actual output back gives a script that matches.
    let rewritten = Script::parse(&script.render(&actual)).expect("parses");
    assert!(script::mismatches(path, &rewritten, &actual).is_empty());
    assert!(script.render(&actual).starts_with("# a comment\n\nadd-nodes 1 voters=(1)\n----\nok\n"));
}
