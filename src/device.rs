//! Device and dtype selection at run time, so one CPU-built binary also drives a CUDA GPU.

use anyhow::{bail, Result};
use tch::{Device, Kind};

/// Parses `cpu`, `cuda` or `cuda:N`. CUDA support lives in libtorch_cuda.so, which the
/// linker drops because no symbol of it is referenced; load it explicitly before asking.
pub fn parse_device(s: &str) -> Result<Device> {
    let dev = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("unknown device `{s}`: use cpu, cuda or cuda:N"),
        },
    };
    load_cuda_backend();
    let count = tch::Cuda::device_count() as usize;
    if dev >= count {
        bail!("device `{s}` requested but libtorch sees {count} CUDA device(s); use --device cpu");
    }
    Ok(Device::Cuda(dev))
}

fn load_cuda_backend() {
    let Some(dir) = libtorch_dir() else { return };
    let path = dir.join("libtorch_cuda.so");
    if let Ok(c) = std::ffi::CString::new(path.to_string_lossy().as_bytes()) {
        // SAFETY: dlopen with a valid C string; the handle is kept for the process lifetime.
        unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    }
}

/// The directory libtorch was actually loaded from. It is the build's rpath on the machine that
/// built repro, but on a GPU node running a kit against its own PyTorch (LD_LIBRARY_PATH) it is
/// wherever that PyTorch lives, so it is read from the process's mappings, not from the build.
pub fn libtorch_dir() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok();
    let loaded = maps.as_deref().and_then(|maps| {
        maps.lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .find(|path| path.ends_with("/libtorch_cpu.so"))
    });
    match loaded {
        Some(path) => std::path::Path::new(path).parent().map(std::path::Path::to_path_buf),
        None => Some(std::path::PathBuf::from(env!("REPRO_LIBTORCH_LIB"))).filter(|d| !d.as_os_str().is_empty()),
    }
}

/// Free and total memory of CUDA device `index`, from the CUDA runtime libtorch loaded (its
/// `cudaMemGetInfo`); None off CUDA or when the runtime cannot be found.
pub fn cuda_memory(index: usize) -> Option<(u64, u64)> {
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type GetDevice = unsafe extern "C" fn(*mut i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let cudart = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libcudart.so"))?;
    let path = std::ffi::CString::new(cudart).ok()?;
    // SAFETY: the library is already mapped (RTLD_NOLOAD only takes a handle to it); the symbols
    // are the CUDA runtime's documented C API with these signatures.
    unsafe {
        let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        let sym = |name: &[u8]| libc::dlsym(lib, name.as_ptr().cast());
        let (set, get, info) = (
            sym(b"cudaSetDevice\0"),
            sym(b"cudaGetDevice\0"),
            sym(b"cudaMemGetInfo\0"),
        );
        if lib.is_null() || set.is_null() || get.is_null() || info.is_null() {
            return None;
        }
        let (set, get, info): (SetDevice, GetDevice, MemGetInfo) = (
            std::mem::transmute::<*mut libc::c_void, SetDevice>(set),
            std::mem::transmute::<*mut libc::c_void, GetDevice>(get),
            std::mem::transmute::<*mut libc::c_void, MemGetInfo>(info),
        );
        let mut current = 0;
        let (mut free, mut total) = (0usize, 0usize);
        let ok = get(&mut current) == 0 && set(index as i32) == 0 && info(&mut free, &mut total) == 0;
        set(current);
        ok.then_some((free as u64, total as u64))
    }
}

/// The `__version__` of the torch wheel whose libtorch this process runs on, or "unknown".
pub fn libtorch_version() -> String {
    let version_py = libtorch_dir().map(|d| d.join("../version.py"));
    version_py
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `f32`/`float32`, `f16`/`float16`, `bf16`/`bfloat16`; default f32 on CPU, f16 on CUDA as in the paper.
pub fn parse_dtype(s: Option<&str>, device: Device) -> Result<Kind> {
    Ok(match s {
        None => match device {
            Device::Cpu => Kind::Float,
            _ => Kind::Half,
        },
        Some("f32" | "float32" | "fp32") => Kind::Float,
        Some("f16" | "float16" | "fp16") => Kind::Half,
        Some("bf16" | "bfloat16") => Kind::BFloat16,
        Some(other) => bail!("unknown dtype `{other}`: use f32, f16 or bf16"),
    })
}

pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        _ => "other",
    }
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu")
            .unwrap_err()
            .to_string()
            .contains("cpu, cuda or cuda:N"));
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(parse_dtype(None, Device::Cpu).unwrap(), Kind::Float);
        assert_eq!(parse_dtype(Some("bf16"), Device::Cpu).unwrap(), Kind::BFloat16);
        assert!(parse_dtype(Some("int4"), Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("f32, f16 or bf16"));
    }

    #[test]
    fn finds_the_libtorch_this_process_runs_on() {
        let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu)); // libtorch is mapped by now
        let dir = libtorch_dir().expect("libtorch_cpu.so is mapped");
        assert!(dir.join("libtorch_cpu.so").is_file(), "{}", dir.display());
    }
}
