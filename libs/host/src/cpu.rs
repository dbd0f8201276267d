//! CPU pinning.
//!
//! `init` pins every component before it runs (so a component normally does
//! not call [`pin_to_cpu`] itself); [`available_cpus`] tells `init` which
//! CPUs a run script may name.

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
use std::io;

/// Pins the calling thread (the whole process, when called before it starts
/// threads) to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= CpuSet::MAX_CPU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "CPU {cpu} is beyond the largest CPU number {}",
                CpuSet::MAX_CPU - 1
            ),
        ));
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("pinning to CPU {cpu} failed: {e}"),
        )
    })
}

/// The CPUs this process may run on (its affinity mask), ascending.
pub fn available_cpus() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_cpus_is_not_empty_and_pin_works_in_a_thread() {
        let cpus = available_cpus().unwrap();
        assert!(!cpus.is_empty());
        let last = *cpus.last().unwrap();
        std::thread::spawn(move || {
            pin_to_cpu(last).unwrap();
            assert_eq!(available_cpus().unwrap(), vec![last]);
        })
        .join()
        .unwrap();
        assert!(pin_to_cpu(usize::MAX).is_err());
    }
}
