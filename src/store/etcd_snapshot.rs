//! The etcd backend's local copy of its view, in the daemon's data dir, so
//! that a restarting daemon catches up from the etcd revision it had
//! applied (a watch from the next one) instead of reading the whole prefix.
//!
//! The file (`etcd-view.snap`) is written whole, atomically (a temporary
//! file, fsync, rename, fsync of the directory), every
//! `[etcd] snapshot_interval_secs` while the view moves and at a clean
//! close. Layout, integers little-endian:
//! ```text
//! magic "CONSENTD-ETCD-VIEW\n"  version u32 (SNAPSHOT_VERSION)  body_len u64
//! body: cluster_id u64  etcd_revision i64  revision_mod i64
//!       prefix_len u32  prefix  entries u64
//!       entries x (key_len u32  key  value_len u32  value)
//! crc32 of body u32
//! ```
//! Keys are the view's (the data prefix cut off). A snapshot is only ever a
//! starting point: the catch-up watch from `etcd_revision + 1` brings every
//! put and delete since, so any intact snapshot of the same cluster and
//! prefix is safe to start from, whichever daemon wrote it.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
};

use super::{etcd_replica::Replica, StoreError};

const MAGIC: &[u8] = b"CONSENTD-ETCD-VIEW\n";
/// The version of the snapshot file's layout.
pub const SNAPSHOT_VERSION: u32 = 1;
/// The file's name in the data dir.
pub const SNAPSHOT_FILE: &str = "etcd-view.snap";

/// Which etcd store a snapshot is of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Origin {
    pub cluster_id: u64,
    pub prefix: String,
}

/// Encodes `replica` (at its etcd revision) as a snapshot file's bytes.
pub(super) fn encode(replica: &Replica, origin: &Origin) -> Vec<u8> {
    let entries: usize = replica.kv.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut body = Vec::with_capacity(64 + origin.prefix.len() + entries);
    body.extend_from_slice(&origin.cluster_id.to_le_bytes());
    body.extend_from_slice(&replica.etcd_revision.to_le_bytes());
    body.extend_from_slice(&replica.revision_mod.to_le_bytes());
    put_bytes(&mut body, origin.prefix.as_bytes());
    body.extend_from_slice(&(replica.kv.len() as u64).to_le_bytes());
    for (key, value) in &replica.kv {
        put_bytes(&mut body, key);
        put_bytes(&mut body, value);
    }
    let mut out = Vec::with_capacity(MAGIC.len() + 16 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are etcd's (at most its --max-request-bytes).
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A snapshot that cannot be used, and why (for the log line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Unusable(pub String);

/// Decodes a snapshot file's bytes into a view and the store it is of.
pub(super) fn decode(raw: &[u8]) -> Result<(Replica, Origin), Unusable> {
    let bad = |what: &str| Unusable(format!("corrupt snapshot: {what}"));
    let rest = raw
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("not a consentd etcd view snapshot (bad magic)"))?;
    let mut r = Reader(rest);
    let version = u32::from_le_bytes(r.array().ok_or_else(|| bad("truncated header"))?);
    if version != SNAPSHOT_VERSION {
        return Err(Unusable(format!(
            "snapshot format {version}; this consentd reads format {SNAPSHOT_VERSION}"
        )));
    }
    let body_len = u64::from_le_bytes(r.array().ok_or_else(|| bad("truncated header"))?);
    let body_len = usize::try_from(body_len).map_err(|_| bad("body length"))?;
    let body = r.take(body_len).ok_or_else(|| bad("truncated body"))?;
    let crc = u32::from_le_bytes(r.array().ok_or_else(|| bad("no checksum"))?);
    if !r.0.is_empty() {
        return Err(bad("bytes after the checksum"));
    }
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    let mut b = Reader(body);
    let short = || bad("truncated body");
    let cluster_id = u64::from_le_bytes(b.array().ok_or_else(short)?);
    let etcd_revision = i64::from_le_bytes(b.array().ok_or_else(short)?);
    let revision_mod = i64::from_le_bytes(b.array().ok_or_else(short)?);
    let prefix = b.bytes().ok_or_else(short)?;
    let prefix = String::from_utf8(prefix.to_vec()).map_err(|_| bad("prefix is not UTF-8"))?;
    let count = u64::from_le_bytes(b.array().ok_or_else(short)?);
    let mut replica = Replica::default();
    for _ in 0..count {
        let key = b.bytes().ok_or_else(short)?;
        let value = b.bytes().ok_or_else(short)?;
        replica
            .apply(key, Some(value))
            .map_err(|e| bad(&format!("a value does not decode: {e}")))?;
    }
    if !b.0.is_empty() {
        return Err(bad("bytes after the last entry"));
    }
    replica.etcd_revision = etcd_revision;
    replica.revision_mod = revision_mod;
    Ok((replica, Origin { cluster_id, prefix }))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.array()?);
        self.take(usize::try_from(len).ok()?)
    }
}

/// Reads the snapshot at `path`: `Ok(None)` when there is none.
pub(super) fn read(path: &Path) -> Result<Option<(Replica, Origin)>, Unusable> {
    match std::fs::read(path) {
        Ok(raw) => decode(&raw).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Unusable(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync,
/// rename over `path`, fsync of the directory.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |what: &str, e: std::io::Error| {
        StoreError::Unavailable(format!("snapshot {}: {what}: {e}", path.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut nonce = [0u8; 4];
    getrandom::getrandom(&mut nonce)
        .map_err(|e| io("random name", std::io::Error::other(e.to_string())))?;
    // Unique per writer: daemons sharing a data dir never write one file.
    let tmp: PathBuf = dir.join(format!(
        ".{SNAPSHOT_FILE}.{}.{}.tmp",
        std::process::id(),
        hex::encode(nonce)
    ));
    let written = (|| {
        let mut file = File::create(&tmp).map_err(|e| io("creating the temporary file", e))?;
        file.write_all(bytes).map_err(|e| io("writing", e))?;
        file.sync_all().map_err(|e| io("fsync", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync of the directory", e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec;

    fn sample() -> (Replica, Origin) {
        let mut replica = Replica::default();
        replica
            .apply(codec::REVISION_KEY, Some(&codec::encode_u64(7)))
            .unwrap();
        replica.apply(b"d/x\0y\0z", Some(b"\x01\x02")).unwrap();
        replica.apply(b"empty", Some(b"")).unwrap();
        replica.etcd_revision = 42;
        replica.revision_mod = 40;
        let origin = Origin {
            cluster_id: 0xfeed,
            prefix: "/p/".into(),
        };
        (replica, origin)
    }

    #[test]
    fn a_snapshot_decodes_to_the_view_it_was_made_from() {
        let (replica, origin) = sample();
        let (back, back_origin) = decode(&encode(&replica, &origin)).unwrap();
        assert_eq!(back.kv, replica.kv);
        assert_eq!(back_origin, origin);
        assert_eq!(
            (back.etcd_revision, back.revision_mod, back.revision),
            (42, 40, 7)
        );
    }

    #[test]
    fn every_damaged_byte_and_every_truncation_is_refused() {
        let (replica, origin) = sample();
        let raw = encode(&replica, &origin);
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x5a;
            assert!(decode(&bad).is_err(), "byte {i} flipped");
            assert!(decode(&raw[..i]).is_err(), "cut at {i}");
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn another_format_version_is_named() {
        let (replica, origin) = sample();
        let mut raw = encode(&replica, &origin);
        raw[MAGIC.len()] = 9;
        let e = decode(&raw).err().expect("refused").to_string();
        assert!(e.contains("snapshot format 9"), "{e}");
    }

    #[test]
    fn writing_replaces_the_file_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        assert!(read(&path).unwrap().is_none());
        write_atomically(&path, b"old").unwrap();
        let (replica, origin) = sample();
        write_atomically(&path, &encode(&replica, &origin)).unwrap();
        let (back, _) = read(&path).unwrap().unwrap();
        assert_eq!(back.kv, replica.kv);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SNAPSHOT_FILE)]);
    }
}
