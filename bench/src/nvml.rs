//! Device memory in use, as the NVIDIA driver reports it through NVML (the NVIDIA Management
//! Library). `libnvidia-ml.so.1` is loaded when [`GpuMemory::open`] runs, not linked at build
//! time, so a machine without the driver still runs everything else and only gets an error
//! from `open`.
//!
//! NVML numbers devices in PCI bus order and ignores `CUDA_VISIBLE_DEVICES`, so an NVML index
//! can differ from the CUDA ordinal of the same GPU.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nvml_wrapper::{Device, Nvml};

/// One GPU's memory counters, read through NVML.
pub struct GpuMemory {
    nvml: Nvml,
    index: u32,
}

impl GpuMemory {
    /// Loads NVML and checks that GPU `index` (an NVML index) exists. The error says whether
    /// the library or driver is missing or the device is.
    pub fn open(index: u32) -> Result<GpuMemory, String> {
        let nvml = Nvml::init().map_err(|e| {
            format!(
                "NVML unavailable (is the NVIDIA driver installed, with libnvidia-ml.so.1 on \
                 the library path?): {e}"
            )
        })?;
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML could not count GPUs: {e}"))?;
        if index >= count {
            return Err(format!(
                "no GPU with NVML index {index}: NVML sees {count} GPU(s)"
            ));
        }
        let gpu = GpuMemory { nvml, index };
        gpu.device()?;
        Ok(gpu)
    }

    fn device(&self) -> Result<Device<'_>, String> {
        self.nvml
            .device_by_index(self.index)
            .map_err(|e| format!("NVML could not open GPU {}: {e}", self.index))
    }

    /// Device memory in use by all processes and the driver, in bytes (NVML's
    /// `memory_info().used`).
    pub fn used_bytes(&self) -> Result<u64, String> {
        let info = self
            .device()?
            .memory_info()
            .map_err(|e| format!("NVML could not read GPU {} memory: {e}", self.index))?;
        Ok(info.used)
    }
}

/// Records the peak of [`GpuMemory::used_bytes`] over a stretch of time, by polling it on a
/// background thread every [`PeakSampler::INTERVAL`].
pub struct PeakSampler {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<u64>,
}

impl PeakSampler {
    /// Time between two readings.
    pub const INTERVAL: Duration = Duration::from_millis(5);

    /// Takes a first reading (whose error is returned) and starts polling. Readings that
    /// fail after that are skipped.
    pub fn start(gpu: Arc<GpuMemory>) -> Result<PeakSampler, String> {
        let first = gpu.used_bytes()?;
        PeakSampler::spawn(first, move || gpu.used_bytes())
    }

    fn spawn(
        first: u64,
        mut read: impl FnMut() -> Result<u64, String> + Send + 'static,
    ) -> Result<PeakSampler, String> {
        let (stop, stopped) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("qrt-peak-memory".into())
            .spawn(move || {
                let mut peak = first;
                loop {
                    // A message or a dropped sender both mean stop, after one last reading.
                    let last = !matches!(
                        stopped.recv_timeout(PeakSampler::INTERVAL),
                        Err(RecvTimeoutError::Timeout)
                    );
                    if let Ok(bytes) = read() {
                        peak = peak.max(bytes);
                    }
                    if last {
                        return peak;
                    }
                }
            })
            .map_err(|e| format!("cannot start the memory sampling thread: {e}"))?;
        Ok(PeakSampler { stop, thread })
    }

    /// Takes a last reading, stops polling and returns the largest reading seen, in bytes.
    pub fn stop(self) -> u64 {
        // The thread only ends by returning once told to stop, so a send error cannot happen;
        // and dropping `self.stop` would stop it anyway.
        let _ = self.stop.send(());
        match self.thread.join() {
            Ok(peak) => peak,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    #[test]
    fn open_reports_missing_gpu_as_error() {
        // No machine has this many GPUs: either NVML is missing or the index is out of range.
        let err = GpuMemory::open(u32::MAX)
            .err()
            .expect("GPU u32::MAX opened");
        assert!(err.contains("NVML"), "{err}");
    }

    #[test]
    fn open_first_gpu_or_explain() {
        match GpuMemory::open(0) {
            Err(err) => assert!(err.contains("NVML"), "{err}"),
            Ok(gpu) => {
                // An idle GPU can report 0 bytes used (NVML counts reserved memory apart), so
                // only check that every reading succeeds.
                gpu.used_bytes().unwrap();
                let sampler = PeakSampler::start(Arc::new(gpu)).unwrap();
                thread::sleep(Duration::from_millis(20));
                sampler.stop();
            }
        }
    }

    #[test]
    fn sampler_keeps_the_maximum() {
        let values = [3u64, 42, 7, 5];
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let sampler = PeakSampler::spawn(1, move || {
            let i = seen.fetch_add(1, Ordering::SeqCst);
            match values.get(i) {
                Some(&v) => Ok(v),
                None => Err("no more readings".to_string()),
            }
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) < values.len() && Instant::now() < deadline {
            thread::sleep(PeakSampler::INTERVAL);
        }
        assert_eq!(sampler.stop(), 42);
    }

    #[test]
    fn sampler_reads_once_more_at_stop_and_skips_errors() {
        let sampler = PeakSampler::spawn(10, || Ok(99)).unwrap();
        assert_eq!(sampler.stop(), 99);
        let sampler = PeakSampler::spawn(10, || Err("driver gone".to_string())).unwrap();
        assert_eq!(sampler.stop(), 10);
    }
}
