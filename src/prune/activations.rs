//! The two calibration activation buffers of the layer-by-layer pipeline: every sample's hidden
//! states entering the current block, and leaving it. They live on the model's device, or, when
//! the memory plan says they do not fit, in two scratch files read and written one batch at a
//! time (the batches a block sees are the same either way, so are the numbers).

use anyhow::{Context, Result};
use std::fs::File;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::Path;
use tch::{Device, Kind, Tensor};

use crate::model::{BlockCtx, CausalLm, DecoderBlock};
use crate::scratch::ScratchDir;

enum Buffer {
    Memory(Tensor),
    Disk(File),
}

pub struct Activations {
    inps: Buffer,
    outs: Buffer,
    /// (samples, seqlen, hidden)
    shape: [i64; 3],
    kind: Kind,
    device: Device,
    ctx: BlockCtx,
    batch: i64,
    /// Holds the scratch files while the buffers live on disk.
    _scratch: Option<ScratchDir>,
}

impl Activations {
    /// Block 0's inputs: the embeddings of the calibration ids (nsamples, seqlen), `batch`
    /// samples at a time; in files in a new directory under `spill_to` when given.
    pub fn capture(model: &dyn CausalLm, ids: &Tensor, batch: usize, spill_to: Option<&Path>) -> Result<Self> {
        let (n, l) = ids.size2().expect("calibration ids are (nsamples, seqlen)");
        let shape = [n, l, model.info().hidden_size];
        let (kind, device) = (model.kind(), model.device());
        let (inps, outs, scratch) = match spill_to {
            None => {
                let buffer = || Buffer::Memory(Tensor::zeros(shape, (kind, device)));
                (buffer(), buffer(), None)
            }
            Some(dir) => {
                let scratch = crate::memory::scratch_dir(dir)?;
                let file = |name: &str| {
                    let path = scratch.path().join(name);
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .with_context(|| format!("cannot create {}", path.display()))
                };
                (
                    Buffer::Disk(file("inputs")?),
                    Buffer::Disk(file("outputs")?),
                    Some(scratch),
                )
            }
        };
        let mut acts = Activations {
            inps,
            outs,
            shape,
            kind,
            device,
            ctx: model.context(l).eager(l, kind, device),
            batch: batch.min(n as usize) as i64, // no wider than the samples (and no i64 overflow)
            _scratch: scratch,
        };
        // The embeddings are written as outputs, which then become the inputs.
        for s in (0..n).step_by(acts.batch as usize) {
            let b = acts.batch.min(n - s);
            let x = model.embed(&ids.narrow(0, s, b).to_device(device))?;
            acts.write_outs(s, &x)?;
        }
        std::mem::swap(&mut acts.inps, &mut acts.outs);
        model.stack().release_outer();
        Ok(acts)
    }

    fn sample_bytes(&self) -> u64 {
        (self.shape[1] * self.shape[2]) as u64 * self.kind.elt_size_in_bytes() as u64
    }

    /// Samples `s..s+b` of the current block's inputs.
    fn read_inps(&self, s: i64, b: i64) -> Result<Tensor> {
        match &self.inps {
            Buffer::Memory(t) => Ok(t.narrow(0, s, b)),
            Buffer::Disk(file) => {
                let t = Tensor::empty([b, self.shape[1], self.shape[2]], (self.kind, Device::Cpu));
                let bytes = b as usize * self.sample_bytes() as usize;
                // SAFETY: `t` is a fresh contiguous CPU tensor of exactly `bytes` bytes, written only here.
                let buf = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, bytes) };
                file.read_exact_at(buf, s as u64 * self.sample_bytes())
                    .context("reading calibration activations from the scratch file")?;
                Ok(t.to_device(self.device))
            }
        }
    }

    /// Stores the outputs of samples `s..s+y.size()[0]`.
    fn write_outs(&mut self, s: i64, y: &Tensor) -> Result<()> {
        match &self.outs {
            Buffer::Memory(t) => {
                t.narrow(0, s, y.size()[0]).copy_(y);
                Ok(())
            }
            Buffer::Disk(file) => {
                let y = y.to_device(Device::Cpu).contiguous();
                let bytes = y.numel() * self.kind.elt_size_in_bytes();
                // SAFETY: `y` is a contiguous CPU tensor of `bytes` bytes, alive while the slice is read.
                let data = unsafe { std::slice::from_raw_parts(y.data_ptr() as *const u8, bytes) };
                file.write_all_at(data, s as u64 * self.sample_bytes())
                    .context("writing calibration activations to the scratch file (is its disk full?)")
            }
        }
    }

    /// Runs `block` over all samples with `see` shown each linear layer's inputs. Each pass
    /// stops at the last layer's input: its product and the block's output are never read.
    pub fn observe(&self, block: &dyn DecoderBlock, see: &mut dyn FnMut(&[&'static str], &Tensor)) -> Result<()> {
        let last = block.linears().last().map(|(name, _)| *name);
        let mut tap = |names: &[&'static str], x: &Tensor| {
            see(names, x);
            if names.iter().any(|n| Some(*n) == last) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let n = self.shape[0];
        for s in (0..n).step_by(self.batch as usize) {
            let b = self.batch.min(n - s);
            let _ = block.forward_tapped(&self.read_inps(s, b)?, &self.ctx, &mut tap);
        }
        Ok(())
    }

    /// Runs the (pruned) block over all samples; its outputs become the next block's inputs.
    pub fn advance(&mut self, block: &dyn DecoderBlock) -> Result<()> {
        let n = self.shape[0];
        for s in (0..n).step_by(self.batch as usize) {
            let b = self.batch.min(n - s);
            let y = block.forward(&self.read_inps(s, b)?, &self.ctx);
            self.write_outs(s, &y)?;
        }
        std::mem::swap(&mut self.inps, &mut self.outs);
        Ok(())
    }
}
