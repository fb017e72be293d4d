//! The source-shape check (`raftkv_tests::shape`) over the workspace: no file under
//! `crates/*/src` or `crates/*/*/src` over 700 lines, no function outside test code over
//! 70 lines. Then the same check shown catching planted oversized code, and leaving
//! test code and code at the limit alone.

use std::path::{Path, PathBuf};

use raftkv_tests::shape::{Finding, LIMITS, Limits, check_source, check_tree, crate_sources};
use raftkv_tests::workspace_root;

#[test]
fn no_crate_file_over_700_lines_and_no_function_over_70_lines_outside_tests() {
    let root = workspace_root();
    let (findings, files) = check_tree(&root, LIMITS).expect("read the crates' sources");
    // The check read the crates: not a pass over an empty list.
    assert!(files >= 50, "only {files} source files under {}/crates", root.display());
    let listed: Vec<String> = findings.iter().map(|f| format!("  {f}")).collect();
    assert!(
        findings.is_empty(),
        "{} over the limits ({} lines a file, {} a function outside tests):\n{}",
        findings.len(),
        LIMITS.file_lines,
        LIMITS.fn_lines,
        listed.join("\n")
    );
}

#[test]
fn the_walk_covers_every_crate_and_nested_crate() {
    let root = workspace_root();
    let files = crate_sources(&root);
    for expected in ["crates/raft/src/lib.rs", "crates/server/src/lib.rs", "crates/bench/etcd/src/main.rs"] {
        assert!(files.contains(&root.join(expected)), "{expected} is not among the checked files");
    }
    assert!(files.iter().all(|f| f.extension().is_some_and(|e| e == "rs")));
}

/// A function of exactly `lines` lines (from `fn` to its closing brace).
fn function(indent: &str, name: &str, lines: usize) -> String {
    let body: String = (0..lines - 2).map(|i| format!("{indent}    let _x{i} = {i};\n")).collect();
    format!(
        "{indent}/// Docs and attributes do not count.\n{indent}#[inline]\n{indent}fn {name}() {{\n{body}{indent}}}\n"
    )
}

const SMALL: Limits = Limits { file_lines: 1_000, fn_lines: 10 };

fn long_fns(src: &str) -> Vec<(String, usize, usize)> {
    let shape = check_source(Path::new("planted.rs"), src, false, SMALL);
    shape
        .findings
        .into_iter()
        .map(|f| match f {
            Finding::LongFn { name, line, lines, .. } => (name, line, lines),
            other => panic!("unexpected finding: {other}"),
        })
        .collect()
}

#[test]
fn a_planted_long_function_is_named_with_its_line_and_size() {
    let src = [
        function("", "at_the_limit", 10),
        function("", "one_over", 11),
        format!("struct Thing;\nimpl Thing {{\n{}}}\n", function("    ", "method", 12)),
        format!("trait Shape {{\n{}}}\n", function("    ", "provided", 13)),
        format!("fn outer() {{\n{}}}\n", function("    ", "inner", 11)),
        format!("mod inline {{\n{}}}\n", function("    ", "in_module", 14)),
    ]
    .concat();
    let found = long_fns(&src);
    // Line numbers: each `function` starts with 2 lines of docs and attributes.
    assert_eq!(
        found,
        vec![
            ("one_over".to_string(), 15, 11),
            ("Thing::method".to_string(), 30, 12),
            ("Shape::provided".to_string(), 46, 13),
            ("outer".to_string(), 60, 15),
            ("outer::inner".to_string(), 63, 11),
            ("inline::in_module".to_string(), 78, 14),
        ]
    );
    let shown = check_source(Path::new("crates/x/src/planted.rs"), &src, false, SMALL).findings[0].to_string();
    assert_eq!(shown, "crates/x/src/planted.rs:15: fn one_over: 11 lines (limit 10)");
}

#[test]
fn test_code_has_no_function_limit() {
    let src = [
        format!("#[cfg(test)]\nmod tests {{\n{}}}\n", function("    ", "in_test_module", 40)),
        format!("#[test]\n{}", function("", "a_test", 40)),
        format!("#[tokio::test]\n{}", function("", "an_async_test", 40)),
        format!("#[cfg(all(test, feature = \"x\"))]\n{}", function("", "test_only_helper", 40)),
        format!("#[cfg(feature = \"x\")]\n{}", function("", "not_test_code", 11)),
        format!("#[cfg(any(test, feature = \"x\"))]\n{}", function("", "not_only_test_code", 11)),
    ]
    .concat();
    let names: Vec<String> = long_fns(&src).into_iter().map(|(name, _, _)| name).collect();
    assert_eq!(names, ["not_test_code", "not_only_test_code"]);
    // A whole file of test code (a `#[cfg(test)] mod name;` elsewhere): no function limit.
    assert!(check_source(Path::new("tests.rs"), &function("", "long", 40), true, SMALL).findings.is_empty());
}

#[test]
fn a_planted_long_file_and_an_unparsable_one_are_named() {
    let limits = Limits { file_lines: 20, fn_lines: 100 };
    let src = function("", "f", 19); // 21 lines with the docs and attribute
    let findings = check_source(Path::new("crates/x/src/big.rs"), &src, false, limits).findings;
    assert_eq!(findings, vec![Finding::LongFile { path: "crates/x/src/big.rs".into(), lines: 21, limit: 20 }]);
    assert_eq!(findings[0].to_string(), "crates/x/src/big.rs: 21 lines (limit 20)");
    assert!(check_source(Path::new("ok.rs"), &function("", "f", 18), false, limits).findings.is_empty());

    let broken = check_source(Path::new("broken.rs"), "fn f( {", false, limits).findings;
    assert!(matches!(&broken[..], [Finding::Unparsable { .. }]), "{broken:?}");
    assert!(broken[0].to_string().starts_with("broken.rs: does not parse: line 1:"), "{}", broken[0]);
}

/// Writes `files` (path, text) under a fresh directory.
fn tree(files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    dir
}

#[test]
fn the_tree_check_finds_planted_code_in_crates_and_nested_crates_but_not_in_test_modules() {
    let long = || function("", "long", 71);
    let dir = tree(&[
        ("crates/a/src/lib.rs", "mod big;\n#[cfg(test)]\nmod tests;\n".into()),
        ("crates/a/src/big.rs", long()),
        // Test-only: declared `#[cfg(test)] mod tests;`, and a module below it.
        ("crates/a/src/tests.rs", format!("mod deeper;\n{}", long())),
        ("crates/a/src/tests/deeper.rs", long()),
        ("crates/b/nested/src/main.rs", "fn main() {}\n".repeat(701)),
        // Not a crate's source: never read.
        ("crates/a/tests/integration.rs", long()),
        ("crates/a/benches/bench.rs", long()),
    ]);
    let (mut findings, files) = check_tree(dir.path(), LIMITS).expect("check");
    findings.sort_by_key(|f| f.to_string());
    assert_eq!(files, 5);
    let path = PathBuf::from;
    assert_eq!(
        findings,
        vec![
            Finding::LongFn { path: path("crates/a/src/big.rs"), name: "long".into(), line: 3, lines: 71, limit: 70 },
            Finding::LongFile { path: path("crates/b/nested/src/main.rs"), lines: 701, limit: 700 },
        ]
    );
}
