//! Errors of the configuration stage: a profile, site config or command line that does
//! not compile ([`PolicyError`]: file, line, message, hint), the [`Invalid`] values that
//! `Deserialize` impls raise, the [`LineIndex`] that places them, and [`read_config`],
//! the one way a config file is read (size and encoding checked before parsing).
//!
//! Everything that validates input (profile, site, compiler) reports through these, so
//! the CLI can print one form and exit with code 3.

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// A profile, site config or command line that does not compile. The CLI exits with
/// code 3 when it sees one.
// Rendered as `file:line: message (hint: ...)`. There is no "error: " prefix because the
// CLI adds one to every error it prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}{message}{}", location(.file.as_deref(), *.line), hint_suffix(.hint.as_deref()))]
pub struct PolicyError {
    /// The file at fault (None: the command line or a built-in default).
    pub file: Option<PathBuf>,
    /// 1-based line in `file`, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) in `file`, when known.
    pub column: Option<usize>,
    /// What is wrong. Lowercase, with the offending value quoted.
    pub message: String,
    /// The likely fix.
    pub hint: Option<String>,
}

impl PolicyError {
    /// An error with no position yet.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            file: None,
            line: None,
            column: None,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds the likely fix.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Places the error in `file` at the byte range `span` of its text (indexed by
    /// `lines`). An empty index (built-in defaults, the command line) gives no line.
    pub fn at(mut self, file: Option<&Path>, lines: &LineIndex, span: Range<usize>) -> Self {
        self.file = file.map(Path::to_path_buf);
        if let Some((line, column)) = lines.position(span.start) {
            self.line = Some(line);
            self.column = Some(column);
        }
        self
    }

    /// Converts a TOML/serde error of `file`'s `text`. Messages that our own
    /// deserializers produced carry their hint after [`HINT_MARK`]; serde's own
    /// (unknown field, missing field, wrong type) get a generic one.
    pub fn from_toml(file: &Path, text: &str, err: &toml::de::Error) -> Self {
        let raw = err.message().trim_end();
        // toml gives some syntax errors (a control character in a comment, found by
        // fuzzing) no description at all; the position is still right.
        let raw = if raw.is_empty() {
            "invalid TOML here (an unexpected character or token)"
        } else {
            raw
        };
        let mut parts = raw.split(HINT_MARK);
        let message = parts.next().unwrap_or(raw);
        let hint = parts.next().unwrap_or_else(|| generic_hint(raw));
        let own_span = parts.next().and_then(|s| {
            let (start, end) = s.split_once('-')?;
            Some(start.parse().ok()?..end.parse().ok()?)
        });
        let lines = LineIndex::new(text);
        let error = PolicyError::new(message).hint(hint);
        match own_span.or_else(|| err.span()) {
            Some(span) => error.at(Some(file), &lines, span),
            None => error.at(Some(file), &LineIndex::default(), 0..0),
        }
    }
}

/// A value that does not validate: what is wrong and the likely fix. `Deserialize`
/// impls turn it into a serde error with [`Invalid::de`] or [`Invalid::de_at`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// What is wrong, with the value quoted.
    pub message: String,
    /// The likely fix.
    pub hint: String,
}

impl Invalid {
    /// An invalid value.
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// As a serde error: toml places it at the value being deserialized.
    pub fn de<E: serde::de::Error>(self) -> E {
        de_error(self.message, self.hint)
    }

    /// As a serde error placed at `span`. For elements of arrays: toml gives their
    /// errors the span of the whole array, which may start lines earlier.
    pub fn de_at<E: serde::de::Error>(self, span: Range<usize>) -> E {
        E::custom(format!(
            "{}{HINT_MARK}{}{HINT_MARK}{}-{}",
            self.message, self.hint, span.start, span.end
        ))
    }
}

/// Separates message, hint and (optionally) span in errors raised inside `Deserialize`
/// impls. serde only carries one string, so they ride along in it and
/// [`PolicyError::from_toml`] splits them off again.
const HINT_MARK: char = '\u{1f}';

/// A serde error with a hint, for `Deserialize` impls of profile and site values.
pub fn de_error<E: serde::de::Error>(message: impl fmt::Display, hint: impl fmt::Display) -> E {
    E::custom(format!("{message}{HINT_MARK}{hint}"))
}

fn generic_hint(message: &str) -> &'static str {
    if message.starts_with("unknown field") {
        "unknown fields are errors so that a typo cannot loosen the policy; the schema is in profiles/README.md"
    } else if message.starts_with("missing field") {
        "the schema is in profiles/README.md"
    } else if message.starts_with("unknown variant") {
        "use one of the listed values"
    } else {
        "check the TOML syntax and the schema in profiles/README.md"
    }
}

/// Byte offset -> (line, column) for one file's text. The default (empty) index knows
/// no positions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineIndex {
    text: String,
}

impl LineIndex {
    /// Indexes `text`.
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_string(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> Option<(usize, usize)> {
        if self.text.is_empty() {
            return None;
        }
        let before = self.text.get(..offset.min(self.text.len()))?;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Some((
            before.matches('\n').count() + 1,
            before[line_start..].chars().count() + 1,
        ))
    }
}

/// Largest site config or profile accepted, in bytes. The real ones are a few KiB; the
/// limit keeps a wrong path (a log, a device) from being read whole into memory.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a config file (`what`: "site config" or "profile") as UTF-8 text of at most
/// [`MAX_CONFIG_BYTES`]. A file that is too big, or not UTF-8 (the error gives the line
/// of the first bad byte), is rejected before any parsing.
pub fn read_config(path: &Path, what: &str, hint: &str) -> Result<String, PolicyError> {
    use std::io::Read as _;
    let cannot = |e: &dyn fmt::Display| {
        PolicyError::new(format!("cannot read {what} \"{}\": {e}", path.display())).hint(hint)
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| cannot(&e))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(PolicyError::new(format!(
            "{what} \"{}\" is larger than {} bytes",
            path.display(),
            MAX_CONFIG_BYTES
        ))
        .hint("a config file is a few KiB of TOML; check the path"));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..valid].iter().filter(|b| **b == b'\n').count() + 1;
        let mut error = PolicyError::new(format!(
            "{what} is not UTF-8 text: byte 0x{:02x} at offset {valid} is invalid",
            bytes[valid]
        ))
        .hint("save the file as UTF-8");
        error.file = Some(path.to_path_buf());
        error.line = Some(line);
        error
    })
}

/// `file:line: ` (or `file: `, or nothing) before a message.
fn location(file: Option<&Path>, line: Option<usize>) -> String {
    match (file, line) {
        (Some(file), Some(line)) => format!("{}:{line}: ", file.display()),
        (Some(file), None) => format!("{}: ", file.display()),
        (None, _) => String::new(),
    }
}

/// ` (hint: ...)` after a message, when there is one.
fn hint_suffix(hint: Option<&str>) -> String {
    hint.map(|h| format!(" (hint: {h})")).unwrap_or_default()
}
