// SPDX-License-Identifier: GPL-2.0
//! Kernel-log splat scanner.

/// Markers of a kernel splat. Any of them in the serial log fails the run.
pub const PATTERNS: &[&str] = &[
    "BUG:",
    "WARNING:",
    "KASAN",
    "possible circular locking",
    "list_del corruption",
    "list_add corruption",
    "Oops",
    "Kernel panic",
    "general protection fault",
    "UBSAN",
    "Call Trace",
];

/// One splat: the line it was found on (1-based), the matching pattern and some context.
#[derive(Clone, Debug)]
pub struct Splat {
    /// Line number in the log, 1-based.
    pub line: usize,
    /// The pattern that matched.
    pub pattern: &'static str,
    /// The matching line and up to 25 after it.
    pub excerpt: String,
}

/// Find every line of `log` that matches one of [`PATTERNS`]. Lines of one splat after its first
/// line (e.g. the `Call Trace:` of a `WARNING:`) are part of its excerpt, not separate splats.
pub fn scan(log: &str) -> Vec<Splat> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out: Vec<Splat> = Vec::new();
    let mut covered_until = 0;
    for (i, l) in lines.iter().enumerate() {
        let Some(pattern) = PATTERNS.iter().find(|p| l.contains(*p)) else {
            continue;
        };
        if i < covered_until {
            continue;
        }
        let end = (i + 26).min(lines.len());
        covered_until = end;
        out.push(Splat {
            line: i + 1,
            pattern,
            excerpt: lines[i..end].join("\n"),
        });
    }
    out
}

/// A report of `splats` for an error message.
pub fn report(splats: &[Splat]) -> String {
    let mut s = format!("{} kernel splat(s) in the serial log:", splats.len());
    for sp in splats {
        s.push_str(&format!(
            "\n--- line {} ({:?}) ---\n{}",
            sp.line, sp.pattern, sp.excerpt
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::scan;

    #[test]
    fn clean_log_has_no_splats() {
        assert!(
            scan("[    0.000000] Linux version 7.3.4\n[    1.0] virtio_balloon virtio2: ok\n")
                .is_empty()
        );
    }

    #[test]
    fn warning_and_its_trace_are_one_splat() {
        let log = "ok\n[ 1.0] WARNING: CPU: 0 PID: 1 at mm/balloon.c:10\n[ 1.0] Call Trace:\n[ 1.0]  <TASK>\n";
        let s = scan(log);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].line, 2);
        assert_eq!(s[0].pattern, "WARNING:");
        assert!(s[0].excerpt.contains("Call Trace:"));
    }

    #[test]
    fn separate_splats_are_reported_separately() {
        let mut log = String::from("BUG: sleeping function called from invalid context\n");
        log.push_str(&"filler\n".repeat(40));
        log.push_str("list_del corruption. prev->next should be ...\n");
        let s = scan(&log);
        assert_eq!(
            s.iter().map(|s| s.pattern).collect::<Vec<_>>(),
            ["BUG:", "list_del corruption"]
        );
    }
}
