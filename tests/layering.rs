//! The import graph of `src/` keeps the layer map of `src/lib.rs`: every
//! `crate::…` (and `super::…`/`self::…`) path in a module names a module of
//! a lower layer or its own top-level module, top-level modules form no
//! cycle, and the sub-modules of one top-level module form no cycle among
//! themselves (`server::http2` ↔ `server::load_shed`, `cache::config` ↔
//! `cache::origin` were such cycles).
//!
//! The source is read as text with plain Rust (no parser crate): comments and
//! string literals are blanked, inline `mod name { … }` blocks are followed
//! so that `super::` resolves as the compiler resolves it, and `use
//! crate::{a, b::c}` groups count every member. `src/main.rs` and `src/bin/`
//! are separate crates that see only the library's public surface, and
//! `src/lib.rs` only declares the modules, so neither is checked.
//!
//! [`LAYERS`] is the one table to adjust when the map changes. To check
//! another checkout's source with this build, point `TIERKV_LAYERING_ROOT`
//! at its package directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers of the library, lowest first. A module may import modules of
/// the layers below its own, and nothing of its own layer or above. This is
/// the table `src/lib.rs`'s layout map describes; adjust both together.
const LAYERS: &[(&str, &[&str])] = &[
    // Time.
    ("foundation", &["clock"]),
    // The storage contract and the RocksDB engine.
    ("engine", &["engine"]),
    // What every service shares about records: limits, JSON depth, the
    // page-by-page prefix walk.
    ("records", &["records"]),
    // Domain services, in the order they may build on each other: the
    // migration chains and tokens know no other service; KV applies
    // migrations; the session, cache, admin and watch services build on KV's
    // validation and limits.
    ("domain: migrations, tokens", &["migrate", "auth"]),
    ("domain: kv", &["kv"]),
    (
        "domain: services on kv",
        &["session", "cache", "admin", "watch"],
    ),
    // The configuration file: every domain service's settings.
    ("configuration", &["config"]),
    // Logging set-up, and the figures metrics export (read by the admin
    // adapter and the server).
    ("observability", &["telemetry", "metrics"]),
    // The generated protobuf code (its server stubs name `api::codec`'s
    // codec, in generated text this test does not read).
    ("protocol", &["proto"]),
    // The tonic adapters around the domain, and the one status mapping.
    ("edge", &["api"]),
    // Wiring: tower layers, connections, TLS, serving, shutdown.
    ("server", &["server"]),
    // The command line.
    ("cli", &["cli"]),
];

/// The package directory whose `src/` is checked.
fn package_root() -> PathBuf {
    std::env::var_os("TIERKV_LAYERING_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// One `crate::` path found in a module.
#[derive(Debug, Clone)]
struct Import {
    /// The file it is written in, relative to the package.
    file: String,
    /// Its line.
    line: usize,
    /// The module it is written in (`["server", "http2"]`).
    from: Vec<String>,
    /// The path it names, from the crate root (`["server", "load_shed", "Accepted"]`).
    to: Vec<String>,
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("read {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The module a file under `src/` defines: `server.rs` and `server/mod.rs`
/// are `["server"]`, `server/http2.rs` is `["server", "http2"]`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// `source` with comments, string, byte-string and char literals blanked
/// (newlines kept, so line numbers stay right).
fn strip(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if (c == 'r' || (c == 'b' && next == Some('r')))
            && !chars
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
            && {
                let start = if c == 'b' { i + 2 } else { i + 1 };
                let mut j = start;
                while chars.get(j) == Some(&'#') {
                    j += 1;
                }
                chars.get(j) == Some(&'"')
            }
        {
            // A raw string: r"…", r#"…"#, br"…".
            let mut j = if c == 'b' { i + 2 } else { i + 1 };
            let mut hashes = 0;
            while chars[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            let closing: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let closing: Vec<char> = closing.chars().collect();
            while j < chars.len() && chars[j..].iter().take(closing.len()).ne(closing.iter()) {
                j += 1;
            }
            j = (j + closing.len()).min(chars.len());
            for &skipped in &chars[i..j] {
                out.push(blank(skipped));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let literal_end = if next == Some('\\') {
                (i + 2..chars.len().min(i + 12)).find(|&j| chars[j] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match literal_end {
                Some(end) => {
                    for _ in i..=end {
                        out.push(' ');
                    }
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The identifier starting at `at` (after spaces), and where it ends.
fn ident_at(chars: &[char], mut at: usize) -> (String, usize) {
    while at < chars.len() && chars[at].is_whitespace() {
        at += 1;
    }
    let start = at;
    while at < chars.len() && is_ident(chars[at]) {
        at += 1;
    }
    (chars[start..at].iter().collect(), at)
}

/// Skips spaces and one `::` after `at`; `None` if there is none.
fn colons_at(chars: &[char], mut at: usize) -> Option<usize> {
    while at < chars.len() && chars[at].is_whitespace() {
        at += 1;
    }
    (chars.get(at) == Some(&':') && chars.get(at + 1) == Some(&':')).then_some(at + 2)
}

/// The paths of a path starting at `at` (after `crate::` or a module): one
/// path, or each member of a `{…}` group, each as its segments.
fn paths_at(chars: &[char], at: usize) -> Vec<Vec<String>> {
    let mut at = at;
    while at < chars.len() && chars[at].is_whitespace() {
        at += 1;
    }
    if chars.get(at) == Some(&'{') {
        // A group: split its members at depth one.
        let mut members = Vec::new();
        let mut depth = 0;
        let mut start = at + 1;
        let mut j = at;
        while j < chars.len() {
            match chars[j] {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        members.push((start, j));
                        break;
                    }
                }
                ',' if depth == 1 => {
                    members.push((start, j));
                    start = j + 1;
                }
                _ => {}
            }
            j += 1;
        }
        return members
            .into_iter()
            .flat_map(|(start, _)| paths_at(chars, start))
            .filter(|path| !path.is_empty())
            .collect();
    }
    let (first, mut end) = ident_at(chars, at);
    if first.is_empty() {
        return vec![Vec::new()];
    }
    let mut path = vec![first];
    while let Some(after) = colons_at(chars, end) {
        let (segment, segment_end) = ident_at(chars, after);
        if segment.is_empty() {
            // A group or a glob after the prefix.
            let rest = paths_at(chars, after);
            return rest
                .into_iter()
                .map(|tail| path.iter().cloned().chain(tail).collect())
                .collect();
        }
        path.push(segment);
        end = segment_end;
    }
    vec![path]
}

/// Every crate-relative path in one file.
fn imports_of(file: &str, module: &[String], source: &str) -> Vec<Import> {
    let stripped = strip(source);
    let chars: Vec<char> = stripped.chars().collect();
    let mut found = Vec::new();
    // Inline `mod name {` blocks open at brace depth `.1`.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
        }
        if c == '{' {
            depth += 1;
        }
        if c == '}' {
            depth = depth.saturating_sub(1);
            if inline.last().is_some_and(|(_, open)| *open == depth) {
                inline.pop();
            }
        }
        let boundary = i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':';
        if !boundary || !is_ident(c) {
            i += 1;
            continue;
        }
        let (word, end) = ident_at(&chars, i);
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(name, _)| name.clone()))
            .collect();
        match word.as_str() {
            "mod" => {
                let (name, after) = ident_at(&chars, end);
                let mut j = after;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if !name.is_empty() && chars.get(j) == Some(&'{') {
                    inline.push((name, depth));
                }
            }
            "crate" | "super" | "self" => {
                let mut base: Vec<String> = match word.as_str() {
                    "crate" => Vec::new(),
                    "self" => here.clone(),
                    _ => here[..here.len().saturating_sub(1)].to_vec(),
                };
                let mut at = colons_at(&chars, end);
                // Further `super::`s climb on.
                while let Some(after) = at {
                    let (next, next_end) = ident_at(&chars, after);
                    if next != "super" {
                        break;
                    }
                    base.pop();
                    at = colons_at(&chars, next_end);
                }
                if let Some(after) = at {
                    for path in paths_at(&chars, after) {
                        if path.is_empty() || path[0] == "self" {
                            continue;
                        }
                        found.push(Import {
                            file: file.to_string(),
                            line,
                            from: here.clone(),
                            to: base.iter().cloned().chain(path).collect(),
                        });
                    }
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i = end.max(i + 1);
    }
    found
}

/// Every import of every library module.
fn all_imports() -> Vec<Import> {
    let src = package_root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut imports = Vec::new();
    for path in files {
        let relative = path.strip_prefix(&src).unwrap();
        if relative == Path::new("lib.rs")
            || relative == Path::new("main.rs")
            || relative.starts_with("bin")
        {
            continue;
        }
        let source = fs::read_to_string(&path).unwrap();
        let file = format!("src/{}", relative.display());
        imports.extend(imports_of(&file, &module_of(relative), &source));
    }
    imports
}

/// The cycles of a directed graph, each once, as the nodes along it.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Small graphs: a depth-first search from each node for paths back to
    // it through nodes greater than it (so each cycle is found from its
    // least node only).
    fn walk(
        start: &str,
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        for next in edges.get(node).into_iter().flatten() {
            if next == start {
                found.push(path.clone());
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                walk(start, next, edges, path, found);
                path.pop();
            }
        }
    }
    let mut found = Vec::new();
    for start in edges.keys() {
        walk(start, start, edges, &mut vec![start.clone()], &mut found);
    }
    found
}

/// Where each edge of a graph is written first, for the failure messages.
type Witnesses = BTreeMap<(String, String), String>;

fn describe_cycles(kind: &str, found: &[Vec<String>], witnesses: &Witnesses) -> Vec<String> {
    found
        .iter()
        .map(|cycle| {
            let steps: Vec<String> = cycle
                .iter()
                .zip(cycle.iter().cycle().skip(1))
                .map(|(from, to)| {
                    let at = &witnesses[&(from.clone(), to.clone())];
                    format!("{from} -> {to} ({at})")
                })
                .collect();
            format!("{kind} cycle: {}", steps.join(", "))
        })
        .collect()
}

/// Every violation of the layer map, one line each.
fn violations() -> Vec<String> {
    let imports = all_imports();
    let mut problems = Vec::new();
    let mut top_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut top_witnesses = Witnesses::new();
    // Sub-module graphs, per top-level module: sibling → sibling.
    let mut sub_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sub_witnesses = Witnesses::new();
    let src = package_root().join("src");
    let is_child_module = |parent: &str, child: &str| {
        src.join(parent).join(format!("{child}.rs")).is_file()
            || src.join(parent).join(child).join("mod.rs").is_file()
    };
    for import in &imports {
        let at = format!("{}:{}", import.file, import.line);
        let Some(to) = import.to.first() else {
            continue;
        };
        let from = &import.from[0];
        if from != to {
            let (Some(from_layer), Some(to_layer)) = (layer_of(from), layer_of(to)) else {
                problems.push(format!(
                    "{at}: {from} -> {to}: a module missing from LAYERS in tests/layering.rs"
                ));
                continue;
            };
            if to_layer >= from_layer {
                problems.push(format!(
                    "{at}: {from} (layer {:?}) imports crate::{} (layer {:?}): {}",
                    LAYERS[from_layer].0,
                    import.to.join("::"),
                    LAYERS[to_layer].0,
                    if to_layer == from_layer {
                        "same layer"
                    } else {
                        "up the layers"
                    }
                ));
            }
            top_edges
                .entry(from.clone())
                .or_default()
                .insert(to.clone());
            top_witnesses
                .entry((from.clone(), to.clone()))
                .or_insert(at.clone());
        } else if import.from.len() >= 2 && import.to.len() >= 2 {
            let (from_sub, to_sub) = (&import.from[1], &import.to[1]);
            if from_sub != to_sub && is_child_module(from, to_sub) {
                let from_node = format!("{from}::{from_sub}");
                let to_node = format!("{from}::{to_sub}");
                sub_edges
                    .entry(from_node.clone())
                    .or_default()
                    .insert(to_node.clone());
                sub_witnesses.entry((from_node, to_node)).or_insert(at);
            }
        }
    }
    problems.extend(describe_cycles(
        "top-level",
        &cycles(&top_edges),
        &top_witnesses,
    ));
    problems.extend(describe_cycles(
        "sub-module",
        &cycles(&sub_edges),
        &sub_witnesses,
    ));
    problems
}

/// No module imports its own layer or one above it, and no two modules
/// import each other, directly or around a loop.
#[test]
fn imports_go_down_the_layers_without_cycles() {
    let problems = violations();
    assert!(
        problems.is_empty(),
        "{} layering violations:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The domain and everything below it: modules that speak no transport.
const NO_TRANSPORT: &[&str] = &[
    "clock", "limits", "engine", "migrate", "auth", "kv", "session", "cache", "admin",
];

/// Crates whose types belong to the edge. (`prost` itself, the encoding
/// library, may encode a storage record; its well-known types may not
/// reach the domain.)
const TRANSPORT_CRATES: &[&str] = &["tonic", "tonic_types", "prost_types", "tonic_health"];

/// Every library file under `src/` with its text, comments and strings blanked.
fn library_sources() -> Vec<(String, String)> {
    let src = package_root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&src).unwrap().to_path_buf();
            if relative.starts_with("bin") || relative == Path::new("main.rs") {
                return None;
            }
            let text = strip(&fs::read_to_string(&path).unwrap());
            Some((format!("src/{}", relative.display()), text))
        })
        .collect()
}

/// Where `word` occurs in `text` as a whole path segment followed by `::`.
fn uses_of(text: &str, word: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut rest = line;
        let mut offset = 0;
        while let Some(found) = rest.find(word) {
            let at = offset + found;
            let before = line[..at].chars().next_back();
            let after = &line[at + word.len()..];
            if !before.is_some_and(|c| is_ident(c) || c == ':')
                && after.trim_start().starts_with("::")
            {
                lines.push(number + 1);
                break;
            }
            offset = at + word.len();
            rest = &line[offset..];
        }
    }
    lines
}

/// Protobuf at the edge only: no domain module names a tonic or protobuf
/// well-known type (`session::Session` once exposed `prost_types::Struct`).
#[test]
fn the_domain_speaks_no_transport() {
    let mut problems = Vec::new();
    for (file, text) in library_sources() {
        let top = file
            .trim_start_matches("src/")
            .split(['/', '.'])
            .next()
            .unwrap()
            .to_string();
        if !NO_TRANSPORT.contains(&top.as_str()) {
            continue;
        }
        for krate in TRANSPORT_CRATES {
            for line in uses_of(&text, krate) {
                problems.push(format!("{file}:{line}: {top} uses {krate}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Statuses with `google.rpc` details, and conversions of errors into
/// statuses, are written in `src/api/status.rs` only (the server's tower
/// layers answer their own transport refusals).
#[test]
fn error_to_status_mapping_lives_in_one_place() {
    let mut problems = Vec::new();
    for (file, text) in library_sources() {
        if file == "src/api/status.rs"
            || file.starts_with("src/server")
            || file.starts_with("src/cli")
        {
            continue;
        }
        for (number, line) in text.lines().enumerate() {
            let for_status = line.contains("impl From<")
                && (line.contains("for Status") || line.contains("for tonic::Status"));
            if line.contains("with_error_details") || line.contains("ErrorDetails::") || for_status
            {
                problems.push(format!("{file}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every top-level module the library declares has a place in [`LAYERS`]
/// (so a new module cannot slip past the check), and no module is in two.
#[test]
fn every_module_has_one_layer() {
    let lib = fs::read_to_string(package_root().join("src/lib.rs")).unwrap();
    // Top-level declarations only: those that start their line.
    let declared: Vec<String> = strip(&lib)
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod "))
        .map(|rest| rest.trim_end_matches(['{', ';', ' ']).to_string())
        .collect();
    assert!(declared.contains(&"engine".to_string()), "{declared:?}");
    for module in &declared {
        assert!(
            layer_of(module).is_some(),
            "src/lib.rs declares {module}, which LAYERS in tests/layering.rs does not place"
        );
    }
    let mut seen = BTreeSet::new();
    for (_, modules) in LAYERS {
        for module in *modules {
            assert!(seen.insert(*module), "{module} is in two layers");
        }
    }
}

/// The scanner itself: comments and strings are not imports, groups and
/// `super::` resolve as the compiler resolves them, and cycles are found.
#[test]
fn the_scanner_reads_paths_as_the_compiler_does() {
    let module = vec!["server".to_string(), "http2".to_string()];
    let source = r#"
//! See `crate::cli` (a comment, not an import).
use crate::{api::status::ERROR_DOMAIN, engine::{Engine, EngineError}};
use super::load_shed::Accepted;
const TEXT: &str = "crate::kv";
fn f<'a>(x: &'a str) -> char { let _ = crate::clock::SystemClock; 'x' }
mod tests {
    use super::helper;
    use super::super::tls::Settings;
}
"#;
    let found: Vec<(Vec<String>, String)> = imports_of("f.rs", &module, source)
        .into_iter()
        .map(|import| (import.from, import.to.join("::")))
        .collect();
    let found: Vec<String> = found
        .into_iter()
        .map(|(from, to)| format!("{} -> {to}", from.join("::")))
        .collect();
    assert_eq!(
        found,
        vec![
            "server::http2 -> api::status::ERROR_DOMAIN",
            "server::http2 -> engine::Engine",
            "server::http2 -> engine::EngineError",
            "server::http2 -> server::load_shed::Accepted",
            "server::http2 -> clock::SystemClock",
            "server::http2::tests -> server::http2::helper",
            "server::http2::tests -> server::tls::Settings",
        ]
    );
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        edges.entry(from.into()).or_default().insert(to.into());
    }
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c"]]);
}

/// Most lines a file of `src/` may have: a file that grows past it mixes
/// ideas and is split (issue 15 set the bound).
const MAX_FILE_LINES: usize = 600;

/// No file of `src/` is over [`MAX_FILE_LINES`] lines.
#[test]
fn files_hold_one_idea_each() {
    let mut files = Vec::new();
    rust_files(&package_root().join("src"), &mut files);
    assert!(!files.is_empty(), "no source files found");
    let long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let lines = fs::read_to_string(file).ok()?.lines().count();
            (lines > MAX_FILE_LINES).then(|| format!("{} ({lines} lines)", file.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines: {}",
        long.join(", ")
    );
}
