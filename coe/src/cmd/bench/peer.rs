//! The baselines' Python environment: a virtual environment under the cache with llama-cpp-python
//! (built from source with native CPU flags) and sentence-transformers, created on first use.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

const LLAMA_CPP_PYTHON: &str = "llama-cpp-python==0.3.36";

/// The venv's python, creating the venv and installing `packages` when missing.
pub fn python_with(
    home: &Path,
    import: &str,
    packages: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<PathBuf> {
    let venv = home.join("bench-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        eprintln!("creating the baseline environment {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let has_it = Command::new(&python)
        .args(["-c", &format!("import {import}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_it {
        eprintln!(
            "installing {} into {} (llama-cpp-python compiles for a few minutes)",
            packages.join(" "),
            venv.display()
        );
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "pip", "install", "-q"]).args(packages);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd)?;
    }
    Ok(python)
}

pub fn llama_cpp_python(home: &Path) -> anyhow::Result<PathBuf> {
    // Native flags for a fair comparison, minus AMX: these VMs advertise AMX tiles but fault on
    // their use (measured: a segfault in ggml's AMX matmul on the first eval).
    let no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16";
    let cmake_args = format!(
        "-DGGML_NATIVE=ON -DLLAMA_BUILD_TOOLS=OFF -DCMAKE_C_FLAGS='{no_amx}' -DCMAKE_CXX_FLAGS='{no_amx}'"
    );
    python_with(
        home,
        "llama_cpp",
        &[LLAMA_CPP_PYTHON],
        &[("CMAKE_ARGS", cmake_args.as_str())],
    )
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs a command that prints one JSON object as its last stdout line, and parses it.
pub fn json_of(cmd: &mut Command) -> anyhow::Result<serde_json::Value> {
    let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("no JSON line in the output")?;
    Ok(serde_json::from_str(line)?)
}

/// Peak resident set of this process, in bytes.
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as u64 * 1024
}
