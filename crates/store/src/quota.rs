//! A team's quota against what its live environments use: the arithmetic and the words of a
//! refusal, the same whichever backend counted.

use airlock_core::model::{Quota, Resources};

/// Which limit of `quota` one more environment of `adding` would pass, if any.
pub(crate) fn over_quota(
    quota: &Quota,
    count: u64,
    used: &Resources,
    adding: &Resources,
) -> Option<String> {
    if let Some(max) = quota.max_environments
        && count + 1 > max
    {
        return Some(format!("{count} of {max} environments"));
    }
    if let Some(max) = quota.max_memory_mib
        && used.memory_mib + adding.memory_mib > max
    {
        return Some(format!(
            "{} MiB of {max} MiB of memory in use, {} asked",
            used.memory_mib, adding.memory_mib
        ));
    }
    if let Some(max) = quota.max_millicpus
        && used.millicpus + adding.millicpus > max
    {
        return Some(format!(
            "{} of {} CPUs in use, {} asked",
            used.millicpus as f64 / 1000.0,
            max as f64 / 1000.0,
            adding.millicpus as f64 / 1000.0
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `adding` (memory MiB, millicpus) to `used` (environments, memory MiB, millicpus).
    fn check(quota: Quota, used: (u64, u64, u64), adding: (u64, u64), expected: Option<&str>) {
        let resources = |memory_mib, millicpus| Resources {
            memory_mib,
            millicpus,
            pids: 64,
            disk_mib: 1024,
        };
        let (count, memory_mib, millicpus) = used;
        let refusal = over_quota(
            &quota,
            count,
            &resources(memory_mib, millicpus),
            &resources(adding.0, adding.1),
        );
        assert_eq!(refusal.as_deref(), expected);
    }

    #[test]
    fn a_limit_may_be_reached_but_not_passed() {
        let quota = Quota {
            max_environments: Some(2),
            max_memory_mib: Some(1000),
            max_millicpus: Some(1500),
        };
        check(quota, (1, 600, 500), (400, 1000), None);
        check(quota, (2, 0, 0), (1, 1), Some("2 of 2 environments"));
        check(
            quota,
            (1, 800, 0),
            (400, 0),
            Some("800 MiB of 1000 MiB of memory in use, 400 asked"),
        );
        check(
            quota,
            (1, 0, 1000),
            (0, 1000),
            Some("1 of 1.5 CPUs in use, 1 asked"),
        );
        check(
            Quota::default(),
            (1000, 1 << 40, 1 << 40),
            (1 << 40, 1 << 40),
            None,
        );
    }
}
