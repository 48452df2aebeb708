//! The `--name value` arguments of `bench-upstream` and `bench-floor`.

/// The command line's arguments, read once.
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Self {
        Args(std::env::args().collect())
    }

    /// The value after `name` (`--http 127.0.0.1:18080`), if `name` is given with one.
    pub fn value(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1))
            .cloned()
    }
}
