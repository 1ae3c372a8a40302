//! Checks an expert's GGUF file before anything is written: it exists, its header parses, every
//! tensor's data lies inside the file, the architecture is one coe runs, its weights fit the per-expert
//! budget, and its sha256 matches when one is given. Also the name and category syntax checks.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use sha2::{Digest, Sha256};

use crate::error::RegistryError;

/// The architectures coe's model code implements (`general.architecture` in the GGUF metadata).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "gemma3"];

/// The longest category name accepted, in bytes.
const MAX_CATEGORY_LEN: usize = 64;

/// What the registry records about a file that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedGguf {
    /// Absolute, so workers started elsewhere find the same file.
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
    /// The bytes of all tensors: what the model occupies once resident.
    pub weight_bytes: u64,
    pub architecture: String,
}

/// Parses an expected sha256 given by a client: empty means "not given"; otherwise 64 hex digits.
pub fn parse_sha256(text: &str) -> Result<Option<String>, RegistryError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RegistryError::InvalidArgument(format!(
            "sha256 {text:?} is not 64 hexadecimal digits"
        )));
    }
    Ok(Some(text.to_ascii_lowercase()))
}

/// Category names become map keys and metric labels: the same safe alphabet as expert names.
pub fn check_category(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CATEGORY_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidArgument(format!(
            "invalid category {name:?}: use 1..=64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

/// Runs [`verify_gguf_blocking`] on the blocking pool: hashing a model of hundreds of megabytes takes
/// seconds.
pub async fn verify_gguf(
    path: PathBuf,
    expected_sha256: Option<String>,
    budget_bytes: Option<u64>,
) -> Result<VerifiedGguf, RegistryError> {
    tokio::task::spawn_blocking(move || {
        verify_gguf_blocking(&path, expected_sha256.as_deref(), budget_bytes)
    })
    .await
    .map_err(|e| RegistryError::Internal(format!("the file check task failed: {e}")))?
}

/// Every check on the file, cheapest first, so a wrong file fails before it is hashed.
pub fn verify_gguf_blocking(
    path: &Path,
    expected_sha256: Option<&str>,
    budget_bytes: Option<u64>,
) -> Result<VerifiedGguf, RegistryError> {
    let path = std::path::absolute(path).map_err(|source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| RegistryError::InvalidGguf {
        path: path.clone(),
        reason,
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RegistryError::FileNotFound { path })
        }
        Err(e) => return Err(invalid(format!("cannot open it: {e}"))),
    };
    let meta = file.metadata().map_err(|e| invalid(e.to_string()))?;
    if !meta.is_file() {
        return Err(invalid("it is not a regular file".into()));
    }
    let size_bytes = meta.len();
    let mut reader = BufReader::new(file);
    let content = read_header(&mut reader).map_err(invalid)?;
    let weight_bytes = check_tensors_fit(&content, size_bytes).map_err(invalid)?;
    let architecture = match content.metadata.get("general.architecture") {
        Some(gguf_file::Value::String(arch)) => arch.clone(),
        Some(_) => return Err(invalid("general.architecture is not a string".into())),
        None => return Err(invalid("the metadata has no general.architecture".into())),
    };
    if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(RegistryError::UnsupportedArchitecture {
            path,
            architecture,
            supported: SUPPORTED_ARCHITECTURES.join(", "),
        });
    }
    if let Some(budget) = budget_bytes.filter(|&budget| weight_bytes > budget) {
        return Err(RegistryError::OverBudget {
            path,
            needed: weight_bytes,
            budget,
        });
    }
    let sha256 = sha256_of(&path).map_err(|e| invalid(format!("reading it failed: {e}")))?;
    if let Some(expected) =
        expected_sha256.filter(|expected| !expected.eq_ignore_ascii_case(&sha256))
    {
        return Err(RegistryError::ChecksumMismatch {
            path,
            expected: expected.to_string(),
            actual: sha256,
        });
    }
    Ok(VerifiedGguf {
        path,
        sha256,
        size_bytes,
        weight_bytes,
        architecture,
    })
}

fn read_header(reader: &mut BufReader<File>) -> Result<gguf_file::Content, String> {
    // The parser trusts a few header fields (an alignment of 0 divides by zero): a garbage file must
    // be an error, not a crash of the registry.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gguf_file::Content::read(reader)
    })) {
        Ok(Ok(content)) => Ok(content),
        // candle appends a backtrace when RUST_BACKTRACE is set: the client gets the first line.
        Ok(Err(e)) => Err(format!(
            "the GGUF header does not parse: {}",
            e.to_string().lines().next().unwrap_or_default()
        )),
        Err(_) => Err("the GGUF header is malformed".into()),
    }
}

/// Returns the tensors' total size after checking each lies inside a file of `file_len` bytes: a
/// truncated download parses (the header is intact) but would fail much later, on load.
fn check_tensors_fit(content: &gguf_file::Content, file_len: u64) -> Result<u64, String> {
    if content.tensor_infos.is_empty() {
        return Err("it holds no tensors".into());
    }
    let mut total = 0u64;
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        if !elems.is_multiple_of(block) {
            return Err(format!(
                "tensor {name:?} has {elems} elements, not a multiple of its block size {block}"
            ));
        }
        let bytes = (elems / block) as u64 * info.ggml_dtype.type_size() as u64;
        let end = content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|start| start.checked_add(bytes))
            .ok_or_else(|| format!("tensor {name:?} has an impossible offset {}", info.offset))?;
        if end > file_len {
            return Err(format!(
                "it is truncated: tensor {name:?} ends at byte {end} but the file has {file_len} bytes"
            ));
        }
        total += bytes;
    }
    Ok(total)
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_must_be_hex_of_the_right_length() {
        assert_eq!(parse_sha256("").unwrap(), None);
        assert_eq!(
            parse_sha256(&"AB".repeat(32)).unwrap(),
            Some("ab".repeat(32))
        );
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn categories_use_the_safe_alphabet() {
        for ok in ["code", "math.algebra", "q-and-a_2"] {
            check_category(ok).unwrap();
        }
        for bad in ["", "a/b", "../x", "-x", "with space"] {
            assert!(check_category(bad).is_err(), "{bad:?} accepted");
        }
    }
}
