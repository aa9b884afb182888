//! The output of a code-file analysis job (kind 5960 → 6960): one file's language, definitions,
//! imports and an extractive summary. The repo-map coordinator folds these into a map.

use serde::{Deserialize, Serialize};

/// Schema tag written into every result, so readers can refuse what they do not understand.
pub const SCHEMA: &str = "pylon/code-analysis@1";

/// One file, analysed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analysis {
    /// [`SCHEMA`].
    pub schema: String,
    /// The file's path as given by the buyer.
    pub path: String,
    /// `rust`, `python`, `javascript`, `typescript`, `go`, or `text`.
    pub language: String,
    /// Line count.
    pub lines: u64,
    /// Byte count.
    pub bytes: u64,
    /// Hex sha256 of the content: buyers check it against the file they sent.
    pub sha256: String,
    /// Definitions in source order.
    pub definitions: Vec<Definition>,
    /// Imported modules/paths, in source order, without duplicates.
    pub imports: Vec<String>,
    /// 10–20 lines: doc comments, signatures, structure (fewer only for tiny files).
    pub summary: Vec<String>,
}

/// One definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// Its name.
    pub name: String,
    /// `function`, `method`, `class`, `struct`, `union`, `enum`, `trait`, `interface`, `type`,
    /// `constant`, `variable`, `module` or `macro`.
    pub kind: String,
    /// 1-based line of the name.
    pub line: u64,
    /// Visible outside its module (`pub`, `export`, a capitalised Go name, no leading `_`).
    pub exported: bool,
    /// The declaration up to its body, on one line.
    pub signature: String,
}

impl Analysis {
    /// Parses a result's content, refusing other schemas.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let a: Self =
            serde_json::from_str(json).map_err(|e| format!("not a code analysis: {e}"))?;
        if a.schema != SCHEMA {
            return Err(format!("unknown schema `{}`", a.schema));
        }
        Ok(a)
    }
}
