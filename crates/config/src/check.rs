//! Reading typed values out of the YAML tree. Every helper records a located error (with a hint
//! where one helps) instead of stopping, so that one pass finds every problem in the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::yaml::{Node, Pos, Value};
use crate::ConfigError;

/// The errors found so far.
#[derive(Default)]
pub(crate) struct Errors {
    pub list: Vec<ConfigError>,
}

impl Errors {
    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.push(pos, message.into(), None);
    }

    pub fn error_hint(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.push(pos, message.into(), Some(hint.into()));
    }

    fn push(&mut self, pos: Pos, message: String, hint: Option<String>) {
        self.list.push(ConfigError {
            line: pos.line,
            column: pos.column,
            message,
            hint,
        });
    }

    /// "`what` must be EXPECTED, found KIND".
    pub fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        let message = format!("{what} must be {expected}, found {}", node.kind());
        match type_hint(node, expected) {
            Some(hint) => self.error_hint(node.pos, message, hint),
            None => self.error(node.pos, message),
        }
    }

    /// The entries of a mapping, without checking key names. Reports a node that is not a mapping
    /// and keys that are not strings.
    pub fn map<'a>(&mut self, node: &'a Node, what: &str) -> Option<Fields<'a>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, what, "a mapping");
            return None;
        };
        let mut fields = Fields {
            pos: node.pos,
            entries: Vec::with_capacity(entries.len()),
        };
        for (k, v) in entries {
            match &k.value {
                Value::Str(name) => fields.entries.push(Field {
                    name,
                    key: k,
                    value: v,
                }),
                _ => self.error_hint(
                    k.pos,
                    format!("keys in {what} must be strings, found {}", k.kind()),
                    "quote the key",
                ),
            }
        }
        Some(fields)
    }

    /// Reports every key of `fields` that is not in `known`, suggesting the closest known key.
    pub fn unknown_keys(&mut self, fields: &Fields<'_>, what: &str, known: &[&str]) {
        for f in &fields.entries {
            if known.contains(&f.name) {
                continue;
            }
            let hint = match closest(f.name, known) {
                _ if f.name == "<<" => {
                    "YAML merge keys (`<<`) are not supported; write the keys out".to_string()
                }
                Some(best) => format!("did you mean `{best}`?"),
                None => format!("valid keys here: {}", known.join(", ")),
            };
            self.error_hint(
                f.key.pos,
                format!("unknown key `{}` in {what}", f.name),
                hint,
            );
        }
    }

    /// [`Errors::map`] and [`Errors::unknown_keys`] together.
    pub fn fields<'a>(&mut self, node: &'a Node, what: &str, known: &[&str]) -> Option<Fields<'a>> {
        let fields = self.map(node, what)?;
        self.unknown_keys(&fields, what, known);
        Some(fields)
    }

    pub fn string<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a str> {
        match &node.value {
            Value::Str(s) => Some(s),
            _ => {
                self.wrong_type(node, what, "a string");
                None
            }
        }
    }

    pub fn nonempty_string<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a str> {
        let s = self.string(node, what)?;
        if s.trim().is_empty() {
            self.error(node.pos, format!("{what} must not be empty"));
            return None;
        }
        Some(s)
    }

    pub fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.wrong_type(node, what, "true or false");
                None
            }
        }
    }

    pub fn list<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.wrong_type(node, what, "a list");
                None
            }
        }
    }

    pub fn path(&mut self, node: &Node, what: &str) -> Option<PathBuf> {
        self.nonempty_string(node, what).map(PathBuf::from)
    }

    /// A humantime duration such as "30s", "5m", "1h 30m".
    pub fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        const EXAMPLES: &str = "write a number and a unit, e.g. `30s`, `5m` or `1h`";
        match &node.value {
            Value::Str(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) => Some(d),
                Err(err) => {
                    self.error_hint(
                        node.pos,
                        format!("{what}: invalid duration `{s}`: {err}"),
                        EXAMPLES,
                    );
                    None
                }
            },
            Value::Int(n) => {
                self.error_hint(
                    node.pos,
                    format!("{what} must be a duration with a unit, found the bare number {n}"),
                    format!("write `{n}s` for seconds, or use another unit, e.g. `5m`"),
                );
                None
            }
            _ => {
                self.error_hint(
                    node.pos,
                    format!("{what} must be a duration, found {}", node.kind()),
                    EXAMPLES,
                );
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn int_in(&mut self, node: &Node, what: &str, min: i64, max: i64) -> Option<i64> {
        let Value::Int(n) = node.value else {
            self.wrong_type(node, what, "an integer");
            return None;
        };
        if n < min || n > max {
            self.error_hint(
                node.pos,
                format!("{what} {n} is out of range"),
                format!("use a value from {min} to {max}"),
            );
            return None;
        }
        Some(n)
    }

    /// `ip:port` for upstream addresses (`upstream.resolve`). Port 0 is refused: nothing listens
    /// there.
    pub fn upstream_addr(&mut self, node: &Node, what: &str) -> Option<SocketAddr> {
        let s = self.string(node, what)?;
        match parse_socket_addr(s, false) {
            Ok(addr) => Some(addr),
            Err((message, hint)) => {
                self.error_hint(node.pos, format!("{what}: {message}"), hint);
                None
            }
        }
    }
}

/// A type-specific hint for a value of the wrong type.
fn type_hint(node: &Node, expected: &str) -> Option<String> {
    match (&node.value, expected) {
        (Value::Str(s), "true or false") => {
            let lower = s.to_ascii_lowercase();
            let b = match lower.as_str() {
                "yes" | "on" | "y" | "true" => "true",
                "no" | "off" | "n" | "false" => "false",
                _ => return Some("write true or false, without quotes".into()),
            };
            Some(format!(
                "write `{b}` without quotes (YAML 1.2 has only true and false)"
            ))
        }
        (Value::Str(s), "a list") => Some(format!("write a list, e.g. [{s}]")),
        (Value::Int(n), "a string") => Some(format!("quote it: \"{n}\"")),
        (Value::Float(f), "a string") => Some(format!("quote it: \"{f}\"")),
        (Value::Bool(b), "a string") => Some(format!("quote it: \"{b}\"")),
        (Value::Null, _) => Some("give a value, or remove the key".into()),
        _ => None,
    }
}

/// Parses `ip:port`, explaining what is wrong otherwise: (message, hint).
pub(crate) fn parse_socket_addr(
    s: &str,
    allow_port_zero: bool,
) -> Result<SocketAddr, (String, String)> {
    const EXAMPLE: &str = "e.g. 127.0.0.1:15080 or [::1]:15080";
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.port() == 0 && !allow_port_zero {
            return Err((
                format!("`{s}` has port 0"),
                "give the port to connect to".into(),
            ));
        }
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err((
            format!("`{s}` is not an ip:port address"),
            format!("add a port, {EXAMPLE}"),
        ));
    };
    let range = if allow_port_zero {
        "0-65535 (0 picks a free port)"
    } else {
        "1-65535"
    };
    match port.parse::<u64>() {
        Err(_) if port.is_empty() => {
            return Err((
                format!("`{s}` has no port"),
                format!("add a port, {EXAMPLE}"),
            ));
        }
        Err(_) => {
            return Err((
                format!("port `{port}` in `{s}` is not a number"),
                format!("ports are {range}"),
            ));
        }
        Ok(p) if p > 65535 => {
            return Err((
                format!("port {p} in `{s}` is out of range"),
                format!("ports are {range}"),
            ));
        }
        Ok(_) => {}
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err((
            format!("`{s}` is not an ip:port address"),
            "write IPv6 addresses in brackets, e.g. [::1]:15080".into(),
        ));
    }
    Err((
        format!("`{host}` in `{s}` is not an IP address"),
        format!("use an IP address, {EXAMPLE}; host names are not resolved here"),
    ))
}

/// A mapping's entries with string keys, in file order.
pub(crate) struct Fields<'a> {
    pub pos: Pos,
    pub entries: Vec<Field<'a>>,
}

#[derive(Clone)]
pub(crate) struct Field<'a> {
    pub name: &'a str,
    pub key: &'a Node,
    pub value: &'a Node,
}

impl<'a> Fields<'a> {
    pub fn field(&self, name: &str) -> Option<&Field<'a>> {
        self.entries.iter().find(|f| f.name == name)
    }

    /// The value of `name`, if the key is present (even with a null value).
    pub fn get(&self, name: &str) -> Option<&'a Node> {
        self.field(name).map(|f| f.value)
    }

    /// The value of `name`, treating `key: null` (or `key:` with nothing) as absent.
    pub fn value(&self, name: &str) -> Option<&'a Node> {
        self.get(name).filter(|v| !v.is_null())
    }
}

/// The closest candidate to `word` when it is close enough to be a likely typo.
pub(crate) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let w = word.to_ascii_lowercase();
    let mut best: Option<(usize, &'c str)> = None;
    for &c in candidates {
        let d = edit_distance(&w, &c.to_ascii_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = (w.chars().count().max(c.len()) / 3).max(1);
    if d <= limit || (w.len() >= 3 && (c.starts_with(w.as_str()) || w.starts_with(c))) {
        Some(c)
    } else {
        None
    }
}

/// Levenshtein distance, counting a swap of two adjacent characters as one edit.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

/// Names of routes, credentials and issuers: `[a-z0-9][a-z0-9_-]*`, at most 63 characters. They
/// appear in URLs (`/r/<route>/`), audit records and metric labels.
pub(crate) fn check_name(e: &mut Errors, node: &Node, what: &str) -> Option<String> {
    let name = e.string(node, &format!("{what} name"))?;
    let valid_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if name.is_empty() {
        e.error(node.pos, format!("{what} name must not be empty"));
        return None;
    }
    if !valid_start || !valid_rest || name.len() > 63 {
        let suggestion: String = name
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .skip_while(|c| *c == '-' || *c == '_')
            .take(63)
            .collect();
        let why = "names appear in URLs (/r/<route>/), audit records and metric labels";
        let hint = if suggestion.is_empty() {
            format!("use lower-case letters, digits, `-` and `_`, starting with a letter or digit; {why}")
        } else {
            format!("use lower-case letters, digits, `-` and `_` (at most 63), e.g. `{suggestion}`; {why}")
        };
        e.error_hint(
            node.pos,
            format!("invalid {what} name `{name}`: must match [a-z0-9][a-z0-9_-]*"),
            hint,
        );
        return None;
    }
    Some(name.to_string())
}
