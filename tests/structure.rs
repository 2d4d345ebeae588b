//! Keeps the shim's structure in shape:
//!
//! 1. no import cycle among the top-level modules of `src/` (its `*.rs` files
//!    and directories): the modules of a cycle can only be read, tested and
//!    changed together, which is how `error`, `sandbox` and `task` once grew
//!    into one lump;
//! 2. no source file over 800 lines outside tests, so that a module that
//!    outgrows one reading is split rather than grown;
//! 3. the agent is called only through `agent_client`'s typed methods: no
//!    other file of `src/` names the generated client, its raw escape hatch
//!    (kept for the tests that send the agent hostile requests) or a bare
//!    call context, so every call has its deadline, metrics and error
//!    mapping in one place.
//!
//! It uses only the standard library and reads the source as text, so that it
//! also runs while the library does not compile, from the repository root:
//! `rustc --edition 2024 --test tests/structure.rs -o /tmp/structure && /tmp/structure`.
//!
//! A dependency is a `crate::m` path, or a `super::` chain that climbs to the
//! crate root and names `m`, in a `use` tree or anywhere in code (comments and
//! literals blanked). Not seen: paths that a macro from another crate builds,
//! `#[path]` attributes, and names re-exported at the root (`crate::Error`
//! for `pub use error::Error` in `lib.rs` is no edge to `error`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

const LINE_LIMIT: usize = 800;

/// Top-level modules and the files behind each dependency between them.
#[derive(Debug)]
struct Graph {
    modules: BTreeSet<String>,
    /// (from, to) -> the files of `from` that name `to`, as `src/...`.
    edges: BTreeMap<(String, String), BTreeSet<String>>,
}

/// A strongly connected component of more than one module.
#[derive(Debug)]
struct Cycle {
    /// Sorted.
    modules: Vec<String>,
    /// A shortest loop through the first module, `[a, b, a]`: the headline.
    path: Vec<String>,
    /// Every edge inside the component with its files, as `from -> to`.
    edges: BTreeMap<(String, String), String>,
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cycle: {}", self.path[0])?;
        for hop in self.path.windows(2) {
            let files = &self.edges[&(hop[0].clone(), hop[1].clone())];
            write!(f, " -> {} ({files})", hop[1])?;
        }
        for ((from, to), files) in &self.edges {
            if !self.path.windows(2).any(|h| h[0] == *from && h[1] == *to) {
                write!(f, "\n  also: {from} -> {to} ({files})")?;
            }
        }
        Ok(())
    }
}

fn repo_root() -> PathBuf {
    option_env!("CARGO_MANIFEST_DIR").map_or_else(
        || std::env::current_dir().expect("the current directory"),
        PathBuf::from,
    )
}

/// Every `*.rs` under `dir`, sorted so that reports are stable.
fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            out.extend(rs_files(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The module path of a file under `src/`: `a/b.rs` and `a/b/mod.rs` are
/// `[a, b]`. `None` for `lib.rs`, `main.rs` and `bin/`, the crate roots.
fn module_path(rel: &Path) -> Option<Vec<String>> {
    let path = rel.with_extension("");
    let mut path: Vec<String> = path.iter().map(|c| c.to_string_lossy().into()).collect();
    if path.last().is_some_and(|l| l == "mod") {
        path.pop();
    }
    match path.as_slice() {
        [] => None,
        [root] if root == "lib" || root == "main" => None,
        [bin, _, ..] if bin == "bin" => None,
        _ => Some(path),
    }
}

/// The module graph of the crate whose `src/` directory is `src`.
fn scan_module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    for file in rs_files(src) {
        let rel = file.strip_prefix(src).expect("a file under src");
        if let Some(mpath) = module_path(rel) {
            files.push((format!("src/{}", rel.display()), read(&file), mpath));
        }
    }
    let modules = files.iter().map(|f| f.2[0].clone()).collect();
    let mut graph = Graph {
        modules,
        edges: BTreeMap::new(),
    };
    for (shown, text, mpath) in &files {
        for to in targets(text, mpath, &graph.modules) {
            let files = graph.edges.entry((mpath[0].clone(), to)).or_default();
            files.insert(shown.clone());
        }
    }
    graph
}

/// The top-level modules, other than its own, that a file at module path
/// `mpath` names.
fn targets(src: &str, mpath: &[String], modules: &BTreeSet<String>) -> BTreeSet<String> {
    let toks = tokens(&strip_comments_and_literals(src));
    let tok = |k: usize| toks.get(k).map_or("", String::as_str);
    let mut found = BTreeSet::new();
    // Inline `mod name {` blocks deepen the module path, so that `use
    // super::*` in `mod tests` is the file's own module and
    // `super::super::x` there may reach the root.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < toks.len() {
        let mut paths = Vec::new();
        match tok(i) {
            "{" => {
                depth += 1;
                if i >= 2 && tok(i - 2) == "mod" && is_ident(tok(i - 1)) {
                    inline.push((tok(i - 1).to_string(), depth));
                }
            }
            "}" => {
                if inline.last().is_some_and(|m| m.1 == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1); // Unbalanced text is no reason to panic.
            }
            // Not `use<'a>`, a precise-capturing bound.
            "use" if is_ident(tok(i + 1)) || matches!(tok(i + 1), "::" | "{") => {
                i += 1;
                use_tree(&toks, &mut i, &[], &mut paths);
                while i < toks.len() && tok(i) != ";" {
                    i += 1;
                }
            }
            "crate" | "super" if i == 0 || tok(i - 1) != "::" => {
                let mut path = vec![tok(i).to_string()];
                while tok(i + 1) == "::" && is_ident(tok(i + 2)) {
                    path.push(tok(i + 2).to_string());
                    i += 2;
                }
                paths.push(path);
            }
            _ => {}
        }
        if !paths.is_empty() {
            let here: Vec<String> = mpath
                .iter()
                .chain(inline.iter().map(|m| &m.0))
                .cloned()
                .collect();
            found.extend(paths.iter().filter_map(|p| target(p, &here, modules)));
        }
        i += 1;
    }
    found
}

/// The top-level module that `path`, written in module `here`, leads to if
/// that is not `here`'s own. A `super::` chain counts only when it climbs
/// exactly to the crate root; a glob (`super::*`) names no module.
fn target(path: &[String], here: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let supers = path.iter().take_while(|s| *s == "super").count();
    let first = match path.first()?.as_str() {
        "crate" => path.get(1)?,
        "super" if supers == here.len() => path.get(supers)?,
        _ => return None,
    };
    (modules.contains(first) && *first != here[0]).then(|| first.clone())
}

/// Parses the use tree at `toks[*i]` into its full paths (a glob ends in
/// `*`) and leaves `*i` on the token after the tree.
fn use_tree(toks: &[String], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tok = |k: usize| toks.get(k).map_or("", String::as_str);
    let mut path = prefix.to_vec();
    loop {
        match tok(*i) {
            "::" => *i += 1,
            "{" => {
                *i += 1;
                while !matches!(tok(*i), "}" | "") {
                    let before = *i;
                    use_tree(toks, i, &path, out);
                    if tok(*i) == "," {
                        *i += 1;
                    } else if *i == before {
                        break; // Malformed: do not loop forever.
                    }
                }
                *i += 1;
                return;
            }
            "*" => {
                path.push("*".to_string());
                *i += 1;
                return out.push(path);
            }
            "as" => {
                *i += 2;
                return out.push(path);
            }
            t if is_ident(t) => {
                path.push(t.to_string());
                *i += 1;
            }
            _ => return out.push(path),
        }
    }
}

fn is_ident(tok: &str) -> bool {
    tok.starts_with(|c: char| c.is_alphabetic() || c == '_')
}

/// Identifiers (and numbers), `::`, and every other non-blank character on
/// its own.
fn tokens(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        if word(chars[i]) {
            while i < chars.len() && word(chars[i]) {
                i += 1;
            }
        } else if chars[i] == ':' && chars.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            i += 1;
            if chars[start].is_whitespace() {
                continue;
            }
        }
        out.push(chars[start..i].iter().collect());
    }
    out
}

/// `src` with comments and string, char and raw string literals blanked
/// (newlines kept): `"crate::x"` in a message or a doc is no dependency.
fn strip_comments_and_literals(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < chars.len() {
        if let Some(end) = skipped_until(&chars, i) {
            out.extend(
                chars[i..end]
                    .iter()
                    .map(|&c| if c == '\n' { '\n' } else { ' ' }),
            );
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Where the comment or literal that starts at `i` ends, if one does.
fn skipped_until(c: &[char], i: usize) -> Option<usize> {
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let word_before = |k: usize| k > 0 && (at(k - 1).is_alphanumeric() || at(k - 1) == '_');
    let after = |from: usize, pat: &[char]| {
        (from..c.len())
            .find(|&k| c[k..].starts_with(pat))
            .map_or(c.len(), |k| k + pat.len())
    };
    match (at(i), at(i + 1)) {
        ('/', '/') => Some((i..c.len()).find(|&k| c[k] == '\n').unwrap_or(c.len())),
        ('/', '*') => {
            let (mut depth, mut k) = (0, i);
            while k < c.len() {
                match (at(k), at(k + 1)) {
                    ('/', '*') => (depth, k) = (depth + 1, k + 2),
                    ('*', '/') if depth == 1 => return Some(k + 2),
                    ('*', '/') => (depth, k) = (depth - 1, k + 2),
                    _ => k += 1,
                }
            }
            Some(c.len())
        }
        ('"', _) => {
            let mut k = i + 1;
            while k < c.len() && at(k) != '"' {
                k += if at(k) == '\\' { 2 } else { 1 };
            }
            Some((k + 1).min(c.len()))
        }
        // A char literal; `'a` alone is a lifetime or a label.
        ('\'', '\\') => Some(after(i + 3, &['\''])),
        ('\'', _) if at(i + 2) == '\'' => Some(i + 3),
        // r"..", r#".."#, br"..": the `r` starts a word or follows a `b`
        // that does; `r#type` is a raw identifier.
        ('r', '"' | '#') if !word_before(i) || (at(i - 1) == 'b' && !word_before(i - 1)) => {
            let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
            let close: Vec<char> = std::iter::once('"').chain(vec!['#'; hashes]).collect();
            (at(i + 1 + hashes) == '"').then(|| after(i + 2 + hashes, &close))
        }
        _ => None,
    }
}

/// The strongly connected components of more than one module: each module
/// with whatever it reaches that reaches it back. Quadratic, which is
/// nothing for a few dozen modules and simpler than Tarjan.
fn find_cycles(graph: &Graph) -> Vec<Cycle> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in graph.edges.keys() {
        adj.entry(from).or_default().push(to);
    }
    let mut reach = BTreeMap::new();
    for m in &graph.modules {
        reach.insert(m.as_str(), reachable(m, &adj));
    }
    let mut cycles = Vec::new();
    for (&m, from_m) in &reach {
        let scc: Vec<&str> = from_m
            .iter()
            .copied()
            .filter(|w| reach[w].contains(m))
            .collect();
        // Empty unless `m` is on a cycle; reported once, from its first module.
        if scc.first() != Some(&m) {
            continue;
        }
        let mut edges = BTreeMap::new();
        for ((from, to), files) in &graph.edges {
            if scc.contains(&from.as_str()) && scc.contains(&to.as_str()) {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                edges.insert((from.clone(), to.clone()), files.join(", "));
            }
        }
        let path = shortest_loop(m, &adj, &scc);
        let modules = scc.into_iter().map(String::from).collect();
        cycles.push(Cycle {
            modules,
            path,
            edges,
        });
    }
    cycles
}

/// The modules that paths from `from` reach, `from` itself only via a loop.
fn reachable<'g>(from: &str, adj: &BTreeMap<&str, Vec<&'g str>>) -> BTreeSet<&'g str> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from];
    while let Some(v) = todo.pop() {
        for &w in adj.get(v).into_iter().flatten() {
            if seen.insert(w) {
                todo.push(w);
            }
        }
    }
    seen
}

/// Breadth first from `start` back to it, inside its component `scc`.
fn shortest_loop(start: &str, adj: &BTreeMap<&str, Vec<&str>>, scc: &[&str]) -> Vec<String> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in adj.get(v).into_iter().flatten().filter(|w| scc.contains(w)) {
            if w == start {
                let mut path = vec![start, v];
                while path.last() != Some(&start) {
                    path.push(parent[path.last().expect("non-empty")]);
                }
                return path.into_iter().rev().map(String::from).collect();
            }
            if !parent.contains_key(w) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("{start} is on a cycle inside {scc:?}")
}

/// Files under `roots` over `limit` lines, except tests (`tests.rs`,
/// `*_tests.rs`, anything under a `tests/` directory): a test reads case by
/// case and is no harder to follow for being long.
fn long_files(roots: &[PathBuf], limit: usize) -> Vec<(PathBuf, usize)> {
    let mut out = Vec::new();
    for root in roots {
        for file in rs_files(root) {
            let rel = file.strip_prefix(root).expect("a file under its root");
            let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let in_tests = rel.parent().is_some_and(|p| p.iter().any(|c| c == "tests"));
            if name == "tests.rs" || name.ends_with("_tests.rs") || in_tests {
                continue;
            }
            let lines = read(&file).lines().count();
            if lines > limit {
                out.push((file, lines));
            }
        }
    }
    out
}

#[test]
fn src_has_no_module_cycles() {
    let src = repo_root().join("src");
    let graph = scan_module_graph(&src);
    assert!(!graph.modules.is_empty(), "no modules in {}", src.display());
    let cycles: Vec<String> = find_cycles(&graph)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        cycles.is_empty(),
        "{} import cycle(s) among the top-level modules of src/; move what both sides need \
         into a module below them, or pass it in:\n{}",
        cycles.len(),
        cycles.join("\n")
    );
}

#[test]
fn no_source_file_over_800_lines() {
    let root = repo_root();
    let roots = ["src", "agent/src", "agent/protocol/src", "guest-image/src"].map(|r| root.join(r));
    let roots: Vec<PathBuf> = roots.into_iter().filter(|r| r.is_dir()).collect();
    let mut long = Vec::new();
    for (file, lines) in long_files(&roots, LINE_LIMIT) {
        let shown = file.strip_prefix(&root).unwrap_or(&file);
        long.push(format!("{}: {lines} lines", shown.display()));
    }
    assert!(
        long.is_empty(),
        "source file(s) over {LINE_LIMIT} lines; split them (tests.rs, *_tests.rs and tests/ \
         are exempt):\n{}",
        long.join("\n")
    );
}

/// What only `src/agent_client/` may name (in code, not comments).
const AGENT_INTERNALS: [&str; 4] = [
    "agent_ttrpc",
    "AgentServiceClient",
    ".raw()",
    "call_context",
];

/// Files below `src` (other than `src/agent_client/`) that name one of
/// [`AGENT_INTERNALS`] in code, with the name.
fn agent_bypasses(src: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for file in rs_files(src) {
        let rel = file.strip_prefix(src).unwrap_or(&file);
        if rel.starts_with("agent_client") {
            continue;
        }
        let code = strip_comments_and_literals(&read(&file));
        for name in AGENT_INTERNALS.iter().filter(|n| code.contains(*n)) {
            found.push(format!("src/{}: {name}", rel.display()));
        }
    }
    found
}

#[test]
fn the_agent_is_called_only_through_the_facade() {
    let bypasses = agent_bypasses(&repo_root().join("src"));
    assert!(
        bypasses.is_empty(),
        "agent calls outside agent_client's typed methods; add a method to \
         src/agent_client/calls.rs instead:\n{}",
        bypasses.join("\n")
    );
}

#[test]
fn a_bypass_of_the_facade_is_found_in_code_only() {
    let dir = std::env::temp_dir().join(format!("structure-facade-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("agent_client")).expect("mkdir");
    fs::create_dir_all(dir.join("sandbox")).expect("mkdir");
    let write = |rel: &str, text: &str| fs::write(dir.join(rel), text).expect("write");
    write(
        "agent_client/mod.rs",
        "fn f(a: &A) { a.raw().x(call_context(None)); }\n",
    );
    write(
        "sandbox/ops.rs",
        "fn g(a: &A) { a.raw().signal_process(ctx, &r); }\n",
    );
    write(
        "sandbox/ok.rs",
        "// a.raw() in a comment\nconst S: &str = \"call_context\";\n",
    );
    write(
        "stdio.rs",
        "use kata_agent_protocol::agent_ttrpc::AgentServiceClient;\n",
    );
    let found = agent_bypasses(&dir);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(
        found,
        [
            "src/sandbox/ops.rs: .raw()",
            "src/stdio.rs: agent_ttrpc",
            "src/stdio.rs: AgentServiceClient",
        ]
    );
}

fn fixture(case: &str) -> Graph {
    scan_module_graph(&repo_root().join(format!("tests/fixtures/structure/{case}/src")))
}

/// Scans fixture `case` and checks its exact edges and cycle reports.
fn check(case: &str, edges: &[(&str, &str)], cycles: &[&str]) -> Graph {
    let graph = fixture(case);
    let got: BTreeSet<(&str, &str)> = graph.edges.keys().map(|(f, t)| (&**f, &**t)).collect();
    assert_eq!(got, edges.iter().copied().collect(), "edges of {case}");
    let reports: Vec<String> = find_cycles(&graph)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(reports, cycles, "cycles of {case}");
    graph
}

#[test]
fn use_lines_make_a_cycle() {
    let edges = [("a", "b"), ("b", "a"), ("b", "c")];
    check(
        "use_cycle",
        &edges,
        &["cycle: a -> b (src/a.rs) -> a (src/b.rs)"],
    );
}

#[test]
fn inline_paths_make_a_cycle() {
    let cycle = "cycle: a -> b (src/a/mod.rs) -> a (src/b.rs)";
    check("inline_path_cycle", &[("a", "b"), ("b", "a")], &[cycle]);
}

#[test]
fn super_paths_that_reach_the_root_make_a_cycle() {
    let edges = [("a", "b"), ("b", "a"), ("c", "a"), ("c", "b"), ("d", "a")];
    let cycle = "cycle: a -> b (src/a/mod.rs) -> a (src/b/inner.rs)";
    check("super_cycle", &edges, &[cycle]);
}

#[test]
fn grouped_use_across_lines_names_every_module() {
    check("grouped_multiline_use", &[("m", "x"), ("m", "y")], &[]);
}

#[test]
fn comments_literals_globs_and_siblings_are_no_edges() {
    let graph = check("no_false_edges", &[], &[]);
    assert_eq!(
        graph.modules,
        BTreeSet::from(["a".into(), "b".into(), "c".into()])
    );
}

#[test]
fn three_modules_are_one_cycle() {
    let edges = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")];
    let cycle = "cycle: a -> b (src/a.rs) -> c (src/b.rs) -> a (src/c.rs)";
    let graph = check("three_module_cycle", &edges, &[cycle]);
    assert_eq!(find_cycles(&graph)[0].modules, ["a", "b", "c"]);
}

#[test]
fn edges_off_the_headline_loop_are_listed_too() {
    let mut g = fixture("three_module_cycle");
    let files = BTreeSet::from(["src/a.rs".to_string()]);
    g.edges.insert(("a".into(), "c".into()), files);
    let report = find_cycles(&g)[0].to_string();
    let want = "cycle: a -> c (src/a.rs) -> a (src/c.rs)\n  also: a -> b (src/a.rs)\n  \
                also: b -> c (src/b.rs)";
    assert_eq!(report, want);
}

#[test]
fn long_files_are_reported_and_tests_exempt() {
    let dir = std::env::temp_dir().join(format!("structure-long-files-{}", std::process::id()));
    let write = |rel: &str, lines: usize| {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().expect("a parent")).expect("create a fixture dir");
        fs::write(&path, "// line\n".repeat(lines)).expect("write a fixture file");
    };
    write("src/long.rs", 801);
    write("src/at_limit.rs", 800);
    write("src/a/tests.rs", 900);
    write("src/a/foo_tests.rs", 900);
    write("src/a/tests/big.rs", 900);
    let long = long_files(&[dir.join("src")], LINE_LIMIT);
    fs::remove_dir_all(&dir).expect("remove the fixture dir");
    assert_eq!(long, [(dir.join("src/long.rs"), 801)]);
}
