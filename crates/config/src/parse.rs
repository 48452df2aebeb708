//! YAML → validated [`Config`], collecting every error.
//!
//! The pipeline: [`crate::yaml`] builds a tree where every node has its line and column (a
//! syntax error stops here, reported alone), then [`crate::validate`] and [`crate::route`] walk
//! it and record every problem instead of stopping at the first.

use crate::check::Errors;
use crate::{validate, yaml, Config, ConfigErrors};

pub(crate) use crate::describe::describe;

/// Parses and validates `src`. `origin` names the source in messages (e.g. the file path).
///
/// An empty file (or `{}`) is a valid config with no routes: every request is denied.
pub fn parse(src: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let mut e = Errors::default();
    let root = match yaml::load(src, &mut e.list) {
        Ok(root) => root,
        Err(syntax) => {
            return Err(ConfigErrors {
                origin: origin.to_string(),
                errors: vec![syntax],
            });
        }
    };
    let config = validate::config(root.as_ref(), &mut e);
    if e.list.is_empty() {
        return Ok(config);
    }
    let mut errors = e.list;
    // Stable: errors at the same place keep the order in which they were found.
    errors.sort_by_key(|x| (x.line, x.column));
    errors.dedup();
    Err(ConfigErrors {
        origin: origin.to_string(),
        errors,
    })
}
