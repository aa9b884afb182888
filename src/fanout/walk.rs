//! Which files of a repository get mapped: `.gitignore` respected, binaries, vendored trees and
//! oversized files skipped with a reason, `--include`/`--exclude` globs applied.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::WalkBuilder;
use serde::Serialize;

use crate::executors::code::MAX_FILE_BYTES;

/// Directories never mapped: other people's code and build output.
const VENDORED: [&str; 10] = [
    "node_modules",
    "vendor",
    "third_party",
    "target",
    "dist",
    "build",
    ".git",
    "__pycache__",
    ".venv",
    "venv",
];

/// A file to map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the root, with `/` separators.
    pub path: String,
    /// UTF-8 content.
    pub content: String,
}

/// A file left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Relative path.
    pub path: String,
    /// `binary`, `too large (N bytes)`, `vendored`, `unreadable: …`.
    pub reason: String,
}

/// Errors walking.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A glob does not parse.
    #[error("bad glob `{0}`: {1}")]
    Glob(String, String),
    /// The root is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
}

/// Collects the files under `root`, sorted by path (so runs are deterministic).
pub fn collect(
    root: &Path,
    include: &[String],
    exclude: &[String],
) -> Result<(Vec<SourceFile>, Vec<Skipped>), WalkError> {
    if !root.is_dir() {
        return Err(WalkError::NotADirectory(root.to_path_buf()));
    }
    // Globs filter what .gitignore lets through (ignore's overrides would re-admit ignored files).
    let globs = |list: &[String]| -> Result<GlobSet, WalkError> {
        let mut b = GlobSetBuilder::new();
        for g in list {
            b.add(Glob::new(g).map_err(|e| WalkError::Glob(g.clone(), e.to_string()))?);
        }
        b.build()
            .map_err(|e| WalkError::Glob("(all)".into(), e.to_string()))
    };
    let (include_set, exclude_set) = (globs(include)?, globs(exclude)?);
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let walker = WalkBuilder::new(root)
        .hidden(true)
        .git_ignore(true)
        .git_exclude(true)
        // Respect .gitignore even outside a git checkout (a downloaded tarball, a fixture).
        .require_git(false)
        .sort_by_file_path(|a, b| a.cmp(b))
        .filter_entry(|e| {
            !(e.file_type().is_some_and(|t| t.is_dir())
                && VENDORED.contains(&e.file_name().to_string_lossy().as_ref()))
        })
        .build();
    for entry in walker.flatten() {
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap_or(entry.path())
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        let matches = |set: &GlobSet| set.is_match(&rel) || set.is_match(name);
        if (!include.is_empty() && !matches(&include_set)) || matches(&exclude_set) {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        if size as usize > MAX_FILE_BYTES {
            skipped.push(Skipped {
                path: rel,
                reason: format!("too large ({size} bytes; limit {MAX_FILE_BYTES})"),
            });
            continue;
        }
        match std::fs::read(entry.path()) {
            Err(e) => skipped.push(Skipped {
                path: rel,
                reason: format!("unreadable: {e}"),
            }),
            Ok(bytes) if bytes.iter().take(8192).any(|b| *b == 0) => skipped.push(Skipped {
                path: rel,
                reason: "binary".into(),
            }),
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(content) => files.push(SourceFile { path: rel, content }),
                Err(_) => skipped.push(Skipped {
                    path: rel,
                    reason: "binary (not UTF-8)".into(),
                }),
            },
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((files, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respects_gitignore_globs_and_skips_with_reasons() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let write = |p: &str, data: &[u8]| {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, data).expect("write");
        };
        write(".gitignore", b"ignored.rs\nout/\n");
        write("src/main.rs", b"fn main() {}\n");
        write("src/lib.py", b"def f(): pass\n");
        write("ignored.rs", b"fn x() {}\n");
        write("out/gen.rs", b"fn y() {}\n");
        write("node_modules/dep/index.js", b"module.exports = 1;\n");
        write("img.png", &[0x89, b'P', b'N', b'G', 0, 0, 1]);
        write("big.txt", &vec![b'a'; MAX_FILE_BYTES + 1]);
        let (files, skipped) = collect(root, &[], &[]).expect("walk");
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["src/lib.py", "src/main.rs"],
            "hidden, ignored and vendored files are left out"
        );
        let reasons: Vec<(&str, &str)> = skipped
            .iter()
            .map(|s| (s.path.as_str(), s.reason.as_str()))
            .collect();
        assert!(reasons
            .iter()
            .any(|(p, r)| *p == "img.png" && r.starts_with("binary")));
        assert!(reasons
            .iter()
            .any(|(p, r)| *p == "big.txt" && r.starts_with("too large")));

        let (files, _) = collect(root, &["*.rs".into()], &[]).expect("walk");
        assert_eq!(
            files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            vec!["src/main.rs"]
        );
        let (files, _) = collect(root, &[], &["src/*.py".into()]).expect("walk");
        assert!(files.iter().all(|f| !f.path.ends_with(".py")));
        assert!(collect(&root.join("src/main.rs"), &[], &[]).is_err());
        assert!(collect(root, &["[".into()], &[]).is_err());
    }
}
