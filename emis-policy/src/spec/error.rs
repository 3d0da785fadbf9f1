//! The one error of spec, site and ip-ranges reading, and how it is shown:
//! ``FILE:LINE:COLUMN: in `FIELD`: MESSAGE``, then the hint on an indented line.

use std::fmt;

use crate::capacity::CapacityError;

/// A spec, site or ip-ranges error, located as precisely as the input allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The file (`Source::name`), or the flag (`--site-net`).
    pub file: String,
    /// 1-based.
    pub line: Option<u32>,
    /// 1-based, in characters.
    pub column: Option<u32>,
    /// Where in the document: `rule[3].ports[1]`, `network "emis-n3".prefixes[0]`, or the flag's argument.
    pub field: Option<String>,
    pub message: String,
    pub hint: Option<String>,
    /// Set when the input does not fit the enforcer; `message` and `hint` are its text.
    pub capacity: Option<Box<CapacityError>>,
}

impl SpecError {
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            file: file.into(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
            hint: None,
            capacity: None,
        }
    }

    /// An input too large for the enforcer, blamed on `file`.
    pub(super) fn capacity(file: impl Into<String>, error: CapacityError) -> SpecError {
        SpecError {
            hint: error.hint().map(str::to_owned),
            capacity: Some(Box::new(error.clone())),
            ..SpecError::new(file, error.to_string())
        }
    }

    pub(super) fn with_field(mut self, field: impl Into<String>) -> SpecError {
        self.field = Some(field.into());
        self
    }

    pub(super) fn with_hint(mut self, hint: impl Into<String>) -> SpecError {
        self.hint = Some(hint.into());
        self
    }

    pub(super) fn at_offset(mut self, text: &str, offset: usize) -> SpecError {
        let (line, column) = line_col(text, offset);
        self.line = Some(line as u32);
        self.column = Some(column as u32);
        self
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "in `{field}`: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// 1-based line and character column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testutil::*;

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é = 1\nx", 3), (1, 3));
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn display_format() {
        let e = error(&BASE.replace("protocol = \"tcp\"", "protocol = \"icmp\""));
        assert_eq!(
            e.to_string(),
            "t.toml:10:12: in `rule[0].protocol`: unknown protocol `icmp`\n  hint: use \"tcp\" or \"udp\""
        );
        let e = SpecError::new("x", "boom");
        assert_eq!(e.to_string(), "x: boom");
    }
}
