//! Samples, rows of the result table, and the Markdown that shows them.

use std::fmt::Write;
use std::time::Instant;

use anyhow::Result;

/// Repeated measurements of one figure, shown as median (min–max).
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut values = self.0.clone();
        values.sort_by(f64::total_cmp);
        values
    }

    pub fn median(&self) -> f64 {
        let values = self.sorted();
        match values.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }

    fn render(&self, unit: &str) -> String {
        let values = self.sorted();
        match values.as_slice() {
            [] => "–".to_string(),
            [one] => format!("{} {unit}", number(*one)),
            [min, .., max] => format!("{} {unit} ({}–{})", number(self.median()), number(*min), number(*max)),
        }
    }
}

/// Three significant digits, whatever the magnitude.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// Wall time of `work`, in seconds.
pub fn seconds(work: impl FnOnce() -> Result<()>) -> Result<f64> {
    let started = Instant::now();
    work()?;
    Ok(started.elapsed().as_secs_f64())
}

/// A goal from the tracker: the ratio (or our figure, when there is no peer) must stay at or under `limit`.
#[derive(Clone, Copy, Debug)]
pub struct Goal {
    pub limit: f64,
    pub on_ratio: bool,
}

/// One line of the table: our figure, the peer's when there is one, and their ratio computed
/// pair by pair (each repetition's ours / peer), so load swings cancel within a pair.
#[derive(Clone, Debug)]
pub struct Row {
    pub section: &'static str,
    pub figure: String,
    pub unit: &'static str,
    pub ours: Samples,
    pub peer: Option<(String, Samples)>,
    pub goal: Option<Goal>,
}

impl Row {
    pub fn ours(section: &'static str, figure: impl Into<String>, unit: &'static str, ours: Samples) -> Row {
        Row { section, figure: figure.into(), unit, ours, peer: None, goal: None }
    }

    pub fn against(mut self, peer: impl Into<String>, samples: Samples) -> Row {
        self.peer = Some((peer.into(), samples));
        self
    }

    /// The goal applies to the ratio when there is a peer, else to our median.
    pub fn goal(mut self, limit: f64) -> Row {
        self.goal = Some(Goal { limit, on_ratio: self.peer.is_some() });
        self
    }

    fn ratios(&self) -> Option<Samples> {
        let (_, peer) = self.peer.as_ref()?;
        Some(Samples(self.ours.0.iter().zip(&peer.0).map(|(o, p)| o / p).collect()))
    }

    fn verdict(&self) -> String {
        let Some(goal) = self.goal else { return String::new() };
        let value = if goal.on_ratio { self.ratios().map_or(f64::NAN, |r| r.median()) } else { self.ours.median() };
        let what = if goal.on_ratio {
            format!("≤ {}×", number(goal.limit))
        } else {
            format!("≤ {} {}", number(goal.limit), self.unit)
        };
        let met = if value <= goal.limit { "met" } else { "**not met**" };
        format!("{what}: {met}")
    }
}

/// The Markdown table of every row, grouped by section in order of appearance.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut section = "";
    for row in rows {
        if row.section != section {
            section = row.section;
            let _ = write!(
                out,
                "\n### {section}\n\n| figure | ours: median (min–max) | peer | peer: median (min–max) | ratio ours/peer | goal |\n|---|---|---|---|---|---|\n"
            );
        }
        let (peer_name, peer) = match &row.peer {
            Some((name, samples)) => (name.as_str(), samples.render(row.unit)),
            None => ("", String::new()),
        };
        let ratio = row.ratios().map(|r| r.render("×")).unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {peer_name} | {peer} | {ratio} | {} |",
            row.figure,
            row.ours.render(row.unit),
            row.verdict()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_pairwise_ratio() {
        let row = Row::ours("s", "f", "s", Samples(vec![3.0, 1.0, 2.0]))
            .against("peer", Samples(vec![6.0, 4.0, 4.0]))
            .goal(0.5);
        assert_eq!(row.ours.median(), 2.0);
        assert_eq!(row.ratios().unwrap().0, vec![0.5, 0.25, 0.5]);
        assert!(table(&[row]).contains(
            "| f | 2.00 s (1.00–3.00) | peer | 4.00 s (4.00–6.00) | 0.500 × (0.250–0.500) | ≤ 0.500×: met |"
        ));
    }

    #[test]
    fn goal_without_a_peer_applies_to_our_figure() {
        let row = Row::ours("s", "f", "MiB", Samples(vec![2.5])).goal(2.0);
        assert!(row.verdict().contains("not met"));
    }
}
