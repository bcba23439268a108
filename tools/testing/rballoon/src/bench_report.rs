// SPDX-License-Identifier: GPL-2.0
//! What `rballoon bench` measured and how it is written out: the metrics, the samples, medians and
//! spreads per driver, the ratio ours/C, the CSV files and the Markdown table.

use crate::driver::Driver;
use crate::error::{Context, Result};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

/// Which way a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// More is better (speeds, huge pages).
    Higher,
    /// Less is better (times, CPU).
    Lower,
    /// A figure of the host's, measured beside each driver: the same for both unless the host
    /// itself varies (its discard ceiling).
    Host,
}

/// One figure the benchmark reports per driver and round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    /// Column name in the CSV.
    pub key: &'static str,
    /// Workload number from issue 6 (1 speed, 2 CPU, 3 huge pages, 4 reporting, 5 OOM).
    pub workload: u8,
    /// Human label.
    pub label: &'static str,
    /// Unit.
    pub unit: &'static str,
    /// Which way is better.
    pub better: Better,
}

macro_rules! metric {
    ($name:ident, $key:literal, $w:literal, $label:literal, $unit:literal, $better:ident) => {
        #[doc = $label]
        pub const $name: Metric = Metric {
            key: $key,
            workload: $w,
            label: $label,
            unit: $unit,
            better: Better::$better,
        };
    };
}

metric!(
    INFLATE_UNTOUCHED,
    "inflate_untouched",
    1,
    "inflate, untouched memory",
    "GiB/s",
    Higher
);
metric!(
    DEFLATE_UNTOUCHED,
    "deflate_untouched",
    1,
    "deflate, untouched memory",
    "GiB/s",
    Higher
);
metric!(
    INFLATE_WRITTEN,
    "inflate_written",
    1,
    "inflate, memory the guest wrote",
    "GiB/s",
    Higher
);
metric!(
    DEFLATE_WRITTEN,
    "deflate_written",
    1,
    "deflate, memory the guest wrote",
    "GiB/s",
    Higher
);
metric!(
    CPU_INFLATE,
    "cpu_inflate",
    2,
    "guest CPU per GiB inflated",
    "ms/GiB",
    Lower
);
metric!(
    CPU_DEFLATE,
    "cpu_deflate",
    2,
    "guest CPU per GiB deflated",
    "ms/GiB",
    Lower
);
metric!(
    HUGEPAGES,
    "hugepages",
    3,
    "2 MiB huge pages after compaction",
    "pages",
    Higher
);
metric!(
    HUGEPAGES_NOMIGRATE,
    "hugepages_nomigrate",
    3,
    "huge pages, balloon migration off",
    "pages",
    Higher
);
metric!(
    HUGEPAGES_BLOCKS,
    "hugepages_blocks",
    3,
    "huge pages, inflating by 2 MiB blocks (blocks=1)",
    "pages",
    Higher
);
metric!(
    COMPACT_MIGRATED,
    "compact_migrated",
    3,
    "balloon pages compact_memory moved",
    "pages",
    Higher
);
metric!(
    REPORTING_90,
    "reporting_90",
    4,
    "freed memory 90% back on the host",
    "s",
    Lower
);
metric!(
    OOM_HOG,
    "oom_hog",
    5,
    "memory hog done, balloon deflating on OOM",
    "s",
    Lower
);

metric!(
    CEILING_UNTOUCHED,
    "ceiling_untouched",
    1,
    "host's inflate ceiling (QEMU's own CPU per GiB), untouched memory",
    "GiB/s",
    Host
);
metric!(
    SHARE_UNTOUCHED,
    "share_untouched",
    1,
    "inflate, untouched memory, share of the host's ceiling",
    "%",
    Higher
);
metric!(
    CEILING_WRITTEN,
    "ceiling_written",
    1,
    "host's inflate ceiling (QEMU's own CPU per GiB), written memory",
    "GiB/s",
    Host
);
metric!(
    SHARE_WRITTEN,
    "share_written",
    1,
    "inflate, written memory, share of the host's ceiling",
    "%",
    Higher
);

/// Every metric, in table order.
pub const METRICS: [Metric; 16] = [
    INFLATE_UNTOUCHED,
    DEFLATE_UNTOUCHED,
    INFLATE_WRITTEN,
    DEFLATE_WRITTEN,
    CEILING_UNTOUCHED,
    SHARE_UNTOUCHED,
    CEILING_WRITTEN,
    SHARE_WRITTEN,
    CPU_INFLATE,
    CPU_DEFLATE,
    HUGEPAGES,
    HUGEPAGES_NOMIGRATE,
    HUGEPAGES_BLOCKS,
    COMPACT_MIGRATED,
    REPORTING_90,
    OOM_HOG,
];

/// One measured value.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Round, from 1.
    pub round: u32,
    /// Which driver.
    pub driver: Driver,
    /// What was measured.
    pub metric: Metric,
    /// The value, in `metric.unit`.
    pub value: f64,
}

/// A time series from one run: (seconds since the command, value).
#[derive(Clone, Debug)]
pub struct Trace {
    /// Round, from 1.
    pub round: u32,
    /// Which driver.
    pub driver: Driver,
    /// `untouched`, `written` (balloon MiB) or `rss` (QEMU's VmRSS in MiB).
    pub kind: &'static str,
    /// The points.
    pub points: Vec<(f64, f64)>,
}

/// Median and range of one driver's samples of one metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Median.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// How many samples.
    pub n: usize,
}

impl Summary {
    /// The summary of `values`, or `None` if there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// Half the range relative to the median, in percent: the spread the table shows.
    pub fn spread_pct(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / 2.0 / self.median.abs() * 100.0
        }
    }
}

/// One metric, both drivers.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// The metric.
    pub metric: Metric,
    /// The C driver's samples.
    pub c: Option<Summary>,
    /// The Rust driver's samples.
    pub rust: Option<Summary>,
}

impl Row {
    /// Median ours / median C.
    pub fn ratio(&self) -> Option<f64> {
        let (c, r) = (self.c?, self.rust?);
        (c.median != 0.0).then(|| r.median / c.median)
    }

    /// The ratio's range over the extremes of both drivers' samples.
    pub fn ratio_range(&self) -> Option<(f64, f64)> {
        let (c, r) = (self.c?, self.rust?);
        (c.min > 0.0 && c.max > 0.0).then(|| (r.min / c.max, r.max / c.min))
    }

    /// Do the two drivers' ranges of samples overlap? Then neither is better on this run.
    pub fn ranges_overlap(&self) -> Option<bool> {
        let (c, r) = (self.c?, self.rust?);
        Some(r.min <= c.max && c.min <= r.max)
    }

    /// Is ours better than C on this metric (by the medians)?
    pub fn ours_better(&self) -> Option<bool> {
        let q = self.ratio()?;
        match self.metric.better {
            Better::Higher => Some(q > 1.0),
            Better::Lower => Some(q < 1.0),
            Better::Host => None,
        }
    }
}

/// Summarise `samples` per metric, in table order; metrics nobody measured are left out.
pub fn rows(samples: &[Sample]) -> Vec<Row> {
    METRICS
        .iter()
        .filter_map(|&m| {
            let of = |d: Driver| {
                let v: Vec<f64> = samples
                    .iter()
                    .filter(|s| s.metric == m && s.driver == d)
                    .map(|s| s.value)
                    .collect();
                Summary::of(&v)
            };
            let row = Row {
                metric: m,
                c: of(Driver::C),
                rust: of(Driver::Rust),
            };
            (row.c.is_some() || row.rust.is_some()).then_some(row)
        })
        .collect()
}

/// Format a figure with about three significant digits.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 || (x == x.trunc() && a < 1e6) {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn cell(s: Option<Summary>) -> String {
    match s {
        None => "n/a".into(),
        Some(s) if s.n == 1 => fmt_num(s.median),
        Some(s) => format!(
            "{} ±{:.0}% [{}–{}]",
            fmt_num(s.median),
            s.spread_pct(),
            fmt_num(s.min),
            fmt_num(s.max)
        ),
    }
}

/// The Markdown table: one line per metric.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| # | metric | unit | C (virtio_balloon) | ours (rballoon) | ours/C | better |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let ratio = r.ratio().map_or("n/a".into(), |q| format!("{q:.2}"));
        // "same" unless the ranges are apart: a median's lead inside the other's range is noise.
        // A single round has no range: within 2% is the same then.
        let single = r.c.is_some_and(|s| s.n < 2) || r.rust.is_some_and(|s| s.n < 2);
        let close = r.ratio().is_some_and(|q| (q - 1.0).abs() < 0.02);
        let same = if single {
            close
        } else {
            r.ranges_overlap().unwrap_or(false)
        };
        let better = match (r.metric.better, r.ours_better()) {
            (Better::Higher, Some(_)) if same => "higher: same",
            (Better::Lower, Some(_)) if same => "lower: same",
            (Better::Higher, Some(true)) => "higher: ours",
            (Better::Higher, Some(false)) => "higher: C",
            (Better::Lower, Some(true)) => "lower: ours",
            (Better::Lower, Some(false)) => "lower: C",
            (Better::Higher, None) => "higher",
            (Better::Lower, None) => "lower",
            (Better::Host, _) => "the host's",
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.metric.workload,
            r.metric.label,
            r.metric.unit,
            cell(r.c),
            cell(r.rust),
            ratio,
            better
        );
    }
    t
}

/// Every sample, one per line.
pub fn samples_csv(samples: &[Sample]) -> String {
    let mut t = String::from("round,driver,workload,metric,unit,value\n");
    for s in samples {
        let _ = writeln!(
            t,
            "{},{},{},{},{},{}",
            s.round,
            s.driver.module(),
            s.metric.workload,
            s.metric.key,
            s.metric.unit,
            s.value
        );
    }
    t
}

/// Medians, ranges and ratios, one line per metric.
pub fn summary_csv(rows: &[Row]) -> String {
    let mut t = String::from(
        "workload,metric,unit,better,c_median,c_min,c_max,c_n,rust_median,rust_min,rust_max,rust_n,ratio\n",
    );
    let f = |s: Option<Summary>| match s {
        None => ",,,0".to_string(),
        Some(s) => format!("{},{},{},{}", s.median, s.min, s.max, s.n),
    };
    for r in rows {
        let _ = writeln!(
            t,
            "{},{},{},{},{},{},{}",
            r.metric.workload,
            r.metric.key,
            r.metric.unit,
            match r.metric.better {
                Better::Higher => "higher",
                Better::Lower => "lower",
                Better::Host => "host",
            },
            f(r.c),
            f(r.rust),
            r.ratio().map_or(String::new(), |q| q.to_string())
        );
    }
    t
}

/// Every trace point, one per line.
pub fn traces_csv(traces: &[Trace]) -> String {
    let mut t = String::from("round,driver,kind,seconds,value_mib\n");
    for tr in traces {
        for (x, y) in &tr.points {
            let _ = writeln!(
                t,
                "{},{},{},{x:.4},{y:.1}",
                tr.round,
                tr.driver.module(),
                tr.kind
            );
        }
    }
    t
}

/// Write `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let p = dir.join(name);
    fs::write(&p, text).context(format!("writing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Summary::of(&[3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(s.spread_pct(), 50.0);
        assert_eq!(Summary::of(&[4.0, 1.0]).unwrap().median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn ratio_direction() {
        let mk = |d, v| Sample {
            round: 1,
            driver: d,
            metric: OOM_HOG,
            value: v,
        };
        let r = rows(&[mk(Driver::C, 4.0), mk(Driver::Rust, 2.0)]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].ratio(), Some(0.5));
        assert_eq!(r[0].ours_better(), Some(true));
        let t = markdown_table(&r);
        assert!(t.contains("| 5 | memory hog"), "{t}");
        assert!(t.contains("| 0.50 | lower: ours |"), "{t}");
    }

    #[test]
    fn overlapping_ranges_are_the_same() {
        let mk = |d, v| Sample {
            round: 1,
            driver: d,
            metric: HUGEPAGES,
            value: v,
        };
        // Medians 246 and 245, ranges overlapping: neither driver is better.
        let r = rows(&[
            mk(Driver::C, 244.0),
            mk(Driver::C, 246.0),
            mk(Driver::C, 247.0),
            mk(Driver::Rust, 245.0),
            mk(Driver::Rust, 245.0),
            mk(Driver::Rust, 247.0),
        ]);
        assert!(markdown_table(&r).contains("| higher: same |"));
        // Ranges apart: the higher one is.
        let r = rows(&[
            mk(Driver::C, 244.0),
            mk(Driver::C, 246.0),
            mk(Driver::Rust, 55.0),
            mk(Driver::Rust, 64.0),
        ]);
        assert!(markdown_table(&r).contains("| higher: C |"));
    }

    #[test]
    fn csv_has_a_line_per_sample() {
        let s = Sample {
            round: 2,
            driver: Driver::Rust,
            metric: HUGEPAGES,
            value: 812.0,
        };
        assert_eq!(
            samples_csv(&[s]),
            "round,driver,workload,metric,unit,value\n2,rballoon,3,hugepages,pages,812\n"
        );
    }
}
