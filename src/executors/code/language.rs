//! Languages the analyzer understands, their pinned tree-sitter grammars and our queries.

use std::sync::OnceLock;

use tree_sitter::{Language as Grammar, Query};

/// A source language (or plain text for everything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// `.rs`
    Rust,
    /// `.py`, `.pyi`
    Python,
    /// `.js`, `.mjs`, `.cjs`, `.jsx`
    JavaScript,
    /// `.ts`, `.mts`, `.cts`
    TypeScript,
    /// `.tsx` (TypeScript with JSX)
    Tsx,
    /// `.go`
    Go,
    /// Anything else: summarised as text.
    Text,
}

/// Every language with a grammar, for tests and `doctor`. The order is the syntax probe's
/// tie-break (`infer.rs`): keep JavaScript before TypeScript and Go last.
pub const PARSED: [Language; 6] = [
    Language::Rust,
    Language::Python,
    Language::JavaScript,
    Language::TypeScript,
    Language::Tsx,
    Language::Go,
];

impl Language {
    /// By file extension.
    pub fn from_path(path: &str) -> Self {
        let ext = path
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "rs" => Self::Rust,
            "py" | "pyi" => Self::Python,
            "js" | "mjs" | "cjs" | "jsx" => Self::JavaScript,
            "ts" | "mts" | "cts" => Self::TypeScript,
            "tsx" => Self::Tsx,
            "go" => Self::Go,
            _ => Self::Text,
        }
    }

    /// Names the `lang` param takes (as [`Language::name`] writes them, plus `tsx`).
    pub const NAMES: [&'static str; 7] = [
        "rust",
        "python",
        "javascript",
        "typescript",
        "tsx",
        "go",
        "text",
    ];

    /// By name, as a buyer's `lang` param gives it (case-insensitive; `js`, `ts`, `py` too).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "rust" | "rs" => Self::Rust,
            "python" | "py" => Self::Python,
            "javascript" | "js" => Self::JavaScript,
            "typescript" | "ts" => Self::TypeScript,
            "tsx" => Self::Tsx,
            "go" | "golang" => Self::Go,
            "text" | "txt" => Self::Text,
            _ => return None,
        })
    }

    /// The name in analysis output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Python => "python",
            Self::JavaScript => "javascript",
            Self::TypeScript | Self::Tsx => "typescript",
            Self::Go => "go",
            Self::Text => "text",
        }
    }

    /// The tree-sitter grammar.
    pub fn grammar(self) -> Option<Grammar> {
        Some(match self {
            Self::Rust => tree_sitter_rust::LANGUAGE.into(),
            Self::Python => tree_sitter_python::LANGUAGE.into(),
            Self::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
            Self::TypeScript => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
            Self::Tsx => tree_sitter_typescript::LANGUAGE_TSX.into(),
            Self::Go => tree_sitter_go::LANGUAGE.into(),
            Self::Text => return None,
        })
    }

    fn query_source(self) -> Option<&'static str> {
        Some(match self {
            Self::Rust => include_str!("queries/rust.scm"),
            Self::Python => include_str!("queries/python.scm"),
            Self::JavaScript => include_str!("queries/javascript.scm"),
            Self::TypeScript | Self::Tsx => include_str!("queries/typescript.scm"),
            Self::Go => include_str!("queries/go.scm"),
            Self::Text => return None,
        })
    }

    /// The compiled definitions-and-imports query, built once per language.
    pub fn query(self) -> Option<&'static Query> {
        static CELLS: [OnceLock<Option<Query>>; 6] = [const { OnceLock::new() }; 6];
        let index = PARSED.iter().position(|l| *l == self)?;
        CELLS[index]
            .get_or_init(|| {
                let grammar = self.grammar()?;
                match Query::new(&grammar, self.query_source()?) {
                    Ok(q) => Some(q),
                    Err(e) => {
                        // A query that does not compile is a build defect; the test suite catches it.
                        tracing::error!("{} query does not compile: {e}", self.name());
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Node kinds whose bodies make a nested definition local (not module level).
    pub(super) fn scope_kinds(self) -> &'static [&'static str] {
        match self {
            Self::Rust => &["function_item", "closure_expression"],
            Self::Python => &["function_definition", "lambda"],
            Self::JavaScript | Self::TypeScript | Self::Tsx => &[
                "function_declaration",
                "function_expression",
                "arrow_function",
                "method_definition",
                "generator_function_declaration",
            ],
            Self::Go => &["function_declaration", "method_declaration", "func_literal"],
            Self::Text => &[],
        }
    }

    /// Node kinds that make a function a method.
    pub(super) fn container_kinds(self) -> &'static [&'static str] {
        match self {
            Self::Rust => &["impl_item", "trait_item"],
            Self::Python => &["class_definition"],
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grammar_loads_and_every_query_compiles() {
        for lang in PARSED {
            let grammar = lang.grammar().expect("grammar");
            let mut parser = tree_sitter::Parser::new();
            parser
                .set_language(&grammar)
                .expect("grammar ABI is supported");
            let source = lang.query_source().expect("query");
            if let Err(e) = Query::new(&grammar, source) {
                panic!("{} query: {e}", lang.name());
            }
            assert!(lang.query().is_some());
        }
    }

    #[test]
    fn extensions() {
        assert_eq!(Language::from_path("src/main.rs"), Language::Rust);
        assert_eq!(Language::from_path("a/b.PY"), Language::Python);
        assert_eq!(Language::from_path("x.tsx"), Language::Tsx);
        assert_eq!(Language::from_path("Makefile"), Language::Text);
        assert_eq!(Language::from_path("notes.md"), Language::Text);
    }
}
