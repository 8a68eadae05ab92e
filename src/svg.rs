//! Charts drawn on the server as SVG inside a page (the operators' page of `warmer web`, the
//! report of `warmer simulate`): no script, nothing fetched, so they work offline and under a
//! Content-Security-Policy that allows nothing but the page's own style. Pure; every text that
//! comes from outside is escaped ([`escape`]).

use std::fmt::Write as _;

/// One line of a chart: `(x, y)` points, x in Unix minutes, drawn in its CSS class's colour.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    /// `target`, `ready`, `booting`, `handed`, `demand`, `hits`, `misses` (see the page's style).
    pub class: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A stretch of time in one state, for a band chart (the sizer's reasons).
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub from: f64,
    pub to: f64,
    pub label: &'static str,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

/// `text` for HTML and SVG: `&`, `<`, `>`, `"` and `'` escaped, control characters but the
/// newline dropped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push('\n'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10ⁿ at or above `max` (at least 1): an
/// axis's end, close above the data.
fn nice(max: f64) -> f64 {
    let max = max.max(1.0);
    let power = 10f64.powf(max.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|step| step * power)
        .find(|top| *top >= max)
        .unwrap_or(max)
}

/// The y axis's end for `series`: [`nice`] above their highest point.
fn y_top(series: &[Series]) -> f64 {
    nice(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    )
}

/// `HH:MM` (UTC) of Unix minute `x`, with the date when the range spans more than a day.
fn time_label(x: f64, long: bool) -> String {
    let Ok(at) = jiff::Timestamp::from_second((x * 60.0) as i64) else {
        return String::new();
    };
    let format = if long { "%m-%d %H:%M" } else { "%H:%M" };
    at.strftime(format).to_string()
}

/// A line chart of `series` over `[x0, x1]` (Unix minutes), titled for screen readers, with a
/// y axis from 0 and the times of its ends.
pub fn line_chart(title: &str, series: &[Series], (x0, x1): (f64, f64)) -> String {
    let span = (x1 - x0).max(1.0);
    let top = y_top(series);
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + (v - x0) / span * plot_w;
    let y = |v: f64| TOP + plot_h - v / top * plot_h;
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = escape(title)
    );
    for i in 0..=4 {
        let value = top * f64::from(i) / 4.0;
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - 4.0,
            LEFT - 4.0,
            y(value) + 3.0,
            format_value(value),
            y = y(value),
        );
    }
    let long = span > 24.0 * 60.0;
    let _ = write!(
        out,
        "<text class=\"axis\" x=\"{LEFT}\" y=\"{:.1}\">{}</text><text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        HEIGHT - 6.0,
        time_label(x0, long),
        WIDTH - 4.0,
        HEIGHT - 6.0,
        time_label(x1, long)
    );
    for s in series {
        polyline(&mut out, s, |(px, py)| (x(px), y(py)));
    }
    out.push_str("</svg>");
    out
}

/// A chart of `curves` (lines) and `marks` (points, each labelled) against numeric axes from 0
/// (`x_label`, `y_label`): the trade-off of warm hits against idle VM-hours.
pub fn xy_chart(
    title: &str,
    curves: &[Series],
    marks: &[(String, &'static str, (f64, f64))],
    (x_label, y_label): (&str, &str),
    (y0, y1): (f64, f64),
) -> String {
    let xs = curves
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(marks.iter().map(|m| m.2.0));
    let right = nice(xs.fold(0.0, f64::max));
    let plot_w = WIDTH - LEFT - 12.0;
    let plot_h = HEIGHT - TOP - BOTTOM - 12.0;
    let x = |v: f64| LEFT + v / right * plot_w;
    let y = |v: f64| TOP + plot_h - (v - y0) / (y1 - y0).max(f64::EPSILON) * plot_h;
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = escape(title)
    );
    for i in 0..=4 {
        let value = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/><text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - 12.0,
            LEFT - 4.0,
            y(value) + 3.0,
            format_value(value),
            yy = y(value),
        );
        let at = right * f64::from(i) / 4.0;
        let anchor = if i == 4 { "end" } else { "middle" };
        let _ = write!(
            out,
            "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            x(at),
            TOP + plot_h + 12.0,
            format_value(at)
        );
    }
    let _ = write!(
        out,
        "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text class=\"axis\" x=\"{LEFT}\" y=\"{:.1}\">{}</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - 2.0,
        escape(x_label),
        TOP + 2.0,
        escape(y_label)
    );
    for s in curves {
        polyline(&mut out, s, |(px, py)| (x(px), y(py.clamp(y0, y1))));
    }
    for (label, class, (px, py)) in marks {
        let _ = write!(
            out,
            "<circle class=\"mark {class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\"><title>{}</title></circle><text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x(*px),
            y(py.clamp(y0, y1)),
            escape(label),
            x(*px) + 6.0,
            y(py.clamp(y0, y1)) - 6.0,
            escape(label)
        );
    }
    out.push_str("</svg>");
    out
}

/// `series` as a titled polyline, its points placed by `at`; nothing for an empty series.
fn polyline(out: &mut String, series: &Series, at: impl Fn((f64, f64)) -> (f64, f64)) {
    if series.points.is_empty() {
        return;
    }
    let path: Vec<String> = series
        .points
        .iter()
        .map(|p| {
            let (x, y) = at(*p);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = write!(
        out,
        "<polyline class=\"line {}\" points=\"{}\"><title>{}</title></polyline>",
        series.class,
        path.join(" "),
        escape(&series.label)
    );
}

/// A small chart without axes, for the overview's rows.
pub fn sparkline(title: &str, series: &[Series], (x0, x1): (f64, f64)) -> String {
    let (w, h) = (160.0, 32.0);
    let span = (x1 - x0).max(1.0);
    let top = y_top(series);
    let mut out = format!(
        "<svg class=\"spark\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = escape(title)
    );
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|(px, py)| {
                let sx = (px - x0) / span * w;
                let sy = h - 1.0 - py / top * (h - 2.0);
                format!("{sx:.1},{sy:.1}")
            })
            .collect();
        let _ = write!(
            out,
            "<polyline class=\"line {}\" points=\"{}\"/>",
            s.class,
            path.join(" ")
        );
    }
    out.push_str("</svg>");
    out
}

/// A band of `bands` (each stretch in its label's colour) over `[x0, x1]`.
pub fn band_chart(title: &str, bands: &[Band], (x0, x1): (f64, f64)) -> String {
    let span = (x1 - x0).max(1.0);
    let plot_w = WIDTH - LEFT - 4.0;
    let mut out = format!(
        "<svg class=\"bands\" viewBox=\"0 0 {WIDTH} 28\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = escape(title)
    );
    for band in bands {
        let from = LEFT + (band.from - x0).max(0.0) / span * plot_w;
        let to = LEFT + (band.to.min(x1) - x0) / span * plot_w;
        let _ = write!(
            out,
            "<rect class=\"reason-{}\" x=\"{from:.1}\" y=\"2\" width=\"{:.1}\" height=\"20\"><title>{}</title></rect>",
            band.label,
            (to - from).max(0.5),
            band.label
        );
    }
    out.push_str("</svg>");
    out
}

fn format_value(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The stretches of one state each in `states` (x, label), oldest first; the last ends at `end`.
pub fn bands(states: &[(f64, &'static str)], end: f64) -> Vec<Band> {
    let mut bands: Vec<Band> = Vec::new();
    for (x, label) in states {
        match bands.last_mut() {
            Some(last) if last.label == *label => last.to = *x,
            _ => {
                if let Some(last) = bands.last_mut() {
                    last.to = *x;
                }
                bands.push(Band {
                    from: *x,
                    to: *x,
                    label,
                });
            }
        }
    }
    if let Some(last) = bands.last_mut() {
        last.to = end;
    }
    bands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_cannot_open_a_tag_or_an_attribute() {
        assert_eq!(
            escape("a<script>\"'&\u{1b}b"),
            "a&lt;script&gt;&quot;&#39;&amp;b"
        );
        let chart = line_chart(
            "<x>",
            &[Series {
                label: "\"><script>".into(),
                class: "ready",
                points: vec![(0.0, 1.0), (10.0, 3.0)],
            }],
            (0.0, 10.0),
        );
        assert!(
            !chart.contains("<script>") && !chart.contains("<x>"),
            "{chart}"
        );
    }

    #[test]
    fn the_y_axis_tops_at_a_round_number_and_points_fall_inside_the_plot() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.0), 8.0);
        assert_eq!(nice(13.0), 15.0);
        assert_eq!(nice(41.0), 50.0);
        assert_eq!(nice(210_000.0), 250_000.0);
        let chart = line_chart(
            "ready",
            &[Series {
                label: "ready".into(),
                class: "ready",
                points: vec![(100.0, 0.0), (160.0, 13.0)],
            }],
            (100.0, 160.0),
        );
        assert!(chart.contains("points=\"44.0,178.0 716.0,"), "{chart}");
        assert!(chart.contains(">15</text>"), "{chart}");
    }

    #[test]
    fn states_become_stretches_that_end_where_the_next_begins() {
        let states = [(0.0, "min"), (10.0, "min"), (20.0, "demand"), (30.0, "min")];
        let got = bands(&states, 40.0);
        let spans: Vec<(f64, f64, &str)> = got.iter().map(|b| (b.from, b.to, b.label)).collect();
        assert_eq!(
            spans,
            [
                (0.0, 20.0, "min"),
                (20.0, 30.0, "demand"),
                (30.0, 40.0, "min")
            ]
        );
    }
}
