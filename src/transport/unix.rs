//! Unix-socket listeners: created with a chosen mode before anyone can
//! connect, replacing a stale socket file (never a live one, never a file
//! that is not a socket), and removed when the listener goes away.

use std::{
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

use super::TransportError;

/// The socket file; removed on drop if it is still the one we created.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    inode: (u64, u64),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.inode => {
                if let Err(error) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %error, "cannot remove the unix socket");
                }
            }
            // Replaced by someone else, or already gone: not ours to remove.
            _ => {}
        }
    }
}

fn socket_error(path: &Path, message: impl Into<String>) -> TransportError {
    TransportError::Socket {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Binds inside a private (0700) directory next to `path`, sets the mode,
/// then renames the socket into place: until then nobody but this user can
/// reach it, whatever the umask, so it is never reachable with looser
/// permissions than `mode`.
pub fn bind(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), TransportError> {
    use std::os::unix::fs::DirBuilderExt;
    clear_stale(path)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| socket_error(path, "not a file path"))?;
    let mut private_name = std::ffi::OsString::from(".");
    private_name.push(file_name);
    private_name.push(format!(".{}.d", std::process::id()));
    let private = path.with_file_name(private_name);
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| {
            let dir = path.parent().unwrap_or(Path::new("."));
            // Name the directory the operator chose, not the private one
            // made inside it.
            if e.kind() == std::io::ErrorKind::NotFound {
                socket_error(path, format!("directory {} does not exist", dir.display()))
            } else {
                socket_error(
                    path,
                    format!("cannot create a socket in {}: {e}", dir.display()),
                )
            }
        })?;
    let temp = private.join("sock");
    let placed = UnixListener::bind(&temp)
        .map_err(|e| socket_error(path, format!("bind: {e}")))
        .and_then(|listener| {
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
                .and_then(|()| std::fs::rename(&temp, path))
                .map(|()| listener)
                .map_err(|e| {
                    socket_error(
                        path,
                        format!("setting mode {mode:o} and moving into place: {e}"),
                    )
                })
        });
    let _ = std::fs::remove_dir_all(&private);
    let listener = placed?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| socket_error(path, e.to_string()))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            inode: (meta.dev(), meta.ino()),
        },
    ))
}

/// A socket file nobody answers on is left over from a crash: remove it. A
/// live socket means another daemon serves there; anything else is not ours.
fn clear_stale(path: &Path) -> Result<(), TransportError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(socket_error(path, e.to_string())),
    };
    if !meta.file_type().is_socket() {
        return Err(socket_error(
            path,
            "exists and is not a socket; refusing to replace it",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(socket_error(
            path,
            "another process is listening on it (is consentd already running?)",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale unix socket");
            std::fs::remove_file(path)
                .map_err(|e| socket_error(path, format!("removing the stale socket: {e}")))
        }
        Err(e) => Err(socket_error(
            path,
            format!("probing the existing socket: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mode_stale_live_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");

        let (listener, file) = bind(&path, 0o600).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        // A live socket is not replaced.
        let err = bind(&path, 0o600).unwrap_err().to_string();
        assert!(err.contains("another process is listening"), "{err}");

        // A stale one (listener gone, file left behind) is.
        drop(listener);
        std::mem::forget(file);
        assert!(path.exists());
        let (_listener, file) = bind(&path, 0o660).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
        drop(file);
        assert!(!path.exists(), "removed on drop");

        // Not a socket: refused, left alone.
        std::fs::write(&path, "data").unwrap();
        let err = bind(&path, 0o600).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }
}
