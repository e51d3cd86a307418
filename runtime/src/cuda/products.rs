//! Products (GEMV or GEMM, by rows and shape) and their inputs: the norm fused or not, 16-bit
//! copies for the tensor cores.

use super::*;

/// Room for the 16-bit input of a GEMM of a pass that may be recorded: a recording keeps the
/// address it was made with, so buffers are only ever added while recordings live (the newest
/// serving while it is large enough; a pooled buffer could be handed to a kept workspace after
/// the recording), and freed with them ([`Backend::release_cached`]).
#[derive(Default)]
pub(super) struct Staging(Mutex<Vec<DeviceBuffer>>);

impl Staging {
    /// The address of at least `bytes` bytes of staging memory on `dev`.
    pub(super) fn get(&self, dev: &CudaDevice, bytes: usize) -> Result<u64, RuntimeError> {
        let mut buffers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = buffers.last().filter(|b| b.bytes() >= bytes) {
            return Ok(b.ptr());
        }
        let b = dev.alloc(bytes.next_power_of_two(), "16-bit activations")?;
        let ptr = b.ptr();
        buffers.push(b);
        Ok(ptr)
    }

    /// Frees every staging buffer (no recording may use them any more).
    pub(super) fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// A 16-bit copy of activations for the tensor cores: staged, or in a pooled buffer.
pub(super) enum Half16Rows {
    Staged(u64),
    Pooled(PooledBuffer),
}

impl Half16Rows {
    pub(super) fn ptr(&self) -> u64 {
        match self {
            Self::Staged(p) => *p,
            Self::Pooled(b) => b.ptr(),
        }
    }
}

/// A product added into its output (the residual stream).
pub(super) const RESIDUAL: Fusion = Fusion {
    norm: None,
    accumulate: true,
    spare_multiprocessors: false,
};

/// The kernels' view of products: weight, bias and output of each.
pub(super) fn segments(outs: &[LinearOut<'_, CudaBackend>]) -> Vec<Segment> {
    outs.iter()
        .map(|o| Segment {
            w: o.weight.buf.ptr(),
            bias: o.bias.map_or(0, |b| b.buf.ptr()),
            y: o.out.ptr(),
            n: o.weight.rows,
        })
        .collect()
}

/// `x` as the input of a GEMV.
pub(super) fn gemv_input(x: &CudaAct) -> GemvInput {
    GemvInput {
        x: x.ptr(),
        rows: x.rows,
        k: x.cols,
    }
}

impl CudaBackend {
    pub(super) fn half_type(w: &CudaWeight) -> Result<Half16, RuntimeError> {
        match w.ty {
            WeightType::Half(t) => Ok(t),
            WeightType::F32 => Err(RuntimeError::Unsupported(format!(
                "tensor {} is f32; the CUDA matrix kernels take f16 or bf16 weights",
                w.name
            ))),
        }
    }

    /// Checks that `norm` is an f32 vector with a scale for each of `x`'s features.
    pub(super) fn check_norm(norm: &CudaWeight, x: &CudaAct) -> Result<(), RuntimeError> {
        Self::check_vector(norm)?;
        if norm.cols != x.cols {
            return Err(RuntimeError::Shape(format!(
                "norm {} has {} weights for {} features",
                norm.name, norm.cols, x.cols
            )));
        }
        Ok(())
    }

    /// Checks that `w` is a vector held as f32 (a norm scale).
    pub(super) fn check_vector(w: &CudaWeight) -> Result<(), RuntimeError> {
        if w.ty != WeightType::F32 || w.rows != 1 {
            return Err(RuntimeError::Shape(format!(
                "tensor {} is not a vector: [{}, {}]",
                w.name, w.rows, w.cols
            )));
        }
        Ok(())
    }

    pub(super) fn check_linear(
        x: &CudaAct,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
        out: &CudaAct,
    ) -> Result<(), RuntimeError> {
        if x.cols != w.cols {
            return Err(RuntimeError::Shape(format!(
                "linear {}: input has {} features, weight expects {}",
                w.name, x.cols, w.cols
            )));
        }
        check("linear output", out, x.rows, w.rows)?;
        if let Some(b) = bias {
            if b.ty != WeightType::F32 || b.rows * b.cols != w.rows {
                return Err(RuntimeError::Shape(format!(
                    "bias {} does not fit {}",
                    b.name, w.name
                )));
            }
        }
        Ok(())
    }

    /// `x` rounded to the weights' 16-bit type, for the tensor cores: staged where the pass
    /// may be recorded, else in a pooled buffer.
    pub(super) fn to_half16(&self, x: &CudaAct, ty: Half16) -> Result<Half16Rows, RuntimeError> {
        let bytes = x.len() * 2;
        let out = if x.rows <= MAX_GRAPH_ROWS {
            Half16Rows::Staged(self.staging.get(&self.dev, bytes)?)
        } else {
            Half16Rows::Pooled(self.pool.get(bytes, "16-bit activations")?)
        };
        // SAFETY: x holds len f32, out room for len 16-bit values.
        unsafe { self.dev.to_half16(ty, x.ptr(), out.ptr(), x.len())? };
        Ok(out)
    }

    /// What products of `rms_norm(x)` read: `x` itself with the norm as their fusion, when the
    /// kernels can apply it on the fly (GEMVs: one row, or 2-16 on the tensor cores); otherwise
    /// `normed`, filled by a pass of its own.
    pub(super) fn normed_input<'a>(
        &self,
        x: &'a CudaAct,
        norm: &CudaWeight,
        eps: f32,
        normed: &'a mut CudaAct,
    ) -> Result<(&'a CudaAct, Fusion), RuntimeError> {
        if self.dev.gemv_fuses_norm(x.rows, x.cols) {
            Self::check_norm(norm, x)?;
            let norm = InputNorm {
                weight: norm.buf.ptr(),
                eps,
            };
            return Ok((
                x,
                Fusion {
                    norm: Some(norm),
                    ..Fusion::default()
                },
            ));
        }
        self.rms_norm(x, norm, eps, normed)?;
        Ok((normed, Fusion::default()))
    }

    /// `out = x @ weight^T (+ bias)` for each of `outs`, with `fusion`'s extras (a norm of
    /// the input: GEMV only, see [`CudaDevice::gemv_fuses_norm`]; `out +=`: any).
    pub(super) fn products(
        &self,
        x: &CudaAct,
        outs: &mut [LinearOut<'_, Self>],
        fusion: Fusion,
    ) -> Result<(), RuntimeError> {
        let Some(ty) = Self::product_type(x, outs)? else {
            return Ok(());
        };
        let gemv = self.gemv_takes(ty, x, outs, fusion)?;
        let label = match x.rows {
            1 => "linear gemv",
            _ if gemv => "linear gemv (tensor cores)",
            _ => "linear gemm",
        };
        self.timed(label, || {
            if gemv {
                for chunk in outs.chunks(3) {
                    // SAFETY: shapes checked above; every buffer holds what the segment says.
                    unsafe { self.dev.gemv(ty, gemv_input(x), &segments(chunk), fusion)? };
                }
                return Ok(());
            }
            if fusion.norm.is_some() {
                return Err(RuntimeError::Unsupported(
                    "the GEMM cannot normalise its input".into(),
                ));
            }
            let a = self.to_half16(x, ty)?;
            self.gemm_products(ty, a.ptr(), x, outs, fusion.accumulate)
        })
    }

    /// Whether the products of `x` into `outs` (of type `ty`, with `fusion`) run as GEMVs
    /// ([`CudaDevice::gemv_takes`]), else as GEMMs.
    pub(super) fn gemv_takes(
        &self,
        ty: Half16,
        x: &CudaAct,
        outs: &[LinearOut<'_, Self>],
        fusion: Fusion,
    ) -> Result<bool, RuntimeError> {
        for chunk in outs.chunks(3) {
            let ns = chunk.iter().map(|o| o.weight.rows);
            if !self
                .dev
                .gemv_takes(ty, x.rows, x.cols, ns, fusion.spare_multiprocessors)?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The storage type shared by the weights of `outs`, after checking every product's shapes
    /// against `x`; None when there is nothing to compute.
    pub(super) fn product_type(
        x: &CudaAct,
        outs: &[LinearOut<'_, Self>],
    ) -> Result<Option<Half16>, RuntimeError> {
        let Some(first) = outs.first() else {
            return Ok(None);
        };
        let ty = Self::half_type(first.weight)?;
        for o in outs {
            Self::check_linear(x, o.weight, o.bias, o.out)?;
            if Self::half_type(o.weight)? != ty {
                return Err(RuntimeError::Unsupported(format!(
                    "{} and {} have different storage types",
                    first.weight.name, o.weight.name
                )));
            }
        }
        Ok((x.rows > 0).then_some(ty))
    }

    /// The GEMMs of `outs` (shapes checked by product_type) on `a`, the address of the 16-bit
    /// rows of the `x` they stand for.
    pub(super) fn gemm_products(
        &self,
        ty: Half16,
        a: u64,
        x: &CudaAct,
        outs: &[LinearOut<'_, Self>],
        accumulate: bool,
    ) -> Result<(), RuntimeError> {
        for chunk in outs.chunks(3) {
            // SAFETY: shapes checked by product_type; `a` holds x.rows x x.cols values.
            unsafe {
                self.dev
                    .gemm(ty, a, x.rows, x.cols, &segments(chunk), accumulate)?
            };
        }
        Ok(())
    }

    /// `rms_norm(x)` rounded to `ty` for the tensor cores, in one pass, into `normed` (f32-sized
    /// for `x`, so twice the room); returns its address.
    pub(super) fn rms_norm_half16(
        &self,
        x: &CudaAct,
        norm: &CudaWeight,
        eps: f32,
        ty: Half16,
        normed: &mut CudaAct,
    ) -> Result<u64, RuntimeError> {
        Self::check_norm(norm, x)?;
        check("normed input", normed, x.rows, x.cols)?;
        // SAFETY: x holds rows x cols f32, normed room for as many 16-bit values, the norm
        // cols f32.
        unsafe {
            self.dev.rms_norm_rows(
                Some(ty),
                x.ptr(),
                norm.buf.ptr(),
                normed.ptr(),
                x.rows,
                x.cols,
                eps,
            )?
        };
        Ok(normed.ptr())
    }
}
