//! The 10–20 line extractive summary: the file's own doc comment, its shape, then signatures.

use super::analyze::truncate;
use super::language::Language;
use crate::protocol::code_analysis::Definition;

const MIN_LINES: usize = 10;
const MAX_LINES: usize = 20;
const MAX_DOC_LINES: usize = 6;
const LINE_WIDTH: usize = 160;

/// Builds the summary. Files too small to fill ten lines get every line they have.
pub fn build(
    language: Language,
    source: &str,
    defs: &[Definition],
    imports: &[String],
) -> Vec<String> {
    let mut lines: Vec<String> = leading_doc(language, source);
    let exported = defs.iter().filter(|d| d.exported).count();
    let mut shape = format!(
        "{} file, {} lines, {} definitions ({exported} exported)",
        language.name(),
        source.lines().count(),
        defs.len()
    );
    if !imports.is_empty() {
        let shown: Vec<&str> = imports.iter().take(5).map(String::as_str).collect();
        let more = if imports.len() > 5 {
            format!(" and {} more", imports.len() - 5)
        } else {
            String::new()
        };
        shape.push_str(&format!("; imports {}{more}", shown.join(", ")));
    }
    lines.push(shape);
    // Exported definitions first: they are what the rest of the repository sees.
    for d in defs
        .iter()
        .filter(|d| d.exported)
        .chain(defs.iter().filter(|d| !d.exported))
    {
        if lines.len() >= MAX_LINES {
            break;
        }
        lines.push(format!("{} {}: {}", d.kind, d.name, d.signature));
    }
    if lines.len() < MIN_LINES {
        for raw in source.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if lines.len() >= MIN_LINES {
                break;
            }
            if !lines.iter().any(|l| l == raw) {
                lines.push(raw.to_string());
            }
        }
    }
    lines.truncate(MAX_LINES);
    lines
        .into_iter()
        .map(|l| truncate(&l, LINE_WIDTH))
        .collect()
}

/// The comment or docstring a file opens with, without its markers.
fn leading_doc(language: Language, source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = source.lines().map(str::trim).skip_while(|l| {
        l.starts_with("#!") || l.is_empty() || *l == "\"use strict\";" || *l == "'use strict';"
    });
    let strip = |l: &str, markers: &[&str]| -> String {
        let mut t = l;
        for m in markers {
            t = t.trim_start_matches(m);
        }
        t.trim().to_string()
    };
    match language {
        Language::Rust => {
            for l in lines.by_ref().take_while(|l| l.starts_with("//!")) {
                out.push(strip(l, &["//!"]));
            }
        }
        Language::Go => {
            for l in lines.by_ref().take_while(|l| l.starts_with("//")) {
                out.push(strip(l, &["//"]));
            }
        }
        Language::Python => {
            if let Some(first) = lines.next() {
                for quote in ["\"\"\"", "'''"] {
                    if let Some(rest) = first.strip_prefix(quote) {
                        if let Some(one_line) = rest.strip_suffix(quote) {
                            out.push(one_line.trim().to_string());
                        } else {
                            out.push(rest.trim().to_string());
                            for l in lines.by_ref() {
                                if let Some(end) = l.strip_suffix(quote) {
                                    out.push(end.trim().to_string());
                                    break;
                                }
                                out.push(l.to_string());
                            }
                        }
                    }
                }
            }
        }
        Language::JavaScript | Language::TypeScript | Language::Tsx => {
            let mut in_block = false;
            for l in lines.by_ref() {
                if in_block || l.starts_with("/*") {
                    in_block = !l.ends_with("*/");
                    out.push(strip(l.trim_end_matches("*/"), &["/**", "/*", "*"]));
                    if !in_block {
                        break;
                    }
                } else if l.starts_with("//") {
                    out.push(strip(l, &["//"]));
                } else {
                    break;
                }
            }
        }
        Language::Text => {
            out.extend(
                lines
                    .filter(|l| !l.is_empty())
                    .take(MAX_DOC_LINES)
                    .map(|l| strip(l, &["#"])),
            );
        }
    }
    out.retain(|l| !l.is_empty());
    out.truncate(MAX_DOC_LINES);
    out
}

#[cfg(test)]
mod tests {
    use crate::executors::code::analyze::analyze;

    #[test]
    fn between_ten_and_twenty_lines_when_the_file_allows() {
        let big: String = (0..40).map(|i| format!("pub fn f{i}() {{}}\n")).collect();
        let s = analyze("big.rs", &big).summary;
        assert_eq!(s.len(), 20);
        let small = "fn a() {}\nfn b() {}\n";
        let s = analyze("small.rs", small).summary;
        assert!(s.len() < 10 && s.len() >= 3, "{s:?}");
        let medium: String = (0..12).map(|i| format!("line {i}\n")).collect();
        assert_eq!(analyze("notes.txt", &medium).summary.len(), 10);
    }

    #[test]
    fn doc_comments_lead() {
        let js = "/**\n * Widgets.\n */\nexport function w() {}\n";
        assert_eq!(analyze("w.js", js).summary[0], "Widgets.");
        let py = "\"\"\"\nMulti\nline.\n\"\"\"\ndef f():\n    pass\n";
        let s = analyze("m.py", py).summary;
        assert_eq!(&s[..2], ["Multi", "line."]);
    }
}
