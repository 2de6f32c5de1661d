//! Releases of a binary for deploy tests: copies that differ from the original only in
//! their GNU build id, as a rebuilt binary would.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

/// How far into the file the build-id note is looked for: linkers put it right after the
/// program headers, in the first kilobytes.
const SEARCH: usize = 64 * 1024;
/// The head of a GNU build-id note with a 20-byte (SHA-1) descriptor on a little-endian
/// machine: name size 4, descriptor size 20, type 3 (`NT_GNU_BUILD_ID`), name `GNU\0`.
const NOTE_HEAD: [u8; 16] = [4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];

/// The offset of the 20-byte build id in `file`'s first bytes, and its value.
fn locate(file: &mut std::fs::File) -> std::io::Result<(u64, [u8; 20])> {
    let mut head = Vec::with_capacity(SEARCH);
    file.seek(SeekFrom::Start(0))?;
    std::io::Read::by_ref(file)
        .take(SEARCH as u64)
        .read_to_end(&mut head)?;
    let found: Vec<usize> = head
        .windows(NOTE_HEAD.len())
        .enumerate()
        .filter(|(_, w)| *w == NOTE_HEAD)
        .map(|(i, _)| i + NOTE_HEAD.len())
        .collect();
    let [at] = found[..] else {
        return Err(std::io::Error::other(format!(
            "expected one GNU build-id note (20 bytes) in the first {SEARCH} bytes, found {}",
            found.len()
        )));
    };
    let mut id = [0u8; 20];
    id.copy_from_slice(head.get(at..at + 20).ok_or_else(|| {
        std::io::Error::other("the build-id note is cut off at the end of the search")
    })?);
    Ok((at as u64, id))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The GNU build id of the executable at `path`, in hex.
///
/// # Errors
/// The file cannot be read, or has no single 20-byte build-id note near its start.
pub fn build_id(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    Ok(hex(&locate(&mut file)?.1))
}

/// Copy the executable `src` to `dst` (permissions included) and give the copy a build id
/// of its own: each byte of the original's XOR `tag` (not 0). The copy is still a valid
/// executable; only its identity differs. Returns the copy's build id in hex.
///
/// # Errors
/// The copy fails, `tag` is 0, or `src` has no single 20-byte build-id note near its start.
pub fn release_copy(src: &Path, dst: &Path, tag: u8) -> std::io::Result<String> {
    if tag == 0 {
        return Err(std::io::Error::other("tag 0 would keep the build id"));
    }
    std::fs::copy(src, dst)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dst)?;
    let (at, mut id) = locate(&mut file)?;
    for b in &mut id {
        *b ^= tag;
    }
    file.seek(SeekFrom::Start(at))?;
    file.write_all(&id)?;
    file.sync_all()?;
    Ok(hex(&id))
}
