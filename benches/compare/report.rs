//! The results as Markdown: one summary table with the goals, then
//! a detail table per benchmark.

use std::fmt::Write;

/// Whether a row's goal was met.
#[derive(Clone, Debug)]
pub enum Verdict {
    Met,
    Missed,
    /// A functional property, checked in every run (smoke runs too).
    Correct,
    /// Not measured in this run, and why.
    NotMeasured(String),
    /// A smoke run: the numbers only show that the harness works.
    NotJudged,
}

impl Verdict {
    pub fn goal(met: bool) -> Verdict {
        if met { Verdict::Met } else { Verdict::Missed }
    }

    fn cell(&self) -> String {
        match self {
            Verdict::Met | Verdict::Correct => "**met**".into(),
            Verdict::Missed => "**missed**".into(),
            Verdict::NotMeasured(why) => format!("not measured: {why}"),
            Verdict::NotJudged => "not judged (smoke run)".into(),
        }
    }
}

/// One line of the summary table.
#[derive(Clone, Debug)]
pub struct Row {
    pub what: String,
    pub onlyone: String,
    pub peers: String,
    pub ratio: String,
    pub goal: String,
    pub verdict: Verdict,
}

impl Row {
    pub fn not_measured(what: &str, goal: &str, why: &str) -> Row {
        Row {
            what: what.into(),
            onlyone: "—".into(),
            peers: "—".into(),
            ratio: "—".into(),
            goal: goal.into(),
            verdict: Verdict::NotMeasured(why.into()),
        }
    }
}

/// The table of one benchmark's numbers, with a paragraph on how it was
/// measured.
#[derive(Clone, Debug)]
pub struct Detail {
    title: String,
    method: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Detail {
    pub fn new(title: &str, method: &str, header: &[&str]) -> Detail {
        Detail {
            title: title.into(),
            method: method.into(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }
}

#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    details: Vec<Detail>,
    /// A smoke run's timings mean nothing: no verdict on them.
    smoke: bool,
}

impl Report {
    pub fn new(smoke: bool) -> Report {
        Report {
            smoke,
            ..Report::default()
        }
    }

    pub fn row(&mut self, mut row: Row) {
        if self.smoke && matches!(row.verdict, Verdict::Met | Verdict::Missed) {
            row.verdict = Verdict::NotJudged;
        }
        println!(
            "  {} | onlyone {} | {} | {} | goal {} | {}",
            row.what,
            row.onlyone,
            row.peers,
            row.ratio,
            row.goal,
            row.verdict.cell()
        );
        self.rows.push(row);
    }

    pub fn detail(&mut self, detail: Detail) {
        self.details.push(detail);
    }

    /// The whole document: `preamble` (machine, date, command), the
    /// summary, `analysis` (written by hand), then the details.
    pub fn markdown(&self, preamble: &str, analysis: &str) -> String {
        let mut doc = String::from(preamble);
        doc.push_str("\n## Summary\n\n");
        table(
            &mut doc,
            &[
                "what",
                "onlyone",
                "peers (same run)",
                "ratio",
                "goal",
                "verdict",
            ],
            self.rows.iter().map(|row| {
                vec![
                    row.what.clone(),
                    row.onlyone.clone(),
                    row.peers.clone(),
                    row.ratio.clone(),
                    row.goal.clone(),
                    row.verdict.cell(),
                ]
            }),
        );
        doc.push('\n');
        doc.push_str(analysis);
        for detail in &self.details {
            let _ = write!(doc, "\n## {}\n\n{}\n\n", detail.title, detail.method);
            let header: Vec<&str> = detail.header.iter().map(String::as_str).collect();
            table(&mut doc, &header, detail.rows.iter().cloned());
        }
        doc
    }
}

fn table(doc: &mut String, header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let _ = writeln!(doc, "| {} |", header.join(" | "));
    let _ = writeln!(doc, "|{}", " --- |".repeat(header.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(doc, "| {} |", cells.join(" | "));
    }
}
