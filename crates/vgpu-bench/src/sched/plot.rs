//! The scheduler benchmark's plot, drawn with `plotters` into an SVG (text is plain SVG
//! `<text>`, so no font rasteriser or system font library is needed to make it).
//!
//! Left: CDFs of the high-priority round trips per case on a log axis, grid at 100 µs / 1 ms /
//! 10 ms and at the 50th / 90th / 99th percentile. Right: each pool's share per window over
//! time (grid every second and every 0.1), with the entitlement step functions dashed.

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

const W: u32 = 1200;
const H: u32 = 500;

/// The high-priority cases of the left panel, in the order of `cdfs`, and their colours.
pub const CASES: [&str; 4] = ["alone", "priority", "fifo", "reserve"];
pub const CASE_COLOURS: [RGBColor; 4] = [
    RGBColor(0, 0, 0),
    RGBColor(31, 90, 220),
    RGBColor(220, 40, 40),
    RGBColor(20, 150, 60),
];
/// Colours of pools 0, 1, 2 in the right panel.
pub const POOL_COLOURS: [RGBColor; 3] = [
    RGBColor(240, 140, 0),
    RGBColor(130, 60, 180),
    RGBColor(0, 150, 150),
];
const GRID: RGBColor = RGBColor(220, 220, 220);

/// Lowest latency shown (µs); the axis ends at 1.2 × the slowest sample, 1 ms at least.
const CDF_MIN_US: f64 = 50.0;
/// Highest share shown.
const SHARE_MAX: f64 = 0.8;

/// Writes the plot to `path` (see [`sched_svg`]).
pub fn write_sched_svg(
    path: &Path,
    cdfs: &[Vec<u64>],
    shares: &[(f64, Vec<f64>)],
    entitlement: &[(f64, Vec<f64>)],
    t_end: f64,
) -> Result<()> {
    let svg = sched_svg(cdfs, shares, entitlement, t_end)?;
    std::fs::write(path, svg).map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

/// The plot as SVG text. `cdfs[k]`: round trips (ns) of case `CASES[k]`; `shares`: `(t, share
/// of each pool)` per window; `entitlement`: `(t, each pool's due share from t on)` steps.
pub fn sched_svg(
    cdfs: &[Vec<u64>],
    shares: &[(f64, Vec<f64>)],
    entitlement: &[(f64, Vec<f64>)],
    t_end: f64,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(W / 2);
        cdf_panel(&left, cdfs)?;
        share_panel(&right, shares, entitlement, t_end)?;
        root.present()?;
    }
    Ok(svg)
}

/// An axis whose grid lines and labels are exactly `keys`: plotters would pick round numbers,
/// and the points that matter here are the ones the goals speak of (p99, 1 ms, …). Its own
/// type rather than plotters' `WithKeyPoints` because that one cannot label a plain `f64`
/// axis (labels come from the formatters given to the mesh).
struct Keyed<R> {
    inner: R,
    keys: Vec<f64>,
}

impl<R: Ranged<ValueType = f64>> Keyed<R> {
    /// `keys` strictly inside the axis' range only (the axes themselves are drawn anyway).
    fn new(inner: impl Into<R>, keys: impl IntoIterator<Item = f64>) -> Self {
        let inner = inner.into();
        let r = inner.range();
        let keys = keys
            .into_iter()
            .filter(|k| r.start < *k && *k < r.end)
            .collect();
        Self { inner, keys }
    }
}

impl<R: Ranged<ValueType = f64>> Ranged for Keyed<R> {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Bold lines only: no light lines in between.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.keys.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
}

fn latency_label(us: &f64) -> String {
    if *us >= 1000.0 {
        format!("{} ms", us / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn cdf_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, cdfs: &[Vec<u64>]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let max_us = cdfs.iter().flatten().copied().max().unwrap_or(1_000_000) as f64 / 1e3;
    let hi = (max_us * 1.2).max(1000.0);
    let mut chart = ChartBuilder::on(area)
        .caption("high-priority round trip (CDF)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(
            Keyed::<LogCoord<f64>>::new((CDF_MIN_US..hi).log_scale(), [100.0, 1e3, 1e4]),
            Keyed::<RangedCoordf64>::new(0.0..1.0, [0.5, 0.9, 0.99]),
        )
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .axis_style(BLACK.stroke_width(2))
        .x_label_formatter(&latency_label)
        .y_label_formatter(&|p| format!("{p}"))
        .x_desc("round trip")
        .y_desc("fraction of round trips ≤ x")
        .draw()
        .map_err(draw_err)?;
    for (k, samples) in cdfs.iter().enumerate() {
        let mut s = samples.clone();
        s.sort_unstable();
        let n = s.len().max(1) as f64;
        // Samples beyond the axes are drawn at its edge, as the percentiles they are.
        let points = s.iter().enumerate().map(|(i, &v)| {
            let us = (v.max(1) as f64 / 1e3).clamp(CDF_MIN_US, hi);
            (us, (i + 1) as f64 / n)
        });
        let colour = CASE_COLOURS[k % CASE_COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(draw_err)?
            .label(CASES.get(k).copied().unwrap_or("?"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

fn share_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    shares: &[(f64, Vec<f64>)],
    entitlement: &[(f64, Vec<f64>)],
    t_end: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let secs = (1..t_end.ceil() as usize).map(|s| s as f64);
    let tenths = (1..8).map(|i| i as f64 / 10.0);
    let mut chart = ChartBuilder::on(area)
        .caption("pool shares per window", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(
            Keyed::<RangedCoordf64>::new(0.0..t_end, secs),
            Keyed::<RangedCoordf64>::new(0.0..SHARE_MAX, tenths),
        )
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .axis_style(BLACK.stroke_width(2))
        .x_label_formatter(&|t| format!("{t} s"))
        .y_label_formatter(&|s| format!("{s:.1}"))
        .x_desc("time")
        .y_desc("share of the device time")
        .draw()
        .map_err(draw_err)?;
    let pools = shares
        .iter()
        .chain(entitlement)
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(0);
    let at = |t: f64, s: f64| (t.clamp(0.0, t_end), s.clamp(0.0, SHARE_MAX));
    for p in 0..pools {
        let colour = POOL_COLOURS[p % POOL_COLOURS.len()];
        // Each step of the entitlement is a horizontal dashed segment (no risers).
        for pair in entitlement.windows(2) {
            let Some(&due) = pair[0].1.get(p) else {
                continue;
            };
            let seg = [at(pair[0].0, due), at(pair[1].0, due)];
            let series = DashedLineSeries::new(seg, 6, 6, colour.stroke_width(1));
            let anno = chart.draw_series(series).map_err(draw_err)?;
            if p == 0 && pair[0].0 == entitlement[0].0 {
                anno.label("entitlement (dashed)").legend(|(x, y)| {
                    DashedPathElement::new([(x, y), (x + 20, y)], 4, 4, BLACK.stroke_width(1))
                });
            }
        }
        let points = shares
            .iter()
            .filter_map(|(t, v)| v.get(p).map(|&s| at(*t, s)));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(draw_err)?
            .label(format!("pool {p}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

fn draw_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series() {
        let cdfs: Vec<Vec<u64>> = (1..=4u64)
            .map(|k| (1..=200).map(|i| i * k * 10_000).collect())
            .collect();
        let shares: Vec<(f64, Vec<f64>)> = (0..30)
            .map(|i| (0.2 + i as f64 * 0.25, vec![1.0 / 6.0, 2.0 / 6.0, 0.5]))
            .collect();
        let steps = vec![
            (0.0, vec![1.0 / 6.0, 2.0 / 6.0, 0.5]),
            (4.0, vec![1.0 / 3.0, 2.0 / 3.0, 0.0]),
            (5.5, vec![1.0 / 6.0, 2.0 / 6.0, 0.5]),
            (7.5, vec![1.0 / 6.0, 2.0 / 6.0, 0.5]),
        ];
        let svg = sched_svg(&cdfs, &shares, &steps, 7.5).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for label in CASES
            .iter()
            .chain(&["pool 0", "pool 2", "entitlement", "1 ms", "0.99"])
        {
            assert!(svg.contains(label), "no {label} in the plot");
        }
        for c in CASE_COLOURS.iter().chain(&POOL_COLOURS) {
            let hex = format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
            assert!(svg.contains(&hex), "no {hex} in the plot");
        }
    }

    #[test]
    fn empty_input_still_renders() {
        let svg = sched_svg(&[], &[], &[], 7.5).unwrap();
        assert!(svg.contains("</svg>"));
    }
}
