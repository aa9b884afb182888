//! One file → [`Analysis`]: definitions and imports from tree-sitter queries, plus the language
//! rules the queries cannot express (what is exported, what is a method, what is local).

use std::collections::HashSet;

use bitcoin::hashes::{sha256, Hash};
use tree_sitter::{Node, Parser, QueryCursor, StreamingIterator};

use super::language::Language;
use super::summary;
use crate::protocol::code_analysis::{Analysis, Definition, SCHEMA};

/// Longest signature kept, in characters.
const MAX_SIGNATURE: usize = 200;

/// Analyses `source` as the file at `path`. Never fails: unparseable code still gets a hash, a
/// line count and a text summary.
pub fn analyze(path: &str, source: &str) -> Analysis {
    analyze_as(path, Language::from_path(path), source)
}

/// Analyses `source` as `language` (inferred or named by the buyer), reporting it as `path`.
pub fn analyze_as(path: &str, language: Language, source: &str) -> Analysis {
    let (definitions, imports) = extract(language, source).unwrap_or_default();
    let summary = summary::build(language, source, &definitions, &imports);
    Analysis {
        schema: SCHEMA.to_string(),
        path: path.to_string(),
        language: language.name().to_string(),
        lines: source.lines().count() as u64,
        bytes: source.len() as u64,
        sha256: sha256::Hash::hash(source.as_bytes()).to_string(),
        definitions,
        imports,
        summary,
    }
}

fn extract(language: Language, source: &str) -> Option<(Vec<Definition>, Vec<String>)> {
    let grammar = language.grammar()?;
    let query = language.query()?;
    let mut parser = Parser::new();
    parser.set_language(&grammar).ok()?;
    let tree = parser.parse(source, None)?;
    let names = query.capture_names();
    let mut cursor = QueryCursor::new();
    let mut matches = cursor.matches(query, tree.root_node(), source.as_bytes());
    // Node id → (pattern index, position in `found`): a node matching several patterns (a Go
    // struct is also a type) takes the earliest pattern, which the query files list most specific first.
    let mut seen: std::collections::HashMap<usize, (usize, usize)> =
        std::collections::HashMap::new();
    let mut found: Vec<(usize, Definition)> = Vec::new();
    let mut imports: Vec<String> = Vec::new();
    let mut dunder_all: Option<HashSet<String>> = None;
    while let Some(m) = matches.next() {
        let (mut def, mut name, mut kind) = (None, None, None);
        for cap in m.captures() {
            let capture = names[cap.index as usize];
            if capture == "name" {
                name = Some(cap.node);
            } else if capture == "import" {
                let text = clean_import(language, text_of(cap.node, source));
                if !text.is_empty() && !imports.contains(&text) {
                    imports.push(text);
                }
            } else if let Some(k) = capture.strip_prefix("def.") {
                def = Some(cap.node);
                kind = Some(k);
            }
        }
        let (Some(def), Some(name), Some(kind)) = (def, name, kind) else {
            continue;
        };
        if let Some(&(pattern, at)) = seen.get(&def.id()) {
            if m.pattern_index < pattern {
                found[at].1.kind = refine_kind(language, def, kind).to_string();
                seen.insert(def.id(), (m.pattern_index, at));
            }
            continue;
        }
        if is_local(language, def) {
            continue;
        }
        let name_text = text_of(name, source).to_string();
        if language == Language::Python && name_text == "__all__" {
            dunder_all = Some(quoted_strings(text_of(def, source)));
        }
        let kind = refine_kind(language, def, kind);
        let definition = Definition {
            exported: is_exported(language, def, &name_text, source),
            signature: signature(language, def, source),
            line: name.start_position().row as u64 + 1,
            kind: kind.to_string(),
            name: name_text,
        };
        seen.insert(def.id(), (m.pattern_index, found.len()));
        found.push((name.start_byte(), definition));
    }
    if let Some(all) = dunder_all {
        // `__all__` is the module's own statement of what it exports.
        for (_, d) in found.iter_mut() {
            if d.kind != "method" {
                d.exported = all.contains(&d.name);
            }
        }
    }
    found.sort_by_key(|(at, _)| *at);
    Some((found.into_iter().map(|(_, d)| d).collect(), imports))
}

fn text_of<'s>(node: Node<'_>, source: &'s str) -> &'s str {
    source.get(node.byte_range()).unwrap_or("")
}

/// Inside a function body: a local, not part of the file's interface.
fn is_local(language: Language, def: Node<'_>) -> bool {
    let scopes = language.scope_kinds();
    let mut at = def.parent();
    while let Some(node) = at {
        if scopes.contains(&node.kind()) {
            return true;
        }
        at = node.parent();
    }
    false
}

/// Functions inside impl/trait/class bodies are methods.
fn refine_kind(language: Language, def: Node<'_>, kind: &'static str) -> &'static str {
    if kind != "function" {
        return kind;
    }
    let containers = language.container_kinds();
    let mut at = def.parent();
    while let Some(node) = at {
        if containers.contains(&node.kind()) {
            return "method";
        }
        at = node.parent();
    }
    kind
}

fn is_exported(language: Language, def: Node<'_>, name: &str, source: &str) -> bool {
    match language {
        Language::Rust => {
            if has_pub(def, source) {
                return true;
            }
            // Items of a trait are as visible as the trait.
            let mut at = def.parent();
            while let Some(node) = at {
                match node.kind() {
                    "trait_item" => return has_pub(node, source),
                    "declaration_list" => at = node.parent(),
                    _ => return false,
                }
            }
            false
        }
        Language::Python => !name.starts_with('_'),
        Language::Go => name.chars().next().is_some_and(char::is_uppercase),
        Language::JavaScript | Language::TypeScript | Language::Tsx => {
            if name.starts_with('#')
                || has_child_text(
                    def,
                    "accessibility_modifier",
                    &["private", "protected"],
                    source,
                )
            {
                return false;
            }
            let mut at = def.parent();
            while let Some(node) = at {
                if node.kind() == "export_statement" {
                    return true;
                }
                at = node.parent();
            }
            false
        }
        Language::Text => false,
    }
}

fn has_pub(node: Node<'_>, source: &str) -> bool {
    has_child_text(node, "visibility_modifier", &["pub"], source)
}

fn has_child_text(node: Node<'_>, kind: &str, texts: &[&str], source: &str) -> bool {
    let mut cursor = node.walk();
    let found = node
        .children(&mut cursor)
        .any(|c| c.kind() == kind && texts.contains(&text_of(c, source).trim()));
    found
}

/// The declaration up to its body, whitespace collapsed.
fn signature(language: Language, def: Node<'_>, source: &str) -> String {
    let start = def.start_byte();
    let body = def.child_by_field_name("body").or_else(|| {
        // `const f = (x) => { … }`: stop at the arrow function's body.
        def.child_by_field_name("value")
            .filter(|v| matches!(v.kind(), "arrow_function" | "function_expression"))
            .and_then(|v| v.child_by_field_name("body"))
    });
    let end = match body {
        Some(b) => b.start_byte(),
        None => {
            // No body: the first line.
            let text = text_of(def, source);
            start + text.find('\n').unwrap_or(text.len())
        }
    };
    let raw = source.get(start..end).unwrap_or("");
    let mut sig = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    if language == Language::Python {
        sig = sig.trim_end_matches(':').to_string();
    }
    let sig = sig.trim_end_matches(['{', '=']).trim_end().to_string();
    truncate(&sig, MAX_SIGNATURE)
}

fn clean_import(language: Language, text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match language {
        Language::Go => collapsed.trim_matches('"').to_string(),
        _ => collapsed,
    }
}

fn quoted_strings(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut rest = text;
    while let Some(open) = rest.find(['"', '\'']) {
        let quote = rest.as_bytes()[open] as char;
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            break;
        };
        out.insert(after[..close].to_string());
        rest = &after[close + 1..];
    }
    out
}

/// Cuts `s` to at most `max` characters, marking the cut.
pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(path: &str, src: &str) -> Vec<(String, String, u64, bool)> {
        analyze(path, src)
            .definitions
            .into_iter()
            .map(|d| (d.name, d.kind, d.line, d.exported))
            .collect()
    }

    fn d(name: &str, kind: &str, line: u64, exported: bool) -> (String, String, u64, bool) {
        (name.into(), kind.into(), line, exported)
    }

    #[test]
    fn rust() {
        let src = "//! A crate.\nuse std::io;\npub struct S { x: u8 }\nenum E { A }\nimpl S {\n    pub fn new() -> Self { S { x: 0 } }\n    fn private(&self) {}\n}\npub trait T {\n    fn required(&self);\n}\npub const C: u8 = 1;\nfn main() {\n    fn local() {}\n    let _ = 1;\n}\nmacro_rules! m { () => {} }\npub mod inner {}\n";
        assert_eq!(
            defs("lib.rs", src),
            vec![
                d("S", "struct", 3, true),
                d("E", "enum", 4, false),
                d("new", "method", 6, true),
                d("private", "method", 7, false),
                d("T", "trait", 9, true),
                d("required", "method", 10, true),
                d("C", "constant", 12, true),
                d("main", "function", 13, false),
                d("m", "macro", 17, false),
                d("inner", "module", 18, true),
            ]
        );
        let a = analyze("lib.rs", src);
        assert_eq!(a.imports, vec!["std::io"]);
        assert_eq!(a.language, "rust");
        let new = a.definitions.iter().find(|d| d.name == "new").expect("new");
        assert_eq!(new.signature, "pub fn new() -> Self");
        assert_eq!(a.summary[0], "A crate.");
    }

    #[test]
    fn python() {
        let src = "\"\"\"Tools.\"\"\"\nimport os\nfrom a.b import c\nimport x.y as z\nLIMIT = 3\n_hidden = 1\nclass Thing(Base):\n    def run(self, n: int) -> int:\n        def inner():\n            pass\n        return n\n    def _private(self):\n        pass\n@decorator\ndef helper():\n    pass\n";
        assert_eq!(
            defs("tools.py", src),
            vec![
                d("LIMIT", "variable", 5, true),
                d("_hidden", "variable", 6, false),
                d("Thing", "class", 7, true),
                d("run", "method", 8, true),
                d("_private", "method", 12, false),
                d("helper", "function", 15, true),
            ]
        );
        let a = analyze("tools.py", src);
        assert_eq!(a.imports, vec!["os", "a.b", "x.y"]);
        assert_eq!(a.definitions[3].signature, "def run(self, n: int) -> int");
        let with_all = "__all__ = ['b']\ndef a():\n    pass\ndef b():\n    pass\n";
        let exported: Vec<_> = analyze("m.py", with_all)
            .definitions
            .into_iter()
            .filter(|d| d.exported)
            .map(|d| d.name)
            .collect();
        assert_eq!(exported, vec!["b"]);
    }

    #[test]
    fn javascript_and_typescript() {
        let js = "import fs from 'fs';\nconst path = require('path');\nexport function a() {}\nfunction b() {}\nexport const c = () => 1;\nexport class K {\n  m() {}\n}\nlet v = 2;\nfunction outer() { const local = 1; }\n";
        assert_eq!(
            defs("x.js", js),
            vec![
                d("path", "variable", 2, false),
                d("a", "function", 3, true),
                d("b", "function", 4, false),
                d("c", "function", 5, true),
                d("K", "class", 6, true),
                d("m", "method", 7, true),
                d("v", "variable", 9, false),
                d("outer", "function", 10, false),
            ]
        );
        assert_eq!(analyze("x.js", js).imports, vec!["fs", "path"]);
        let ts = "import { X } from './x';\nexport interface I { f(): void }\nexport type T = number;\nenum E { A }\nexport class C {\n  private p(): void {}\n  public q(): number { return 1 }\n}\nexport function g(a: string): boolean { return true }\n";
        assert_eq!(
            defs("y.ts", ts),
            vec![
                d("I", "interface", 2, true),
                d("f", "method", 2, true),
                d("T", "type", 3, true),
                d("E", "enum", 4, false),
                d("C", "class", 5, true),
                d("p", "method", 6, false),
                d("q", "method", 7, true),
                d("g", "function", 9, true),
            ]
        );
        let g = analyze("y.ts", ts)
            .definitions
            .into_iter()
            .find(|d| d.name == "g")
            .expect("g");
        assert_eq!(g.signature, "function g(a: string): boolean");
        assert_eq!(
            analyze("z.tsx", "export const App = () => <div/>;\n").definitions[0].name,
            "App"
        );
    }

    #[test]
    fn go() {
        let src = "// Package p does things.\npackage p\n\nimport (\n\t\"fmt\"\n\tio \"io\"\n)\n\ntype Server struct{}\ntype reader interface{}\ntype ID string\nconst Max = 3\nvar debug = false\nfunc New() *Server { return nil }\nfunc (s *Server) Run() error { x := 1; _ = x; return nil }\n";
        assert_eq!(
            defs("p.go", src),
            vec![
                d("Server", "struct", 9, true),
                d("reader", "interface", 10, false),
                d("ID", "type", 11, true),
                d("Max", "constant", 12, true),
                d("debug", "variable", 13, false),
                d("New", "function", 14, true),
                d("Run", "method", 15, true),
            ]
        );
        let a = analyze("p.go", src);
        assert_eq!(a.imports, vec!["fmt", "io"]);
        assert_eq!(a.summary[0], "Package p does things.");
    }

    #[test]
    fn plain_text_and_broken_code() {
        let a = analyze("README.md", "# Title\n\nSome text.\n");
        assert_eq!(a.language, "text");
        assert!(a.definitions.is_empty());
        assert_eq!(a.lines, 3);
        // Syntax errors still yield what can be recovered, and never panic.
        let a = analyze("bad.rs", "pub fn ok() {}\nfn broken( {\n");
        assert!(a.definitions.iter().any(|d| d.name == "ok"));
        let a = analyze("empty.py", "");
        assert_eq!((a.lines, a.bytes), (0, 0));
    }

    #[test]
    fn deterministic() {
        let src = include_str!("analyze.rs");
        assert_eq!(analyze("analyze.rs", src), analyze("analyze.rs", src));
    }
}
