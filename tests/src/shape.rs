//! The source-shape check: no source file of a crate over [`LIMITS`]`.file_lines` lines,
//! no function outside test code over [`LIMITS`]`.fn_lines` lines. A file small enough
//! to read at once, a function small enough to hold in one's head.
//!
//! Files are parsed with `syn`; line numbers come from `proc-macro2`'s span locations.
//! A function's size runs from the line of its `fn` keyword to the line of its closing
//! brace (attributes and doc comments apart). Test code is what only `cfg(test)`
//! compiles: a `#[test]` function, an item under `#[cfg(test)]` (or `cfg(all(test,
//! ...))`), and the file of a `#[cfg(test)] mod name;` with every file below it. The
//! file limit holds for every file, test modules included.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// How large a file and a function may be.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub file_lines: usize,
    pub fn_lines: usize,
}

/// The project's limits (issue 21).
pub const LIMITS: Limits = Limits { file_lines: 700, fn_lines: 70 };

/// One thing over a limit, or a file that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    LongFile { path: PathBuf, lines: usize, limit: usize },
    LongFn { path: PathBuf, name: String, line: usize, lines: usize, limit: usize },
    Unparsable { path: PathBuf, error: String },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::LongFile { path, lines, limit } => {
                write!(f, "{}: {lines} lines (limit {limit})", path.display())
            }
            Finding::LongFn { path, name, line, lines, limit } => {
                write!(f, "{}:{line}: fn {name}: {lines} lines (limit {limit})", path.display())
            }
            Finding::Unparsable { path, error } => write!(f, "{}: does not parse: {error}", path.display()),
        }
    }
}

/// What one file says: its findings, and the modules it declares test-only in files of
/// their own (`#[cfg(test)] mod name;`).
#[derive(Debug, Default)]
pub struct FileShape {
    pub findings: Vec<Finding>,
    pub test_only_mods: Vec<String>,
}

/// Checks one file's text. `test_only` says the whole file is test code (its functions
/// then have no limit; its length still has).
pub fn check_source(path: &Path, text: &str, test_only: bool, limits: Limits) -> FileShape {
    let mut shape = FileShape::default();
    let lines = text.lines().count();
    if lines > limits.file_lines {
        shape.findings.push(Finding::LongFile { path: path.to_path_buf(), lines, limit: limits.file_lines });
    }
    let file = match syn::parse_file(text) {
        Ok(file) => file,
        Err(e) => {
            let at = e.span().start();
            let error = format!("line {}:{}: {e}", at.line, at.column + 1);
            shape.findings.push(Finding::Unparsable { path: path.to_path_buf(), error });
            return shape;
        }
    };
    let mut visitor = FnSizes { path, limits, scope: Vec::new(), test_depth: usize::from(test_only), shape };
    visitor.visit_file(&file);
    visitor.shape
}

/// Every `.rs` file under `crates/*/src` and `crates/*/*/src` of `root`, sorted.
pub fn crate_sources(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for krate in subdirs(&root.join("crates")) {
        collect_rs(&krate.join("src"), &mut files);
        for nested in subdirs(&krate) {
            collect_rs(&nested.join("src"), &mut files);
        }
    }
    files.sort();
    files.dedup();
    files
}

/// Checks every file of [`crate_sources`]; paths in the findings are relative to
/// `root`. Also returns how many files it read.
pub fn check_tree(root: &Path, limits: Limits) -> Result<(Vec<Finding>, usize), String> {
    let files = crate_sources(root);
    let mut texts = Vec::with_capacity(files.len());
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("read {}: {e}", file.display()))?;
        texts.push(text);
    }
    // First pass: which files only `cfg(test)` compiles.
    let mut test_only = TestOnly::default();
    for (file, text) in files.iter().zip(&texts) {
        for name in check_source(file, text, false, limits).test_only_mods {
            test_only.declare(file, &name);
        }
    }
    let mut findings = Vec::new();
    for (file, text) in files.iter().zip(&texts) {
        let relative = file.strip_prefix(root).unwrap_or(file);
        findings.extend(check_source(relative, text, test_only.contains(file), limits).findings);
    }
    Ok((findings, files.len()))
}

/// Files and directories of modules declared `#[cfg(test)] mod name;`.
#[derive(Default)]
struct TestOnly {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

impl TestOnly {
    /// `mod name;` in `declared_in`: `dir/name.rs` or `dir/name/mod.rs`, where `dir` is
    /// the declaring file's directory for `lib.rs`, `main.rs` and `mod.rs`, else that
    /// directory plus the file's stem.
    fn declare(&mut self, declared_in: &Path, name: &str) {
        let parent = declared_in.parent().unwrap_or(Path::new(""));
        let stem = declared_in.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let dir = if matches!(stem, "lib" | "main" | "mod") { parent.to_path_buf() } else { parent.join(stem) };
        self.files.insert(dir.join(format!("{name}.rs")));
        self.dirs.insert(dir.join(name));
    }

    fn contains(&self, file: &Path) -> bool {
        self.files.contains(file) || self.dirs.iter().any(|d| file.starts_with(d))
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()
}

fn collect_rs(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.flatten().map(|e| e.path()) {
        if path.is_dir() {
            collect_rs(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Measures every function that is not test code.
struct FnSizes<'a> {
    path: &'a Path,
    limits: Limits,
    /// Enclosing modules, types and functions, for the names.
    scope: Vec<String>,
    /// How many enclosing items are test code (0: none).
    test_depth: usize,
    shape: FileShape,
}

impl FnSizes<'_> {
    fn measure(&mut self, name: &syn::Ident, fn_token: &syn::token::Fn, block: &syn::Block) {
        if self.test_depth > 0 {
            return;
        }
        let line = fn_token.span.start().line;
        let lines = block.brace_token.span.close().end().line + 1 - line;
        if lines > self.limits.fn_lines {
            let name = self.scope.iter().cloned().chain([name.to_string()]).collect::<Vec<_>>().join("::");
            self.shape.findings.push(Finding::LongFn {
                path: self.path.to_path_buf(),
                name,
                line,
                lines,
                limit: self.limits.fn_lines,
            });
        }
    }

    /// Measures a function (unless it has no body), then runs `visit` inside it.
    fn function(
        &mut self,
        attrs: &[syn::Attribute],
        sig: &syn::Signature,
        block: Option<&syn::Block>,
        visit: impl FnOnce(&mut Self),
    ) {
        let test = usize::from(is_test_code(attrs));
        self.test_depth += test;
        if let Some(block) = block {
            self.measure(&sig.ident, &sig.fn_token, block);
        }
        self.scope.push(sig.ident.to_string());
        visit(self);
        self.scope.pop();
        self.test_depth -= test;
    }

    /// Runs `visit` inside `scope`, as test code if `attrs` make it so.
    fn within(&mut self, scope: String, attrs: &[syn::Attribute], visit: impl FnOnce(&mut Self)) {
        let test = is_test_code(attrs);
        self.scope.push(scope);
        self.test_depth += usize::from(test);
        visit(self);
        self.test_depth -= usize::from(test);
        self.scope.pop();
    }
}

impl<'ast> Visit<'ast> for FnSizes<'_> {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.function(&f.attrs, &f.sig, Some(&f.block), |v| syn::visit::visit_item_fn(v, f));
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.function(&f.attrs, &f.sig, Some(&f.block), |v| syn::visit::visit_impl_item_fn(v, f));
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        self.function(&f.attrs, &f.sig, f.default.as_ref(), |v| syn::visit::visit_trait_item_fn(v, f));
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        self.within(type_name(&i.self_ty), &i.attrs, |v| syn::visit::visit_item_impl(v, i));
    }

    fn visit_item_trait(&mut self, t: &'ast syn::ItemTrait) {
        self.within(t.ident.to_string(), &t.attrs, |v| syn::visit::visit_item_trait(v, t));
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_none() && (self.test_depth > 0 || is_test_code(&m.attrs)) {
            self.shape.test_only_mods.push(m.ident.to_string());
        }
        self.within(m.ident.to_string(), &m.attrs, |v| syn::visit::visit_item_mod(v, m));
    }
}

/// The last path segment of an impl's self type (`Foo` of `crate::a::Foo<T>`).
fn type_name(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(p) => p.path.segments.last().map_or_else(|| "_".into(), |s| s.ident.to_string()),
        syn::Type::Reference(r) => type_name(&r.elem),
        _ => "_".into(),
    }
}

/// `#[test]`, `#[tokio::test]` and the like, `#[cfg(test)]` or `#[cfg(all(.., test, ..))]`.
fn is_test_code(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        let path = a.path();
        if path.segments.last().is_some_and(|s| s.ident == "test") {
            return true;
        }
        path.is_ident("cfg") && a.parse_args::<syn::Meta>().is_ok_and(|m| cfg_requires_test(&m))
    })
}

/// Whether a `cfg` predicate holds only under `test`.
fn cfg_requires_test(meta: &syn::Meta) -> bool {
    match meta {
        syn::Meta::Path(p) => p.is_ident("test"),
        syn::Meta::List(list) if list.path.is_ident("all") => list
            .parse_args_with(syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
            .is_ok_and(|args| args.iter().any(cfg_requires_test)),
        _ => false,
    }
}
