//! `QRT_PROFILE=1`: the device time of every op, by kind.

use super::*;

/// An op's label and the events around it.
pub(super) type TimedOp = (&'static str, Event, Event);

impl CudaBackend {
    /// Runs `op`, recording its device time under `label` when profiling.
    pub(super) fn timed<T>(
        &self,
        label: &'static str,
        op: impl FnOnce() -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let Some(profile) = &self.profile else {
            return op();
        };
        let start = self.dev.record_event()?;
        let out = op()?;
        let end = self.dev.record_event()?;
        profile
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((label, start, end));
        Ok(out)
    }

    /// With `QRT_PROFILE=1`: device time per kind of op since the last report, as a table
    /// (and the record is cleared). `None` when not profiling.
    pub fn profile_report(&self) -> Result<Option<String>, RuntimeError> {
        let Some(profile) = &self.profile else {
            return Ok(None);
        };
        let events = std::mem::take(&mut *profile.lock().unwrap_or_else(PoisonError::into_inner));
        let mut totals: Vec<(&str, usize, f64)> = Vec::new();
        for (label, start, end) in &events {
            let ms = f64::from(start.elapsed_ms(end)?);
            match totals.iter_mut().find(|t| t.0 == *label) {
                Some(t) => {
                    t.1 += 1;
                    t.2 += ms;
                }
                None => totals.push((label, 1, ms)),
            }
        }
        totals.sort_by(|a, b| b.2.total_cmp(&a.2));
        let all: f64 = totals.iter().map(|t| t.2).sum();
        let mut out = format!(
            "{:<28} {:>8} {:>12} {:>10} {:>7}\n",
            "op", "calls", "total ms", "mean us", "share"
        );
        for (label, n, ms) in totals {
            out += &format!(
                "{label:<28} {n:>8} {ms:>12.3} {:>10.2} {:>6.1}%\n",
                ms * 1e3 / n as f64,
                100.0 * ms / all.max(f64::MIN_POSITIVE)
            );
        }
        Ok(Some(out))
    }
}
