//! What `tern-relay status` reports about a data directory's envelope log,
//! read from the files alone (the relay may be running): segments and
//! their bytes, the index checkpoint, and quarantined segments with why.

use super::envelope_log::QUARANTINE_SUFFIX;
use std::fmt;
use std::path::Path;

/// The envelope log's state on disk.
#[derive(Debug, Default)]
pub struct LogStatus {
    /// Segment files.
    pub segments: u64,
    /// Their bytes.
    pub segment_bytes: u64,
    /// Size of the index checkpoint, if there is one.
    pub checkpoint_bytes: Option<u64>,
    /// Quarantined segments: (id, reason from its marker).
    pub quarantined: Vec<(u64, String)>,
}

/// Read the status of the store in `dir` (the relay's `data/db`).
pub fn log_status(dir: &Path) -> std::io::Result<LogStatus> {
    let edir = dir.join("envelopes");
    let mut st = LogStatus::default();
    if !edir.exists() {
        return Ok(st);
    }
    for entry in std::fs::read_dir(&edir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".seg") {
            st.segments += 1;
            st.segment_bytes += entry.metadata()?.len();
        } else if name == super::checkpoint::FILE {
            st.checkpoint_bytes = Some(entry.metadata()?.len());
        } else if let Some(id) = name
            .strip_suffix(QUARANTINE_SUFFIX)
            .and_then(|n| n.parse::<u64>().ok())
        {
            let why = std::fs::read_to_string(entry.path()).unwrap_or_default();
            st.quarantined.push((id, why.trim().to_string()));
        }
    }
    st.quarantined.sort();
    Ok(st)
}

impl fmt::Display for LogStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "envelope segments: {} ({} bytes)",
            self.segments, self.segment_bytes
        )?;
        match self.checkpoint_bytes {
            Some(b) => writeln!(f, "index checkpoint: {b} bytes")?,
            None => writeln!(
                f,
                "index checkpoint: none (the next start replays the whole log)"
            )?,
        }
        writeln!(f, "quarantined segments: {}", self.quarantined.len())?;
        for (id, why) in &self.quarantined {
            writeln!(f, "  {id:020}.seg: {why}")?;
        }
        Ok(())
    }
}
