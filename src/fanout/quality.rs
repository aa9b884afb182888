//! The analyzer measured against universal-ctags: definitions compared by (name, line, kind)
//! after mapping ctags' kinds onto ours, per language. Tags neither tool is meant to produce
//! (fields, enum variants, parameters, locals, impl blocks, imports) are left out of both sides,
//! and so are kinds the installed ctags (5.9) has no name for: Rust constants and unions.
//! One known ctags 5.9 gap is bridged: it tags `const f = () => …` as a variable where we say
//! function; at the same name and line that counts as agreement.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::walk;
use crate::executors::code::analyze;

/// Precision and recall for one language (or all).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Score {
    /// Definitions both found.
    pub matched: u64,
    /// Found by ctags only.
    pub missed: u64,
    /// Found by us only.
    pub extra: u64,
    /// matched ÷ (matched + missed).
    pub recall: f64,
    /// matched ÷ (matched + extra).
    pub precision: f64,
}

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Quality {
    /// Per language.
    pub languages: BTreeMap<String, Score>,
    /// Over everything.
    pub overall: Score,
    /// Up to 50 disagreements, for inspection: `path:line name (kind) — missed|extra`.
    pub disagreements: Vec<String>,
}

/// Errors running the comparison.
#[derive(Debug, thiserror::Error)]
pub enum QualityError {
    /// ctags is missing or failed.
    #[error("universal-ctags: {0}")]
    Ctags(String),
    /// Walking the tree failed.
    #[error(transparent)]
    Walk(#[from] walk::WalkError),
}

type Key = (String, u64, String, String); // path, line, name, kind

/// Compares our definitions with ctags' on every parsed file under `root`.
pub fn compare(root: &Path) -> Result<Quality, QualityError> {
    let (files, _) = walk::collect(root, &[], &[])?;
    let mut ours: HashSet<Key> = HashSet::new();
    let mut language_of: BTreeMap<String, String> = BTreeMap::new();
    for f in &files {
        let a = analyze(&f.path, &f.content);
        if a.language == "text" {
            continue;
        }
        language_of.insert(f.path.clone(), a.language.clone());
        for d in a.definitions {
            if a.language == "rust" && matches!(d.kind.as_str(), "constant" | "union") {
                continue;
            }
            ours.insert((f.path.clone(), d.line, d.name, d.kind));
        }
    }
    let theirs: HashSet<Key> = ctags(root, &language_of)?
        .into_iter()
        .map(|(path, line, name, kind)| {
            let js = matches!(
                language_of.get(&path).map(String::as_str),
                Some("javascript" | "typescript")
            );
            let arrow = (path.clone(), line, name.clone(), "function".to_string());
            if js && kind == "variable" && ours.contains(&arrow) {
                arrow
            } else {
                (path, line, name, kind)
            }
        })
        .collect();
    let mut per: BTreeMap<String, Score> = BTreeMap::new();
    let mut disagreements = Vec::new();
    for k in ours.union(&theirs) {
        let lang = language_of.get(&k.0).cloned().unwrap_or_default();
        let s = per.entry(lang).or_default();
        match (ours.contains(k), theirs.contains(k)) {
            (true, true) => s.matched += 1,
            (false, true) => {
                s.missed += 1;
                disagreements.push(format!("{}:{} {} ({}) — missed", k.0, k.1, k.2, k.3));
            }
            (true, false) => {
                s.extra += 1;
                disagreements.push(format!("{}:{} {} ({}) — extra", k.0, k.1, k.2, k.3));
            }
            (false, false) => {}
        }
    }
    disagreements.sort();
    disagreements.truncate(50);
    let mut overall = Score::default();
    for s in per.values_mut() {
        finish(s);
        overall.matched += s.matched;
        overall.missed += s.missed;
        overall.extra += s.extra;
    }
    finish(&mut overall);
    Ok(Quality {
        languages: per,
        overall,
        disagreements,
    })
}

fn finish(s: &mut Score) {
    let r = |a: u64, b: u64| {
        if a + b == 0 {
            1.0
        } else {
            a as f64 / (a + b) as f64
        }
    };
    s.recall = crate::bench::round3(r(s.matched, s.missed));
    s.precision = crate::bench::round3(r(s.matched, s.extra));
}

/// ctags' definitions, kinds mapped onto ours; tags we do not compare are dropped.
fn ctags(
    root: &Path,
    language_of: &BTreeMap<String, String>,
) -> Result<HashSet<Key>, QualityError> {
    let out = Command::new("ctags")
        .args([
            "--output-format=json",
            "--fields=+nKzsZ",
            "-R",
            "-f",
            "-",
            ".",
        ])
        .current_dir(root)
        .output()
        .map_err(|e| {
            QualityError::Ctags(format!("cannot run ctags ({e}); install universal-ctags"))
        })?;
    if !out.status.success() {
        return Err(QualityError::Ctags(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let mut set = HashSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(tag) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let path = tag["path"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("./")
            .to_string();
        let Some(lang) = language_of.get(&path) else {
            continue;
        };
        let (Some(name), Some(line_no), Some(kind)) = (
            tag["name"].as_str(),
            tag["line"].as_u64(),
            tag["kind"].as_str(),
        ) else {
            continue;
        };
        let scope_kind = tag["scopeKind"].as_str().unwrap_or("");
        if let Some(ours) = map_kind(lang, kind, scope_kind) {
            set.insert((path, line_no, name.to_string(), ours.to_string()));
        }
    }
    Ok(set)
}

/// ctags kind (long name) → our kind, or `None` for tags not compared.
fn map_kind(language: &str, kind: &str, scope_kind: &str) -> Option<&'static str> {
    // Definitions inside functions are locals: neither side reports them.
    if matches!(scope_kind, "function" | "method" | "member" | "func") {
        return None;
    }
    Some(match (language, kind) {
        ("rust", "function") => "function",
        ("rust", "method") => "method",
        ("rust", "struct") => "struct",
        ("rust", "enum") => "enum",
        ("rust", "interface") => "trait",
        ("rust", "typedef") => "type",
        ("rust", "module") => "module",
        ("rust", "macro") => "macro",
        ("rust", "variable") => "variable",
        ("python", "class") => "class",
        ("python", "function") => "function",
        ("python", "member") => "method",
        ("python", "variable") if scope_kind.is_empty() => "variable",
        ("javascript" | "typescript", "function" | "generator") => "function",
        ("javascript" | "typescript", "class") => "class",
        ("javascript" | "typescript", "method") => "method",
        ("javascript" | "typescript", "variable" | "constant") if scope_kind.is_empty() => {
            "variable"
        }
        ("typescript", "interface") => "interface",
        ("typescript", "enum") => "enum",
        ("typescript", "namespace") => "module",
        ("typescript", "alias") => "type",
        ("go", "func") if scope_kind.is_empty() || scope_kind == "package" => "function",
        ("go", "func") => "method",
        ("go", "struct") => "struct",
        ("go", "interface") => "interface",
        ("go", "type" | "talias") => "type",
        ("go", "const") => "constant",
        ("go", "var") => "variable",
        _ => return None,
    })
}
