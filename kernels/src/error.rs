//! The error type of this crate.

/// Everything that can go wrong finding a GPU or running a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// This binary was built without nvcc, so it has no kernels.
    #[error(
        "this build has no CUDA kernels (nvcc was not found at build time); \
         run tools/setup.sh and rebuild"
    )]
    NoKernels,
    /// The CUDA driver library (`libcuda.so`) cannot be loaded or initialised.
    #[error("{0}")]
    NoDriver(String),
    /// The driver works but there is no (suitable) device with the requested ordinal.
    #[error("no usable CUDA device: {0}")]
    NoDevice(String),
    /// A CUDA driver call failed; the message says which and what it was doing.
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// A device allocation failed for want of memory.
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    /// Arguments whose lengths or sizes do not fit together.
    #[error("bad shape: {0}")]
    Shape(String),
    /// A setting (an environment variable) that asks for something this build cannot do:
    /// an error wherever a GPU would be opened, also where another device could serve.
    #[error("bad setting: {0}")]
    Config(String),
}

/// Maps a driver error to [`KernelError::Cuda`] with `context`.
pub(crate) fn cuda_err(
    context: impl std::fmt::Display,
) -> impl FnOnce(cudarc::driver::DriverError) -> KernelError {
    move |e| KernelError::Cuda(format!("{context}: {e}"))
}
