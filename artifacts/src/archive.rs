//! Folders to `.tar.gz` and back, for archives nobody has checked.
//!
//! An uploaded archive is hostile until unpacked: its entries may name absolute paths or climb out
//! with `..` (zip-slip), be symlinks or hardlinks that later writes follow out of the folder, be
//! device files, or decompress into far more than they weigh (a gzip bomb). [`unpack`] accepts
//! only regular files and folders whose paths stay inside the destination, enforces
//! [`Limits`] while it streams (never trusting the sizes the headers declare), and never panics:
//! every refusal is an [`ArchiveError`] that names the entry and the rule or limit it broke.

use bytes::Bytes;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use std::cell::Cell;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tar::EntryType;

const MIB: u64 = 1024 * 1024;

/// What one archive may cost. The defaults fit an Executor folder or a project with a small model;
/// larger artifacts belong in object storage the Executor downloads itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the archive as uploaded.
    pub max_compressed_bytes: u64,
    /// Sum of the sizes of all files once unpacked.
    pub max_uncompressed_bytes: u64,
    /// Entries (files and folders) in the archive.
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_compressed_bytes: 100 * MIB,
            max_uncompressed_bytes: 500 * MIB,
            max_files: 10_000,
        }
    }
}

/// Sets the compressed size limit of [`Limits::from_env`].
pub const MAX_ARCHIVE_BYTES_ENV: &str = "ZEROFLOW_MAX_ARCHIVE_BYTES";

impl Limits {
    /// The defaults with `ZEROFLOW_MAX_ARCHIVE_BYTES` (when set to a positive number) as the
    /// compressed size limit: what `jc server` accepts, and so what a shim must accept too.
    pub fn from_env() -> Limits {
        let mut limits = Limits::default();
        if let Some(n) = std::env::var(MAX_ARCHIVE_BYTES_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
        {
            limits.max_compressed_bytes = n;
        }
        limits
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive is {size} bytes, over the limit of {limit} bytes (compressed)")]
    CompressedTooLarge { size: u64, limit: u64 },
    #[error("archive entry {entry:?} takes the unpacked size over the limit of {limit} bytes")]
    UncompressedTooLarge { entry: String, limit: u64 },
    #[error("archive has more than {limit} entries (the limit); refused at {entry:?}")]
    TooManyFiles { entry: String, limit: usize },
    #[error("archive entry {entry:?} is refused: {reason}")]
    UnsafePath { entry: String, reason: &'static str },
    #[error(
        "archive entry {entry:?} is a {kind} to {target:?}: links are not allowed, include the file itself"
    )]
    Link {
        entry: String,
        kind: &'static str,
        target: String,
    },
    #[error("archive entry {entry:?} is a {kind}: only regular files and folders are allowed")]
    SpecialFile { entry: String, kind: String },
    #[error("archive entry {entry:?} appears twice, or as both a file and a folder")]
    Duplicate { entry: String },
    #[error("not a .tar.gz archive: {0}")]
    NotAnArchive(&'static str),
    #[error("archive is corrupt{}: {message}", at(.entry))]
    Corrupt {
        entry: Option<String>,
        message: String,
    },
    #[error("cannot unpack into {0}: the folder must be new or empty")]
    DestNotEmpty(PathBuf),
    #[error("cannot pack {path}: {reason}")]
    Unpackable { path: PathBuf, reason: String },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

fn at(entry: &Option<String>) -> String {
    entry
        .as_ref()
        .map(|e| format!(" at entry {e:?}"))
        .unwrap_or_default()
}

fn io_err(path: &Path, e: io::Error) -> ArchiveError {
    ArchiveError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Folders that are never part of an Executor or a project: version control, virtualenvs (full of
/// symlinks, and rebuilt from requirements.txt) and Python caches.
const SKIPPED_DIRS: &[&str] = &[".git", ".hg", ".svn", ".venv", "__pycache__"];

fn skipped(name: &str, is_dir: bool) -> bool {
    (is_dir && SKIPPED_DIRS.contains(&name)) || name.ends_with(".pyc") || name == ".DS_Store"
}

/// Packs the contents of `dir` (not `dir` itself) into a `.tar.gz` whose entries are relative
/// paths, so it unpacks into whatever folder the receiver picks. The output depends only on the
/// names, contents and executable bits of the files: owners, times and other mode bits are
/// normalized, so the same folder packs to the same bytes. Symlinks are an error rather than
/// followed or stored, because [`unpack`] refuses them. Skips `.git`, `.venv`, `__pycache__`,
/// `*.pyc`, `.DS_Store`.
pub fn pack_dir(dir: &Path) -> Result<Bytes, ArchiveError> {
    let meta = fs::metadata(dir).map_err(|e| io_err(dir, e))?;
    if !meta.is_dir() {
        return Err(ArchiveError::Unpackable {
            path: dir.to_path_buf(),
            reason: "not a folder".into(),
        });
    }
    let gz = GzEncoder::new(Vec::new(), Compression::default());
    let mut tar = tar::Builder::new(gz);
    append_dir(&mut tar, dir, "")?;
    let gz = tar.into_inner().map_err(|e| io_err(dir, e))?;
    let bytes = gz.finish().map_err(|e| io_err(dir, e))?;
    Ok(Bytes::from(bytes))
}

fn append_dir<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    rel: &str,
) -> Result<(), ArchiveError> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io_err(dir, e))?;
    // Sorted, so that the archive does not depend on directory order.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(ArchiveError::Unpackable {
                path,
                reason: "the name is not UTF-8".into(),
            });
        };
        let file_type = entry.file_type().map_err(|e| io_err(&path, e))?;
        if skipped(name, file_type.is_dir()) {
            continue;
        }
        let rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if file_type.is_dir() {
            header.set_entry_type(EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, format!("{rel}/"), io::empty())
                .map_err(|e| io_err(&path, e))?;
            append_dir(tar, &path, &rel)?;
        } else if file_type.is_file() {
            let file = fs::File::open(&path).map_err(|e| io_err(&path, e))?;
            let meta = file.metadata().map_err(|e| io_err(&path, e))?;
            header.set_entry_type(EntryType::Regular);
            header.set_mode(if executable(&meta) { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            tar.append_data(&mut header, &rel, file)
                .map_err(|e| io_err(&path, e))?;
        } else {
            let reason = if file_type.is_symlink() {
                "symlinks cannot be packed (the receiver refuses them): copy the file instead"
            } else {
                "only regular files and folders can be packed"
            };
            return Err(ArchiveError::Unpackable {
                path,
                reason: reason.into(),
            });
        }
    }
    Ok(())
}

#[cfg(unix)]
fn executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn executable(_: &fs::Metadata) -> bool {
    false
}

/// Counts decompressed bytes and fails the stream past `left`, so a gzip bomb stops at the cap
/// even inside tar metadata (long names, PAX headers, padding) that no entry size accounts for.
struct Capped<R> {
    inner: R,
    left: u64,
    hit: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            self.hit.set(true);
            return Err(io::Error::other("decompressed stream exceeds its cap"));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

enum Format {
    TarGz,
    Tar,
}

fn sniff(data: &[u8]) -> Result<Format, ArchiveError> {
    if data.starts_with(&[0x1f, 0x8b]) {
        Ok(Format::TarGz)
    } else if data.len() >= 512 && &data[257..262] == b"ustar" {
        Ok(Format::Tar)
    } else if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        Err(ArchiveError::NotAnArchive(
            "this is a .zip: send a .tar.gz (tar -czf NAME.tar.gz -C FOLDER .)",
        ))
    } else if data.is_empty() {
        Err(ArchiveError::NotAnArchive("it is empty"))
    } else {
        Err(ArchiveError::NotAnArchive(
            "expected gzip-compressed tar data (tar -czf NAME.tar.gz -C FOLDER .)",
        ))
    }
}

/// Unpacks a `.tar.gz` (or plain `.tar`) into `dest`, which must not exist yet or be empty: then
/// nothing inside it can be a link that a later entry writes through. Returns the files written,
/// relative to `dest`, in archive order. On error `dest` is emptied again (removed if this call
/// created it), so a refused archive leaves nothing behind.
///
/// Accepted: regular files and folders with relative paths; a leading `./` and pax global headers
/// (`git archive` writes one) are fine. Refused: absolute paths, `..`, backslashes, non-UTF-8
/// names, symlinks and hardlinks (all of them: a link inside the folder today is a way out
/// tomorrow), devices, fifos, sparse files, duplicate paths. Files are written 0644, or 0755 when
/// the archive marks them executable; owners, times and setuid bits are not restored.
pub fn unpack(data: &[u8], dest: &Path, limits: &Limits) -> Result<Vec<PathBuf>, ArchiveError> {
    let size = data.len() as u64;
    if size > limits.max_compressed_bytes {
        return Err(ArchiveError::CompressedTooLarge {
            size,
            limit: limits.max_compressed_bytes,
        });
    }
    let format = sniff(data)?;
    let created = match fs::read_dir(dest) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(ArchiveError::DestNotEmpty(dest.to_path_buf()));
            }
            false
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(|e| io_err(dest, e))?;
            true
        }
        Err(e) => return Err(io_err(dest, e)),
    };
    let result = unpack_into(data, format, dest, limits);
    if result.is_err() {
        // Best effort: the error the caller sees is the archive's, not the clean-up's.
        if created {
            let _ = fs::remove_dir_all(dest);
        } else if let Ok(rd) = fs::read_dir(dest) {
            for entry in rd.flatten() {
                let p = entry.path();
                let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
    result
}

fn unpack_into(
    data: &[u8],
    format: Format,
    dest: &Path,
    limits: &Limits,
) -> Result<Vec<PathBuf>, ArchiveError> {
    // Room for the tar framing around the files themselves: a header, a long-name or PAX block
    // and padding per entry, generously.
    let framing = (limits.max_files as u64 + 2).saturating_mul(10 * 1024);
    let hit = Rc::new(Cell::new(false));
    let reader: Box<dyn Read> = match format {
        Format::TarGz => Box::new(GzDecoder::new(data)),
        Format::Tar => Box::new(data),
    };
    let capped = Capped {
        inner: reader,
        left: limits.max_uncompressed_bytes.saturating_add(framing),
        hit: hit.clone(),
    };
    let mut archive = tar::Archive::new(capped);
    let mut written = vec![];
    let mut total: u64 = 0;
    let mut count: usize = 0;
    // The entry being read, to name it when the stream itself fails.
    let mut last: Option<String> = None;
    let read_error = |last: &Option<String>, e: io::Error| {
        if hit.get() {
            ArchiveError::UncompressedTooLarge {
                entry: last.clone().unwrap_or_default(),
                limit: limits.max_uncompressed_bytes,
            }
        } else {
            ArchiveError::Corrupt {
                entry: last.clone(),
                message: e.to_string(),
            }
        }
    };
    let entries = archive.entries().map_err(|e| read_error(&None, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(&last, e))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            continue;
        }
        count += 1;
        if count > limits.max_files {
            return Err(ArchiveError::TooManyFiles {
                entry: raw,
                limit: limits.max_files,
            });
        }
        let rel = safe_path(&entry.path_bytes(), &raw)?;
        last = Some(raw.clone());
        match entry_type {
            EntryType::Directory => {
                if let Some(rel) = rel {
                    let path = dest.join(rel);
                    fs::create_dir_all(&path).map_err(|e| io_err(&path, e))?;
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                let Some(rel) = rel else {
                    return Err(ArchiveError::UnsafePath {
                        entry: raw,
                        reason: "a file cannot be the archive's root folder",
                    });
                };
                let budget = limits.max_uncompressed_bytes - total;
                // entry.size() honours a PAX size override, as the reader does.
                let declared = entry.size();
                if declared > budget {
                    return Err(ArchiveError::UncompressedTooLarge {
                        entry: raw,
                        limit: limits.max_uncompressed_bytes,
                    });
                }
                let path = dest.join(&rel);
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                }
                let mode = entry.header().mode().unwrap_or(0o644);
                let mut file = create_file(&path, mode & 0o111 != 0).map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        ArchiveError::Duplicate { entry: raw.clone() }
                    } else {
                        io_err(&path, e)
                    }
                })?;
                let n = copy_capped(&mut entry, &mut file, budget, &path, |e| {
                    read_error(&last, e)
                })?
                .ok_or_else(|| ArchiveError::UncompressedTooLarge {
                    entry: raw.clone(),
                    limit: limits.max_uncompressed_bytes,
                })?;
                total += n;
                written.push(rel);
            }
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let kind = if entry_type == EntryType::Symlink {
                    "symlink"
                } else {
                    "hardlink"
                };
                return Err(ArchiveError::Link {
                    entry: raw,
                    kind,
                    target,
                });
            }
            other => {
                let kind = match other {
                    EntryType::Char => "character device".to_string(),
                    EntryType::Block => "block device".to_string(),
                    EntryType::Fifo => "named pipe".to_string(),
                    EntryType::GNUSparse => "sparse file".to_string(),
                    t => format!("entry of tar type {:?}", t.as_byte() as char),
                };
                return Err(ArchiveError::SpecialFile { entry: raw, kind });
            }
        }
    }
    Ok(written)
}

/// The entry's path relative to the destination, `None` for the root itself (`./`), or a refusal.
fn safe_path(bytes: &[u8], raw: &str) -> Result<Option<PathBuf>, ArchiveError> {
    let refuse = |reason| ArchiveError::UnsafePath {
        entry: raw.to_string(),
        reason,
    };
    let s = std::str::from_utf8(bytes).map_err(|_| refuse("the name is not UTF-8"))?;
    if s.starts_with('/') {
        return Err(refuse("the path is absolute"));
    }
    if s.contains('\\') {
        return Err(refuse("the path contains a backslash"));
    }
    if s.contains('\0') {
        return Err(refuse("the path contains a NUL byte"));
    }
    let mut out = PathBuf::new();
    for seg in s.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err(refuse("the path climbs out of the folder with '..'")),
            seg => out.push(seg),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

fn create_file(path: &Path, executable: bool) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    // create_new: a second entry with the same path must not overwrite the first.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if executable { 0o755 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = executable;
    options.open(path)
}

/// Copies at most `budget` bytes; `Ok(None)` when the entry holds more. Counts what is actually
/// read, because a header's declared size is only a claim.
fn copy_capped(
    from: &mut impl Read,
    to: &mut fs::File,
    budget: u64,
    path: &Path,
    read_error: impl Fn(io::Error) -> ArchiveError,
) -> Result<Option<u64>, ArchiveError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n: u64 = 0;
    loop {
        let got = match from.read(&mut buf) {
            Ok(0) => return Ok(Some(n)),
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        n += got as u64;
        if n > budget {
            return Ok(None);
        }
        to.write_all(&buf[..got]).map_err(|e| io_err(path, e))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar built entry by entry with raw headers, so tests can write what no well-behaved tool
    /// would (`tar::Builder` itself refuses `..` and absolute paths).
    struct Raw {
        tar: tar::Builder<Vec<u8>>,
    }

    impl Raw {
        fn new() -> Self {
            Raw {
                tar: tar::Builder::new(Vec::new()),
            }
        }

        fn entry(mut self, path: &str, kind: EntryType, data: &[u8], link: &str) -> Self {
            let mut h = tar::Header::new_gnu();
            {
                // Written byte by byte: set_path refuses the very paths under test.
                let name = &mut h.as_old_mut().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
                if !link.is_empty() {
                    let l = &mut h.as_old_mut().linkname;
                    l[..link.len()].copy_from_slice(link.as_bytes());
                }
            }
            h.set_entry_type(kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.tar.append(&h, data).unwrap();
            self
        }

        fn file(self, path: &str, data: &[u8]) -> Self {
            self.entry(path, EntryType::Regular, data, "")
        }

        fn tar(self) -> Vec<u8> {
            self.tar.into_inner().unwrap()
        }

        fn gz(self) -> Vec<u8> {
            gzip(&self.tar())
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn unpack_err(data: &[u8], limits: &Limits) -> ArchiveError {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let err = unpack(data, &dest, limits).unwrap_err();
        assert!(!dest.exists(), "a refused archive left {}", dest.display());
        // The temp dir holds nothing else either: nothing escaped.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
        err
    }

    fn sample_dir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(d.join("config.yml"), "jtype: Echo\n").unwrap();
        fs::write(d.join(".env"), "A=1\n").unwrap();
        fs::create_dir_all(d.join("sub/empty")).unwrap();
        fs::write(d.join("sub/run.sh"), "#!/bin/sh\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(d.join("sub/run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        }
        fs::create_dir_all(d.join("__pycache__")).unwrap();
        fs::write(d.join("__pycache__/x.pyc"), "junk").unwrap();
        fs::create_dir_all(d.join(".git")).unwrap();
        fs::write(d.join(".git/HEAD"), "ref").unwrap();
        // A long name, past the 100 bytes of a plain tar header.
        let long = "n".repeat(150);
        fs::write(d.join(&long), "long").unwrap();
        tmp
    }

    #[test]
    fn pack_then_unpack_round_trips() {
        let src = sample_dir();
        let packed = pack_dir(src.path()).unwrap();
        // Deterministic: packing again gives the same bytes.
        assert_eq!(packed, pack_dir(src.path()).unwrap());
        let out = tempfile::tempdir().unwrap();
        let files = unpack(&packed, out.path(), &Limits::default()).unwrap();
        let mut names: Vec<String> = files
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        names.sort();
        let long = "n".repeat(150);
        assert_eq!(names, vec![".env", "config.yml", &long, "sub/run.sh"]);
        assert_eq!(
            fs::read_to_string(out.path().join("config.yml")).unwrap(),
            "jtype: Echo\n"
        );
        assert!(out.path().join("sub/empty").is_dir());
        assert!(!out.path().join("__pycache__").exists());
        assert!(!out.path().join(".git").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| {
                fs::metadata(out.path().join(p))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode("sub/run.sh"), 0o755);
            assert_eq!(mode("config.yml"), 0o644);
        }
    }

    #[cfg(unix)]
    #[test]
    fn pack_refuses_symlinks() {
        let src = sample_dir();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("pw")).unwrap();
        let err = pack_dir(src.path()).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Unpackable { path, .. } if path.ends_with("pw")),
            "{err}"
        );
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn accepts_dot_slash_plain_tar_and_git_archive_headers() {
        let mut raw = Raw::new().entry("./", EntryType::Directory, b"", "");
        // pax global header as `git archive` writes it.
        raw = raw.entry(
            "pax_global_header",
            EntryType::XGlobalHeader,
            b"52 comment=0123456789012345678901234567890123456789\n",
            "",
        );
        let tar = raw
            .file("./config.yml", b"a")
            .file("./sub/../sub2/x", b"b")
            .tar();
        // `..` anywhere is refused, even when it would stay inside.
        let err = unpack_err(&tar, &Limits::default());
        assert!(matches!(err, ArchiveError::UnsafePath { .. }), "{err}");

        let tar = Raw::new()
            .entry("./", EntryType::Directory, b"", "")
            .file("./config.yml", b"a")
            .file("sub/x", b"b")
            .tar();
        for data in [tar.clone(), gzip(&tar)] {
            let out = tempfile::tempdir().unwrap();
            let files = unpack(&data, out.path(), &Limits::default()).unwrap();
            assert_eq!(
                files,
                vec![PathBuf::from("config.yml"), PathBuf::from("sub/x")]
            );
        }
    }

    #[test]
    fn refuses_zip_slip() {
        for path in ["../x", "a/../../x", "a/b/../../../x", ".."] {
            let err = unpack_err(
                &Raw::new().file("ok", b"1").file(path, b"x").gz(),
                &Limits::default(),
            );
            match &err {
                ArchiveError::UnsafePath { entry, reason } => {
                    assert_eq!(entry, path);
                    assert!(reason.contains(".."), "{reason}");
                }
                other => panic!("{path}: {other}"),
            }
            assert!(err.to_string().contains(path), "{err}");
        }
    }

    #[test]
    fn refuses_absolute_paths() {
        let err = unpack_err(
            &Raw::new().file("/tmp/zeroflow-abs", b"x").gz(),
            &Limits::default(),
        );
        assert!(
            matches!(&err, ArchiveError::UnsafePath { entry, reason } if entry == "/tmp/zeroflow-abs" && reason.contains("absolute")),
            "{err}"
        );
        assert!(!Path::new("/tmp/zeroflow-abs").exists());
    }

    #[test]
    fn refuses_links_and_devices() {
        let cases: [(EntryType, &str, &str); 5] = [
            (EntryType::Symlink, "out", "/etc"),
            (EntryType::Symlink, "inside", "config.yml"),
            (EntryType::Link, "hard", "../../etc/passwd"),
            (EntryType::Char, "null", ""),
            (EntryType::Fifo, "pipe", ""),
        ];
        for (kind, name, target) in cases {
            // The link comes first and a file is written "through" it next: the classic escape.
            let data = Raw::new()
                .entry(name, kind, b"", target)
                .file(&format!("{name}/passwd"), b"x")
                .gz();
            let err = unpack_err(&data, &Limits::default());
            let text = err.to_string();
            assert!(text.contains(name), "{text}");
            match kind {
                EntryType::Symlink | EntryType::Link => {
                    assert!(
                        matches!(&err, ArchiveError::Link { target: t, .. } if t == target),
                        "{text}"
                    );
                }
                _ => assert!(matches!(err, ArchiveError::SpecialFile { .. }), "{text}"),
            }
        }
    }

    #[test]
    fn refuses_duplicates() {
        let data = Raw::new().file("a", b"1").file("./a", b"2").gz();
        let err = unpack_err(&data, &Limits::default());
        assert!(
            matches!(&err, ArchiveError::Duplicate { entry } if entry == "./a"),
            "{err}"
        );
    }

    #[test]
    fn enforces_limits() {
        let limits = Limits {
            max_compressed_bytes: 4096,
            max_uncompressed_bytes: 10_000,
            max_files: 3,
        };
        // Compressed size, before any parsing.
        let big = vec![7u8; 5000];
        let err = unpack_err(&big, &limits);
        assert!(
            matches!(
                err,
                ArchiveError::CompressedTooLarge {
                    size: 5000,
                    limit: 4096
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("4096"));

        // Uncompressed total, across files: zeros compress to almost nothing.
        let data = Raw::new()
            .file("a", &vec![0u8; 6000])
            .file("b", &vec![0u8; 6000])
            .gz();
        assert!(data.len() < 4096);
        let err = unpack_err(&data, &limits);
        assert!(
            matches!(&err, ArchiveError::UncompressedTooLarge { entry, limit: 10_000 } if entry == "b"),
            "{err}"
        );
        assert!(err.to_string().contains("10000"), "{err}");

        // File count.
        let data = Raw::new()
            .file("1", b"")
            .file("2", b"")
            .file("3", b"")
            .file("4", b"")
            .gz();
        let err = unpack_err(&data, &limits);
        assert!(
            matches!(&err, ArchiveError::TooManyFiles { entry, limit: 3 } if entry == "4"),
            "{err}"
        );
    }

    #[test]
    fn data_past_a_declared_size_is_not_unpacked() {
        // A header claiming 10 bytes followed by more data than the limit: the tar reader only
        // hands out the declared size, and the rest is parsed as further (garbage) headers, so
        // the archive must be refused, never unpacked past the cap.
        let limits = Limits {
            max_compressed_bytes: 1 << 20,
            max_uncompressed_bytes: 1000,
            max_files: 10,
        };
        let mut tar = Raw::new().file("a", &[1u8; 10]).tar();
        tar.truncate(tar.len() - 1024); // drop the end-of-archive blocks
        tar.extend(std::iter::repeat_n(0xAAu8, 1 << 16));
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("o");
        let res = unpack(&gzip(&tar), &out, &limits);
        assert!(res.is_err(), "{res:?}");
    }

    #[test]
    fn gzip_bomb_stops_at_the_cap() {
        // 16 MiB of zeros as one file weighs a few dozen KiB compressed.
        let limits = Limits {
            max_compressed_bytes: 1 << 20,
            max_uncompressed_bytes: 1 << 20,
            max_files: 10,
        };
        let mut h = tar::Header::new_gnu();
        h.set_path("bomb").unwrap();
        h.set_size(16 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        tar.append(&h, io::repeat(0).take(16 << 20)).unwrap();
        let data = tar.into_inner().unwrap().finish().unwrap();
        let err = unpack_err(&data, &limits);
        assert!(
            matches!(&err, ArchiveError::UncompressedTooLarge { entry, .. } if entry == "bomb"),
            "{err}"
        );
    }

    #[test]
    fn refuses_garbage() {
        let limits = Limits::default();
        for (data, want) in [
            (&b""[..], "empty"),
            (b"hello world", "gzip"),
            (b"PK\x03\x04rest", "zip"),
        ] {
            let err = unpack_err(data, &limits).to_string();
            assert!(err.contains(want), "{err}");
        }
        // Valid gzip, not a tar.
        let err = unpack_err(&gzip(&[0x55; 2048]), &limits);
        assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
        // Truncated gzip.
        let data = Raw::new().file("a", &[3u8; 4000]).gz();
        let err = unpack_err(&data[..data.len() / 2], &limits);
        assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn dest_must_be_empty() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("keep"), "x").unwrap();
        let data = Raw::new().file("a", b"1").gz();
        let err = unpack(&data, tmp.path(), &Limits::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::DestNotEmpty(_)), "{err}");
        assert!(tmp.path().join("keep").exists());
    }

    /// A tiny deterministic PRNG (xorshift), so the fuzz cases are the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
        for _ in 0..1 + rng.below(8) {
            if data.is_empty() {
                data.push(0);
            }
            let i = rng.below(data.len());
            match rng.below(5) {
                0 => data[i] ^= 1 << rng.below(8),
                1 => data[i] = rng.next() as u8,
                2 => data.truncate(i),
                3 => data.insert(i, rng.next() as u8),
                _ => {
                    // Plausible header bytes: '/', '.', link type flags, octal digits.
                    data[i] = *b"/.12570\0".get(rng.below(8)).unwrap_or(&b'0');
                }
            }
        }
    }

    /// Hostile input never panics, and whatever is accepted stays inside the folder: mutate a
    /// valid archive both before compression (to reach the tar parser) and after (the gzip one).
    #[test]
    fn fuzz_mutated_archives() {
        let src = sample_dir();
        let gz = pack_dir(src.path()).unwrap().to_vec();
        let mut plain = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut plain).unwrap();
        let limits = Limits {
            max_compressed_bytes: 1 << 20,
            max_uncompressed_bytes: 1 << 20,
            max_files: 50,
        };
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Where the headers are, to mutate them and fix their checksums: that gets past the
        // checksum test and into the handling of paths, types and sizes.
        let headers: Vec<usize> = tar::Archive::new(&plain[..])
            .entries()
            .unwrap()
            .raw(true)
            .map(|e| e.unwrap().raw_header_position() as usize)
            .collect();
        let (mut ok, mut refused) = (0, 0);
        for i in 0..900 {
            let data = match i % 3 {
                0 => {
                    let mut t = plain.clone();
                    mutate(&mut rng, &mut t);
                    if i % 2 == 0 { gzip(&t) } else { t }
                }
                1 => {
                    let mut g = gz.clone();
                    mutate(&mut rng, &mut g);
                    g
                }
                _ => {
                    let mut t = plain.clone();
                    let at = headers[rng.below(headers.len())];
                    for _ in 0..1 + rng.below(4) {
                        // Name, mode, size, type flag, link name: the fields unpack acts on.
                        let field =
                            [0..100, 100..108, 124..136, 156..157, 157..257][rng.below(5)].clone();
                        let j = at + field.start + rng.below(field.len());
                        t[j] = match rng.below(3) {
                            0 => *b"/.\\012570\0".get(rng.below(10)).unwrap_or(&0),
                            1 => *b"0123456712LKSgx".get(rng.below(15)).unwrap_or(&b'0'),
                            _ => rng.next() as u8,
                        };
                    }
                    let mut h = tar::Header::new_old();
                    h.as_mut_bytes().copy_from_slice(&t[at..at + 512]);
                    h.set_cksum();
                    t[at..at + 512].copy_from_slice(h.as_bytes());
                    gzip(&t)
                }
            };
            let dest = tmp.path().join(format!("case{i}"));
            match unpack(&data, &dest, &limits) {
                Ok(files) => {
                    ok += 1;
                    for f in files {
                        assert!(
                            f.is_relative()
                                && !f.components().any(|c| c == std::path::Component::ParentDir),
                            "{f:?}"
                        );
                        let meta = fs::symlink_metadata(dest.join(&f)).unwrap();
                        assert!(meta.is_file(), "{f:?}");
                    }
                }
                Err(_) => refused += 1,
            }
            // Nothing appears next to the case's folder.
            let _ = fs::remove_dir_all(&dest);
            if let Some(e) = fs::read_dir(tmp.path()).unwrap().next() {
                panic!("{:?} escaped", e.unwrap().file_name());
            }
        }
        eprintln!("fuzz: {ok} mutated archives accepted, {refused} refused");
        assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    }
}
