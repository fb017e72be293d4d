//! `cargo xtask`: the project's front door. With no arguments it lists every task with
//! its prerequisites (present or missing on this machine); `cargo xtask TASK ARGS`
//! checks the required ones and runs the task from the workspace root.

mod needs;
mod tasks;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use tasks::{Action, FAULT_TIER, TASKS, Task};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        print!("{}", listing());
        return ExitCode::SUCCESS;
    };
    if matches!(name.as_str(), "help" | "-h" | "--help" | "list") {
        print!("{}", listing());
        return ExitCode::SUCCESS;
    }
    let Some(task) = tasks::find(name) else {
        eprintln!("cargo xtask: no task {name:?}; `cargo xtask` lists them");
        return ExitCode::from(2);
    };
    let missing = needs::missing_required(task.needs);
    if !missing.is_empty() {
        eprintln!("cargo xtask {}: missing on this machine:", task.name);
        for m in &missing {
            eprintln!("  {m}");
        }
        return ExitCode::from(1);
    }
    match run(task, &args[1..]) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cargo xtask {}: {e}", task.name);
            ExitCode::from(1)
        }
    }
}

/// Every task, its arguments, what it does and its prerequisites (how to get each one
/// this machine lacks).
fn listing() -> String {
    let mut out = String::from(
        "cargo xtask TASK [ARGS]: the project's tasks, run from the workspace root.\n\
         Prerequisites: [ok] present here, [missing] not found; (optional): the task copes without.\n",
    );
    for task in TASKS {
        let usage = format!("{} {}", task.name, task.args);
        out.push_str(&format!("\n  {}\n      {}\n", usage.trim_end(), task.about));
        let mut present = Vec::new();
        let mut missing = Vec::new();
        for need in task.needs {
            let optional = if need.required { "" } else { ", optional" };
            if need.present() {
                present.push(format!("{} [ok{optional}]", need.name()));
            } else {
                missing.push(format!("      needs {} [missing{optional}]: {}\n", need.name(), need.get));
            }
        }
        if !present.is_empty() {
            out.push_str(&format!("      needs {}\n", present.join(", ")));
        }
        out.push_str(&missing.concat());
    }
    out.push_str(&format!(
        "\nThe fault tier is {FAULT_TIER}:\nthe [[test]] targets of tests/Cargo.toml with \
         required-features = [\"fault-tier\"], which `cargo test --workspace` leaves out.\n"
    ));
    out
}

/// Runs `task` with the user's `args`; its exit code.
fn run(task: &Task, args: &[String]) -> Result<ExitCode, String> {
    let root = workspace_root();
    match task.action {
        Action::Cargo(fixed) => status(cargo(&root).args(fixed).args(args)),
        Action::CargoSteps(steps) => {
            no_args(args)?;
            for step in steps {
                let code = status(cargo(&root).args(*step))?;
                if code != ExitCode::SUCCESS {
                    return Ok(code);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Script(script) => status(command(root.join(script), &root).args(args)),
        Action::FaultTier => {
            let targets = fault_tier_targets(&root)?;
            let mut cmd = cargo(&root);
            cmd.args(["test", "-p", "raftkv-tests", "--features", "fault-tier"]);
            for target in &targets {
                cmd.args(["--test", target]);
            }
            status(cmd.args(args))
        }
        Action::SimSeeds => {
            let [seeds] = args else { return Err(format!("usage: cargo xtask {} {}", task.name, task.args)) };
            let seeds: u64 = seeds.parse().map_err(|_| format!("N is a number of seeds, got {seeds:?}"))?;
            let mut cmd = cargo(&root);
            cmd.env("RAFT_SIM_SEEDS", seeds.to_string()).args(["test", "-p", "raftkv-sim", "--test", "simulation"]);
            status(&mut cmd)
        }
    }
}

fn no_args(args: &[String]) -> Result<(), String> {
    if args.is_empty() { Ok(()) } else { Err(format!("takes no arguments, got {args:?}")) }
}

/// `$CARGO` (the cargo that runs this), else `cargo`, in the workspace root.
fn cargo(root: &Path) -> Command {
    command(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()), root)
}

/// `program` in `root`, without the variables `cargo run` set for this crate: a build
/// script that reads one (ring's reads CARGO_MANIFEST_DIR) would otherwise see it
/// change between `cargo xtask` and a plain cargo, and rebuild its crate each time.
fn command(program: impl AsRef<std::ffi::OsStr>, root: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(root);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if is_set_by_cargo_run(&name) {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

fn is_set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(name, "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE")
}

/// Runs `cmd`, echoing it first; its exit code.
fn status(cmd: &mut Command) -> Result<ExitCode, String> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("==> {shown}");
    let status = cmd.status().map_err(|e| format!("cannot run {shown}: {e}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => {
            eprintln!("{shown}: killed by a signal ({status})");
            ExitCode::from(1)
        }
    })
}

/// The workspace root: two levels above this crate.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("crates/xtask is inside the workspace").into()
}

/// The raftkv-tests test targets that require the `fault-tier` feature, from
/// `cargo metadata` (tests/Cargo.toml is the one list).
fn fault_tier_targets(root: &Path) -> Result<Vec<String>, String> {
    let out = cargo(root)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata's output: {e}"))?;
    let targets = fault_tier_in(&metadata);
    if targets.is_empty() {
        return Err("no test target of raftkv-tests requires the fault-tier feature".into());
    }
    Ok(targets)
}

/// The test targets of package raftkv-tests whose required features include
/// `fault-tier`, in `cargo metadata`'s JSON.
fn fault_tier_in(metadata: &serde_json::Value) -> Vec<String> {
    let packages = metadata["packages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(tests) = packages.iter().find(|p| p["name"] == "raftkv-tests") else { return Vec::new() };
    let targets = tests["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
    targets
        .iter()
        .filter(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test")))
        .filter(|t| t["required-features"].as_array().is_some_and(|f| f.iter().any(|f| f == "fault-tier")))
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_names_every_task_and_its_prerequisites() {
        let listing = listing();
        for task in TASKS {
            let usage = format!("{} {}", task.name, task.args);
            assert!(listing.contains(&format!("\n  {}\n", usage.trim_end())), "{usage} missing:\n{listing}");
            for need in task.needs {
                assert!(listing.contains(&format!("{} [", need.name())), "{}", need.name());
            }
        }
    }

    #[test]
    fn the_variables_of_cargo_run_are_not_passed_on() {
        for name in ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_PKG_NAME", "CARGO_CRATE_NAME"] {
            assert!(is_set_by_cargo_run(name), "{name}");
        }
        for name in ["CARGO", "CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_TERM_COLOR", "PATH"] {
            assert!(!is_set_by_cargo_run(name), "{name}");
        }
    }

    #[test]
    fn task_names_are_unique() {
        let mut names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TASKS.len());
    }

    /// Every script a task names exists and is executable, and every script under
    /// scripts/ and bench/ is some task's: a new one must join the front door.
    #[test]
    fn every_task_script_exists_and_every_user_script_has_a_task() {
        use std::os::unix::fs::PermissionsExt;
        let root = workspace_root();
        let scripts: Vec<&str> = TASKS
            .iter()
            .filter_map(|t| match t.action {
                Action::Script(s) => Some(s),
                _ => None,
            })
            .collect();
        for script in &scripts {
            let mode = std::fs::metadata(root.join(script)).map(|m| m.permissions().mode());
            assert!(mode.is_ok_and(|m| m & 0o111 != 0), "{script} is missing or not executable");
        }
        for dir in ["scripts", "bench"] {
            for entry in std::fs::read_dir(root.join(dir)).expect("read dir").flatten() {
                let path = entry.path();
                let executable = path.is_file() && entry.metadata().is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
                let rel = format!("{dir}/{}", entry.file_name().to_string_lossy());
                assert!(!executable || scripts.contains(&rel.as_str()), "no cargo xtask task runs {rel}");
            }
        }
    }

    #[test]
    fn the_fault_tier_is_read_from_the_required_features() {
        let metadata = serde_json::json!({"packages": [
            {"name": "raftkv-tests", "targets": [
                {"name": "raftkv_tests", "kind": ["lib"], "required-features": []},
                {"name": "jepsen", "kind": ["test"], "required-features": ["fault-tier"]},
                {"name": "validate", "kind": ["test"], "required-features": []},
                {"name": "demo", "kind": ["test"], "required-features": ["fault-tier"]},
                {"name": "other", "kind": ["test"], "required-features": ["something-else"]},
            ]},
            {"name": "raftkv", "targets": [{"name": "cli", "kind": ["test"], "required-features": ["fault-tier"]}]},
        ]});
        assert_eq!(fault_tier_in(&metadata), ["jepsen", "demo"]);
        assert!(fault_tier_in(&serde_json::json!({"packages": []})).is_empty());
    }

    #[test]
    fn the_workspace_fault_tier_is_the_long_tests() {
        let mut targets = fault_tier_targets(&workspace_root()).expect("cargo metadata");
        targets.sort();
        // A long test that lost its required-features would slow every save down.
        assert_eq!(
            targets,
            ["crash_cycles", "demo", "jepsen", "jepsen_partition"],
            "tests/Cargo.toml changed the tier"
        );
    }
}
