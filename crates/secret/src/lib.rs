//! [`Secret`]: the one type that holds a credential value (a token, a key, a password). It is
//! wiped from memory when dropped, has no `Display`, prints as `Secret(<redacted>)` with
//! `Debug`, and its value can only be read inside a closure ([`Secret::with`]), so every read
//! is a visible, greppable call and no borrow of the value outlives it.
//!
//! A tiny crate of its own so that everything that handles values — issuers
//! (`sidekey-credentials`), header rewriting (`sidekey-inject`), the data plane
//! (`sidekey-proxy`) — shares it without depending on one another.

use std::fmt;

use zeroize::Zeroizing;

/// A credential value. See the crate docs.
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Takes ownership of `value`; it is wiped when the secret is dropped.
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// Runs `f` with the value. `f`'s result cannot borrow the value: copy what you must keep
    /// into a [`Zeroizing`] buffer or another `Secret`.
    pub fn with<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        f(&self.0)
    }

    /// Runs `f` with the values of several secrets at once, in the order given (e.g. to build
    /// one request body that carries two of them, or to scrub all of them from a text).
    pub fn with_all<R>(secrets: &[&Secret], f: impl FnOnce(&[&str]) -> R) -> R {
        let values: Vec<&str> = secrets.iter().map(|s| s.0.as_str()).collect();
        f(&values)
    }

    /// Length of the value in bytes (not secret: lengths are visible on the wire anyway).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<Zeroizing<String>> for Secret {
    fn from(value: Zeroizing<String>) -> Self {
        Secret(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2-canary".into());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(<redacted>))");
    }

    #[test]
    fn with_and_with_all_see_the_values() {
        let a = Secret::new("a-value".into());
        let b = Secret::new("b".into());
        assert_eq!(a.with(str::len), 7);
        assert_eq!(a.len(), 7);
        let joined = Secret::with_all(&[&a, &b], |v| v.join("+"));
        assert_eq!(joined, "a-value+b");
        assert!(!b.is_empty());
    }
}
