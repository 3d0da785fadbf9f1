//! A TOML value tree that keeps the span of every key and value, and the typed readers
//! (`want_str`, `Table::require`, ...) that turn a wrong value into a located [`SpecError`].
//! Built from toml_edit's parsed document (toml::Value keeps no spans).

use std::collections::HashMap;
use std::ops::Range;

use ipnet::IpNet;

use super::error::{line_col, SpecError};
use super::Source;

pub(super) type Span = Range<usize>;

/// A value and where it is in the text.
#[derive(Debug)]
pub(super) struct Spanned<T> {
    pub(super) value: T,
    pub(super) span: Span,
}

impl<T> Spanned<T> {
    pub(super) fn get_ref(&self) -> &T {
        &self.value
    }

    pub(super) fn span(&self) -> Span {
        self.span.clone()
    }
}

#[derive(Debug)]
pub(super) enum Val {
    Str(String),
    Int(i64),
    Float,
    Bool(bool),
    Datetime,
    Array(Vec<Spanned<Val>>),
    Table(Vec<(Key, Spanned<Val>)>),
}

impl Val {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float => "a float",
            Val::Bool(_) => "a boolean",
            Val::Datetime => "a date-time",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
        }
    }
}

#[derive(Debug)]
pub(super) struct Key {
    pub(super) name: String,
    pub(super) span: Option<Span>,
}

impl Key {
    pub(super) fn new(name: &str, key: Option<&toml_edit::Key>) -> Key {
        Key {
            name: name.to_owned(),
            span: key.and_then(toml_edit::Key::span),
        }
    }
}

// A value without a span of its own (a table implied by `[a.b]` or `a.b = 1`) takes its
// key's, else `fallback`: the span of what holds it.

pub(super) fn toml_entries(table: &toml_edit::Table, span: &Span) -> Vec<(Key, Spanned<Val>)> {
    table
        .iter()
        .map(|(name, item)| {
            let key = Key::new(name, table.key(name));
            let value = toml_item(item, key.span.as_ref().unwrap_or(span));
            (key, value)
        })
        .collect()
}

pub(super) fn toml_table(table: &toml_edit::Table, fallback: &Span) -> Spanned<Val> {
    let span = table.span().unwrap_or_else(|| fallback.clone());
    Spanned {
        value: Val::Table(toml_entries(table, &span)),
        span,
    }
}

pub(super) fn toml_item(item: &toml_edit::Item, fallback: &Span) -> Spanned<Val> {
    match item {
        toml_edit::Item::Value(value) => toml_value(value, fallback),
        toml_edit::Item::Table(table) => toml_table(table, fallback),
        toml_edit::Item::ArrayOfTables(tables) => {
            let span = tables.span().unwrap_or_else(|| fallback.clone());
            Spanned {
                value: Val::Array(tables.iter().map(|t| toml_table(t, &span)).collect()),
                span,
            }
        }
        // Never in a parsed document (`Table::iter` skips it).
        toml_edit::Item::None => Spanned {
            value: Val::Table(Vec::new()),
            span: fallback.clone(),
        },
    }
}

pub(super) fn toml_value(value: &toml_edit::Value, fallback: &Span) -> Spanned<Val> {
    use toml_edit::Value as V;
    let span = value.span().unwrap_or_else(|| fallback.clone());
    let value = match value {
        V::String(s) => Val::Str(s.value().clone()),
        V::Integer(i) => Val::Int(*i.value()),
        V::Float(_) => Val::Float,
        V::Boolean(b) => Val::Bool(*b.value()),
        V::Datetime(_) => Val::Datetime,
        V::Array(items) => Val::Array(items.iter().map(|v| toml_value(v, &span)).collect()),
        V::InlineTable(table) => Val::Table(
            table
                .iter()
                .map(|(name, v)| {
                    let key = Key::new(name, table.key(name));
                    let value = toml_value(v, key.span.as_ref().unwrap_or(&span));
                    (key, value)
                })
                .collect(),
        ),
    };
    Spanned { value, span }
}

/// A source being read: makes located errors.
pub(super) struct Doc<'a> {
    pub(super) name: &'a str,
    pub(super) text: &'a str,
}

impl<'a> Doc<'a> {
    pub(super) fn new(source: &'a Source) -> Doc<'a> {
        Doc {
            name: &source.name,
            text: &source.text,
        }
    }

    pub(super) fn error(
        &self,
        span: Option<&Span>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> SpecError {
        self.locate(SpecError::new(self.name, message).with_field(field), span)
    }

    /// `e` with the line and column of `span`, when there is one.
    pub(super) fn locate(&self, e: SpecError, span: Option<&Span>) -> SpecError {
        match span {
            Some(span) => e.at_offset(self.text, span.start),
            None => e,
        }
    }

    pub(super) fn line(&self, span: &Span) -> usize {
        line_col(self.text, span.start).0
    }

    pub(super) fn parse(&self) -> Result<Vec<(Key, Spanned<Val>)>, SpecError> {
        match toml_edit::ImDocument::parse(self.text) {
            Ok(document) => Ok(toml_entries(document.as_table(), &(0..0))),
            Err(e) => {
                let mut err =
                    SpecError::new(self.name, format!("TOML syntax: {}", e.message().trim()));
                if let Some(span) = e.span() {
                    err = err.at_offset(self.text, span.start);
                    err.field = guess_field(self.text, span.start);
                }
                Err(err)
            }
        }
    }
}

/// For a TOML syntax error: the table header and key in force at `offset`, read line by line.
pub(super) fn guess_field(text: &str, offset: usize) -> Option<String> {
    let end = text[offset.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |i| offset + i);
    let mut counts: HashMap<String, usize> = HashMap::new();
    let (mut table, mut key): (Option<String>, Option<String>) = (None, None);
    for line in text.get(..end)?.lines() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or("").trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            table = Some(format!("{name}[{n}]"));
            *n += 1;
            key = None;
        } else if let Some(rest) = line.strip_prefix('[') {
            table = Some(rest.split(']').next().unwrap_or("").trim().to_owned());
            key = None;
        } else if let Some((k, _)) = line.split_once('=') {
            let k = k.trim();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                key = Some(k.to_owned());
            }
        }
    }
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (t, k) => t.or(k),
    }
}

/// A table being read, with its field path.
pub(super) struct Table<'a> {
    pub(super) doc: &'a Doc<'a>,
    pub(super) path: String,
    pub(super) span: Option<Span>,
    pub(super) entries: &'a [(Key, Spanned<Val>)],
}

impl<'a> Table<'a> {
    pub(super) fn sub(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn deny_unknown(&self, allowed: &[&str]) -> Result<(), SpecError> {
        for (key, _) in self.entries {
            if !allowed.contains(&key.name.as_str()) {
                return Err(self
                    .doc
                    .error(
                        key.span.as_ref(),
                        self.sub(&key.name),
                        format!("unknown key `{}`", key.name),
                    )
                    .with_hint(format!("the keys allowed here are: {}", allowed.join(", "))));
            }
        }
        Ok(())
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Spanned<Val>> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub(super) fn require(&self, key: &str) -> Result<&'a Spanned<Val>, SpecError> {
        self.get(key).ok_or_else(|| {
            self.doc.error(
                self.span.as_ref(),
                self.sub(key),
                format!("missing key `{key}`"),
            )
        })
    }

    /// The `[[key]]` sections; none when the key is absent.
    pub(super) fn tables(&self, key: &str) -> Result<Vec<Table<'a>>, SpecError> {
        match self.get(key) {
            Some(v) => want_tables(self.doc, v, &self.sub(key)),
            None => Ok(Vec::new()),
        }
    }

    pub(super) fn str(&self, key: &str) -> Result<&'a str, SpecError> {
        want_str(self.doc, self.require(key)?, &self.sub(key))
    }

    pub(super) fn opt_str(&self, key: &str) -> Result<Option<&'a str>, SpecError> {
        self.get(key)
            .map(|v| want_str(self.doc, v, &self.sub(key)))
            .transpose()
    }
}

pub(super) fn type_error(doc: &Doc, v: &Spanned<Val>, field: &str, expected: &str) -> SpecError {
    doc.error(
        Some(&v.span()),
        field,
        format!("expected {expected}, found {}", v.get_ref().kind()),
    )
}

pub(super) fn want_str<'v>(
    doc: &Doc,
    v: &'v Spanned<Val>,
    field: &str,
) -> Result<&'v str, SpecError> {
    match v.get_ref() {
        Val::Str(s) => Ok(s),
        _ => Err(type_error(doc, v, field, "a string")),
    }
}

pub(super) fn want_array<'v>(
    doc: &Doc,
    v: &'v Spanned<Val>,
    field: &str,
) -> Result<&'v [Spanned<Val>], SpecError> {
    match v.get_ref() {
        Val::Array(items) => Ok(items),
        _ => Err(type_error(doc, v, field, "an array")),
    }
}

pub(super) fn want_table<'v>(
    doc: &'v Doc<'v>,
    v: &'v Spanned<Val>,
    field: String,
) -> Result<Table<'v>, SpecError> {
    match v.get_ref() {
        Val::Table(entries) => Ok(Table {
            doc,
            path: field,
            span: Some(v.span()),
            entries,
        }),
        _ => Err(type_error(doc, v, &field, "a table")),
    }
}

/// `[[name]]` sections: an array whose items are tables.
pub(super) fn want_tables<'v>(
    doc: &'v Doc<'v>,
    v: &'v Spanned<Val>,
    field: &str,
) -> Result<Vec<Table<'v>>, SpecError> {
    let hint = format!("write each entry as a [[{field}]] section");
    let items = want_array(doc, v, field).map_err(|e| e.with_hint(hint.clone()))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| want_table(doc, item, format!("{field}[{i}]")))
        .collect()
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(super) fn want_name<'v>(table: &Table<'v>, key: &str) -> Result<(&'v str, Span), SpecError> {
    let v = table.require(key)?;
    let name = want_str(table.doc, v, &table.sub(key))?;
    if !valid_name(name) {
        return Err(table
            .doc
            .error(
                Some(&v.span()),
                table.sub(key),
                format!("invalid {key} `{name}`"),
            )
            .with_hint("use lowercase letters, digits and `-` only"));
    }
    Ok((name, v.span()))
}

/// A name that must be unique among `seen` (which records it with its span).
pub(super) fn unique_name<'v>(
    table: &Table<'v>,
    key: &str,
    what: &str,
    seen: &mut HashMap<String, Span>,
) -> Result<&'v str, SpecError> {
    let (name, span) = want_name(table, key)?;
    if let Some(first) = seen.get(name) {
        return Err(table
            .doc
            .error(
                Some(&span),
                table.sub(key),
                format!("duplicate {what} {key} `{name}`"),
            )
            .with_hint(format!(
                "{what} \"{name}\" is already defined at line {}",
                table.doc.line(first)
            )));
    }
    seen.insert(name.to_owned(), span);
    Ok(name)
}

/// Parses a prefix; host bits must be zero.
pub(super) fn parse_cidr(s: &str) -> Result<IpNet, (String, String)> {
    match s.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => Ok(net),
        Ok(net) => Err((
            format!("`{s}` has host bits set"),
            format!("did you mean {}?", net.trunc()),
        )),
        Err(_) => {
            let hint = match s.trim().parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) => {
                    format!("write a single address with its length: {a}/32")
                }
                Ok(std::net::IpAddr::V6(a)) => {
                    format!("write a single address with its length: {a}/128")
                }
                Err(_) => {
                    "expected an IPv4 or IPv6 prefix such as 10.207.112.0/22 or 2001:db8::/32"
                        .to_owned()
                }
            };
            Err((format!("invalid prefix `{s}`"), hint))
        }
    }
}

pub(super) fn want_cidr(doc: &Doc, v: &Spanned<Val>, field: &str) -> Result<IpNet, SpecError> {
    let s = want_str(doc, v, field)?;
    parse_cidr(s)
        .map_err(|(message, hint)| doc.error(Some(&v.span()), field, message).with_hint(hint))
}

#[cfg(test)]
mod tests {
    use crate::spec::testutil::*;

    #[test]
    fn syntax_error() {
        let text = BASE.replace("ports = [443, \"8000-8010\"]", "ports = [443,, 80]");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, ", 80]"),
            "rule[0].ports",
            "TOML syntax",
        );
        let text = format!("{BASE}[[rule]]\nslug = \"b\"\nslug = \"c\"\n");
        let e = error(&text);
        assert_eq!(e.line, Some(17), "{e}");
        assert_eq!(e.field.as_deref(), Some("rule[1].slug"));
    }

    #[test]
    fn unknown_keys() {
        let text = BASE.replace(
            "direction = \"outbound\"",
            "direction = \"outbound\"\nprot = \"tcp\"",
        );
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, "prot "),
            "rule[0].prot",
            "unknown key `prot`",
        );
        assert!(e.hint.unwrap().contains("slug"));

        let text = format!("{BASE}\n[site]\nlan = 1\n");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "site"),
            "site",
            "unknown key `site`",
        );

        let text = BASE.replace("description = \"second\"", "descr = \"second\"");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "descr "),
            "network \"n3\".prefixes[1].descr",
            "unknown key",
        );
    }

    /// Tables implied by dotted keys or `[a.b]` headers have no span of their own: errors
    /// inside them point at their keys.
    #[test]
    fn implied_tables_are_located() {
        let text = format!("{BASE}[site.roles]\nlan = 1\n");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "site"),
            "site",
            "unknown key `site`",
        );
        let text = "roles.lan = [\"192.168.10.0/24\"]\nroles.wifi = [\"10.9.0.0/16\"]\n";
        let e = load_with_site(BASE, &site_file(text)).unwrap_err();
        assert_err(
            &e,
            "site.toml",
            pos(text, "wifi"),
            "roles.wifi",
            "unknown site role `wifi`",
        );
        let text = "roles.lan = [\"192.168.10.0/24\"]\n";
        let policy = load_with_site(BASE, &site_file(text)).unwrap();
        assert_eq!(
            policy.role(Role::LAN),
            Some([ip("192.168.10.0/24")].as_slice())
        );
        let text = BASE.replace(
            "description = \"second\"",
            "description = \"second\", x.y = 1",
        );
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "x.y"),
            "network \"n3\".prefixes[1].x",
            "unknown key `x`",
        );
        let text = "[roles.lan]\nx = 1\n";
        let e = load_with_site(BASE, &site_file(text)).unwrap_err();
        assert_err(
            &e,
            "site.toml",
            pos(text, "[roles.lan]"),
            "roles.lan",
            "expected an array, found a table",
        );
    }

    #[test]
    fn wrong_types() {
        let text = BASE.replace("ports = [443, \"8000-8010\"]", "ports = 443");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "443"),
            "rule[0].ports",
            "expected an array, found an integer",
        );
        let text = BASE.replace("description = \"A\"", "description = 1979-05-27");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "1979"),
            "rule[0].description",
            "found a date-time",
        );
        let text = BASE.replace("from = [\"lan\"]", "from = [\"lan\", 3]");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "3]"),
            "rule[0].from[1]",
            "expected a string",
        );
        let text = BASE.replace("[[rule]]", "[rule]");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos(&text, "[rule]"),
            "rule",
            "expected an array, found a table",
        );
        assert!(e.hint.unwrap().contains("[[rule]]"));
        let text = BASE.replace("\"10.0.0.0/16\",", "10,");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "10,"),
            "network \"n3\".prefixes[0]",
            "expected a prefix string",
        );
    }

    #[test]
    fn missing_key_points_at_the_table() {
        let text = BASE.replace("slug = \"a\"\n", "");
        let e = error(&text);
        assert_eq!(e.field.as_deref(), Some("rule[0].slug"));
        assert_eq!(e.line, pos(&text, "[[rule]]").0, "{e}");
        assert!(e.message.contains("missing key `slug`"));
        let text = BASE.replace("scope = \"enforce\"\n", "");
        let e = error(&text);
        assert_eq!(
            (e.field.as_deref(), e.line),
            (Some("network \"n3\".scope"), Some(1)),
            "{e}"
        );
    }

    #[test]
    fn bad_names() {
        let text = format!("{BASE}\n[[rule]]\nslug = \"a\"\n");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos_n(&text, "\"a\"", 1),
            "rule[1].slug",
            "duplicate rule slug `a`",
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("rule \"a\" is already defined at line 8")
        );
        let text = BASE.replace("[[rule]]", "[[network]]\nname = \"n3\"\n\n[[rule]]");
        let e = error(&text);
        assert_err(
            &e,
            "t.toml",
            pos_n(&text, "\"n3\"", 1),
            "network[1].name",
            "duplicate network name `n3`",
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("network \"n3\" is already defined at line 2")
        );
        let text = BASE.replace("name = \"n3\"", "name = \"lan\"");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "\"lan\""),
            "network[0].name",
            "is a site role",
        );
        let text = BASE.replace("slug = \"a\"", "slug = \"Rule A\"");
        assert_err(
            &error(&text),
            "t.toml",
            pos(&text, "\"Rule"),
            "rule[0].slug",
            "invalid slug `Rule A`",
        );
    }
}
