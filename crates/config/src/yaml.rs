//! YAML text → a small tree in which every node knows its line and column.
//!
//! Built from saphyr's event parser rather than its `MarkedYaml` loader because that loader stops
//! at the first duplicate key and keeps one value per key; here every mapping keeps its entries in
//! order, duplicates are reported (all of them, with both positions) and dropped, and scalars are
//! resolved with saphyr's YAML 1.2 core schema.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr::Scalar;
use saphyr_parser::{Event, Marker, Parser, ScanError, Span, SpannedEventReceiver, Tag};

use crate::ConfigError;

/// Most nodes that anchors may expand to, so a few nested aliases cannot blow up memory.
const ALIAS_NODE_BUDGET: usize = 10_000;

/// A 1-based position in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(m: Marker) -> Pos {
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// A YAML value with its position.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order, duplicate keys already removed.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// What the node is, for "expected …, found …" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The text of a scalar key, used to compare keys.
    fn key_text(&self) -> Option<String> {
        match &self.value {
            Value::Null => Some("null".to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Str(s) => Some(s.clone()),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }

    fn count(&self) -> usize {
        1 + match &self.value {
            Value::Seq(items) => items.iter().map(Node::count).sum(),
            Value::Map(entries) => entries.iter().map(|(k, v)| k.count() + v.count()).sum(),
            _ => 0,
        }
    }
}

/// Parses `src` as a single YAML document. `Ok(None)` for an empty file. Errors found while
/// building the tree (duplicate keys, aliases) are appended to `errors`; a syntax error ends
/// parsing and is returned alone.
pub(crate) fn load(src: &str, errors: &mut Vec<ConfigError>) -> Result<Option<Node>, ConfigError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(src);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err(syntax_error(src, &e));
    }
    errors.append(&mut builder.errors);
    let mut docs = builder.docs.into_iter();
    let first = docs.next();
    if let Some(second) = docs.next() {
        errors.push(ConfigError {
            line: second.pos.line,
            column: second.pos.column,
            message: "a second YAML document starts here; the config is one document".into(),
            hint: Some("remove the `---` separator and merge the documents".into()),
        });
    }
    Ok(first)
}

fn syntax_error(src: &str, e: &ScanError) -> ConfigError {
    let pos = Pos::from_marker(*e.marker());
    let line_text = src.lines().nth(pos.line.saturating_sub(1)).unwrap_or("");
    let at: String = line_text
        .chars()
        .skip(pos.column.saturating_sub(1))
        .collect();
    let info = e.info();
    let hint = if line_text.contains('\t') {
        "YAML does not allow tabs for indentation; use spaces".to_string()
    } else if info.contains("anchor") || info.contains("alias") || at.trim_start().starts_with('*')
    {
        "a value starting with `*` is a YAML alias; quote it, e.g. \"*\" or \"*.example.com\""
            .to_string()
    } else {
        "check the indentation and quoting around here".to_string()
    };
    ConfigError {
        line: pos.line,
        column: pos.column,
        message: format!("YAML syntax error: {info}"),
        hint: Some(hint),
    }
}

/// A collection being built.
enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    docs: Vec<Node>,
    anchors: HashMap<usize, Node>,
    alias_budget_used: usize,
    errors: Vec<ConfigError>,
}

impl Builder {
    fn error(&mut self, pos: Pos, message: String, hint: Option<String>) {
        self.errors.push(ConfigError {
            line: pos.line,
            column: pos.column,
            message,
            hint,
        });
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }

    /// Removes duplicate keys (reporting each) and returns the entries kept.
    fn dedup_keys(&mut self, entries: Vec<(Node, Node)>) -> Vec<(Node, Node)> {
        let mut seen: HashMap<String, Pos> = HashMap::new();
        let mut kept = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            if let Some(text) = k.key_text() {
                if let Some(first) = seen.get(&text) {
                    let first = *first;
                    self.error(
                        k.pos,
                        format!("duplicate key `{text}`"),
                        Some(format!(
                            "`{text}` is already set at line {}, column {}; keep only one",
                            first.line, first.column
                        )),
                    );
                    continue;
                }
                seen.insert(text, k.pos);
            }
            kept.push((k, v));
        }
        kept
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        let pos = Pos::from_marker(span.start);
        match ev {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart(_) => {}
            Event::DocumentEnd => {
                // An empty document produces no node: treat it as null.
                if self.stack.is_empty() && self.docs.is_empty() {
                    self.docs.push(Node {
                        pos,
                        value: Value::Null,
                    });
                }
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => {
                    self.finish(
                        Node {
                            pos,
                            value: Value::Seq(items),
                        },
                        anchor,
                    );
                }
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) => {
                    let entries = self.dedup_keys(entries);
                    self.finish(
                        Node {
                            pos,
                            value: Value::Map(entries),
                        },
                        anchor,
                    );
                }
                None => {}
            },
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar(text, style, tag.as_ref());
                self.finish(Node { pos, value }, anchor);
            }
            Event::Alias(id) => {
                let node = match self.anchors.get(&id) {
                    Some(target) => {
                        self.alias_budget_used += target.count();
                        if self.alias_budget_used > ALIAS_NODE_BUDGET {
                            self.error(
                                pos,
                                "YAML aliases expand to too many nodes".into(),
                                Some("write the values out instead of nesting aliases".into()),
                            );
                            Node {
                                pos,
                                value: Value::Null,
                            }
                        } else {
                            target.clone()
                        }
                    }
                    None => {
                        self.error(pos, "unknown YAML alias".into(), None);
                        Node {
                            pos,
                            value: Value::Null,
                        }
                    }
                };
                self.finish(node, 0);
            }
        }
    }
}

fn scalar(
    text: Cow<'_, str>,
    style: saphyr_parser::ScalarStyle,
    tag: Option<&Cow<'_, Tag>>,
) -> Value {
    let raw = text.to_string();
    match Scalar::parse_from_cow_and_metadata(text, style, tag) {
        Some(Scalar::Null) => Value::Null,
        Some(Scalar::Boolean(b)) => Value::Bool(b),
        Some(Scalar::Integer(i)) => Value::Int(i),
        Some(Scalar::FloatingPoint(f)) => Value::Float(f.0),
        Some(Scalar::String(s)) => Value::Str(s.into_owned()),
        None => Value::Str(raw),
    }
}
