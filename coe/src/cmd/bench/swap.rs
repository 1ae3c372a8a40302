//! `coe bench swap`: how fast the worker's tier manager moves each expert to Device, against floors
//! measured in the same run on the same byte count. Storage->Device starts from a cold page cache
//! (`posix_fadvise DONTNEED`) and is compared with a cold sequential read of the file; Host->Device
//! with a memcpy of the resident bytes into already-touched memory; the naive path (drop the model,
//! load it from the file as a fresh process would, page cache warm) with Host->Device.
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use coe_core::{ExpertName, Tier};
use coe_expert_worker::engine::EngineLimits;
use coe_expert_worker::expert::LoadedExpert;
use coe_expert_worker::{ExpertSpec, TierBudgets, Worker};

use crate::models::{gguf_path, DEFAULT_EXPERTS};

#[derive(Args)]
pub struct SwapArgs {
    /// Experts (manifest names); by default the three defaults plus any other cached manifest GGUF.
    #[arg(long, value_delimiter = ',')]
    pub experts: Vec<String>,
    /// Runs per measurement; the best run counts.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value_t = 2048)]
    pub max_context: usize,
    #[arg(long, env = "COE_HOME")]
    pub home: Option<PathBuf>,
}

struct Row {
    name: String,
    file_bytes: u64,
    resident_bytes: u64,
    storage: Duration,
    cold_read: Duration,
    host: Duration,
    memcpy: Duration,
    naive: Duration,
}

pub fn run(args: SwapArgs) -> anyhow::Result<()> {
    let home = args.home.clone().unwrap_or_else(coe_fetch::coe_home);
    let names = if args.experts.is_empty() {
        default_and_cached(&home)
    } else {
        args.experts.clone()
    };
    let repeats = args.repeats.max(1);
    let mut rows = Vec::new();
    for name in &names {
        let path = gguf_path(&home, name)?;
        rows.push(measure(name, &path, repeats, args.max_context)?);
    }
    print_table(&rows);
    Ok(())
}

/// The default experts, then every other manifest model whose GGUF is already in the cache.
fn default_and_cached(home: &Path) -> Vec<String> {
    let mut names: Vec<String> = DEFAULT_EXPERTS.iter().map(|s| s.to_string()).collect();
    for model in coe_fetch::Manifest::embedded().models {
        let cached = model.files.iter().any(|f| {
            let file = coe_fetch::model_dir(home, &model.name).join(&f.name);
            f.name.ends_with(".gguf") && file.exists()
        });
        if cached && !names.contains(&model.name) {
            names.push(model.name);
        }
    }
    names
}

fn measure(name: &str, path: &Path, repeats: usize, max_context: usize) -> anyhow::Result<Row> {
    let limits = EngineLimits {
        queue_capacity: 4,
        max_active: 1,
    };
    let worker = Worker::with_budgets(limits, max_context, TierBudgets::default());
    let spec = ExpertSpec {
        name: ExpertName::parse(name)?,
        path: path.to_path_buf(),
    };
    worker
        .load_blocking_in(spec, Some(Tier::Storage), false)
        .with_context(|| format!("registering {name}"))?;
    let mut best = [Duration::MAX; 5];
    let mut keep = |i: usize, d: Duration| best[i] = best[i].min(d);
    let mut resident_bytes = 0;
    for _ in 0..repeats {
        worker.move_blocking(name, Some(Tier::Storage), None)?;
        drop_page_cache(path)?;
        keep(
            0,
            timed(|| worker.move_blocking(name, Some(Tier::Device), None))?,
        );

        worker.move_blocking(name, Some(Tier::Host), None)?;
        keep(
            2,
            timed(|| worker.move_blocking(name, Some(Tier::Device), None))?,
        );
        resident_bytes = worker
            .status()
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.info.weight_bytes);

        worker.move_blocking(name, Some(Tier::Storage), None)?;
        keep(
            4,
            timed(|| LoadedExpert::load(path, max_context).map(drop))?,
        );

        drop_page_cache(path)?;
        keep(1, cold_read(path)?);
        keep(3, memcpy_floor(resident_bytes as usize));
    }
    worker.unload_blocking(name)?;
    Ok(Row {
        name: name.to_string(),
        file_bytes: std::fs::metadata(path)?.len(),
        resident_bytes,
        storage: best[0],
        cold_read: best[1],
        host: best[2],
        memcpy: best[3],
        naive: best[4],
    })
}

fn timed<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<Duration, E> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed())
}

/// Evicts the file from the page cache, so the next read comes from the disk.
fn drop_page_cache(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path)?;
    // SAFETY: a plain syscall on a file descriptor this function owns.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(
        rc == 0,
        "posix_fadvise(DONTNEED) failed on {}: {rc}",
        path.display()
    );
    Ok(())
}

/// The disk floor: the whole file in large sequential reads into one reused buffer.
fn cold_read(path: &Path) -> anyhow::Result<Duration> {
    let mut buffer = vec![0u8; 8 << 20];
    let started = Instant::now();
    let mut file = File::open(path)?;
    while file.read(&mut buffer)? > 0 {}
    Ok(started.elapsed())
}

/// The memory floor: copying `bytes` between two buffers whose pages are already touched.
fn memcpy_floor(bytes: usize) -> Duration {
    let source = vec![1u8; bytes];
    let mut target = vec![0u8; bytes];
    target.copy_from_slice(&source);
    let started = Instant::now();
    target.copy_from_slice(std::hint::black_box(&source));
    let took = started.elapsed();
    std::hint::black_box(&target);
    took
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<28} {:>9} {:>9} | {:>10} {:>10} {:>6} | {:>10} {:>10} {:>6} | {:>9} {:>9}",
        "expert",
        "file MB",
        "resid MB",
        "stor->dev",
        "cold read",
        "ratio",
        "host->dev",
        "memcpy",
        "ratio",
        "naive",
        "speed-up"
    );
    let (mut host_vs_memcpy, mut storage_vs_disk, mut naive_vs_host) = (0f64, 0f64, f64::MAX);
    for r in rows {
        let storage_ratio = ms(r.storage) / ms(r.cold_read);
        let host_ratio = ms(r.host) / ms(r.memcpy);
        let speed_up = ms(r.naive) / ms(r.host);
        host_vs_memcpy = host_vs_memcpy.max(host_ratio);
        storage_vs_disk = storage_vs_disk.max(storage_ratio);
        naive_vs_host = naive_vs_host.min(speed_up);
        println!(
            "{:<28} {:>9.1} {:>9.1} | {:>8.1}ms {:>8.1}ms {:>6.2} | {:>8.3}ms {:>8.1}ms {:>6.3} | {:>7.1}ms {:>8.0}x",
            r.name,
            r.file_bytes as f64 / 1e6,
            r.resident_bytes as f64 / 1e6,
            ms(r.storage),
            ms(r.cold_read),
            storage_ratio,
            ms(r.host),
            ms(r.memcpy),
            host_ratio,
            ms(r.naive),
            speed_up
        );
    }
    println!("host_vs_memcpy={host_vs_memcpy:.3} storage_vs_disk={storage_vs_disk:.2} naive_vs_host={naive_vs_host:.0}");
}
