//! How a flat section (`listen`, `ca`, `upstream`, `limits`, `audit`'s mapping) is declared: with
//! [`section!`], one entry per field giving its doc, type, default and [`Rule`]. The macro derives
//! the struct, its `Default`, the known keys (for the unknown-key hint) and the reader, so adding a
//! field is one edit and the keys cannot drift from the reader. A rule reports every problem with
//! line, column and hint, and a field with an error keeps its default so the rest is still checked.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use sidekey_policy::IpNet;

use crate::check::{parse_socket_addr, Errors, Field, Fields};
use crate::yaml::{Node, Value};

/// Declares a flat section. Each field is one entry: doc comment (required), name, type,
/// default, and the [`Rule`] that reads and checks its value:
///
/// ```text
/// section! {
///     /// `limits:` — what one agent connection may cost sidekey.
///     #[derive(Debug, Clone, PartialEq, Eq)]
///     pub struct LimitsConfig as "limits" {
///         /// Request headers per request. Default 100.
///         pub max_headers: usize = 100, Int(8..=10_000);
///     }
/// }
/// ```
///
/// This gives the struct with its docs, `Default` (every field at its default) and
/// [`Section`]: `NAME`, `KEYS` in declaration order, and the reader of one `key: value`, which
/// names the field `` `limits.max_headers` `` in messages. A doc that says `Default X.` is
/// checked against the default by the tests, as is README.md's config block.
macro_rules! section {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident as $key:literal {
            $(
                $(#[doc = $doc:literal])+
                $fvis:vis $field:ident: $ty:ty = $default:expr, $rule:expr;
            )*
        }
    ) => {
        $(#[$attr])*
        $vis struct $name {
            $(
                $(#[doc = $doc])+
                $fvis $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: $default,)*
                }
            }
        }

        impl $crate::section::Section for $name {
            const NAME: &'static str = $key;
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];
            #[cfg(test)]
            const DOCS: &'static [&'static str] = &[$(concat!($($doc, "\n"),+)),*];

            fn read_field(
                &mut self,
                field: &$crate::check::Field<'_>,
                e: &mut $crate::check::Errors,
            ) -> bool {
                match field.name {
                    $(
                        stringify!($field) => $crate::section::read_value(
                            &mut self.$field,
                            &$rule,
                            field,
                            Self::NAME,
                            e,
                        ),
                    )*
                    _ => false,
                }
            }

            #[cfg(test)]
            #[allow(clippy::needless_update)] // a section of one field
            fn samples() -> Vec<(&'static str, String, Self)> {
                let mut out = Vec::new();
                $(
                    for (value, yaml) in
                        <_ as $crate::section::Rule<$ty>>::samples(&$rule)
                    {
                        out.push((
                            stringify!($field),
                            yaml,
                            $name {
                                $field: value,
                                ..Self::default()
                            },
                        ));
                    }
                )*
                out
            }
        }
    };
}

pub(crate) use section;

/// A section declared with [`section!`].
pub(crate) trait Section: Default {
    /// Its key at the top of the file, e.g. `limits`.
    const NAME: &'static str;
    /// Every key it takes, in declaration order.
    const KEYS: &'static [&'static str];
    /// The doc comment of each key, in the order of `KEYS`.
    #[cfg(test)]
    const DOCS: &'static [&'static str];

    /// Reads one `key: value` of the section's mapping into its field. False if the key is not
    /// one of the section's, its value is null (for most rules: the default), or it has an error
    /// (reported; the field keeps its value).
    fn read_field(&mut self, field: &Field<'_>, e: &mut Errors) -> bool;

    /// For each key and each sample of its rule: the YAML value, and the default section with
    /// that one field set to it.
    #[cfg(test)]
    fn samples() -> Vec<(&'static str, String, Self)>;
}

/// A section read from the file.
pub(crate) struct Read<'a, S> {
    /// Defaults, overridden by every value read without error.
    pub value: S,
    /// The section's mapping; None when it was not one (reported).
    pub fields: Option<Fields<'a>>,
    /// The entries that set a field without error, in file order, for cross-field checks.
    pub valid: Vec<Field<'a>>,
}

/// Reads the section `S` from its node: reports unknown keys (with the closest known one as a
/// hint) and every bad value, and keeps the default of each field that has an error.
pub(crate) fn read<'a, S: Section>(node: &'a Node, e: &mut Errors) -> Read<'a, S> {
    let mut value = S::default();
    let Some(fields) = e.fields(node, &format!("`{}`", S::NAME), S::KEYS) else {
        return Read {
            value,
            fields: None,
            valid: Vec::new(),
        };
    };
    let valid = fields
        .entries
        .iter()
        .filter(|field| value.read_field(field, e))
        .cloned()
        .collect();
    Read {
        value,
        fields: Some(fields),
        valid,
    }
}

/// The reader of one field, used by [`section!`]: sets `slot` and returns true when the value
/// is read without error.
pub(crate) fn read_value<T, R: Rule<T>>(
    slot: &mut T,
    rule: &R,
    field: &Field<'_>,
    section: &str,
    e: &mut Errors,
) -> bool {
    if field.value.is_null() && !R::NULL_IS_VALUE {
        return false;
    }
    match rule.read(field.value, &format!("`{section}.{}`", field.name), e) {
        Some(v) => {
            *slot = v;
            true
        }
        None => false,
    }
}

/// How a field's value is read and checked.
pub(crate) trait Rule<T> {
    /// Whether `key: null` (or `key:` with nothing) is given to [`Rule::read`]. Otherwise it means
    /// the default, like leaving the key out.
    const NULL_IS_VALUE: bool = false;

    /// The value of `node`, or None after reporting what is wrong with it. `what` names the field
    /// in messages, e.g. `` `limits.max_headers` ``.
    fn read(&self, node: &Node, what: &str, e: &mut Errors) -> Option<T>;

    /// Valid values, each with how it is written in YAML, for the tests that read every key
    /// back. Two for rules where one may happen to be the default.
    #[cfg(test)]
    fn samples(&self) -> Vec<(T, String)>;
}

/// An integer in a range, e.g. `Int(1..=1_000_000)`, read into any integer type the range fits.
pub(crate) struct Int(pub RangeInclusive<i64>);

impl<T: TryFrom<i64>> Rule<T> for Int {
    fn read(&self, node: &Node, what: &str, e: &mut Errors) -> Option<T> {
        let n = e.int_in(node, what, *self.0.start(), *self.0.end())?;
        // The range is declared to fit T (the tests read both ends back); reported all the same.
        T::try_from(n).ok().or_else(|| {
            e.error(node.pos, format!("{what} {n} is out of range"));
            None
        })
    }

    #[cfg(test)]
    fn samples(&self) -> Vec<(T, String)> {
        // Both ends, so that a range that does not fit the field's type fails the tests.
        [*self.0.end(), *self.0.start()]
            .into_iter()
            .map(|n| match T::try_from(n) {
                Ok(v) => (v, n.to_string()),
                Err(_) => panic!("{n}, in {:?}, does not fit the field's type", self.0),
            })
            .collect()
    }
}

/// A duration greater than zero, e.g. `30s`, `5m`, `1h 30m`.
pub(crate) struct Positive;

impl Rule<Duration> for Positive {
    fn read(&self, node: &Node, what: &str, e: &mut Errors) -> Option<Duration> {
        let d = e.duration(node, what)?;
        if d.is_zero() {
            e.error_hint(
                node.pos,
                format!("{what} must be greater than zero"),
                "e.g. `5s`",
            );
            return None;
        }
        Some(d)
    }

    #[cfg(test)]
    fn samples(&self) -> Vec<(Duration, String)> {
        vec![
            (Duration::from_secs(1234), "1234s".into()),
            (Duration::from_millis(1500), "1s 500ms".into()),
        ]
    }
}

/// A file path (a non-empty string). For an `Option<PathBuf>` field, None is "not given".
pub(crate) struct Path;

impl Rule<PathBuf> for Path {
    fn read(&self, node: &Node, what: &str, e: &mut Errors) -> Option<PathBuf> {
        e.path(node, what)
    }

    #[cfg(test)]
    fn samples(&self) -> Vec<(PathBuf, String)> {
        vec![(
            PathBuf::from("/run/sidekey/sample.pem"),
            "/run/sidekey/sample.pem".into(),
        )]
    }
}

impl Rule<Option<PathBuf>> for Path {
    fn read(&self, node: &Node, what: &str, e: &mut Errors) -> Option<Option<PathBuf>> {
        e.path(node, what).map(Some)
    }

    #[cfg(test)]
    fn samples(&self) -> Vec<(Option<PathBuf>, String)> {
        <Path as Rule<PathBuf>>::samples(self)
            .into_iter()
            .map(|(p, yaml)| (Some(p), yaml))
            .collect()
    }
}

/// A list whose items are read with the rule `R`; an item in messages is "`{0}` in `section.key`",
/// e.g. `List("a file", Path)`. All items are checked; a list with an error keeps its default.
pub(crate) struct List<R>(pub &'static str, pub R);

impl<T, R: Rule<T>> Rule<Vec<T>> for List<R> {
    fn read(&self, node: &Node, what: &str, e: &mut Errors) -> Option<Vec<T>> {
        let items = e.list(node, what)?;
        let item_what = format!("{} in {what}", self.0);
        let read: Vec<Option<T>> = items
            .iter()
            .map(|item| self.1.read(item, &item_what, e))
            .collect();
        read.into_iter().collect()
    }

    #[cfg(test)]
    fn samples(&self) -> Vec<(Vec<T>, String)> {
        let items = self.1.samples();
        let yaml: Vec<&str> = items.iter().map(|(_, y)| y.as_str()).collect();
        let yaml = format!("[{}]", yaml.join(", "));
        vec![(items.into_iter().map(|(v, _)| v).collect(), yaml)]
    }
}

/// An upstream `ip:port` (port 0 is refused: nothing listens there).
pub(crate) struct UpstreamAddr;

impl Rule<SocketAddr> for UpstreamAddr {
    fn read(&self, node: &Node, what: &str, e: &mut Errors) -> Option<SocketAddr> {
        e.upstream_addr(node, what)
    }

    #[cfg(test)]
    fn samples(&self) -> Vec<(SocketAddr, String)> {
        vec![(
            SocketAddr::from(([10, 0, 0, 2], 53)),
            "\"10.0.0.2:53\"".into(),
        )]
    }
}

/// A CIDR range or one address that is not every address (`0.0.0.0/0`, `::/0`).
pub(crate) struct AllowRange;

impl Rule<IpNet> for AllowRange {
    fn read(&self, node: &Node, what: &str, e: &mut Errors) -> Option<IpNet> {
        let s = e.string(node, what)?;
        let parsed = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) if net.prefix_len() == 0 => {
                e.error_hint(
                    node.pos,
                    format!("{what}: `{s}` is every address"),
                    "name the networks sidekey may reach, e.g. 10.20.0.0/16; a route that needs \
                     private addresses can say `allow_private: true` instead",
                );
                None
            }
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                e.error_hint(
                    node.pos,
                    format!("{what}: `{s}` is not an address range"),
                    "write CIDR, e.g. 10.20.0.0/16 or fd00:1234::/32, or one address",
                );
                None
            }
        }
    }

    #[cfg(test)]
    fn samples(&self) -> Vec<(IpNet, String)> {
        match "10.20.0.0/16".parse() {
            Ok(net) => vec![(net, "10.20.0.0/16".into())],
            Err(_) => Vec::new(),
        }
    }
}

/// A listener's `ip:port` (port 0 picks a free port), or `off`/null for none.
pub(crate) struct Listener;

impl Rule<Option<SocketAddr>> for Listener {
    const NULL_IS_VALUE: bool = true;

    fn read(&self, node: &Node, what: &str, e: &mut Errors) -> Option<Option<SocketAddr>> {
        match &node.value {
            Value::Null => Some(None),
            Value::Str(s) if s == "off" => Some(None),
            Value::Str(s) => match parse_socket_addr(s, true) {
                Ok(addr) => Some(Some(addr)),
                Err((message, hint)) => {
                    e.error_hint(node.pos, format!("{what}: {message}"), hint);
                    None
                }
            },
            Value::Int(port) => {
                e.error_hint(
                    node.pos,
                    format!("{what} must be an ip:port address, found the bare number {port}"),
                    format!("write 127.0.0.1:{port} to listen on loopback"),
                );
                None
            }
            Value::Bool(false) => {
                e.error_hint(
                    node.pos,
                    format!("{what} must be an ip:port address, `off` or null"),
                    "write `off` to turn the listener off",
                );
                None
            }
            _ => {
                e.error_hint(
                    node.pos,
                    format!("{what} must be an ip:port address, found {}", node.kind()),
                    "e.g. 127.0.0.1:15080; `off` or null turns the listener off",
                );
                None
            }
        }
    }

    #[cfg(test)]
    fn samples(&self) -> Vec<(Option<SocketAddr>, String)> {
        vec![
            (
                Some(SocketAddr::from(([127, 0, 0, 1], 1))),
                "127.0.0.1:1".into(),
            ),
            (None, "off".into()),
        ]
    }
}

/// A field the section's own code reads, next to its declaration (e.g. `upstream.resolve`, merged
/// with the routes' entries). Its key is known; the generic reader leaves it alone.
pub(crate) struct Explicit;

impl<T> Rule<T> for Explicit {
    fn read(&self, _: &Node, _: &str, _: &mut Errors) -> Option<T> {
        None
    }

    #[cfg(test)]
    fn samples(&self) -> Vec<(T, String)> {
        Vec::new()
    }
}
