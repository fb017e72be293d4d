//! A task's prerequisites, and whether this machine has them.

use std::path::Path;

/// One prerequisite of a task.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub what: Check,
    /// How to get it, or what happens without it.
    pub get: &'static str,
    /// A missing required one stops the task before it starts; a missing optional one
    /// only makes part of it say SKIPPED (or the script installs it).
    pub required: bool,
}

/// What to look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// An executable of this name on `PATH`.
    Tool(&'static str),
    /// Running as root (uid 0).
    Root,
}

/// A tool the task cannot run without.
pub const fn tool(name: &'static str, get: &'static str) -> Need {
    Need { what: Check::Tool(name), get, required: true }
}

/// A tool whose absence the task copes with (it installs it, or skips that part).
pub const fn optional_tool(name: &'static str, get: &'static str) -> Need {
    Need { what: Check::Tool(name), get, required: false }
}

/// Root, without which part of the task says SKIPPED (`without` says which).
pub const fn root(without: &'static str) -> Need {
    Need { what: Check::Root, get: without, required: false }
}

impl Need {
    pub fn name(&self) -> &'static str {
        match self.what {
            Check::Tool(name) => name,
            Check::Root => "root",
        }
    }

    /// Whether this machine has it.
    pub fn present(&self) -> bool {
        match self.what {
            Check::Tool(name) => on_path(name),
            Check::Root => is_root(),
        }
    }
}

/// Whether an executable `name` is in a directory of `PATH`.
pub fn on_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(name)))
}

fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs as uid 0 (from `/proc/self/status`).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().next()) == Some("0")
}

/// The required prerequisites this machine lacks, one line each with how to get it.
pub fn missing_required(needs: &[Need]) -> Vec<String> {
    needs.iter().filter(|n| n.required && !n.present()).map(|n| format!("{} ({})", n.name(), n.get)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_is_found_on_path_and_a_made_up_one_is_not() {
        assert!(on_path("sh"), "every Linux machine has sh");
        assert!(!on_path("surely-no-such-tool-raftkv"));
        assert!(!on_path("."), "a directory is not a tool");
    }

    #[test]
    fn only_missing_required_needs_are_reported_with_how_to_get_them() {
        let needs = [
            tool("sh", "apt-get install dash"),
            tool("surely-no-such-tool-raftkv", "cargo install it"),
            optional_tool("another-missing-tool-raftkv", "the script installs it"),
        ];
        assert_eq!(missing_required(&needs), ["surely-no-such-tool-raftkv (cargo install it)"]);
    }
}
