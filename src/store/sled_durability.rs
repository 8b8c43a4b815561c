//! Makes a group commit durable across a power cut, not only a process crash.
//!
//! sled 0.34 ends `flush` with `sync_file_range(WAIT_BEFORE | WRITE |
//! WAIT_AFTER)` on its log file and never calls `fsync`/`fdatasync` (with
//! `flush_every_ms` off, as here). That syscall starts and waits for the
//! write-back of the file's dirty pages, but it neither flushes the device's
//! write cache nor writes the metadata needed to read the data back (the
//! file's size grows as the log grows); its manual page promises nothing
//! after a crash. So after sled's flush the writer calls [`Durability::sync`]:
//! `fdatasync` of sled's file, which does both.

use std::{fs::File, io, path::Path};

/// sled 0.34 keeps its whole log (and its pages) in this one file of the
/// data dir. Not covered by this sync: a single log item over a quarter of
/// a segment (128 KiB) goes to a file of its own under `blobs/`, which sled
/// does not fsync, and a page (a leaf holds up to 17 entries) is such an item
/// when it is written whole. consentd's largest values are the log chunks of
/// data format 4 (`sled_codec::CHUNK_BYTES`, 4 KiB: a group commit's events or
/// audit records; a larger group makes several chunks, and a leaf of 17 stays
/// near 70 KiB) and app registrations of a few KiB; an audit record with a
/// principal name of tens of KiB could still make a blob. The power-cut test (`tests/root/power_cut.rs`) would
/// lose such a file.
const SLED_LOG_FILE: &str = "db";

/// The opened log file of one open sled store.
pub(super) struct Durability {
    log: File,
}

impl Durability {
    /// Opens sled's log file in `data_dir` (sled must have created it), and
    /// makes its directory entry durable once.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let log = File::open(data_dir.join(SLED_LOG_FILE))?;
        // The log's name in the directory, written when sled created it.
        File::open(data_dir)?.sync_all()?;
        Ok(Self { log })
    }

    /// `fdatasync` of the log: every write sled made to it so far (its
    /// flush's included) reaches stable storage, with the file size.
    pub fn sync(&self) -> io::Result<()> {
        self.log.sync_data()
    }
}
