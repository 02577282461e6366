//! Charts with plotters, each as PNG and SVG: lines (a metric against sparsity or calibration
//! samples, one line per series, the paper's values dashed) and grouped bars. Text is drawn
//! with the DejaVu Sans font embedded in the binary, so no system font is needed.

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{cell, warn_mixed, Artefact, ArtefactKind, XField};
use crate::config::{Selector, DENSE};
use crate::sweep::store::Record;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const SIZE: (u32, u32) = (960, 600);

fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        bail!("the embedded font assets/DejaVuSans.ttf could not be loaded")
    }
}

/// `text` at the largest font size in `sizes` (px) whose width fits `room` pixels, cut with an
/// ellipsis at the smallest size when none does: plotters neither wraps nor shrinks text, so a
/// long title or legend entry would run off the canvas. The tables keep the full text.
fn fit<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
    sizes: std::ops::RangeInclusive<u32>,
    room: u32,
) -> (String, u32) {
    let width = |t: &str, px: u32| {
        root.estimate_text_size(t, &TextStyle::from(("sans-serif", px).into_font()))
            .map_or(0, |(w, _)| w)
    };
    if let Some(px) = sizes.clone().rev().find(|&px| width(text, px) <= room) {
        return (text.to_string(), px);
    }
    let px = *sizes.start();
    let mut cut: Vec<char> = text.chars().collect();
    while !cut.is_empty() && width(&format!("{}…", cut.iter().collect::<String>()), px) > room {
        cut.pop();
    }
    (format!("{}…", cut.iter().collect::<String>()), px)
}

/// A chart on `root` captioned with the artefact's title (24 px, down to 14 px, then cut), with
/// room for the axis labels.
fn framed<'a, 'b, DB: DrawingBackend>(root: &'a DrawingArea<DB, Shift>, a: &Artefact) -> ChartBuilder<'a, 'b, DB> {
    let (caption, size) = fit(root, &a.title, 14..=24, root.dim_in_pixel().0.saturating_sub(40));
    let mut chart = ChartBuilder::on(root);
    chart
        .caption(caption, ("sans-serif", size))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70);
    chart
}

/// A legend entry: 16 px, at most 40% of the canvas wide.
fn legend_label<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, label: &str) -> String {
    fit(root, label, 16..=16, root.dim_in_pixel().0 * 2 / 5).0
}

/// A named sequence of y values (None where there is no value) along the x categories.
struct Series {
    label: String,
    values: Vec<Option<f64>>,
    paper: bool,
}

/// The series of a line chart: ours per slot, then the paper's where it has values. At sparsity
/// 0 every method is the dense model, so that point comes from the series model's dense baseline.
fn line_series(a: &Artefact, records: &[Record]) -> Result<(Vec<String>, Vec<Series>)> {
    let x =
        a.x.as_ref()
            .ok_or_else(|| anyhow!("chart `{}`: a line chart needs `x`", a.name))?;
    let labels = x
        .values
        .iter()
        .map(|v| match x.field {
            XField::Sparsity => format!("{}%", (v * 100.0).round()),
            XField::Nsamples => format!("{v}"),
        })
        .collect::<Vec<String>>();
    let (mut out, mut points) = (Vec::new(), Vec::new());
    for s in &a.series {
        let dense = Selector {
            model: s.select.model.clone(),
            method: Some(DENSE.into()),
            ..Selector::default()
        };
        let mut values = Vec::new();
        for (&v, at) in x.values.iter().zip(&labels) {
            let sel = if x.field == XField::Sparsity && v == 0.0 {
                &dense
            } else {
                &s.select
            };
            let point = cell(records, &a.metric, &[sel], Some((x.field, v)));
            values.push(point.as_ref().map(|p| p.mean));
            points.extend(point.map(|p| (format!("{} at {at}", s.label.joined()), p)));
        }
        out.push(Series {
            label: s.label.joined(),
            values,
            paper: false,
        });
    }
    warn_mixed(a, points.iter().map(|(at, p)| (at.clone(), p)));
    for s in a.series.iter().filter(|s| !s.paper.is_empty()) {
        out.push(Series {
            label: format!("{} (paper)", s.label.joined()),
            values: s.paper.clone(),
            paper: true,
        });
    }
    Ok((labels, out))
}

/// Bars: one group per column, one bar per series within it.
fn bar_series(a: &Artefact, records: &[Record]) -> (Vec<String>, Vec<Series>) {
    let labels = a.columns.iter().map(|c| c.label.joined()).collect();
    let mut bars = Vec::new();
    let series = a
        .series
        .iter()
        .map(|s| {
            let values = a.columns.iter().map(|c| {
                let bar = cell(records, &a.metric, &[&s.select, &c.select], None);
                let mean = bar.as_ref().map(|b| b.mean);
                bars.extend(bar.map(|b| (format!("{} / {}", c.label.joined(), s.label.joined()), b)));
                mean
            });
            Series {
                label: s.label.joined(),
                values: values.collect(),
                paper: false,
            }
        })
        .collect();
    warn_mixed(a, bars.iter().map(|(at, b)| (at.clone(), b)));
    (labels, series)
}

fn finite(series: &[Series], positive: bool) -> Vec<f64> {
    series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .filter(|v| v.is_finite() && (!positive || *v > 0.0))
        .collect()
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// `positive_only` on a log axis, where values <= 0 have no place (they are left out, not
/// drawn at the bottom edge).
fn draw_lines<DB: DrawingBackend, Y>(
    root: &DrawingArea<DB, Shift>,
    a: &Artefact,
    xs: &[String],
    series: &[Series],
    y: Y,
    positive_only: bool,
) -> Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let x_desc = a.x.as_ref().map(|x| x.label.clone()).unwrap_or_default();
    let mut chart = framed(root, a)
        .build_cartesian_2d((0..xs.len() as i32 - 1).into_segmented(), y)
        .map_err(plot_err)?;
    let fmt = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => xs.get(*i as usize).cloned().unwrap_or_default(),
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(a.metric.axis_label())
        .x_labels(xs.len())
        .x_label_formatter(&fmt)
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(plot_err)?;
    let ours = series.iter().filter(|s| !s.paper).count();
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(if s.paper { i - ours } else { i }).to_rgba();
        let pts: Vec<(SegmentValue<i32>, f64)> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(k, v)| {
                v.filter(|v| v.is_finite() && (!positive_only || *v > 0.0))
                    .map(|v| (SegmentValue::CenterOf(k as i32), v))
            })
            .collect();
        let style = color.stroke_width(2);
        let anno = if s.paper {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                .map_err(plot_err)?;
            chart
                .draw_series(pts.iter().map(|p| TriangleMarker::new(p.clone(), 6, color.filled())))
                .map_err(plot_err)?
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(plot_err)?;
            chart
                .draw_series(pts.iter().map(|p| Circle::new(p.clone(), 5, color.filled())))
                .map_err(plot_err)?
        };
        anno.label(legend_label(root, &s.label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2)));
    }
    draw_legend(&mut chart)
}

fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(chart: &mut ChartContext<'a, DB, CT>) -> Result<()> {
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    a: &Artefact,
    groups: &[String],
    series: &[Series],
) -> Result<()> {
    let n = series.len().max(1) as i32;
    // Half-bar units: bar k of group g spans [2(g(n+1)+k), 2(g(n+1)+k)+2]; the group's centre is 2g(n+1)+n.
    let width = 2 * groups.len() as i32 * (n + 1);
    let top = finite(series, false).into_iter().fold(0.0f64, f64::max) * 1.15;
    let mut chart = framed(root, a)
        .build_cartesian_2d(-1..width, 0.0..top.max(1e-9))
        .map_err(plot_err)?;
    let fmt = |v: &i32| {
        let span = 2 * (n + 1);
        let g = v.div_euclid(span);
        if v.rem_euclid(span) == n {
            groups.get(g as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(width as usize + 1)
        .x_label_formatter(&fmt)
        .y_desc(a.metric.axis_label())
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(plot_err)?;
    for (k, s) in series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let bars = s.values.iter().enumerate().filter_map(|(g, v)| {
            let x0 = 2 * (g as i32 * (n + 1) + k as i32);
            v.filter(|v| v.is_finite())
                .map(|v| Rectangle::new([(x0, 0.0), (x0 + 2, v)], color.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(plot_err)?
            .label(legend_label(root, &s.label))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    draw_legend(&mut chart)
}

/// The chart's categories (x values or bar groups) and series, computed once for both formats.
fn layout(a: &Artefact, records: &[Record]) -> Result<(Vec<String>, Vec<Series>)> {
    match a.kind {
        ArtefactKind::Line => line_series(a, records),
        ArtefactKind::Bars => Ok(bar_series(a, records)),
        ArtefactKind::Table => bail!("`{}` is a table, not a chart", a.name),
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    a: &Artefact,
    (xs, series): &(Vec<String>, Vec<Series>),
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    match a.kind {
        ArtefactKind::Line => {
            let vals = finite(series, a.log_y);
            let (lo, hi) = vals
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
            let (lo, hi) = if vals.is_empty() { (1.0, 10.0) } else { (lo, hi) };
            // A log axis within one decade would show no tick labels; it is linear there.
            if a.log_y && hi / lo > 10.0 {
                draw_lines(&root, a, xs, series, (lo / 1.2..hi * 1.2).log_scale(), true)?;
            } else {
                // Equal values still get a readable range around them.
                let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.05).max(1e-6);
                draw_lines(&root, a, xs, series, lo - pad..hi + pad, a.log_y)?;
            }
        }
        // `layout` has refused tables.
        ArtefactKind::Bars | ArtefactKind::Table => draw_bars(&root, a, xs, series)?,
    }
    root.present().map_err(plot_err)
}

/// `<name>.png` and `<name>.svg` in `dir`.
pub fn write(a: &Artefact, records: &[Record], dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let png = dir.join(format!("{}.png", a.name));
    let svg = dir.join(format!("{}.svg", a.name));
    let chart = layout(a, records)?;
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), a, &chart)
        .with_context(|| format!("rendering {}", png.display()))?;
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), a, &chart)
        .with_context(|| format!("rendering {}", svg.display()))?;
    Ok(vec![png, svg])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_titles_shrink_then_are_cut() {
        register_font().unwrap();
        let mut buf = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        let room = SIZE.0 - 40;
        assert_eq!(fit(&root, "Wanda", 14..=24, room), ("Wanda".to_string(), 24));
        let figure2 = "Figure 2: LLaMA-7B, WikiText perplexity vs calibration samples (unstructured 50%)";
        assert_eq!(fit(&root, figure2, 14..=24, room), (figure2.to_string(), 24));
        let wide = "Wanda ".repeat(14);
        let (text, px) = fit(&root, &wide, 14..=24, room);
        assert!(text == wide && (14..24).contains(&px), "{px}");
        let (text, px) = fit(&root, &"Wanda ".repeat(60), 14..=24, room);
        assert!(text.ends_with('…') && px == 14 && text.chars().count() < 360, "{text}");
        let width = root
            .estimate_text_size(&text, &TextStyle::from(("sans-serif", 14).into_font()))
            .unwrap()
            .0;
        assert!(width <= room, "{width}");
    }
}
