//! Which executable this process is: the path it was started with (the one an upgrade
//! executes again) and the GNU build id of the file that runs.
//!
//! The path is `argv[0]` made absolute at start-up without resolving symlinks: a bare name
//! is looked up in `PATH` once, a relative path is joined to the start-up working
//! directory (the logical one, `$PWD`, when it names the same directory as `.`). Executing
//! that path later follows a switched `releases/current` symlink and finds a file replaced
//! with `mv` or `install`; `std::env::current_exe()` (which reads `PATH (deleted)` after a
//! replacement) and `/proc/self/exe` (the old inode) would not.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

/// What was recorded at start-up.
#[derive(Debug)]
struct StartUp {
    /// The absolute path this process was started with, or why there is none.
    path: Result<PathBuf, String>,
    /// The working directory at start-up, when it could be read.
    dir: Option<PathBuf>,
}

static START: OnceLock<StartUp> = OnceLock::new();
static BUILD_ID: OnceLock<String> = OnceLock::new();

/// Record the start-up path and directory, once per process; later calls do nothing. Made
/// by [`Lifecycle::new`](crate::lifecycle::Lifecycle::new), by `Builder::bind` and by
/// `cli::parse_args`, whichever comes first: before an application would change its
/// working directory.
pub(crate) fn record() {
    START.get_or_init(|| {
        let dir = working_dir();
        let path = match std::env::args_os().next() {
            Some(argv0) if !argv0.is_empty() => {
                start_path(&argv0, dir.as_deref(), std::env::var_os("PATH").as_deref())
            }
            _ => Err("the process was started without argv[0]".to_string()),
        };
        StartUp { path, dir }
    });
}

/// The absolute path this process was started with, or why it is not known.
pub(crate) fn started_as() -> Result<&'static Path, &'static str> {
    record();
    match START.get() {
        Some(StartUp { path: Ok(p), .. }) => Ok(p),
        Some(StartUp { path: Err(e), .. }) => Err(e),
        None => Err("not recorded"),
    }
}

/// `path` made absolute against the start-up working directory (symlinks kept).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    record();
    let dir = START.get().and_then(|s| s.dir.as_deref());
    match dir {
        Some(dir) if path.is_relative() => normal(&dir.join(path)),
        _ => normal(path),
    }
}

/// The GNU build id of the running executable in hex, read once; `unknown` when it has
/// none or it cannot be read.
pub(crate) fn build_id() -> &'static str {
    BUILD_ID.get_or_init(|| match read_build_id(Path::new("/proc/self/exe")) {
        Ok(Some(id)) => hex(&id),
        _ => "unknown".to_string(),
    })
}

/// `Ok` when `path` is a regular file this process may execute, else why not.
pub(crate) fn check_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK)
        .map_err(|e| format!("{} is not executable: {e}", path.display()))
}

/// The working directory: `$PWD` when it is absolute and the same directory as `.` (so a
/// symlink in it is kept), else the resolved one.
fn working_dir() -> Option<PathBuf> {
    let resolved = std::env::current_dir().ok();
    let logical = std::env::var_os("PWD").map(PathBuf::from)?;
    if !logical.is_absolute() {
        return resolved;
    }
    let same = match (std::fs::metadata(&logical), std::fs::metadata(".")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if same {
        Some(logical)
    } else {
        resolved
    }
}

/// `argv0` as an absolute path: looked up in `search` (a `PATH` value) when it has no
/// slash, joined to `dir` when relative.
fn start_path(
    argv0: &OsStr,
    dir: Option<&Path>,
    search: Option<&OsStr>,
) -> Result<PathBuf, String> {
    let path = Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        if path.is_absolute() {
            return Ok(normal(path));
        }
        return match dir {
            Some(dir) => Ok(normal(&dir.join(path))),
            None => Err(format!(
                "argv[0] {} is relative and the working directory cannot be read",
                path.display()
            )),
        };
    }
    let search = search.unwrap_or_default();
    for entry in search.as_bytes().split(|b| *b == b':') {
        // An empty entry is the working directory.
        let base = if entry.is_empty() {
            match dir {
                Some(d) => d.to_path_buf(),
                None => continue,
            }
        } else {
            PathBuf::from(OsStr::from_bytes(entry))
        };
        let candidate = base.join(path);
        if candidate.is_absolute() && check_executable(&candidate).is_ok() {
            return Ok(normal(&candidate));
        }
    }
    Err(format!(
        "argv[0] {} has no slash and is not an executable in PATH",
        path.display()
    ))
}

/// `path` without `.` components (`..` and symlinks are kept: the kernel resolves them
/// when the path is executed).
fn normal(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `PT_NOTE`, a program header's type for a segment of notes.
const PT_NOTE: u32 = 4;
/// `NT_GNU_BUILD_ID`, the type of the GNU build-id note.
const NT_GNU_BUILD_ID: u32 = 3;
/// The most bytes of notes read from one segment.
const MAX_NOTES: u64 = 64 * 1024;
/// The most program headers looked at.
const MAX_PHDRS: u16 = 256;

/// The descriptor of the GNU build-id note in the ELF file at `path`, found through its
/// program headers; `None` when the file is not ELF or has no such note.
fn read_build_id(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::File::open(path)?;
    let read = |offset: u64, len: usize| -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    };
    let head = match read(0, 64) {
        Ok(h) => h,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if head[..4] != *b"\x7fELF" {
        return Ok(None);
    }
    let wide = match head[4] {
        1 => false,
        2 => true,
        _ => return Ok(None),
    };
    let e = match head[5] {
        1 => Endian::Little,
        2 => Endian::Big,
        _ => return Ok(None),
    };
    let (phoff, phentsize, phnum) = if wide {
        (e.u64(&head, 32), e.u16(&head, 54), e.u16(&head, 56))
    } else {
        (
            u64::from(e.u32(&head, 28)),
            e.u16(&head, 42),
            e.u16(&head, 44),
        )
    };
    let min_entry = if wide { 56 } else { 32 };
    if usize::from(phentsize) < min_entry {
        return Ok(None);
    }
    for i in 0..phnum.min(MAX_PHDRS) {
        let at = phoff + u64::from(i) * u64::from(phentsize);
        let ph = read(at, usize::from(phentsize))?;
        if e.u32(&ph, 0) != PT_NOTE {
            continue;
        }
        let (offset, size, align) = if wide {
            (e.u64(&ph, 8), e.u64(&ph, 32), e.u64(&ph, 48))
        } else {
            (
                u64::from(e.u32(&ph, 4)),
                u64::from(e.u32(&ph, 16)),
                u64::from(e.u32(&ph, 28)),
            )
        };
        let notes = read(offset, size.min(MAX_NOTES) as usize)?;
        if let Some(id) = find_note(&notes, e, if align == 8 { 8 } else { 4 }) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The descriptor of the first GNU build-id note in `notes` (entries padded to `align`).
fn find_note(notes: &[u8], e: Endian, align: usize) -> Option<Vec<u8>> {
    let pad = |n: usize| n.div_ceil(align) * align;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = e.u32(notes, at) as usize;
        let descsz = e.u32(notes, at + 4) as usize;
        let kind = e.u32(notes, at + 8);
        let name_at = at + 12;
        let desc_at = name_at.checked_add(pad(namesz))?;
        let end = desc_at.checked_add(pad(descsz))?;
        let name = notes.get(name_at..name_at + namesz)?;
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc.to_vec());
        }
        at = end;
    }
    None
}

/// The byte order of an ELF file.
#[derive(Debug, Clone, Copy)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
        let mut out = [0; N];
        if let Some(s) = b.get(at..at + N) {
            out.copy_from_slice(s);
        }
        out
    }

    fn u16(self, b: &[u8], at: usize) -> u16 {
        let v = Self::bytes(b, at);
        match self {
            Endian::Little => u16::from_le_bytes(v),
            Endian::Big => u16::from_be_bytes(v),
        }
    }

    fn u32(self, b: &[u8], at: usize) -> u32 {
        let v = Self::bytes(b, at);
        match self {
            Endian::Little => u32::from_le_bytes(v),
            Endian::Big => u32::from_be_bytes(v),
        }
    }

    fn u64(self, b: &[u8], at: usize) -> u64 {
        let v = Self::bytes(b, at);
        match self {
            Endian::Little => u64::from_le_bytes(v),
            Endian::Big => u64::from_be_bytes(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lameduck-exe-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A minimal ELF file: the header, one program header of type `PT_NOTE`, and the notes.
    fn elf(wide: bool, big: bool, notes: &[u8]) -> Vec<u8> {
        let (ehsize, phentsize) = if wide { (64usize, 56usize) } else { (52, 32) };
        let phoff = ehsize;
        let notes_at = ehsize + phentsize;
        let mut f = vec![0u8; notes_at];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = if wide { 2 } else { 1 };
        f[5] = if big { 2 } else { 1 };
        let put = |f: &mut Vec<u8>, at: usize, v: u64, n: usize| {
            let b = if big {
                v.to_be_bytes()[8 - n..].to_vec()
            } else {
                v.to_le_bytes()[..n].to_vec()
            };
            f[at..at + n].copy_from_slice(&b);
        };
        if wide {
            put(&mut f, 32, phoff as u64, 8);
            put(&mut f, 54, phentsize as u64, 2);
            put(&mut f, 56, 1, 2);
            put(&mut f, phoff, u64::from(PT_NOTE), 4);
            put(&mut f, phoff + 8, notes_at as u64, 8);
            put(&mut f, phoff + 32, notes.len() as u64, 8);
            put(&mut f, phoff + 48, 4, 8);
        } else {
            put(&mut f, 28, phoff as u64, 4);
            put(&mut f, 42, phentsize as u64, 2);
            put(&mut f, 44, 1, 2);
            put(&mut f, phoff, u64::from(PT_NOTE), 4);
            put(&mut f, phoff + 4, notes_at as u64, 4);
            put(&mut f, phoff + 16, notes.len() as u64, 4);
            put(&mut f, phoff + 28, 4, 4);
        }
        f.extend_from_slice(notes);
        f
    }

    fn note(big: bool, kind: u32, name: &[u8], desc: &[u8]) -> Vec<u8> {
        let w = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut n = Vec::new();
        n.extend_from_slice(&w(name.len() as u32));
        n.extend_from_slice(&w(desc.len() as u32));
        n.extend_from_slice(&w(kind));
        n.extend_from_slice(name);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn the_build_id_note_is_found_after_other_notes_in_either_width_and_byte_order() {
        let dir = temp("elf");
        let id: Vec<u8> = (1..=20).collect();
        for (wide, big) in [(true, false), (false, false), (true, true), (false, true)] {
            let mut notes = note(
                big,
                1,
                b"GNU\0",
                &[0, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
            );
            // A note of the build-id type under another owner is not it.
            notes.extend(note(big, NT_GNU_BUILD_ID, b"Go\0", b"abc"));
            notes.extend(note(big, NT_GNU_BUILD_ID, b"GNU\0", &id));
            let path = dir.join(format!("elf-{wide}-{big}"));
            std::fs::write(&path, elf(wide, big, &notes)).unwrap();
            assert_eq!(
                read_build_id(&path).unwrap(),
                Some(id.clone()),
                "wide {wide} big {big}"
            );
        }
        let without = dir.join("without");
        std::fs::write(
            &without,
            elf(true, false, &note(false, 1, b"GNU\0", b"abcd")),
        )
        .unwrap();
        assert_eq!(read_build_id(&without).unwrap(), None);
        let not_elf = dir.join("script");
        std::fs::write(&not_elf, "#!/bin/sh\necho hello, this is long enough to read a header from, surely more than sixty-four bytes\n").unwrap();
        assert_eq!(read_build_id(&not_elf).unwrap(), None);
        let short = dir.join("short");
        std::fs::write(&short, "\x7fELF").unwrap();
        assert_eq!(read_build_id(&short).unwrap(), None);
        // A note whose sizes run past the segment ends the search instead of panicking.
        let mut cut = note(false, NT_GNU_BUILD_ID, b"GNU\0", &id);
        cut.truncate(20);
        let truncated = dir.join("truncated");
        std::fs::write(&truncated, elf(true, false, &cut)).unwrap();
        assert_eq!(read_build_id(&truncated).unwrap(), None);
        assert!(read_build_id(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_running_test_binary_has_a_build_id_in_hex() {
        let id = build_id();
        // Debian's gcc links with --build-id (SHA-1, 20 bytes) by default.
        assert_eq!(id.len(), 40, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }

    #[test]
    fn argv0_is_made_absolute_without_resolving_symlinks() {
        let dir = temp("argv0");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("svc");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let not_exe = bin.join("data");
        std::fs::write(&not_exe, "x").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&not_exe, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&bin, dir.join("current")).unwrap();
        let cwd = dir.join("current");
        let os = |s: &str| std::ffi::OsString::from(s);
        // Absolute: kept as given, symlink and all.
        let given = cwd.join("svc");
        assert_eq!(start_path(given.as_os_str(), None, None), Ok(given.clone()));
        // Relative: joined to the working directory, `.` dropped, the symlink kept.
        assert_eq!(
            start_path(&os("./svc"), Some(&cwd), None),
            Ok(given.clone())
        );
        assert_eq!(
            start_path(&os("../current/svc"), Some(&bin), None),
            Ok(bin.join("../current/svc"))
        );
        assert!(start_path(&os("./svc"), None, None)
            .unwrap_err()
            .contains("relative"));
        // A bare name: the first executable in PATH, skipping what is not executable.
        let search = format!(
            "/nonexistent:{}:{}",
            dir.join("nowhere").display(),
            cwd.display()
        );
        assert_eq!(
            start_path(&os("svc"), None, Some(OsStr::new(&search))),
            Ok(given.clone())
        );
        let err = start_path(&os("data"), None, Some(OsStr::new(&search))).unwrap_err();
        assert!(err.contains("not an executable in PATH"), "{err}");
        // An empty PATH entry is the working directory.
        assert_eq!(
            start_path(&os("svc"), Some(&cwd), Some(OsStr::new("/nonexistent::"))),
            Ok(given)
        );
        assert!(check_executable(&exe).is_ok());
        assert!(check_executable(&not_exe)
            .unwrap_err()
            .contains("not executable"));
        assert!(check_executable(&bin)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(check_executable(&bin.join("gone"))
            .unwrap_err()
            .contains("No such file"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
