// SPDX-License-Identifier: GPL-2.0
//! The benchmark's PNG plots, drawn with `plotters` (bitmap backend, `ab_glyph` text).
//!
//! Nothing is bundled: the text font is a TrueType file found at run time (`RBALLOON_FONT`, or the
//! first sans-serif face under the usual font directories of the host or the toolchain root).
//! `scripts/rballoon/bench.sh` installs Debian's fonts-dejavu-core when there is none.

use crate::bench_report::{Better, Row, Trace};
use crate::driver::Driver;
use crate::error::{Error, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::fs;
use std::path::{Path, PathBuf};

const FONT: &str = "sans-serif";
const C_COLOUR: RGBColor = RGBColor(31, 119, 180);
const RUST_COLOUR: RGBColor = RGBColor(214, 89, 20);
const GOOD: RGBColor = RGBColor(44, 160, 44);
const BAD: RGBColor = RGBColor(200, 40, 40);
const SAME: RGBColor = RGBColor(150, 150, 150);

fn colour(d: Driver) -> RGBColor {
    match d {
        Driver::C => C_COLOUR,
        Driver::Rust => RUST_COLOUR,
    }
}

fn label(d: Driver) -> &'static str {
    match d {
        Driver::C => "C (virtio_balloon)",
        Driver::Rust => "ours (rballoon)",
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::other(format!("drawing {what}: {e}"))
}

/// Font directories searched, in order.
fn font_dirs() -> Vec<PathBuf> {
    let cache = std::env::var_os("RBALLOON_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/rballoon".into());
    vec![
        "/usr/share/fonts".into(),
        "/usr/local/share/fonts".into(),
        cache.join("root/usr/share/fonts"),
    ]
}

fn ttf_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            ttf_files(&p, out);
        } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ttf")) {
            out.push(p);
        }
    }
}

/// How well a font file suits plot labels: plain sans-serif first.
fn font_rank(p: &Path) -> u32 {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    // Not sans-serif at all (serif, math, symbol faces) costs more than any one style.
    let mut r: u32 = if n.contains("sans") { 0 } else { 5 };
    for (bad, cost) in [
        ("bold", 4),
        ("italic", 4),
        ("oblique", 4),
        ("math", 4),
        ("extralight", 3),
        ("mono", 2),
        ("condensed", 1),
    ] {
        if n.contains(bad) {
            r += cost;
        }
    }
    r
}

/// The font the plots use.
pub fn find_font() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RBALLOON_FONT") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::other(format!(
                "RBALLOON_FONT={} is not a file",
                p.display()
            )))
        };
    }
    let mut all = Vec::new();
    for d in font_dirs() {
        ttf_files(&d, &mut all);
    }
    all.sort();
    all.into_iter().min_by_key(|p| font_rank(p)).ok_or_else(|| {
        Error::other(
            "no TrueType font for the plots under /usr/share/fonts or the toolchain root: \
             apt-get install fonts-dejavu-core (make bench does), or set RBALLOON_FONT",
        )
    })
}

/// Load `path` as the plots' font.
pub fn register_font(path: &Path) -> Result<()> {
    let bytes = fs::read(path).map_err(|e| err("text", format!("{}: {e}", path.display())))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| err("text", format!("{} is not a usable font", path.display())))
}

fn traces_of<'a>(traces: &'a [Trace], kind: &str) -> impl Iterator<Item = &'a Trace> {
    let kind = kind.to_owned();
    traces.iter().filter(move |t| t.kind == kind)
}

/// One panel of lines, one per trace, coloured by driver; each driver labelled once.
fn line_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    traces: &[&Trace],
    y_max: f64,
) -> Result<()> {
    let x_max = traces
        .iter()
        .flat_map(|t| t.points.iter().map(|p| p.0))
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max * 1.08)
        .map_err(|e| err(title, e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(|e| err(title, e))?;
    let mut labelled = Vec::new();
    for t in traces {
        let c = colour(t.driver);
        let series = chart
            .draw_series(LineSeries::new(t.points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| err(title, e))?;
        if !labelled.contains(&t.driver) {
            labelled.push(t.driver);
            series.label(label(t.driver)).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3))
            });
        }
    }
    if traces.is_empty() {
        chart
            .draw_series(std::iter::once(Text::new(
                "no data",
                (x_max / 2.5, y_max / 2.0),
                (FONT, 20),
            )))
            .map_err(|e| err(title, e))?;
    } else {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(title, e))?;
    }
    Ok(())
}

/// Balloon size over time, both drivers, every round: one panel for untouched memory and one for
/// memory the guest wrote.
pub fn balloon_size(path: &Path, traces: &[Trace], mem_mib: u64) -> Result<()> {
    let what = path.display().to_string();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&what, e))?;
    let panels = root.split_evenly((1, 2));
    let y_max = mem_mib as f64;
    for (area, (kind, title)) in panels.iter().zip([
        (
            "untouched",
            "balloon size: inflate and deflate, untouched memory",
        ),
        ("written", "balloon size: memory the guest wrote first"),
    ]) {
        let ts: Vec<&Trace> = traces_of(traces, kind).collect();
        line_panel(
            area,
            title,
            "seconds since the QMP command",
            "balloon MiB",
            &ts,
            y_max,
        )?;
    }
    root.present().map_err(|e| err(&what, e))
}

/// QEMU's resident set after the guest freed memory, both drivers (free page reporting).
pub fn reporting_rss(path: &Path, traces: &[Trace]) -> Result<()> {
    let what = path.display().to_string();
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&what, e))?;
    let ts: Vec<&Trace> = traces_of(traces, "rss").collect();
    let y_max = ts
        .iter()
        .flat_map(|t| t.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    line_panel(
        &root,
        "free page reporting: QEMU RSS after the guest frees memory",
        "seconds since the guest freed it",
        "QEMU VmRSS MiB",
        &ts,
        y_max,
    )?;
    root.present().map_err(|e| err(&what, e))
}

/// The ratio ours/C per metric as horizontal bars: green where ours is better, red where C is,
/// with the range over the rounds as a thin line and 1.0 marked.
pub fn ratios(path: &Path, rows: &[Row]) -> Result<()> {
    let what = path.display().to_string();
    let rows: Vec<&Row> = rows.iter().filter(|r| r.ratio().is_some()).collect();
    let n = rows.len().max(1);
    let height = 130 + 52 * n as u32;
    let root = BitMapBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&what, e))?;
    let x_max = rows
        .iter()
        .filter_map(|r| r.ratio_range().map(|x| x.1).or(r.ratio()))
        .fold(2.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ours / C per metric (medians; green: ours better, red: C better, grey: within 2%)",
            (FONT, 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(10)
        .build_cartesian_2d(0.0..x_max, 0.0..n as f64)
        .map_err(|e| err(&what, e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_label_formatter(&|_| String::new())
        .x_desc("ratio ours / C  (1 = same)")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(|e| err(&what, e))?;
    for (i, r) in rows.iter().enumerate() {
        // First metric at the top.
        let y = (n - 1 - i) as f64;
        let q = r.ratio().unwrap_or(0.0);
        // Within 2% counts as the same.
        let c = if (q - 1.0).abs() < 0.02 {
            SAME
        } else if r.ours_better() == Some(true) {
            GOOD
        } else {
            BAD
        };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.05), (q, y + 0.55)],
                c.mix(0.75).filled(),
            )))
            .map_err(|e| err(&what, e))?;
        if let Some((lo, hi)) = r.ratio_range() {
            chart
                .draw_series(LineSeries::new(
                    [(lo, y + 0.3), (hi, y + 0.3)],
                    BLACK.stroke_width(2),
                ))
                .map_err(|e| err(&what, e))?;
        }
        let better = match r.metric.better {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
            Better::Host => "the host's, beside each driver",
        };
        let text = format!(
            "{}. {} ({}, {better}): {q:.2}",
            r.metric.workload, r.metric.label, r.metric.unit
        );
        chart
            .draw_series(std::iter::once(Text::new(
                text,
                (x_max * 0.01, y + 0.95),
                (FONT, 16).into_font().color(&BLACK),
            )))
            .map_err(|e| err(&what, e))?;
    }
    chart
        .draw_series(LineSeries::new(
            [(1.0, 0.0), (1.0, n as f64)],
            BLACK.stroke_width(2),
        ))
        .map_err(|e| err(&what, e))?;
    root.present().map_err(|e| err(&what, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_report::{rows, Sample, HUGEPAGES, INFLATE_UNTOUCHED, OOM_HOG};

    /// The three plots draw from a small data set into real PNG files.
    #[test]
    fn plots_are_pngs() {
        register_font(&find_font().unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("rballoon-plot-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut traces = Vec::new();
        let mut samples = Vec::new();
        for (d, speed) in [(Driver::C, 1.0), (Driver::Rust, 2.0)] {
            for kind in ["untouched", "written", "rss"] {
                let points = (0..50)
                    .map(|i| {
                        let t = i as f64 / 10.0;
                        (t, (t * speed * 400.0).min(1792.0))
                    })
                    .collect();
                traces.push(Trace {
                    round: 1,
                    driver: d,
                    kind,
                    points,
                });
            }
            for (m, v) in [
                (INFLATE_UNTOUCHED, speed),
                (OOM_HOG, 3.0 / speed),
                (HUGEPAGES, 700.0),
            ] {
                samples.push(Sample {
                    round: 1,
                    driver: d,
                    metric: m,
                    value: v,
                });
            }
        }
        balloon_size(&dir.join("b.png"), &traces, 2048).unwrap();
        ratios(&dir.join("r.png"), &rows(&samples)).unwrap();
        reporting_rss(&dir.join("s.png"), &traces).unwrap();
        for f in ["b.png", "r.png", "s.png"] {
            let b = fs::read(dir.join(f)).unwrap();
            assert!(b.starts_with(b"\x89PNG\r\n\x1a\n"), "{f} is not a PNG");
        }
        if std::env::var_os("RBALLOON_KEEP").is_none() {
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn plain_sans_ranks_first() {
        let r = |s: &str| font_rank(Path::new(s));
        assert!(r("/f/DejaVuSans.ttf") < r("/f/DejaVuSans-Bold.ttf"));
        assert!(r("/f/DejaVuSans.ttf") < r("/f/DejaVuSerif.ttf"));
        assert!(r("/f/DejaVuSans.ttf") < r("/f/DejaVuSansMono.ttf"));
        assert!(r("/f/DejaVuSans.ttf") < r("/f/DejaVuMathTeXGyre.ttf"));
        assert!(r("/f/DejaVuSans.ttf") < r("/f/DejaVuSansCondensed.ttf"));
    }
}
