//! Tables in the paper's layout, as Markdown and LaTeX: each cell shows our value (mean ± std
//! over matching runs, e.g. seeds) and, where the paper has one, its number and our difference.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use super::{cell, warn_mixed, Aggregate, Artefact};
use crate::sweep::store::Record;

/// One rendered cell's parts, shared by both output formats.
struct Cell {
    ours: Option<Aggregate>,
    paper: Option<(f64, Option<f64>)>,
}

/// `decimals` places below 1000; whole numbers up to 10^4 and three significant digits above
/// (`3.72e4`), where the paper writes one (`4e4`), which would hide the difference between
/// 3721.8 and 3708.1.
pub fn num(v: f64, decimals: usize) -> String {
    match v.abs() {
        a if a.is_nan() => "nan".into(),
        a if a >= 1e4 => format!("{v:.2e}"),
        a if a >= 1000.0 => format!("{v:.0}"),
        _ => format!("{v:.decimals$}"),
    }
}

fn signed(v: f64, decimals: usize) -> String {
    match num(v, decimals) {
        s if s.starts_with('-') => s,
        s => format!("+{s}"),
    }
}

fn grid(a: &Artefact, records: &[Record]) -> Vec<Vec<Cell>> {
    a.rows
        .iter()
        .map(|row| {
            a.columns
                .iter()
                .enumerate()
                .map(|(j, col)| Cell {
                    ours: cell(
                        records,
                        col.metric.as_ref().unwrap_or(&a.metric),
                        &[&row.select, &col.select],
                        None,
                    ),
                    paper: row
                        .paper
                        .get(j)
                        .copied()
                        .flatten()
                        .map(|p| (p, row.paper_std.get(j).copied().flatten())),
                })
                .collect()
        })
        .collect()
}

/// Our value (marked `*` when its runs differ in more than the seed), and the paper's value with
/// our difference (empty when we have no value).
fn render_cell(c: &Cell, d: usize) -> (String, Option<(String, String)>) {
    let mean_std = |(m, s): (f64, Option<f64>)| match s {
        Some(s) => format!("{} ± {}", num(m, d), num(s, d)),
        None => num(m, d),
    };
    let ours = match &c.ours {
        Some(o) => mean_std((o.mean, o.std)) + if o.mixed.is_empty() { "" } else { MIXED_MARK },
        None => "–".into(),
    };
    let paper = c.paper.map(|p| {
        (
            mean_std(p),
            c.ours.as_ref().map(|o| signed(o.mean - p.0, d)).unwrap_or_default(),
        )
    });
    (ours, paper)
}

const MIXED_MARK: &str = "*";

/// The note under a table with marked cells: the settings their runs differ in.
fn mixed_note(grid: &[Vec<Cell>]) -> Option<String> {
    let mut fields: Vec<&str> = grid
        .iter()
        .flatten()
        .filter_map(|c| c.ours.as_ref())
        .flat_map(|o| o.mixed.iter().copied())
        .collect();
    fields.sort_unstable();
    fields.dedup();
    (!fields.is_empty()).then(|| {
        format!(
            "{MIXED_MARK} averages runs that differ in {}, not only in the seed.",
            fields.join(", ")
        )
    })
}

fn join(paper: &str, diff: &str) -> String {
    if diff.is_empty() {
        paper.to_string()
    } else {
        format!("{paper}, {diff}")
    }
}

fn header(a: &Artefact) -> Vec<String> {
    let width = a.rows.iter().map(|r| r.label.parts().len()).max().unwrap_or(1);
    let mut h: Vec<String> = (0..width)
        .map(|i| a.row_header.get(i).cloned().unwrap_or_default())
        .collect();
    h.extend(a.columns.iter().map(|c| c.label.joined()));
    h
}

fn row_labels(a: &Artefact, i: usize, width: usize) -> Vec<String> {
    let mut parts = a.rows[i].label.parts();
    parts.resize(width, String::new());
    parts
}

/// A Markdown table cell: a `|` inside a label (`|W_ij|`) would end the cell.
fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn markdown(a: &Artefact, grid: &[Vec<Cell>]) -> String {
    let head: Vec<String> = header(a).iter().map(|h| md_escape(h)).collect();
    let width = head.len() - a.columns.len();
    let mut s = format!("### {}\n\n", a.title);
    match a.columns.iter().any(|c| c.metric.is_some()) {
        true => s += "Metric: per column (see its header)",
        false => s += &format!("Metric: {}", a.metric.axis_label()),
    }
    if a.rows.iter().any(|r| r.paper.iter().any(Option::is_some)) {
        s += ". Cells: ours (paper, ours − paper)";
        if let Some(src) = &a.source {
            s += &format!("; paper numbers from {src}");
        }
    }
    s += ".\n\n";
    s += &format!("| {} |\n", head.join(" | "));
    s += &format!("|{}\n", "---|".repeat(head.len()));
    for (i, row) in grid.iter().enumerate() {
        let mut cells: Vec<String> = row_labels(a, i, width).iter().map(|l| md_escape(l)).collect();
        cells.extend(row.iter().map(|c| match render_cell(c, a.decimals) {
            (ours, Some((p, d))) => format!("{} (paper {})", md_escape(&ours), join(&p, &d)),
            (ours, None) => md_escape(&ours),
        }));
        s += &format!("| {} |\n", cells.join(" | "));
    }
    if let Some(note) = mixed_note(grid) {
        s += &format!("\n{}\n", note.replacen(MIXED_MARK, "\\*", 1));
    }
    s
}

fn tex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out += "\\textbackslash{}",
            '&' | '%' | '_' | '#' | '$' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '^' => out += "\\textasciicircum{}",
            '~' => out += "\\textasciitilde{}",
            '|' => out += "\\textbar{}",
            '‖' => out += "$\\|$",
            '±' => out += "$\\pm$",
            '✓' => out += "\\checkmark",
            '✗' => out += "$\\times$",
            '–' => out += "--",
            _ => out.push(c),
        }
    }
    out
}

fn latex(a: &Artefact, grid: &[Vec<Cell>]) -> String {
    let head = header(a);
    let width = head.len() - a.columns.len();
    let mut s = String::from("\\begin{table}[t]\n\\centering\n");
    s += &format!("\\caption{{{}}}\n", tex_escape(&a.title));
    s += &format!(
        "\\begin{{tabular}}{{{}{}}}\n\\toprule\n",
        "l".repeat(width),
        "c".repeat(a.columns.len())
    );
    s += &format!(
        "{} \\\\\n\\midrule\n",
        head.iter().map(|h| tex_escape(h)).collect::<Vec<_>>().join(" & ")
    );
    for (i, row) in grid.iter().enumerate() {
        let mut cells: Vec<String> = row_labels(a, i, width).iter().map(|l| tex_escape(l)).collect();
        cells.extend(row.iter().map(|c| match render_cell(c, a.decimals) {
            (ours, Some((p, d))) => format!("{} {{\\scriptsize ({})}}", tex_escape(&ours), tex_escape(&join(&p, &d))),
            (ours, None) => tex_escape(&ours),
        }));
        s += &format!("{} \\\\\n", cells.join(" & "));
    }
    s += "\\bottomrule\n\\end{tabular}\n";
    if let Some(note) = mixed_note(grid) {
        s += &format!("\\par\\footnotesize {}\n", tex_escape(&note));
    }
    s += "\\end{table}\n";
    s
}

/// `<name>.md` and `<name>.tex` in `dir`.
pub fn write(a: &Artefact, records: &[Record], dir: &Path) -> Result<Vec<PathBuf>> {
    let md = dir.join(format!("{}.md", a.name));
    let tex = dir.join(format!("{}.tex", a.name));
    let grid = grid(a, records);
    warn_mixed(
        a,
        grid.iter().enumerate().flat_map(|(i, row)| {
            row.iter().enumerate().filter_map(move |(j, c)| {
                Some((
                    format!("{} / {}", a.rows[i].label.joined(), a.columns[j].label.joined()),
                    c.ours.as_ref()?,
                ))
            })
        }),
    );
    std::fs::write(&md, markdown(a, &grid)).with_context(|| format!("cannot write {}", md.display()))?;
    std::fs::write(&tex, latex(a, &grid)).with_context(|| format!("cannot write {}", tex.display()))?;
    Ok(vec![md, tex])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_values_keep_three_significant_digits() {
        assert_eq!(num(3721.8, 2), "3722");
        assert_eq!(num(37218.0, 2), "3.72e4");
        assert_eq!(num(12.345, 2), "12.35");
        assert_eq!(signed(-13.7, 2), "-13.70");
        assert_eq!(signed(13.7, 2), "+13.70");
        assert_eq!(signed(25000.0, 2), "+2.50e4");
    }

    #[test]
    fn labels_with_table_and_tex_syntax_are_escaped() {
        assert_eq!(md_escape("Magnitude: |W_ij|"), "Magnitude: \\|W_ij\\|");
        assert_eq!(
            tex_escape("[|W|^2/diag(H^-1)^2]_ij ‖X‖ 50% ± 1 {a} $ & # ~ \\"),
            "[\\textbar{}W\\textbar{}\\textasciicircum{}2/diag(H\\textasciicircum{}-1)\\textasciicircum{}2]\\_ij $\\|$X$\\|$ 50\\% $\\pm$ 1 \\{a\\} \\$ \\& \\# \\textasciitilde{} \\textbackslash{}"
        );
    }
}
