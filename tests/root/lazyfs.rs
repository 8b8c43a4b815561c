//! A FUSE filesystem that forgets every write not yet fsynced when the power
//! is "cut" (the technique of LazyFS): the power-cut test's disk.
//!
//! Files live in memory, twice: what processes read and write (`current`),
//! and what stable storage holds (`durable`). `fsync`/`fdatasync` copy the
//! ranges written since the last sync (and the size) from one to the other;
//! [`LazyDisk::cut`] throws away everything that was not synced. Every open
//! file is in direct-I/O mode with zero attribute and entry timeouts, so the
//! kernel caches nothing: `sync_file_range`, which only drives the kernel's
//! page-cache write-back, syncs nothing here, as after a real power cut.
//!
//! Simplification: directory operations (create, mkdir, rename, unlink) are
//! durable at once, as on a journaling filesystem that commits metadata
//! early; only file contents and sizes are lost. So this disk loses less than
//! a real one may, never more: a write it loses is one no fsync covered.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

/// The kernel must cache nothing: every lookup and attribute comes from here.
const TTL: Duration = Duration::ZERO;

/// After this many unsynced ranges a file is treated as dirty throughout.
const MAX_RANGES: usize = 4096;

#[derive(Default)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges written since the last sync; `None`: the whole file.
    dirty: Option<Vec<(usize, usize)>>,
}

impl FileData {
    fn mark(&mut self, from: usize, to: usize) {
        if let Some(ranges) = &mut self.dirty {
            ranges.push((from, to));
            if ranges.len() > MAX_RANGES {
                self.dirty = None;
            }
        }
    }

    fn sync(&mut self) {
        let len = self.current.len();
        self.durable.resize(len, 0);
        match self.dirty.take() {
            Some(ranges) => {
                for (from, to) in ranges {
                    let (from, to) = (from.min(len), to.min(len));
                    self.durable[from..to].copy_from_slice(&self.current[from..to]);
                }
            }
            None => self.durable.copy_from_slice(&self.current),
        }
        self.dirty = Some(Vec::new());
    }

    /// Unsynced bytes thrown away (written ranges plus any size change).
    fn cut(&mut self) -> usize {
        let lost = match &self.dirty {
            Some(ranges) => ranges.iter().map(|(f, t)| t - f).sum::<usize>(),
            None => self.current.len(),
        } + self.current.len().abs_diff(self.durable.len());
        self.current = self.durable.clone();
        self.dirty = Some(Vec::new());
        lost
    }
}

enum Kind {
    Dir(BTreeMap<OsString, u64>),
    File(FileData),
}

struct Node {
    kind: Kind,
    perm: u16,
    mtime: SystemTime,
}

/// What a cut threw away.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cut {
    pub files: usize,
    pub bytes: usize,
}

/// Counts of what the filesystem was asked to do.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub writes: u64,
    pub syncs: u64,
}

struct State {
    nodes: HashMap<u64, Node>,
    next: u64,
    stats: Stats,
}

impl State {
    fn new() -> Self {
        let root = Node {
            kind: Kind::Dir(BTreeMap::new()),
            perm: 0o755,
            mtime: SystemTime::now(),
        };
        Self {
            nodes: HashMap::from([(INodeNo::ROOT.0, root)]),
            next: INodeNo::ROOT.0 + 1,
            stats: Stats::default(),
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::Dir(_) => (FileType::Directory, 0, 2),
            Kind::File(f) => (FileType::RegularFile, f.current.len() as u64, 1),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm: node.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn dir(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::Dir(entries)) => Ok(entries),
            Some(Kind::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file(&mut self, ino: u64) -> Result<&mut FileData, Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File(f)) => Ok(f),
            Some(Kind::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn add(&mut self, parent: u64, name: &OsStr, kind: Kind, perm: u16) -> Result<u64, Errno> {
        if self.dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                kind,
                perm,
                mtime: SystemTime::now(),
            },
        );
        self.dir(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Removes `name` from `parent` and forgets its node (and, for a
    /// directory, everything under it).
    fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.get(name).ok_or(Errno::ENOENT)?;
        match (&self.nodes[&ino].kind, want_dir) {
            (Kind::Dir(entries), true) if !entries.is_empty() => return Err(Errno::ENOTEMPTY),
            (Kind::Dir(_), false) => return Err(Errno::EISDIR),
            (Kind::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir(parent)?.remove(name);
        self.nodes.remove(&ino);
        Ok(())
    }
}

/// The filesystem as FUSE sees it; the state outlives mounts.
struct LazyFs {
    state: Arc<Mutex<State>>,
}

impl LazyFs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, result: Result<u64, Errno>, reply: ReplyEntry) {
        let state = self.state();
        match result.and_then(|ino| state.attr(ino).ok_or(Errno::ENOENT)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    ((mode & !umask) & 0o7777) as u16
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self
            .state()
            .dir(parent.0)
            .and_then(|d| d.get(name).copied().ok_or(Errno::ENOENT));
        self.entry(found, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        if let Some(size) = size {
            match state.file(ino.0) {
                Ok(f) => {
                    let old = f.current.len();
                    let size = size as usize;
                    f.current.resize(size, 0);
                    f.mark(old.min(size), old.max(size));
                }
                Err(e) => return reply.error(e),
            }
        }
        if let (Some(mode), Some(node)) = (mode, state.nodes.get_mut(&ino.0)) {
            node.perm = (mode & 0o7777) as u16;
        }
        match state.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let added = self.state().add(
            parent.0,
            name,
            Kind::Dir(BTreeMap::new()),
            perm(mode, umask),
        );
        self.entry(added, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = (|| {
            if !flags.is_empty() && flags != RenameFlags::RENAME_NOREPLACE {
                return Err(Errno::EINVAL);
            }
            let ino = *state.dir(parent.0)?.get(name).ok_or(Errno::ENOENT)?;
            if let Some(&old) = state.dir(newparent.0)?.get(newname) {
                if old == ino {
                    return Ok(());
                }
                if flags == RenameFlags::RENAME_NOREPLACE {
                    return Err(Errno::EEXIST);
                }
                let is_dir = matches!(state.nodes[&old].kind, Kind::Dir(_));
                state.remove(newparent.0, newname, is_dir)?;
            }
            state.dir(parent.0)?.remove(name);
            state.dir(newparent.0)?.insert(newname.to_owned(), ino);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().nodes.contains_key(&ino.0) {
            true => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            false => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().file(ino.0) {
            Ok(f) => {
                let from = (offset as usize).min(f.current.len());
                let to = (from + size as usize).min(f.current.len());
                reply.data(&f.current[from..to]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        state.stats.writes += 1;
        match state.file(ino.0) {
            Ok(f) => {
                let (from, to) = (offset as usize, offset as usize + data.len());
                if f.current.len() < to {
                    f.current.resize(to, 0);
                }
                f.current[from..to].copy_from_slice(data);
                f.mark(from, to);
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) persists nothing.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        state.stats.syncs += 1;
        match state.file(ino.0) {
            Ok(f) => {
                f.sync();
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.state();
        let entries: Vec<(u64, OsString)> = match state.dir(ino.0) {
            Ok(d) => d.iter().map(|(n, i)| (*i, n.clone())).collect(),
            Err(e) => return reply.error(e),
        };
        let all = [(ino.0, OsString::from(".")), (ino.0, OsString::from(".."))]
            .into_iter()
            .chain(entries);
        for (i, (child, name)) in all.enumerate().skip(offset as usize) {
            let kind = match state.nodes.get(&child).map(|n| &n.kind) {
                Some(Kind::File(_)) => FileType::RegularFile,
                _ => FileType::Directory,
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory operations are durable at once (see the module docs).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let added = state.add(
            parent.0,
            name,
            Kind::File(FileData {
                dirty: Some(Vec::new()),
                ..FileData::default()
            }),
            perm(mode, umask),
        );
        match added.and_then(|ino| state.attr(ino).ok_or(Errno::ENOENT)) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        match self.state().file(ino.0) {
            Ok(f) => {
                let to = (offset + length) as usize;
                if f.current.len() < to {
                    let old = f.current.len();
                    f.current.resize(to, 0);
                    f.mark(old, to);
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted lazy disk; unmounted on drop.
pub struct LazyDisk {
    at: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
}

impl LazyDisk {
    /// Mounts an empty lazy disk at `at` (an existing empty directory).
    pub fn mount(at: &Path) -> std::io::Result<Self> {
        let mut disk = Self {
            at: at.to_owned(),
            state: Arc::new(Mutex::new(State::new())),
            session: None,
        };
        disk.session = Some(disk.spawn()?);
        Ok(disk)
    }

    fn spawn(&self) -> std::io::Result<BackgroundSession> {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("consentd-lazyfs".into())];
        fuser::spawn_mount(
            LazyFs {
                state: self.state.clone(),
            },
            &self.at,
            &config,
        )
    }

    fn unmount(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }

    /// The power cut: unmounts (nothing may touch the disk meanwhile: kill
    /// its writers first), drops every unsynced write, and mounts the disk
    /// again as after a reboot.
    pub fn cut(&mut self) -> std::io::Result<Cut> {
        self.unmount();
        let mut cut = Cut::default();
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for node in state.nodes.values_mut() {
                if let Kind::File(f) = &mut node.kind {
                    let lost = f.cut();
                    if lost > 0 {
                        cut.files += 1;
                        cut.bytes += lost;
                    }
                }
            }
        }
        self.session = Some(self.spawn()?);
        Ok(cut)
    }

    pub fn stats(&self) -> Stats {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stats
    }
}

impl Drop for LazyDisk {
    fn drop(&mut self) {
        self.unmount();
    }
}
