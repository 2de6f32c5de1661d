//! The pid file (`Builder::pid_file`): written when the process serves, so that scripts
//! and supervisors that signal "the" process (`kill -HUP $(cat /run/orders.pid)`) reach the
//! one serving now, including after an upgrade, whose new process writes its own.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::Error;

/// Check at start-up that the directory of a file the server writes later (`what`: "pid
/// file", "state file") exists, so that a typo fails the start instead of an upgrade or
/// the exit.
pub(super) fn check(what: &str, path: &Path) -> Result<(), Error> {
    if path.is_dir() {
        return Err(Error::Config(format!(
            "{what} {} is a directory; name a file in it",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {}: the directory {} does not exist",
            path.display(),
            dir.display()
        )))
    }
}

/// Write this process's pid to `path`: a temporary file in the same directory, then renamed
/// over it, so that a reader never sees a partial pid.
pub(super) fn write(path: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let tmp = temp_path(path, pid);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{pid}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Remove `path` if it still holds this process's pid (after a handover it holds the new
/// process's, which stays).
pub(super) fn remove_if_ours(path: &Path) -> std::io::Result<bool> {
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        std::fs::remove_file(path)?;
    }
    Ok(ours)
}

fn temp_path(path: &Path, pid: u32) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{pid}.tmp"));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_file_is_written_whole_and_removed_only_while_ours() {
        let dir = std::env::temp_dir().join(format!("lameduck-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("svc.pid");
        check("pid file", &path).expect("the directory exists");
        assert!(check("pid file", &dir.join("missing/svc.pid")).is_err());
        let err = check("pid file", &dir).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        write(&path).expect("write");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        assert!(!temp_path(&path, std::process::id()).exists());
        // Another process took over: the file stays.
        std::fs::write(&path, "1\n").unwrap();
        assert!(!remove_if_ours(&path).unwrap());
        assert!(path.exists());
        write(&path).unwrap();
        assert!(remove_if_ours(&path).unwrap());
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
