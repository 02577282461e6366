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
    let dir = env!("REPRO_LIBTORCH_LIB");
    let path = std::path::Path::new(dir).join("libtorch_cuda.so");
    if let Ok(c) = std::ffi::CString::new(path.to_string_lossy().as_bytes()) {
        // SAFETY: dlopen with a valid C string; the handle is kept for the process lifetime.
        unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    }
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

    #[test]
    fn parses_and_rejects() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").unwrap_err().to_string().contains("cpu, cuda or cuda:N"));
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(parse_dtype(None, Device::Cpu).unwrap(), Kind::Float);
        assert_eq!(parse_dtype(Some("bf16"), Device::Cpu).unwrap(), Kind::BFloat16);
        assert!(parse_dtype(Some("int4"), Device::Cpu).unwrap_err().to_string().contains("f32, f16 or bf16"));
    }
}
