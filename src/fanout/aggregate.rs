//! Folding per-file analyses into the artifacts: `repo_map.json` (versioned schema),
//! `overview.md` and `provenance.json`. Deterministic: the same repository gives byte-identical
//! artifacts apart from job ids, providers and timestamps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::protocol::code_analysis::Analysis;

/// Schema tag of `repo_map.json`.
pub const SCHEMA: &str = "pylon/repo-map@1";

/// One mapped file and where its analysis came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedFile {
    /// The analysis.
    #[serde(flatten)]
    pub analysis: Analysis,
    /// Provider (hex), or `local`.
    pub provider: String,
    /// Request event id (empty for local runs).
    pub job_id: String,
}

/// A symbol in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct Symbol {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// File.
    pub file: String,
    /// Line.
    pub line: u64,
    /// Exported.
    pub exported: bool,
    /// Signature.
    pub signature: String,
}

/// `repo_map.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoMap {
    /// [`SCHEMA`].
    pub schema: String,
    /// What was mapped (directory name or URL).
    pub root: String,
    /// Files, sorted by path.
    pub files: Vec<FileEntry>,
    /// Symbol name → definitions.
    pub symbols: BTreeMap<String, Vec<Symbol>>,
    /// File → files of this repository it imports (resolved where possible).
    pub import_graph: BTreeMap<String, Vec<String>>,
    /// Counts.
    pub totals: Totals,
}

/// A file in `repo_map.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path.
    pub path: String,
    /// Language.
    pub language: String,
    /// Lines.
    pub lines: u64,
    /// sha256 of the content.
    pub sha256: String,
    /// Imports as written.
    pub imports: Vec<String>,
    /// Summary lines.
    pub summary: Vec<String>,
    /// Definitions.
    pub symbols: Vec<Symbol>,
    /// Provider (hex) or `local`.
    pub provider: String,
    /// Job id.
    pub job_id: String,
}

/// Counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Totals {
    /// Files mapped.
    pub files: u64,
    /// Lines.
    pub lines: u64,
    /// Definitions.
    pub symbols: u64,
    /// Files per language.
    pub languages: BTreeMap<String, u64>,
}

/// Builds the map from mapped files.
pub fn repo_map(root: &str, mapped: &[MappedFile]) -> RepoMap {
    let mut files: Vec<&MappedFile> = mapped.iter().collect();
    files.sort_by(|a, b| a.analysis.path.cmp(&b.analysis.path));
    let paths: BTreeSet<&str> = files.iter().map(|f| f.analysis.path.as_str()).collect();
    let mut symbols: BTreeMap<String, Vec<Symbol>> = BTreeMap::new();
    let mut graph = BTreeMap::new();
    let mut totals = Totals::default();
    let mut entries = Vec::new();
    for f in files {
        let a = &f.analysis;
        let syms: Vec<Symbol> = a
            .definitions
            .iter()
            .map(|d| Symbol {
                name: d.name.clone(),
                kind: d.kind.clone(),
                file: a.path.clone(),
                line: d.line,
                exported: d.exported,
                signature: d.signature.clone(),
            })
            .collect();
        for s in &syms {
            symbols.entry(s.name.clone()).or_default().push(s.clone());
        }
        let targets: BTreeSet<String> = a
            .imports
            .iter()
            .filter_map(|i| resolve(&a.path, &a.language, i, &paths))
            .collect();
        graph.insert(a.path.clone(), targets.into_iter().collect());
        totals.files += 1;
        totals.lines += a.lines;
        totals.symbols += syms.len() as u64;
        *totals.languages.entry(a.language.clone()).or_default() += 1;
        entries.push(FileEntry {
            path: a.path.clone(),
            language: a.language.clone(),
            lines: a.lines,
            sha256: a.sha256.clone(),
            imports: a.imports.clone(),
            summary: a.summary.clone(),
            symbols: syms,
            provider: f.provider.clone(),
            job_id: f.job_id.clone(),
        });
    }
    for list in symbols.values_mut() {
        list.sort();
    }
    RepoMap {
        schema: SCHEMA.to_string(),
        root: root.to_string(),
        files: entries,
        symbols,
        import_graph: graph,
        totals,
    }
}

/// Resolves an import to a file of this repository when the language's conventions allow.
fn resolve(from: &str, language: &str, import: &str, paths: &BTreeSet<&str>) -> Option<String> {
    let dir = from.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let join = |base: &str, rel: &str| -> String {
        let mut parts: Vec<&str> = if base.is_empty() {
            Vec::new()
        } else {
            base.split('/').collect()
        };
        for seg in rel.split('/') {
            match seg {
                "." | "" => {}
                ".." => {
                    parts.pop();
                }
                s => parts.push(s),
            }
        }
        parts.join("/")
    };
    let candidates: Vec<String> = match language {
        "javascript" | "typescript" if import.starts_with('.') => {
            let base = join(dir, import);
            [
                "",
                ".ts",
                ".tsx",
                ".js",
                ".jsx",
                ".mjs",
                "/index.ts",
                "/index.js",
            ]
            .iter()
            .map(|ext| format!("{base}{ext}"))
            .collect()
        }
        "python" => {
            let rel = import.trim_start_matches('.');
            let ups = import.len() - rel.len();
            let module = rel.replace('.', "/");
            let base = if ups > 0 {
                let mut b = dir.to_string();
                for _ in 1..ups {
                    b = b
                        .rsplit_once('/')
                        .map(|(d, _)| d.to_string())
                        .unwrap_or_default();
                }
                join(&b, &module)
            } else {
                module
            };
            vec![format!("{base}.py"), format!("{base}/__init__.py")]
        }
        "rust" => {
            // `crate::a::b` → src/a/b.rs or src/a.rs; `super::x` relative to this file's module.
            let path = import
                .split(['{', ' '])
                .next()
                .unwrap_or("")
                .trim_end_matches("::");
            let segs: Vec<&str> = path.split("::").collect();
            match segs.first() {
                Some(&"crate") if segs.len() > 1 => {
                    let mut out = Vec::new();
                    for n in (2..=segs.len()).rev() {
                        let p = segs[1..n].join("/");
                        out.push(format!("src/{p}.rs"));
                        out.push(format!("src/{p}/mod.rs"));
                    }
                    out
                }
                _ => Vec::new(),
            }
        }
        "go" => {
            // Import paths ending in a directory of this repository.
            let last: Vec<&str> = import.split('/').collect();
            let mut out = Vec::new();
            for n in 1..=last.len() {
                let suffix = last[last.len() - n..].join("/");
                out.extend(
                    paths
                        .iter()
                        .filter(|p| p.starts_with(&format!("{suffix}/")) && p.ends_with(".go"))
                        .map(|p| p.to_string()),
                );
                if !out.is_empty() {
                    break;
                }
            }
            out.truncate(1);
            out
        }
        _ => Vec::new(),
    };
    candidates
        .into_iter()
        .find(|c| paths.contains(c.as_str()) && c != from)
}

/// `overview.md`: languages, top-level modules, most-imported files, entry points, directories.
pub fn overview(map: &RepoMap) -> String {
    let mut md = String::new();
    md.push_str(&format!("# Repository overview: {}\n\n", map.root));
    md.push_str(&format!(
        "{} files, {} lines, {} definitions.\n\n## Languages\n\n| language | files |\n|---|---|\n",
        map.totals.files, map.totals.lines, map.totals.symbols
    ));
    let mut langs: Vec<(&String, &u64)> = map.totals.languages.iter().collect();
    langs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (l, n) in langs {
        md.push_str(&format!("| {l} | {n} |\n"));
    }
    let mut top: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for f in &map.files {
        let head = f.path.split('/').next().unwrap_or("");
        let key = if f.path.contains('/') { head } else { "(root)" };
        let e = top.entry(key).or_default();
        e.0 += 1;
        e.1 += f.symbols.iter().filter(|s| s.exported).count() as u64;
    }
    md.push_str("\n## Top-level modules\n\n| module | files | exported symbols |\n|---|---|---|\n");
    for (m, (files, exported)) in &top {
        md.push_str(&format!("| `{m}` | {files} | {exported} |\n"));
    }
    let mut imported: BTreeMap<&str, u64> = BTreeMap::new();
    for targets in map.import_graph.values() {
        for t in targets {
            *imported.entry(t.as_str()).or_default() += 1;
        }
    }
    let mut most: Vec<(&str, u64)> = imported.into_iter().collect();
    most.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    md.push_str("\n## Most-imported files\n\n");
    if most.is_empty() {
        md.push_str("(no imports between files of this repository were resolved)\n");
    }
    for (f, n) in most.iter().take(10) {
        md.push_str(&format!("- `{f}` — imported by {n} files\n"));
    }
    md.push_str("\n## Entry points\n\n");
    let entries: Vec<&FileEntry> = map.files.iter().filter(|f| is_entry(f)).collect();
    if entries.is_empty() {
        md.push_str("(none found)\n");
    }
    for f in entries {
        md.push_str(&format!("- `{}`\n", f.path));
    }
    md.push_str("\n## Directories\n");
    let mut dirs: BTreeMap<&str, Vec<&FileEntry>> = BTreeMap::new();
    for f in &map.files {
        let d = f.path.rsplit_once('/').map(|(d, _)| d).unwrap_or(".");
        dirs.entry(d).or_default().push(f);
    }
    for (d, files) in dirs {
        md.push_str(&format!("\n### `{d}/`\n\n"));
        for f in files {
            let first = f.summary.first().map(String::as_str).unwrap_or("");
            let name = f.path.rsplit('/').next().unwrap_or(&f.path);
            md.push_str(&format!(
                "- `{name}` ({}, {} lines): {first}\n",
                f.language, f.lines
            ));
        }
    }
    md
}

fn is_entry(f: &FileEntry) -> bool {
    let name = f.path.rsplit('/').next().unwrap_or("");
    matches!(
        name,
        "main.rs"
            | "main.go"
            | "__main__.py"
            | "index.js"
            | "index.ts"
            | "main.py"
            | "app.py"
            | "server.js"
    ) || f
        .symbols
        .iter()
        .any(|s| s.name == "main" && s.kind == "function")
}

/// One line of `provenance.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileProvenance {
    /// File.
    pub path: String,
    /// Request event id.
    pub request: String,
    /// Result event id.
    pub result: Option<String>,
    /// Receipt event id.
    pub receipt: Option<String>,
    /// Provider (hex).
    pub provider: String,
}

/// Writes the three artifacts into `out`; returns their paths.
pub fn write(
    out: &Path,
    map: &RepoMap,
    provenance: &[FileProvenance],
) -> std::io::Result<[std::path::PathBuf; 3]> {
    std::fs::create_dir_all(out)?;
    let paths = [
        out.join("repo_map.json"),
        out.join("overview.md"),
        out.join("provenance.json"),
    ];
    std::fs::write(&paths[0], pretty(map)?)?;
    std::fs::write(&paths[1], overview(map))?;
    let mut sorted = provenance.to_vec();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    std::fs::write(&paths[2], pretty(&sorted)?)?;
    Ok(paths)
}

fn pretty<T: Serialize>(v: &T) -> std::io::Result<String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executors::code::analyze;

    fn mapped(path: &str, src: &str) -> MappedFile {
        MappedFile {
            analysis: analyze(path, src),
            provider: "local".into(),
            job_id: String::new(),
        }
    }

    #[test]
    fn index_graph_and_overview() {
        let files = vec![
            mapped(
                "src/main.rs",
                "use crate::util::helper;\nfn main() { helper(); }\n",
            ),
            mapped("src/util.rs", "pub fn helper() {}\n"),
            mapped(
                "web/app.js",
                "import { x } from './lib';\nexport function app() {}\n",
            ),
            mapped("web/lib.js", "export const x = 1;\n"),
            mapped("py/pkg/a.py", "from .b import f\n"),
            mapped("py/pkg/b.py", "def f():\n    pass\n"),
        ];
        let map = repo_map("demo", &files);
        assert_eq!(map.schema, SCHEMA);
        assert_eq!(map.import_graph["src/main.rs"], vec!["src/util.rs"]);
        assert_eq!(map.import_graph["web/app.js"], vec!["web/lib.js"]);
        assert_eq!(map.import_graph["py/pkg/a.py"], vec!["py/pkg/b.py"]);
        assert_eq!(map.symbols["helper"][0].file, "src/util.rs");
        assert_eq!(map.totals.files, 6);
        let md = overview(&map);
        assert!(md.contains("| rust | 2 |"));
        assert!(md.contains("`src/util.rs` — imported by 1 files"));
        assert!(md.contains("- `src/main.rs`"), "entry point");
        // Order of input does not change the output.
        let mut reversed = files.clone();
        reversed.reverse();
        assert_eq!(repo_map("demo", &reversed), map);
    }
}
