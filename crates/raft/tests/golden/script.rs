//! The scenario file format (etcd-raft's datadriven format, reduced to what these tests
//! use): comment (`#`) and blank lines, and directives of the form
//!
//! ```text
//! command arg key=value key=(a,b)
//! ----
//! expected output lines
//! ```
//!
//! A directive's output ends at the first blank line, so outputs never hold one.

use std::fmt::Write as _;
use std::path::Path;

/// One argument of a command: `value` or `key=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    Pos(String),
    Kv(String, String),
}

/// A parsed command line.
#[derive(Clone, Debug)]
pub struct Command {
    pub text: String,
    pub name: String,
    pub args: Vec<Arg>,
}

impl Command {
    pub fn parse(text: &str) -> Command {
        let mut words = text.split_whitespace();
        let name = words.next().unwrap_or_default().to_string();
        let args = words
            .map(|w| match w.split_once('=') {
                Some((k, v)) => Arg::Kv(k.to_string(), v.to_string()),
                None => Arg::Pos(w.to_string()),
            })
            .collect();
        Command { text: text.to_string(), name, args }
    }
}

#[derive(Clone, Debug)]
pub struct Directive {
    /// 1-based line of the command in the file.
    pub line: usize,
    pub command: Command,
    pub expected: Vec<String>,
}

#[derive(Clone, Debug)]
pub enum Chunk {
    /// Comment and blank lines, kept as they are on rewrite.
    Verbatim(String),
    Directive(Directive),
}

#[derive(Clone, Debug)]
pub struct Script {
    pub chunks: Vec<Chunk>,
}

impl Script {
    /// Parses a scenario; the error names the line.
    pub fn parse(text: &str) -> Result<Script, String> {
        let lines: Vec<&str> = text.lines().collect();
        let mut chunks = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            if line.trim().is_empty() || line.starts_with('#') {
                chunks.push(Chunk::Verbatim(line.to_string()));
                i += 1;
                continue;
            }
            if lines.get(i + 1) != Some(&"----") {
                return Err(format!("{}: expected a `----` line after the command `{line}`", i + 1));
            }
            let mut expected = Vec::new();
            let mut j = i + 2;
            while j < lines.len() && !lines[j].trim().is_empty() {
                expected.push(lines[j].to_string());
                j += 1;
            }
            chunks.push(Chunk::Directive(Directive { line: i + 1, command: Command::parse(line), expected }));
            i = j;
        }
        Ok(Script { chunks })
    }

    /// The script with each directive's expected output replaced by `actual` (one per
    /// directive, in order).
    pub fn render(&self, actual: &[String]) -> String {
        let mut out = String::new();
        let mut outputs = actual.iter();
        for chunk in &self.chunks {
            match chunk {
                Chunk::Verbatim(line) => {
                    out.push_str(line);
                    out.push('\n');
                }
                Chunk::Directive(d) => {
                    let output = outputs.next().expect("one output per directive");
                    let _ = writeln!(out, "{}\n----", d.command.text);
                    for line in output.lines() {
                        let _ = writeln!(out, "{line}");
                    }
                }
            }
        }
        out
    }

    pub fn directives(&self) -> impl Iterator<Item = &Directive> {
        self.chunks.iter().filter_map(|c| match c {
            Chunk::Directive(d) => Some(d),
            Chunk::Verbatim(_) => None,
        })
    }
}

/// A readable report of every directive whose output differs from the expected one
/// (empty if none does).
pub fn mismatches(path: &Path, script: &Script, actual: &[String]) -> String {
    let mut report = String::new();
    let mut count = 0;
    for (d, actual) in script.directives().zip(actual) {
        let actual: Vec<&str> = actual.lines().collect();
        let expected: Vec<&str> = d.expected.iter().map(String::as_str).collect();
        if actual == expected {
            continue;
        }
        count += 1;
        // The first differences are what matters; later ones usually follow from them.
        if count > 5 {
            continue;
        }
        let _ = writeln!(report, "\n{}:{}: {}\n--- expected\n+++ actual", path.display(), d.line, d.command.text);
        report.push_str(&line_diff(&expected, &actual));
    }
    if count > 5 {
        let _ = writeln!(report, "\n... and {} more directives differ", count - 5);
    }
    if count > 0 {
        report.insert_str(0, &format!("{}: {count} directive(s) produced a different output", path.display()));
    }
    report
}

/// A line diff (longest common subsequence): ` ` kept, `-` expected only, `+` actual
/// only. Unchanged runs longer than a few lines are elided.
pub fn line_diff(expected: &[&str], actual: &[&str]) -> String {
    let (n, m) = (expected.len(), actual.len());
    // lcs[i][j]: length of the LCS of expected[i..] and actual[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            ops.push((' ', expected[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', expected[i]));
            i += 1;
        } else {
            ops.push(('+', actual[j]));
            j += 1;
        }
    }
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, (op, _))| *op != ' ').map(|(k, _)| k).collect();
    let near_change = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= CONTEXT);
    let mut out = String::new();
    let mut elided = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if near_change(k) {
            let _ = writeln!(out, "{op}{line}");
            elided = false;
        } else if !elided {
            out.push_str(" ...\n");
            elided = true;
        }
    }
    out
}

#[test]
fn the_diff_marks_removed_and_added_lines() {
    let diff = line_diff(&["a", "b", "c"], &["a", "x", "c"]);
    assert_eq!(diff, " a\n-b\n+x\n c\n");
    let long: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let expected: Vec<&str> = long.iter().map(String::as_str).collect();
    let mut actual = expected.clone();
    actual[10] = "ten";
    let diff = line_diff(&expected, &actual);
    assert_eq!(diff, " ...\n 7\n 8\n 9\n-10\n+ten\n 11\n 12\n 13\n ...\n");
}

#[test]
fn a_command_without_its_separator_is_an_error_naming_the_line() {
    let err = Script::parse("# c\n\ncampaign 1\nok\n").unwrap_err();
    assert!(err.starts_with("3: expected a `----`"), "{err}");
}
