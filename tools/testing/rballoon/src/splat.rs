// SPDX-License-Identifier: GPL-2.0
//! Kernel-log splat scanner.

/// Markers of a kernel splat. Any of them in the serial log fails the run.
///
/// Lockdep (`possible circular locking`, `inconsistent lock state`, `possible recursive locking`,
/// `suspicious RCU usage`), refcount, debugobjects and most KASAN reports also carry a `WARNING:`
/// or `BUG:` line; they are listed on their own so that a report is named by what it is, and so
/// that a report whose header line was lost in the log still counts.
pub const PATTERNS: &[&str] = &[
    // debugobjects; before "BUG:", which it contains.
    "ODEBUG:",
    "BUG:",
    // BUG() / BUG_ON(), including a Rust panic: "kernel BUG at mm/balloon.c:123!".
    "kernel BUG at",
    // SLUB debugging: "BUG kmalloc-64 (Not tainted): Poison overwritten".
    "BUG kmalloc-",
    "WARNING:",
    "KASAN",
    "possible circular locking",
    "inconsistent lock state",
    "possible recursive locking",
    "suspicious RCU usage",
    "list_del corruption",
    "list_add corruption",
    "refcount_t:",
    // Page poisoning found a freed page written to.
    "pagealloc: memory corruption",
    "pagealloc: single bit error",
    "Bad page state",
    // kmemleak's scan result, and each object of a `cat /sys/kernel/debug/kmemleak` report.
    "new suspected memory leaks",
    "unreferenced object 0x",
    // The hung task detector: "INFO: task kworker/0:1:42 blocked for more than 120 seconds.".
    "INFO: task ",
    "rcu: INFO:",
    "panicked at",
    "Oops",
    "Kernel panic",
    "general protection fault",
    "UBSAN",
    "Call Trace",
    // A KUnit case or suite that failed: the guest runs the project's suites at boot (built in)
    // and when the driver module loads, so every test also checks them on its kernel.
    "not ok ",
];

/// `Call Trace` on its own is a splat unless it belongs to a report that prints a stack on
/// purpose: the OOM killer's (which the stress suite provokes), a fault injection with
/// `verbose=2`, or a SysRq task dump. Such a report starts with one of these lines, and its stack
/// follows within [`BENIGN_SPAN`] lines.
const BENIGN_TRACES: &[&str] = &[
    "invoked oom-killer:",
    "FAULT_INJECTION: forcing a failure",
    "sysrq: Show",
];

/// How many lines after a [`BENIGN_TRACES`] line its stack may start.
const BENIGN_SPAN: usize = 40;

/// Patterns that are a splat only outside a benign report.
const WEAK: &[&str] = &["Call Trace"];

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
/// line (e.g. the `Call Trace:` of a `WARNING:`) are part of its excerpt, not separate splats. A
/// `Call Trace` within a report that prints one on purpose (see [`BENIGN_TRACES`]) is not a splat.
pub fn scan(log: &str) -> Vec<Splat> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out: Vec<Splat> = Vec::new();
    let mut covered_until = 0;
    let mut benign_until = 0;
    for (i, l) in lines.iter().enumerate() {
        if BENIGN_TRACES.iter().any(|b| l.contains(b)) {
            benign_until = i + BENIGN_SPAN;
        }
        let Some(pattern) = PATTERNS.iter().find(|p| l.contains(*p)) else {
            continue;
        };
        if i < covered_until || (i < benign_until && WEAK.contains(pattern)) {
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

    /// One line per report class the debug guest can print, as the kernel prints it; each must be
    /// caught, and named by its own pattern.
    #[test]
    fn every_report_class_is_caught() {
        let cases = [
            ("[ 5.1] BUG: KASAN: slab-use-after-free in leak_balloon+0x1/0x2", "BUG:"),
            ("[ 5.1] kernel BUG at mm/balloon.c:251!", "kernel BUG at"),
            ("[ 5.1] BUG kmalloc-64 (Not tainted): Poison overwritten", "BUG kmalloc-"),
            ("[ 5.1] ==================================================================", ""),
            ("[ 5.1] KASAN: null-ptr-deref in range [0x0-0x7]", "KASAN"),
            ("[ 5.1] WARNING: possible circular locking dependency detected", "WARNING:"),
            ("[ 5.1] possible circular locking dependency detected", "possible circular locking"),
            ("[ 5.1] inconsistent lock state", "inconsistent lock state"),
            ("[ 5.1] possible recursive locking detected", "possible recursive locking"),
            ("[ 5.1] suspicious RCU usage.", "suspicious RCU usage"),
            ("[ 5.1] list_del corruption, ffff88800a0b0c00->next is LIST_POISON1", "list_del corruption"),
            ("[ 5.1] list_add corruption. prev->next should be next", "list_add corruption"),
            ("[ 5.1] refcount_t: underflow; use-after-free.", "refcount_t:"),
            ("[ 5.1] ODEBUG: free active (active state 0) object: 000000 object type: work_struct", "ODEBUG:"),
            ("[ 5.1] pagealloc: memory corruption", "pagealloc: memory corruption"),
            ("[ 5.1] pagealloc: single bit error", "pagealloc: single bit error"),
            ("[ 5.1] Bad page state in process kworker/0:1  pfn:12345", "Bad page state"),
            ("[ 5.1] kmemleak: 2 new suspected memory leaks (see /sys/kernel/debug/kmemleak)", "new suspected memory leaks"),
            ("unreferenced object 0xffff888003a1b2c0 (size 64):", "unreferenced object 0x"),
            ("[ 245.0] INFO: task rmmod:123 blocked for more than 120 seconds.", "INFO: task "),
            ("[ 30.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "rcu: INFO:"),
            ("[ 5.1] rust_kernel: panicked at drivers/virtio/rballoon/pfn.rs:10:5:", "panicked at"),
            ("[ 5.1] Oops: general protection fault, probably for non-canonical address", "Oops"),
            ("[ 5.1] general protection fault, probably for non-canonical address", "general protection fault"),
            ("[ 5.1] Kernel panic - not syncing: Fatal exception", "Kernel panic"),
            ("[ 5.1] UBSAN: array-index-out-of-bounds in mm/page_alloc.c:10:2", "UBSAN"),
            ("[ 5.1] Call Trace:", "Call Trace"),
            ("[ 2.4]     not ok 3 deflate_gives_back_every_page", "not ok "),
            ("[ 2.4] not ok 2 rballoon_batch", "not ok "),
            ("[ 2.4]     ok 4 skipped_case # SKIP needs CONFIG_FOO", ""),
        ];
        for (line, pattern) in cases {
            let s = scan(line);
            if pattern.is_empty() {
                assert!(s.is_empty(), "{line:?} is not a splat");
                continue;
            }
            assert_eq!(s.len(), 1, "{line:?} must be one splat");
            assert_eq!(s[0].pattern, pattern, "{line:?}");
        }
    }

    #[test]
    fn boot_messages_of_the_debug_guest_are_not_splats() {
        let log = "\
[    0.0] kmemleak: Kernel memory leak detector initialized (mem pool available: 63000)
[    0.1] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar
[    0.1] ... MAX_LOCKDEP_SUBCLASSES:  8
[    0.2] kasan: KernelAddressSanitizer initialized
[    0.3] virtio_balloon virtio2: Out of puff! Can't get 1 pages
[    0.4] rballoon virtio2: Out of puff! Can't get 1 pages
[    0.5] FAULT_INJECTION: forcing a failure.
[    0.5] name fail_page_alloc, interval 1, probability 100, space 0, times 9
";
        assert!(scan(log).is_empty(), "{:?}", scan(log));
    }

    #[test]
    fn an_oom_kill_report_is_not_a_splat_but_a_warning_inside_it_is() {
        let mut log = String::from("[ 9.0] rb-memload invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO), order=0, oom_score_adj=0\n");
        log.push_str("[ 9.0] CPU: 1 UID: 0 PID: 99 Comm: rb-memload Not tainted 7.3.0\n");
        log.push_str("[ 9.0] Call Trace:\n[ 9.0]  <TASK>\n[ 9.0]  dump_stack_lvl+0x1/0x2\n");
        log.push_str("[ 9.0] Out of memory: Killed process 99 (rb-memload)\n");
        assert!(scan(&log).is_empty(), "{:?}", scan(&log));
        // A stack long after the OOM report is a splat again.
        log.push_str(&"[ 9.1] filler\n".repeat(50));
        log.push_str("[ 9.2] Call Trace:\n");
        assert_eq!(scan(&log).len(), 1);
        // Within the OOM report, a real report still counts.
        let bad = "[ 9.0] x invoked oom-killer: gfp_mask=0x0\n[ 9.0] WARNING: CPU: 1 PID: 9 at mm/balloon.c:10\n";
        assert_eq!(scan(bad).len(), 1);
    }
}
