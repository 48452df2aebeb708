//! An audit sink in memory, for tests (feature `test-util`): what the writer thread wrote,
//! read back as JSON records.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// Every byte the audit writer wrote to it; clones share them. Give one clone to
/// [`crate::AuditWriter::spawn`] and read the records from another.
#[derive(Clone, Default)]
pub struct MemorySink(Arc<Mutex<Vec<u8>>>);

impl Write for MemorySink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl MemorySink {
    /// The lines written so far, each parsed as JSON. Panics on a line that is not JSON: for
    /// tests, where that is the failure to report.
    pub fn records(&self) -> Vec<Value> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|line| match serde_json::from_str(line) {
                Ok(record) => record,
                Err(e) => panic!("an audit line that is not JSON ({e}): {line}"),
            })
            .collect()
    }
}
