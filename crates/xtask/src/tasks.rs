//! Every task of the project: what it runs and what it needs. The scripts stay where
//! they are; a task names the one it runs.

use crate::needs::{Need, optional_tool, root, tool};

/// One task: `cargo xtask NAME ARGS`.
pub struct Task {
    pub name: &'static str,
    /// The arguments it takes, as a usage line.
    pub args: &'static str,
    pub about: &'static str,
    pub needs: &'static [Need],
    pub action: Action,
}

/// What a task runs, from the workspace root; the user's arguments go at the end.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// `cargo ARGS...`.
    Cargo(&'static [&'static str]),
    /// Several cargo commands in turn (no user arguments).
    CargoSteps(&'static [&'static [&'static str]]),
    /// A script of the repository.
    Script(&'static str),
    /// The fault tier: the raftkv-tests targets that require the `fault-tier` feature.
    FaultTier,
    /// The simulation with `RAFT_SIM_SEEDS` set to the first argument.
    SimSeeds,
}

const CARGO: Need = tool("cargo", "https://rustup.rs");
const PROTOC: Need = tool("protoc", "apt-get install protobuf-compiler: the build of crates/bench/etcd runs it");
const PYTHON: Need = tool("python3", "apt-get install python3");
const DOCKER_OR_SKIP: Need =
    optional_tool("docker", "a running Docker Engine; without one the rehearsal says SKIPPED (FAILURE under CI=true)");
const NETNS_ROOT: Need = root("the partition test needs network namespaces: without root it says SKIPPED");
const IP: Need = optional_tool("ip", "apt-get install iproute2 (the partition test)");
const IPTABLES: Need = optional_tool("iptables", "apt-get install iptables (the partition test)");
const KIND_TOOLS: [Need; 3] = [
    tool("docker", "a running Docker Engine"),
    tool("kind", "inside `nix develop`"),
    tool("kubectl", "inside `nix develop`"),
];

/// The fault tier's size, said once for the list and the README.
pub const FAULT_TIER: &str = "the Jepsen-style runs (with and without partitions), the crash cycles and the demo";

pub const TASKS: &[Task] = &[
    Task {
        name: "test-fast",
        args: "[CARGO TEST ARGS]",
        about: "the fast tier: every test but the fault tier (`cargo test --workspace`; under 3 minutes once built)",
        needs: &[CARGO, PROTOC],
        action: Action::Cargo(&["test", "--workspace"]),
    },
    Task {
        name: "test-fault",
        args: "[-- TEST ARGS]",
        about: "the fault tier: the raftkv-tests targets that require its `fault-tier` feature (about 3 minutes)",
        needs: &[CARGO, PROTOC, NETNS_ROOT, IP, IPTABLES],
        action: Action::FaultTier,
    },
    Task {
        name: "test-all",
        args: "",
        about: "what CI runs (scripts/test-all): prerequisites, fmt, clippy, both tiers, fuzz, offline checks, Docker \
                rehearsal; 20+ minutes",
        needs: &[
            CARGO,
            PROTOC,
            PYTHON,
            tool("cargo-fuzz", "cargo install cargo-fuzz --locked (scripts/prerequisites installs it)"),
            tool("docker", "a running Docker Engine (the rehearsal)"),
            NETNS_ROOT,
        ],
        action: Action::Script("scripts/test-all"),
    },
    Task {
        name: "lint",
        args: "",
        about: "cargo fmt --check, then clippy -D warnings over every target (the fault tier's included)",
        needs: &[CARGO, PROTOC],
        action: Action::CargoSteps(&[
            &["fmt", "--all", "--", "--check"],
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--features",
                "raftkv-tests/fault-tier",
                "--",
                "-D",
                "warnings",
            ],
        ]),
    },
    Task {
        name: "shape",
        args: "",
        about: "the source-shape check alone (part of the fast tier): files <= 700 lines, functions <= 70 outside tests",
        needs: &[CARGO],
        action: Action::Cargo(&["test", "-p", "raftkv-tests", "--test", "source_shape"]),
    },
    Task {
        name: "sim-seeds",
        args: "N",
        about: "N simulation seeds of 3-node and N of 5-node clusters (RAFT_SIM_SEEDS; the fast tier runs 1,000 each)",
        needs: &[CARGO],
        action: Action::SimSeeds,
    },
    Task {
        name: "planted-bug",
        args: "[-- TEST ARGS]",
        about: "the random simulation catches bugs planted in the core (raftkv-raft's test-only `planted-bug` feature; seconds)",
        needs: &[CARGO],
        action: Action::Cargo(&["test", "-p", "raftkv-sim", "--features", "planted-bug", "--test", "planted_bug"]),
    },
    Task {
        name: "mutants",
        args: "[--crate NAME] [--file GLOB] [--budget MINUTES] [--list | --report]",
        about: "mutation testing of raft (with the simulation), storage and kv: the score per crate and file \
                (scripts/mutants; hours for all, not in CI)",
        needs: &[CARGO, tool("cargo-mutants", "cargo install cargo-mutants --locked")],
        action: Action::Script("scripts/mutants"),
    },
    Task {
        name: "prerequisites",
        args: "",
        about: "install what test-all needs where it can (root with apt, cargo-fuzz), else name every missing piece",
        needs: &[],
        action: Action::Script("scripts/prerequisites"),
    },
    Task {
        name: "fuzz",
        args: "[SECONDS]",
        about: "each cargo-fuzz target for SECONDS (default 20) from its committed corpus (scripts/fuzz)",
        needs: &[
            tool("cargo-fuzz", "cargo install cargo-fuzz --locked"),
            tool("g++", "apt-get install g++ (libFuzzer)"),
        ],
        action: Action::Script("scripts/fuzz"),
    },
    Task {
        name: "jepsen",
        args: "[--long 10m] [--no-partitions] [--seed N]",
        about: "the Jepsen-style run as long as asked, with its report (scripts/jepsen; default 60 s, with partitions)",
        needs: &[
            CARGO,
            root("the default run (partitions) fails without it; --no-partitions needs none"),
            optional_tool("ip", "apt-get install iproute2 (partitions)"),
            optional_tool("iptables", "apt-get install iptables (partitions)"),
        ],
        action: Action::Script("scripts/jepsen"),
    },
    Task {
        name: "demo",
        args: "[DEMO ARGS]",
        about: "the local 3-node fault scenario: kill the leader, restart, stop a node (`raftkv demo`, release build)",
        needs: &[CARGO],
        action: Action::Cargo(&["run", "--release", "--bin", "raftkv", "--", "demo"]),
    },
    Task {
        name: "bench-etcd",
        args: "[--quick]",
        about: "raftkv and etcd side by side, same durability and workloads (bench/compare-etcd.sh; --quick: ~2 minutes, full: ~23)",
        needs: &[
            CARGO,
            PYTHON,
            optional_tool("etcd", "apt-get install etcd-server; the script installs it when root"),
            optional_tool("protoc", "apt-get install protobuf-compiler; the script installs it when root"),
        ],
        action: Action::Script("bench/compare-etcd.sh"),
    },
    Task {
        name: "bench-ab",
        args: "BIN_DIR_A BIN_DIR_B [ROUNDS]",
        about: "before/after of one server change: two builds' raftkv and raftkv-server run alternately (bench/ab.sh)",
        needs: &[PYTHON],
        action: Action::Script("bench/ab.sh"),
    },
    Task {
        name: "bench-memory",
        args: "",
        about: "a 3-node cluster's RSS and restart times with 1M keys (bench/memory.sh; KEYS=100000 for a quick one)",
        needs: &[CARGO, tool("curl", "apt-get install curl"), PYTHON],
        action: Action::Script("bench/memory.sh"),
    },
    Task {
        name: "trace-size",
        args: "",
        about: "what a traced write costs a trace store, against observability/jaeger.yaml (scripts/measure-trace-size)",
        needs: &[CARGO],
        action: Action::Script("scripts/measure-trace-size"),
    },
    Task {
        name: "offline",
        args: "",
        about: "the offline checks of k8s/, the Tiltfile, flake.nix and the scripts (tests/offline/run.sh)",
        needs: &[PYTHON, root("installs nix-bin, shellcheck, debootstrap and the Nix chroot; else those say SKIPPED")],
        action: Action::Script("tests/offline/run.sh"),
    },
    Task {
        name: "rehearsal",
        args: "",
        about: "the StatefulSet rehearsed on plain Docker: faults, scaling 3 -> 5 -> 3 (tests/docker/rehearsal.sh)",
        needs: &[CARGO, PYTHON, DOCKER_OR_SKIP],
        action: Action::Script("tests/docker/rehearsal.sh"),
    },
    Task {
        name: "kind-up",
        args: "",
        about: "the kind cluster `raftkv` and its local registry for Tilt and the e2e test (k8s/kind/up)",
        needs: &KIND_TOOLS,
        action: Action::Script("k8s/kind/up"),
    },
    Task {
        name: "kind-down",
        args: "",
        about: "deletes the kind cluster and its registry (k8s/kind/down; KEEP_REGISTRY=1 keeps the registry)",
        needs: &KIND_TOOLS,
        action: Action::Script("k8s/kind/down"),
    },
    Task {
        name: "e2e-kind",
        args: "",
        about: "the fault test on the kind cluster of kind-up: Nix images, kills, node stops, scaling (tests/e2e/kind.sh)",
        needs: &[
            KIND_TOOLS[0],
            KIND_TOOLS[1],
            KIND_TOOLS[2],
            tool("jq", "inside `nix develop`"),
            tool("nix", "Nix 2.18 or newer, https://nixos.org/download"),
        ],
        action: Action::Script("tests/e2e/kind.sh"),
    },
];

/// The task named `name`.
pub fn find(name: &str) -> Option<&'static Task> {
    TASKS.iter().find(|t| t.name == name)
}
