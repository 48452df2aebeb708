//! How a flat section (`ca`, `limits`) is declared: with [`section!`], one entry per field giving
//! its doc, type, default and [`Rule`]. The macro derives the struct, its `Default`, the known keys
//! (for the unknown-key hint) and the reader, so adding a field is one edit and the keys cannot
//! drift from the reader. A rule reports every problem with line, column and hint, and a field
//! with an error keeps its default so the rest is still checked.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::check::{Errors, Field};
use crate::yaml::Node;

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

    /// Reads one `key: value` of the section's mapping into its field. False if the key is not
    /// one of the section's, its value is null (for most rules: the default), or it has an error
    /// (reported; the field keeps its value).
    fn read_field(&mut self, field: &Field<'_>, e: &mut Errors) -> bool;
}

/// A section read from the file.
pub(crate) struct Read<'a, S> {
    /// Defaults, overridden by every value read without error.
    pub value: S,
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
            valid: Vec::new(),
        };
    };
    let valid = fields
        .entries
        .iter()
        .filter(|field| value.read_field(field, e))
        .cloned()
        .collect();
    Read { value, valid }
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
}

/// A file path (a non-empty string). For an `Option<PathBuf>` field, None is "not given".
pub(crate) struct Path;

impl Rule<PathBuf> for Path {
    fn read(&self, node: &Node, what: &str, e: &mut Errors) -> Option<PathBuf> {
        e.path(node, what)
    }
}

impl Rule<Option<PathBuf>> for Path {
    fn read(&self, node: &Node, what: &str, e: &mut Errors) -> Option<Option<PathBuf>> {
        e.path(node, what).map(Some)
    }
}
