//! How fast the selected device is: a short probe (a large matrix product, an elementwise pass
//! over a large tensor, a loop of tiny operations, a sort) measured once per device and dtype and
//! cached in the user's cache directory (`$XDG_CACHE_HOME/repro`, else `~/.cache/repro`), so a
//! login node without the GPU can still plan with the rates a GPU node measured (shared home).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use crate::device::{dtype_name, parse_device, parse_dtype};

/// Rates of one device in one dtype; every cost in a plan is a sum of these four kinds of work.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    /// What was measured, e.g. `cpu: AMD EPYC 7B13 (2 threads)` or `cuda: NVIDIA H100 80GB HBM3`.
    pub device: String,
    pub dtype: String,
    /// FLOP/s of a large matrix product.
    pub matmul_flops: f64,
    /// Bytes/s read and written by an elementwise operation on a large tensor.
    pub bandwidth: f64,
    /// Seconds per small operation (dispatch, thread fork/join or kernel launch; a sync now and then).
    pub op_latency: f64,
    /// Sorted elements x log2(length) per second.
    pub sort_rate: f64,
    /// Total device memory (GPUs); host memory is checked against what is available at plan time.
    pub memory_bytes: Option<u64>,
    /// Unix seconds of the measurement.
    pub measured_at: u64,
}

/// The user's cache directory for repro (never a sweep's output: a dry run writes nothing there).
pub fn user_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    base.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("repro"))
}

fn cache_file() -> Option<PathBuf> {
    user_cache_dir().map(|d| d.join("throughput.json"))
}

fn read_cache() -> BTreeMap<String, Throughput> {
    cache_file()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The rates of `device` (`cpu`, `cuda`, `cuda:N`) in `dtype`: cached, else measured now when the
/// device is here, else the latest cached measurement of a device of that kind (a GPU node's,
/// seen from a login node). The error says what to do when there is none.
pub fn throughput(device: &str, dtype: Option<&str>) -> Result<Throughput, String> {
    let here = parse_device(device).ok();
    let kind = parse_dtype(
        dtype,
        here.unwrap_or(if device == "cpu" { Device::Cpu } else { Device::Cuda(0) }),
    )
    .map_err(|e| e.to_string())?;
    let dtype = dtype_name(kind);
    let mut cache = read_cache();
    match here {
        Some(dev) => {
            let name = device_label(dev);
            let key = format!("{name} | {dtype}");
            if let Some(t) = cache.get(&key) {
                return Ok(t.clone());
            }
            let t = measure(dev, kind, name);
            cache.insert(key, t.clone());
            if let Err(e) = write_cache(&cache) {
                eprintln!("warning: the device probe could not be cached ({e:#}); the next dry run measures again");
            }
            Ok(t)
        }
        None => {
            let family = device.split(':').next().unwrap_or(device);
            cache
                .into_values()
                .filter(|t| t.dtype == dtype && t.device.starts_with(family))
                .max_by_key(|t| t.measured_at)
                .ok_or_else(|| {
                    format!(
                    "`{device}` is not on this machine and no probe of a {family} device in {dtype} is cached in {}: \
                     run this dry run once where the device is (a shared home directory carries the probe here)",
                    cache_file().map_or("the user cache".into(), |f| f.display().to_string())
                )
                })
        }
    }
}

fn write_cache(cache: &BTreeMap<String, Throughput>) -> Result<()> {
    let file = cache_file().context("neither XDG_CACHE_HOME nor HOME is set")?;
    std::fs::create_dir_all(file.parent().unwrap_or(&file)).with_context(|| format!("creating {}", file.display()))?;
    crate::sweep::store::write_atomic(&file, &serde_json::to_vec_pretty(cache)?)
}

/// A name that tells two machines apart: the CPU model and thread count, or the GPU's name.
fn device_label(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!(
            "cuda: {}",
            gpu_query(i, "name").unwrap_or_else(|| format!("device {i}"))
        ),
        _ => {
            let cpu = std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find(|l| l.starts_with("model name"))
                        .and_then(|l| l.split(':').nth(1))
                        .map(|s| s.trim().to_string())
                })
                .unwrap_or_else(|| "unknown".into());
            format!("cpu: {cpu} ({} threads)", tch::get_num_threads())
        }
    }
}

/// One field of `nvidia-smi --query-gpu` for GPU `index` (name, memory.total in MiB).
fn gpu_query(index: usize, field: &str) -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            format!("--query-gpu={field}"),
            "--format=csv,noheader,nounits".into(),
            format!("--id={index}"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_string()).filter(|t| out.status.success() && !t.is_empty())
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Seconds per call of `f`, repeated until about `budget` seconds have passed (after one warm-up).
fn time_per_call(device: Device, budget: f64, mut f: impl FnMut()) -> f64 {
    f();
    sync(device);
    let start = Instant::now();
    let mut calls = 0u32;
    while calls < 3 || start.elapsed().as_secs_f64() < budget {
        f();
        calls += 1;
        sync(device);
    }
    start.elapsed().as_secs_f64() / calls as f64
}

/// About a second of measurements, sized so that a CPU and a GPU are both timed on work large
/// enough to show their sustained rates.
fn measure(device: Device, kind: Kind, name: String) -> Throughput {
    let _guard = tch::no_grad_guard();
    let gpu = device != Device::Cpu;
    let n: i64 = if gpu { 8192 } else { 1024 };
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let mm = time_per_call(device, 0.25, || {
        let _ = a.matmul(&b);
    });
    let big = Tensor::zeros([if gpu { 1 << 28 } else { 1 << 24 }], (kind, device));
    let pass = time_per_call(device, 0.2, || {
        let _ = big.shallow_clone().g_add_scalar_(1.0);
    });
    // Small, but large enough to be split across threads, as a model's per-token operations are.
    let tiny = Tensor::zeros([64, 1024], (Kind::Float, device));
    let ops = 200;
    let loop_time = time_per_call(device, 0.2, || {
        for _ in 0..ops {
            let _ = tiny.shallow_clone().g_add_scalar_(1.0);
        }
        let _ = tiny.double_value(&[0, 0]);
    });
    let sort_len: i64 = 1 << 20;
    let keys = Tensor::randn([sort_len], (Kind::Float, device));
    let sort = time_per_call(device, 0.2, || {
        let _ = keys.sort(0, false);
    });
    Throughput {
        device: name,
        dtype: dtype_name(kind).into(),
        matmul_flops: 2.0 * (n as f64).powi(3) / mm,
        bandwidth: 2.0 * big.numel() as f64 * kind.elt_size_in_bytes() as f64 / pass,
        op_latency: loop_time / ops as f64,
        sort_rate: sort_len as f64 * (sort_len as f64).log2() / sort,
        memory_bytes: match device {
            Device::Cuda(i) => gpu_query(i, "memory.total")
                .and_then(|m| m.parse::<u64>().ok())
                .map(|mib| mib << 20),
            _ => None,
        },
        measured_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}
