//! Latency samples, their summaries (min, p50, p90, p99, max, mean) and the printed table.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

/// The latencies of one measured operation.
#[derive(Debug, Clone)]
pub struct Samples {
    /// What was timed, e.g. "create->ready (serial)".
    pub label: String,
    pub values: Vec<Duration>,
}

impl Samples {
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            values: Vec::new(),
        }
    }

    pub fn push(&mut self, value: Duration) {
        self.values.push(value);
    }

    pub fn summary(&self) -> Option<Summary> {
        Summary::of(&self.values)
    }
}

/// Order statistics of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Percentiles by the nearest-rank method: p is the smallest sample with at least p% of
    /// the samples at or below it. With fewer than 100 samples p99 is the maximum.
    pub fn of(values: &[Duration]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[index.clamp(1, sorted.len()) - 1]
        };
        Some(Self {
            count: sorted.len(),
            min: sorted[0],
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }
}

/// One printed row: which system, which operation, and its samples.
#[derive(Debug, Clone)]
pub struct Row {
    pub system: String,
    pub samples: Samples,
}

/// A throughput figure: `count` operations done in `elapsed` by `concurrency` clients.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub system: String,
    pub label: String,
    pub count: usize,
    pub concurrency: usize,
    pub elapsed: Duration,
    /// How busy the host's CPUs were meanwhile (all processes), in percent.
    pub host_busy: f64,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
}

/// Everything one run measured, in the order it was measured.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub throughputs: Vec<Throughput>,
    /// Free-form observations made during the run (warnings, leftovers, failures).
    pub notes: Vec<String>,
}

impl Report {
    pub fn add(&mut self, system: &str, samples: Samples) {
        self.rows.push(Row {
            system: system.to_owned(),
            samples,
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("note: {note}");
        self.notes.push(note);
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let system_width = self
            .rows
            .iter()
            .map(|row| row.system.len())
            .chain(self.throughputs.iter().map(|t| t.system.len()))
            .chain([6])
            .max()
            .unwrap_or(6);
        let label_width = self
            .rows
            .iter()
            .map(|row| row.samples.label.len())
            .chain(self.throughputs.iter().map(|t| t.label.len()))
            .chain([9])
            .max()
            .unwrap_or(9);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<system_width$}  {:<label_width$}  {:>5}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}",
            "system", "operation", "n", "min", "p50", "p90", "p99", "max", "mean"
        );
        let _ = writeln!(
            out,
            "{:<system_width$}  {:<label_width$}  {:>5}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}",
            "", "", "", "ms", "ms", "ms", "ms", "ms", "ms"
        );
        // Rows grouped by system, systems in the order they were first measured.
        let mut systems: Vec<&str> = Vec::new();
        for row in &self.rows {
            if !systems.contains(&row.system.as_str()) {
                systems.push(&row.system);
            }
        }
        let grouped = systems
            .iter()
            .flat_map(|system| self.rows.iter().filter(move |row| row.system == *system));
        let mut previous_system = None;
        for row in grouped {
            if previous_system.is_some() && previous_system != Some(&row.system) {
                out.push('\n');
            }
            previous_system = Some(&row.system);
            match row.samples.summary() {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "{:<system_width$}  {:<label_width$}  {:>5}  {:>8.2}  {:>8.2}  {:>8.2}  {:>8.2}  {:>8.2}  {:>8.2}",
                        row.system,
                        row.samples.label,
                        s.count,
                        s.min,
                        s.p50,
                        s.p90,
                        s.p99,
                        s.max,
                        s.mean
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{:<system_width$}  {:<label_width$}  {:>5}  (no samples)",
                        row.system, row.samples.label, 0
                    );
                }
            }
        }
        if !self.throughputs.is_empty() {
            out.push('\n');
            for t in &self.throughputs {
                let _ = writeln!(
                    out,
                    "{:<system_width$}  {:<label_width$}  {} in {:.2} s with {} clients = {:.1}/s \
                     (host CPUs {:.0}% busy)",
                    t.system,
                    t.label,
                    t.count,
                    t.elapsed.as_secs_f64(),
                    t.concurrency,
                    t.per_second(),
                    t.host_busy
                );
            }
        }
        out
    }

    /// The same results as JSON, raw samples included, for later analysis.
    pub fn to_json(&self, context: serde_json::Value) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|row| {
                let summary = row.samples.summary();
                json!({
                    "system": row.system,
                    "operation": row.samples.label,
                    "summary_ms": summary.map(|s| json!({
                        "n": s.count, "min": s.min, "p50": s.p50, "p90": s.p90,
                        "p99": s.p99, "max": s.max, "mean": s.mean,
                    })),
                    "samples_ms": row.samples.values.iter()
                        .map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
                })
            })
            .collect();
        let throughputs: Vec<_> = self
            .throughputs
            .iter()
            .map(|t| {
                json!({
                    "system": t.system, "operation": t.label, "count": t.count,
                    "concurrency": t.concurrency, "seconds": t.elapsed.as_secs_f64(),
                    "per_second": t.per_second(), "host_busy_percent": t.host_busy,
                })
            })
            .collect();
        json!({
            "context": context,
            "rows": rows,
            "throughput": throughputs,
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&values).unwrap();
        assert_eq!(
            (s.min, s.p50, s.p90, s.p99, s.max),
            (1.0, 50.0, 90.0, 99.0, 100.0)
        );
        let s = Summary::of(&[Duration::from_millis(7)]).unwrap();
        assert_eq!((s.p50, s.p99), (7.0, 7.0));
        assert!(Summary::of(&[]).is_none());
    }
}
