//! CPU seconds and memory of the processes under test, read from `/proc`.
//!
//! A process is measured with its descendants (PostgreSQL is a postmaster and its backends):
//! user + system time of the live ones, plus what exited children left in their parents'
//! `cutime`/`cstime`. Memory is the proportional set size (`Pss`), so the shared buffers of a
//! PostgreSQL's processes are counted once, not once per backend.

use std::collections::HashMap;

/// One process tree's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_s: f64,
    pub pss_bytes: u64,
}

fn ticks_per_second() -> f64 {
    // `sysconf(_SC_CLK_TCK)`; 100 on every Linux this runs on.
    100.0
}

/// (ppid, utime + stime, cutime + cstime) in ticks, from a `/proc/<pid>/stat` line.
pub fn parse_stat(stat: &str) -> Option<(u32, u64, u64)> {
    // The command name is parenthesised and may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15, cutime 16, cstime 17.
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some((
        u32::try_from(num(4)?).ok()?,
        num(14)? + num(15)?,
        num(16)? + num(17)?,
    ))
}

pub(crate) fn pss(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Usage of `root` and all its descendants now.
pub fn tree(root: u32) -> Usage {
    let mut stats: HashMap<u32, (u32, u64, u64)> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(s) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                stats.insert(pid, s);
            }
        }
    }
    let mut members = vec![root];
    let mut i = 0;
    while i < members.len() {
        let parent = members[i];
        members.extend(
            stats
                .iter()
                .filter(|(_, s)| s.0 == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    let mut ticks = 0u64;
    let mut bytes = 0u64;
    for pid in members {
        if let Some((_, own, reaped)) = stats.get(&pid) {
            ticks += own + reaped;
            bytes += pss(pid);
        }
    }
    Usage {
        cpu_s: ticks as f64 / ticks_per_second(),
        pss_bytes: bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_spaces_in_the_name() {
        let line = "4242 (postgres: quizflow app) S 4000 4242 4242 0 -1 4194560 100 0 0 0 \
                    150 50 7 3 20 0 1 0 12345 1000000 250 18446744073709551615";
        assert_eq!(parse_stat(line), Some((4000, 200, 10)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_uses_some_cpu_and_memory() {
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let u = tree(std::process::id());
        assert!(u.pss_bytes > 0);
        assert!(u.cpu_s >= 0.0);
    }
}
