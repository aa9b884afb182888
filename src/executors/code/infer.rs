//! Which language a file is when its path does not say: a generic NIP-90 client sends the code
//! and nothing else, and analysing Rust as plain text (0 definitions) is a wrong answer, not a
//! cautious one.
//!
//! In order: the `lang` param, the `path` extension, a shebang line, then a syntax probe — the
//! file is parsed with every grammar and the one that parses it with the fewest errors wins,
//! as long as almost all of the tree is sound. Otherwise it is text.

use tree_sitter::{Node, Parser};

use super::language::{Language, PARSED};

/// At most this share of a tree's nodes may be errors for the probe to name its language.
const MAX_ERROR_SHARE: f64 = 0.02;

/// The language to analyse `source` as. `Err` names an unknown `lang` param.
pub fn language(path: Option<&str>, lang: Option<&str>, source: &str) -> Result<Language, String> {
    if let Some(name) = lang {
        return Language::from_name(name).ok_or_else(|| {
            format!(
                "unknown lang `{name}`: use one of {}",
                Language::NAMES.join(", ")
            )
        });
    }
    if let Some(l) = path
        .map(Language::from_path)
        .filter(|l| *l != Language::Text)
    {
        return Ok(l);
    }
    if let Some(l) = shebang(source) {
        return Ok(l);
    }
    if path.is_some_and(|p| p.rsplit('/').next().is_some_and(|name| name.contains('.'))) {
        // An extension we do not parse (`notes.md`, `data.csv`) is a statement: it is text.
        return Ok(Language::Text);
    }
    Ok(probe(source).unwrap_or(Language::Text))
}

fn shebang(source: &str) -> Option<Language> {
    let line = source.lines().next()?.strip_prefix("#!")?;
    // `#!/usr/bin/env -S deno run` → "deno"; `#!/usr/bin/python3` → "python3".
    let program = line
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .map(|w| w.rsplit('/').next().unwrap_or(w))
        .find(|w| *w != "env")?;
    match program.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.') {
        "python" | "pypy" => Some(Language::Python),
        "node" | "nodejs" => Some(Language::JavaScript),
        "deno" | "ts-node" | "tsx" | "bun" => Some(Language::TypeScript),
        "rust-script" => Some(Language::Rust),
        _ => None,
    }
}

fn probe(source: &str) -> Option<Language> {
    if source.trim().is_empty() {
        return None;
    }
    // On a tie (a snippet valid in several languages) the first in `PARSED` wins: TypeScript
    // after JavaScript (every JavaScript file is TypeScript too), Go last, since its grammar
    // accepts bare statements that are valid elsewhere.
    let mut best: Option<(Language, usize)> = None;
    for lang in PARSED {
        let Some((errors, nodes)) = errors_in(lang, source) else {
            continue;
        };
        if nodes == 0 || errors as f64 > nodes as f64 * MAX_ERROR_SHARE {
            continue;
        }
        if best.is_none_or(|(_, e)| errors < e) {
            best = Some((lang, errors));
        }
    }
    best.map(|(lang, _)| lang)
}

/// (error or missing nodes, all nodes) of `source` parsed as `lang`.
fn errors_in(lang: Language, source: &str) -> Option<(usize, usize)> {
    let mut parser = Parser::new();
    parser.set_language(&lang.grammar()?).ok()?;
    let tree = parser.parse(source, None)?;
    let (mut errors, mut nodes) = (0, 0);
    let mut stack: Vec<Node> = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        nodes += 1;
        if node.is_error() || node.is_missing() {
            errors += 1;
        }
        let mut cursor = node.walk();
        stack.extend(node.children(&mut cursor));
    }
    Some((errors, nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUST: &str = "use std::fmt;\n\npub struct Point { x: i32 }\n\nimpl Point {\n    pub fn new() -> Self { Point { x: 0 } }\n}\n";
    const PYTHON: &str =
        "import os\n\nclass Store:\n    def get(self, key):\n        return os.environ.get(key)\n";
    const JS: &str = "const fs = require('fs');\nfunction read(p) {\n  return fs.readFileSync(p, 'utf8');\n}\nmodule.exports = { read };\n";
    const TS: &str = "interface User { name: string; age: number }\nexport function greet(u: User): string {\n  return `hi ${u.name}`;\n}\n";
    const GO: &str = "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n";

    #[test]
    fn code_without_a_path_is_recognised_by_its_syntax() {
        for (source, want) in [
            (RUST, Language::Rust),
            (PYTHON, Language::Python),
            (JS, Language::JavaScript),
            (TS, Language::TypeScript),
            (GO, Language::Go),
        ] {
            assert_eq!(language(None, None, source), Ok(want), "{source}");
        }
    }

    #[test]
    fn prose_and_empty_input_are_text() {
        let prose = "This is a note about the meeting. We agreed on three things, and then\n\
                     we went home; nothing here is code (really!).\n";
        assert_eq!(language(None, None, prose), Ok(Language::Text));
        assert_eq!(language(None, None, ""), Ok(Language::Text));
    }

    #[test]
    fn the_lang_param_then_the_path_then_a_shebang_decide_first() {
        assert_eq!(
            language(Some("a.py"), Some("rust"), RUST),
            Ok(Language::Rust)
        );
        assert_eq!(language(Some("lib.rs"), None, PYTHON), Ok(Language::Rust));
        assert_eq!(language(Some("notes.md"), None, RUST), Ok(Language::Text));
        assert_eq!(
            language(Some("run"), None, "#!/usr/bin/env python3\nprint(1)\n"),
            Ok(Language::Python)
        );
        assert_eq!(
            language(None, None, "#!/usr/bin/env -S deno run\nconsole.log(1)\n"),
            Ok(Language::TypeScript)
        );
        let err = language(None, Some("cobol"), RUST).expect_err("unknown");
        assert!(
            err.contains("unknown lang `cobol`") && err.contains("rust"),
            "{err}"
        );
    }
}
