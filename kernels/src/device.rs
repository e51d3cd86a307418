//! [`CudaDevice`]: a CUDA context on one GPU, its stream and the loaded modules.

use std::collections::HashMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use cudarc::driver::{
    result, sys, CudaContext, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream,
    DeviceRepr,
};
use cudarc::nvrtc::Ptx;

use crate::error::cuda_err;
use crate::launch::{DecodePolicy, DecodeTc, TcPlan};
use crate::layouts::QRT_GEMV_MAX_SPLIT;
use crate::memory::{DeviceBuffer, MemoryCounter};
use crate::{ptx, KernelError, BUILD_INFO};

/// Oldest driver API version that loads the embedded PTX (13.0, encoded as 1000 * major +
/// 10 * minor).
const MIN_DRIVER_CUDA_VERSION: i32 = 13000;

/// Oldest compute capability the kernels are built for (`sm_80`).
const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// Most weight bytes a product of 9 to 16 rows runs through on the tensor-core GEMV where the
/// skinny GEMM could take it. Beyond, the GEMV's staging of up to 16 input rows per block costs
/// more than the skinny GEMM's fixed cost saves. On an H200 (`qrt bench kernels` at 16 rows,
/// RESULTS log 55): the 1B's q/k/v, o and down 7.9 / 6.4 / 14.3 us against 10.7 / 9.3 / 16.9,
/// its gate+up (64 MiB) 23.7 with the norm against 20.5 and a norm pass, but its decode steps
/// at 16 sequences 2% faster with gate+up on the GEMV; the 8B's q/k/v (48 MiB) and o 17.8 /
/// 14.8 against 19.7 / 17.0, its down (112 MiB) and gate+up 46.8 / 71.9 against 41.5 / 65.7.
const WIDE_GEMV_MAX_BYTES: usize = 80 << 20;

/// A tensor-core GEMV plan's key: kernel stem, tiles, batch, k, whether it spares
/// multiprocessors.
pub(crate) type TcPlanKey = (String, usize, usize, usize, bool);

/// A CUDA context on one GPU, with a stream and the kernel modules it has
/// loaded so far (each module's PTX is loaded on first use and cached).
///
/// The PTX is picked by compute capability: `sm_90` PTX on devices of
/// capability 9.0 and newer, `sm_80` PTX on 8.x; the driver JIT-compiles it.
pub struct CudaDevice {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) memory: Arc<MemoryCounter>,
    ordinal: usize,
    pub(crate) name: String,
    compute_capability: (i32, i32),
    total_memory: usize,
    multiprocessors: usize,
    arch: &'static str,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// Launch with programmatic dependent launch (compute capability 9.0 and newer, unless
    /// `QRT_PDL=0`).
    pub(crate) programmatic_launch: bool,
    /// GEMMs with a long k on wgmma (compute capability 9.0 exactly, whose arch-specific PTX
    /// the wgmma module is, unless `QRT_GEMM=mma` asks for the mma.sync kernels everywhere).
    pub(crate) wgmma: bool,
    /// Decode attention merges its partitions within a thread-block cluster (compute
    /// capability 9.0, where clusters of 16 blocks were measured, unless
    /// `QRT_DECODE_CLUSTER=0`).
    pub(crate) decode_clusters: bool,
    /// GEMMs with fewer tiles than multiprocessors split their k loop across a cluster
    /// (compute capability 9.0, unless `QRT_GEMM_SPLITK=0`).
    pub(crate) gemm_split_k: bool,
    /// Other than at compute capability 9.0 (whose GEMMs split over clusters), the workspace
    /// through which the mma.sync GEMMs with fewer tiles than multiprocessors split their k
    /// loop (`global_split` in launch/gemm.rs), allocated with the device unless
    /// `QRT_GEMM_SPLITK=0`; None elsewhere.
    pub(crate) split_workspace: Option<DeviceBuffer>,
    /// Prefill GEMMs (up to three matrices, or SwiGLU's gate and up) on the TMA-fed wgmma kernel
    /// (compute capability 9.0, unless `QRT_GEMM` is `mma` or `wgmma`).
    pub(crate) gemm_tma: bool,
    /// Products of at most [`GEMM_SKINNY_MAX_M`](crate::launch::GEMM_SKINNY_MAX_M) rows on the
    /// skinny TMA kernel (where `gemm_tma` holds, unless `QRT_GEMM_SKINNY=0`).
    pub(crate) gemm_skinny: bool,
    /// Skinny GEMMs of small products request their first weights before their wait (unless
    /// `QRT_GEMM_SKINNY_AHEAD=0`; see `OVERLAP_BYTES` in launch/mod.rs).
    pub(crate) skinny_ahead: bool,
    /// Most weight bytes of a product of more than `QRT_GEMV_MAX_BATCH` rows that runs on the
    /// tensor-core GEMV of 16 batch columns rather than a GEMM (`QRT_GEMV_WIDE_MAX_MB`, MiB;
    /// by default [`WIDE_GEMV_MAX_BYTES`] where the skinny GEMM runs, any size elsewhere).
    pub(crate) wide_gemv_max_bytes: usize,
    /// When decode attention scores on tensor cores (`QRT_ATTN_TC`: `0` never, `all` always).
    decode_tc: DecodeTc,
    /// Most blocks of a cluster that split a batched tensor-core GEMV's k (compute capability
    /// 9.0: `QRT_GEMV_TC_SPLIT`, a power of two up to `QRT_GEMV_MAX_SPLIT` = 16, which is
    /// also the default; 1 elsewhere).
    pub(crate) gemv_tc_split: u32,
    /// Tensor-core GEMV plans by [`TcPlanKey`].
    pub(crate) tc_plans: Mutex<HashMap<TcPlanKey, Option<TcPlan>>>,
    /// Most blocks of a skinny GEMM's cluster the device places (found at first use).
    pub(crate) skinny_split_cap: OnceLock<usize>,
    /// Batch-one GEMV launches prefer a shared-memory configuration with room for the next
    /// kernel's blocks (with programmatic launch, unless `QRT_GEMV_CARVEOUT=0`).
    pub(crate) gemv_one_carveout: bool,
    /// Merging tensor-core GEMVs of one block a multiprocessor prefer a shared-memory
    /// configuration with room beside their blocks (with programmatic launch, unless
    /// `QRT_MERGE_CARVEOUT=0`; `merge_headroom` in launch/carveout.rs).
    pub(crate) merge_carveout: bool,
    /// Shared memory of one multiprocessor, bytes.
    pub(crate) shared_per_sm: usize,
    /// Shared memory the driver reserves for each block, bytes.
    pub(crate) shared_reserved: usize,
    /// Most shared memory one block may opt in to, bytes.
    pub(crate) shared_optin: usize,
}

/// The compute capability whose route `QRT_CUDA_ARCH` asks for: none (unset: the device's
/// own), or with `sm_80` that of 8.0 (the sm_80 PTX and none of Hopper's features: no
/// programmatic launch, clusters, wgmma or TMA), so that the route of the A100 can be checked
/// on a newer GPU. Any other value is a [`KernelError::Config`].
fn requested_route() -> Result<Option<(i32, i32)>, KernelError> {
    match std::env::var("QRT_CUDA_ARCH").as_deref() {
        Err(_) | Ok("") => Ok(None),
        Ok("sm_80") => Ok(Some((8, 0))),
        Ok(other) => Err(KernelError::Config(format!(
            "QRT_CUDA_ARCH={other}: the one route that can be asked for is sm_80 (unset: the \
             device's own)"
        ))),
    }
}

/// The A100's shared memory, bytes: what a block may opt in to, and a multiprocessor's
/// (the route of compute capability 8.0 plans within them on a larger device too).
const SM80_SHARED_OPTIN: usize = 163 * 1024;
const SM80_SHARED_PER_SM: usize = 164 * 1024;

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("total_memory", &self.total_memory)
            .field("arch", &self.arch)
            .field("wgmma", &self.wgmma)
            .field("decode_clusters", &self.decode_clusters)
            .field("decode_tc", &self.decode_tc)
            .finish_non_exhaustive()
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal` (0-based).
    ///
    /// Never panics for want of a GPU: without a loadable `libcuda.so` this is
    /// [`KernelError::NoDriver`]; with a driver but no such device, or one older
    /// than compute capability 8.0, it is [`KernelError::NoDevice`]; with a `QRT_CUDA_ARCH`
    /// it does not know, [`KernelError::Config`], before any device is looked for. It
    /// succeeds on a build without kernels (then launches fail with
    /// [`KernelError::NoKernels`]).
    pub fn new(ordinal: usize) -> Result<Self, KernelError> {
        let route = requested_route()?;
        // cudarc panics on its first driver call if libcuda cannot be loaded,
        // so look for the library first.
        // SAFETY: only dlopen()s libcuda under its usual names, and closes it.
        if !unsafe { sys::is_culib_present() } {
            return Err(KernelError::NoDriver(
                "no CUDA driver found (libcuda.so): the library could not be loaded; \
                 is the NVIDIA driver installed?"
                    .to_string(),
            ));
        }
        // A library that loads but lacks a symbol cudarc needs also panics.
        panic::catch_unwind(AssertUnwindSafe(|| Self::open(ordinal, route))).unwrap_or_else(
            |payload| {
                let reason = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown failure");
                Err(KernelError::NoDriver(format!(
                    "the CUDA driver library (libcuda.so) is not usable: {reason}"
                )))
            },
        )
    }

    fn open(ordinal: usize, route: Option<(i32, i32)>) -> Result<Self, KernelError> {
        if let Err(e) = result::init() {
            return Err(if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
                KernelError::NoDevice(format!("the CUDA driver sees no GPU ({e})"))
            } else {
                KernelError::NoDriver(format!("the CUDA driver failed to initialise: {e}"))
            });
        }
        // The embedded PTX is ISA 9.0 (CUDA 13.0): older drivers cannot load it.
        let mut driver = 0;
        // SAFETY: writes one int.
        unsafe { sys::cuDriverGetVersion(&mut driver) }
            .result()
            .map_err(cuda_err("querying the driver version"))?;
        if driver < MIN_DRIVER_CUDA_VERSION {
            return Err(KernelError::NoDriver(format!(
                "the NVIDIA driver supports CUDA {}.{}; qrt's kernels (PTX ISA 9.0) need a driver \
                 for CUDA 13.0 or newer (R580+): update the driver",
                driver / 1000,
                driver % 1000 / 10
            )));
        }
        let count = CudaContext::device_count().map_err(cuda_err("counting devices"))?;
        if ordinal >= usize::try_from(count).unwrap_or(0) {
            return Err(KernelError::NoDevice(format!(
                "device {ordinal} requested, the driver sees {count}"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err(format_args!(
            "creating a context on device {ordinal}"
        )))?;
        let name = ctx.name().map_err(cuda_err(format_args!(
            "querying the name of device {ordinal}"
        )))?;
        let compute_capability = ctx.compute_capability().map_err(cuda_err(format_args!(
            "querying the compute capability of device {ordinal}"
        )))?;
        if compute_capability < MIN_COMPUTE_CAPABILITY {
            return Err(KernelError::NoDevice(format!(
                "device {ordinal} ({name}) has compute capability {}.{}; qrt's kernels need {}.{} or newer",
                compute_capability.0,
                compute_capability.1,
                MIN_COMPUTE_CAPABILITY.0,
                MIN_COMPUTE_CAPABILITY.1
            )));
        }
        let compute_capability = route.map_or(compute_capability, |r| r.min(compute_capability));
        let total_memory = ctx.total_mem().map_err(cuda_err(format_args!(
            "querying the memory of device {ordinal}"
        )))?;
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(cuda_err(format_args!(
                "querying the multiprocessors of device {ordinal}"
            )))?;
        let shared_attribute = |attribute, what| {
            ctx.attribute(attribute)
                .map(|v| usize::try_from(v).unwrap_or(0))
                .map_err(cuda_err(format_args!(
                    "querying the {what} of device {ordinal}"
                )))
        };
        let shared_per_sm = shared_attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
            "shared memory per multiprocessor",
        )?;
        let shared_reserved = shared_attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK,
            "shared memory reserved per block",
        )?;
        let shared_optin = shared_attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            "shared memory a block may opt in to",
        )?;
        // The sm_80 route plans within the A100's shared memory, also on a larger device.
        let (shared_per_sm, shared_optin) = match route {
            Some(_) => (
                shared_per_sm.min(SM80_SHARED_PER_SM),
                shared_optin.min(SM80_SHARED_OPTIN),
            ),
            None => (shared_per_sm, shared_optin),
        };
        let programmatic_launch =
            compute_capability >= (9, 0) && std::env::var("QRT_PDL").map_or(true, |v| v != "0");
        let arch = if compute_capability >= (9, 0) {
            "sm_90"
        } else {
            "sm_80"
        };
        // One stream, so cudarc's cross-stream event tracking is not needed (and it would
        // record events inside CUDA-graph captures). The legacy default stream cannot be
        // captured, hence a stream of our own.
        // SAFETY: every allocation and launch of this device goes to `stream`.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda_err(format_args!(
            "creating a stream on device {ordinal}"
        )))?;
        let gemm_tma = compute_capability == (9, 0)
            && std::env::var("QRT_GEMM").map_or(true, |v| v != "mma" && v != "wgmma");
        let gemm_skinny = gemm_tma && std::env::var("QRT_GEMM_SKINNY").map_or(true, |v| v != "0");
        let split_k = std::env::var("QRT_GEMM_SPLITK").map_or(true, |v| v != "0");
        let mut dev = Self {
            ctx,
            stream,
            memory: Arc::default(),
            ordinal,
            name,
            compute_capability,
            total_memory,
            multiprocessors: usize::try_from(multiprocessors).unwrap_or(1).max(1),
            arch,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            programmatic_launch,
            wgmma: compute_capability == (9, 0)
                && std::env::var("QRT_GEMM").map_or(true, |v| v != "mma"),
            decode_clusters: compute_capability == (9, 0)
                && std::env::var("QRT_DECODE_CLUSTER").map_or(true, |v| v != "0"),
            gemm_split_k: compute_capability == (9, 0) && split_k,
            split_workspace: None,
            gemm_tma,
            gemm_skinny,
            skinny_ahead: std::env::var("QRT_GEMM_SKINNY_AHEAD").map_or(true, |v| v != "0"),
            wide_gemv_max_bytes: std::env::var("QRT_GEMV_WIDE_MAX_MB")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .map_or(
                    if gemm_skinny {
                        WIDE_GEMV_MAX_BYTES
                    } else {
                        usize::MAX
                    },
                    |mb| mb << 20,
                ),
            decode_tc: match std::env::var("QRT_ATTN_TC").as_deref() {
                Ok("0") => DecodeTc::Never,
                Ok("all") => DecodeTc::Always,
                _ => DecodeTc::Batched,
            },
            gemv_tc_split: if compute_capability == (9, 0) {
                std::env::var("QRT_GEMV_TC_SPLIT")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .filter(|c: &u32| c.is_power_of_two() && *c <= QRT_GEMV_MAX_SPLIT)
                    .unwrap_or(QRT_GEMV_MAX_SPLIT)
            } else {
                1
            },
            tc_plans: Mutex::new(HashMap::new()),
            skinny_split_cap: OnceLock::new(),
            gemv_one_carveout: programmatic_launch
                && std::env::var("QRT_GEMV_CARVEOUT").map_or(true, |v| v != "0"),
            merge_carveout: programmatic_launch
                && std::env::var("QRT_MERGE_CARVEOUT").map_or(true, |v| v != "0"),
            shared_per_sm,
            shared_reserved,
            shared_optin,
        };
        if compute_capability != (9, 0) && split_k {
            dev.split_workspace = Some(dev.split_k_workspace()?);
        }
        Ok(dev)
    }

    /// The device's ordinal (0-based).
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's name, e.g. "NVIDIA H200".
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Compute capability (major, minor), e.g. (9, 0), of the route the kernels take (the
    /// device's own unless `QRT_CUDA_ARCH` asks for sm_80's).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// Total device memory in bytes.
    pub fn total_memory(&self) -> usize {
        self.total_memory
    }

    /// Streaming multiprocessors of the device (132 on an H100/H200 SXM).
    pub fn multiprocessors(&self) -> usize {
        self.multiprocessors
    }

    /// Shared memory of one multiprocessor that blocks may use, bytes (its total less the
    /// driver's reserve for one block: 227 KiB on Hopper).
    pub(crate) fn block_shared_per_sm(&self) -> usize {
        self.shared_per_sm.saturating_sub(self.shared_reserved)
    }

    /// How decode attention splits contexts on this device (see [`DecodePolicy`]).
    pub fn decode_policy(&self) -> DecodePolicy {
        DecodePolicy {
            multiprocessors: self.multiprocessors,
            tensor_cores: self.decode_tc,
        }
    }

    /// This device with decode attention on tensor cores as `tc` says, whatever
    /// `QRT_ATTN_TC` asked (the selftest checks every mode).
    pub fn with_decode_tc(mut self, tc: DecodeTc) -> Self {
        self.decode_tc = tc;
        self
    }

    /// The PTX arch used on this device: `sm_90` or `sm_80`.
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// Makes this device's context current on the calling thread (before any driver call).
    pub(crate) fn bind(&self) -> Result<(), KernelError> {
        self.ctx
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))
    }

    /// The stream all work of this device goes to.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Kernel `kernel` of module `module`, looked up once and cached.
    pub(crate) fn function(
        &self,
        module: &'static str,
        kernel: &str,
    ) -> Result<CudaFunction, KernelError> {
        let mut functions = self
            .functions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = functions.get(kernel) {
            return Ok(f.clone());
        }
        let f = self.lookup_function(module, kernel)?;
        functions.insert(kernel.to_string(), f.clone());
        Ok(f)
    }

    /// Looks kernel `kernel` up in module `module` (loading and caching the module on first use).
    fn lookup_function(
        &self,
        module: &'static str,
        kernel: &str,
    ) -> Result<CudaFunction, KernelError> {
        let loaded = {
            let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
            match modules.get(module) {
                Some(loaded) => loaded.clone(),
                None => {
                    let loaded = self.load_module(module)?;
                    modules.insert(module, loaded.clone());
                    loaded
                }
            }
        };
        loaded.load_function(kernel).map_err(cuda_err(format_args!(
            "looking up kernel {kernel} in module {module} ({})",
            self.arch
        )))
    }

    fn load_module(&self, module: &'static str) -> Result<Arc<CudaModule>, KernelError> {
        if !BUILD_INFO.cuda_kernels {
            return Err(KernelError::NoKernels);
        }
        let text = ptx(module, self.arch).ok_or_else(|| {
            KernelError::Cuda(format!("no {} PTX embedded for module {module}", self.arch))
        })?;
        self.ctx
            .load_module(Ptx::from_src(text))
            .map_err(cuda_err(format_args!(
                "loading the {} PTX of module {module} on device {} ({}, compute capability {}.{})",
                self.arch,
                self.ordinal,
                self.name,
                self.compute_capability.0,
                self.compute_capability.1
            )))
    }

    /// Copies `host` to a new device buffer.
    pub(crate) fn upload<T: DeviceRepr>(
        &self,
        what: &str,
        host: &[T],
    ) -> Result<CudaSlice<T>, KernelError> {
        self.stream.clone_htod(host).map_err(cuda_err(format_args!(
            "uploading {what} ({} elements)",
            host.len()
        )))
    }

    /// Copies a device buffer back to the host.
    pub(crate) fn download<T: DeviceRepr>(
        &self,
        what: &str,
        device: &CudaSlice<T>,
    ) -> Result<Vec<T>, KernelError> {
        self.stream
            .clone_dtoh(device)
            .map_err(cuda_err(format_args!(
                "downloading {what} ({} elements)",
                device.len()
            )))
    }

    /// Starts recording the work queued on this device's stream into a CUDA graph instead of
    /// running it; [`end_capture`](Self::end_capture) returns the graph.
    pub fn begin_capture(&self) -> Result<(), KernelError> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err("starting a CUDA graph capture"))
    }

    /// Ends a capture started by [`begin_capture`](Self::begin_capture) and instantiates the
    /// graph.
    pub fn end_capture(&self) -> Result<Graph, KernelError> {
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(cuda_err("ending a CUDA graph capture"))?
            .ok_or_else(|| KernelError::Cuda("the CUDA graph capture recorded nothing".into()))?;
        Ok(Graph(graph))
    }

    /// Queues a replay of `graph` on this device's stream.
    pub fn replay(&self, graph: &Graph) -> Result<(), KernelError> {
        graph.0.launch().map_err(cuda_err("replaying a CUDA graph"))
    }

    /// A timing event recorded now on this device's stream.
    pub fn record_event(&self) -> Result<Event, KernelError> {
        let event = self
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda_err("creating a CUDA event"))?;
        event
            .record(&self.stream)
            .map_err(cuda_err("recording a CUDA event"))?;
        Ok(Event(event))
    }

    /// Waits for the stream and reports any error raised by work on it
    /// (`what` says which work, for the message).
    pub fn synchronize(&self, what: &str) -> Result<(), KernelError> {
        self.stream
            .synchronize()
            .map_err(cuda_err(format_args!("{what} (at synchronize)")))?;
        self.ctx
            .check_err()
            .map_err(cuda_err(format_args!("{what} (deferred error)")))
    }
}

/// A recorded CUDA graph, replayed with [`CudaDevice::replay`].
pub struct Graph(CudaGraph);

// SAFETY: CUDA graph and graph-exec handles belong to a context, not to a thread: the driver
// API may use them from any thread (cudarc's CudaGraph is !Send only because it holds raw
// pointers). Replays are ordered by the one stream they are launched on.
unsafe impl Send for Graph {}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Graph")
    }
}

/// A point in a device's stream, for timing work on the device.
#[derive(Debug)]
pub struct Event(cudarc::driver::CudaEvent);

impl Event {
    /// Waits until the device has passed this event.
    pub fn wait(&self) -> Result<(), KernelError> {
        self.0
            .synchronize()
            .map_err(cuda_err("waiting for a CUDA event"))
    }

    /// Milliseconds of device time from `self` to `end` (waits for `end`).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32, KernelError> {
        end.0
            .synchronize()
            .map_err(cuda_err("waiting for a CUDA event"))?;
        self.0
            .elapsed_ms(&end.0)
            .map_err(cuda_err("reading a CUDA event's time"))
    }
}
