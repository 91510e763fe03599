//! A Prometheus registry: metric families of one kind each, series by
//! label values, rendered in the text exposition format (version 0.0.4).
//!
//! The registry is a cheap handle (`Clone` shares it); every update takes
//! one mutex, which is fine at the rate of training steps. Families are
//! declared once with their help text; updating an undeclared family or
//! using the wrong kind is a programming error reported by a `debug_assert`
//! and otherwise ignored, so metrics never take a process down.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};

/// The kinds of metric this registry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Label pairs of one series, in the order given.
type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
enum Series {
    Value(f64),
    Histogram {
        /// Per bucket (not cumulative), then the overflow.
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

#[derive(Debug, Clone)]
struct Family {
    help: String,
    kind: Kind,
    /// Upper bounds of a histogram's buckets, ascending.
    buckets: Vec<f64>,
    series: BTreeMap<Labels, Series>,
}

/// A set of metric families.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

/// Bucket bounds for step and call durations, in seconds.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Family>> {
        // A panic while holding the lock leaves consistent data (every
        // update is a single assignment), so a poisoned lock is used as is.
        self.families.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn declare(&self, name: &str, help: &str, kind: Kind, buckets: &[f64]) {
        debug_assert!(valid_name(name), "bad metric name {name:?}");
        let mut families = self.lock();
        families.entry(name.to_owned()).or_insert_with(|| Family {
            help: help.to_owned(),
            kind,
            buckets: buckets.to_vec(),
            series: BTreeMap::new(),
        });
    }

    /// Declares a counter (a total that only grows; name it `*_total`).
    pub fn counter(&self, name: &str, help: &str) {
        self.declare(name, help, Kind::Counter, &[]);
    }

    /// Declares a gauge (a value that goes up and down).
    pub fn gauge(&self, name: &str, help: &str) {
        self.declare(name, help, Kind::Gauge, &[]);
    }

    /// Declares a histogram with the given bucket upper bounds (ascending).
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) {
        debug_assert!(buckets.windows(2).all(|w| w[0] < w[1]));
        self.declare(name, help, Kind::Histogram, buckets);
    }

    fn with_series(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        kind: Kind,
        f: impl FnOnce(&mut Series, &[f64]),
    ) {
        let mut families = self.lock();
        let Some(family) = families.get_mut(name) else {
            debug_assert!(false, "metric {name} is not declared");
            return;
        };
        if family.kind != kind {
            debug_assert!(false, "metric {name} is a {:?}", family.kind);
            return;
        }
        let key: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let buckets = family.buckets.clone();
        let series = family.series.entry(key).or_insert_with(|| match kind {
            Kind::Histogram => Series::Histogram {
                counts: vec![0; buckets.len() + 1],
                sum: 0.0,
                count: 0,
            },
            _ => Series::Value(0.0),
        });
        f(series, &buckets);
    }

    /// Adds `by` (not negative) to a counter.
    pub fn inc(&self, name: &str, labels: &[(&str, &str)], by: f64) {
        self.with_series(name, labels, Kind::Counter, |s, _| {
            if let Series::Value(v) = s
                && by >= 0.0
            {
                *v += by;
            }
        });
    }

    /// Sets a gauge.
    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.with_series(name, labels, Kind::Gauge, |s, _| {
            if let Series::Value(v) = s {
                *v = value;
            }
        });
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.with_series(name, labels, Kind::Histogram, |s, buckets| {
            if let Series::Histogram { counts, sum, count } = s {
                let i = buckets.partition_point(|&b| b < value);
                counts[i] += 1;
                *sum += value;
                *count += 1;
            }
        });
    }

    /// Drops every series of a family (gauges recomputed from scratch at
    /// each scrape, such as jobs by state).
    pub fn clear(&self, name: &str) {
        if let Some(f) = self.lock().get_mut(name) {
            f.series.clear();
        }
    }

    /// Every family in the text exposition format, families and series
    /// in name order.
    pub fn render(&self) -> String {
        let families = self.lock();
        let mut out = String::new();
        for (name, f) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.name());
            for (labels, series) in &f.series {
                match series {
                    Series::Value(v) => {
                        let _ = writeln!(out, "{name}{} {}", label_set(labels, None), number(*v));
                    }
                    Series::Histogram { counts, sum, count } => {
                        let mut cumulative = 0;
                        for (i, c) in counts.iter().enumerate() {
                            cumulative += c;
                            let le = f.buckets.get(i).map_or("+Inf".to_owned(), |b| number(*b));
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {cumulative}",
                                label_set(labels, Some(&le))
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{name}_sum{} {}",
                            label_set(labels, None),
                            number(*sum)
                        );
                        let _ = writeln!(out, "{name}_count{} {count}", label_set(labels, None));
                    }
                }
            }
        }
        out
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A float as Prometheus writes it (`+Inf`, `-Inf`, `NaN`).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_set(labels: &[(String, String)], le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_value(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// One sample of a scraped exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// What [`parse`] found: the families' types and every sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include every pair of
    /// `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
    }
}

/// Parses the text exposition format (what [`Registry::render`] writes and
/// Prometheus scrapes); an error names the line.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| bad("TYPE without a kind"))?;
            out.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| bad("value is not a number"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| bad("unclosed labels"))?;
                (name, parse_labels(body).map_err(|e| bad(&e))?)
            }
        };
        if !valid_name(name) {
            return Err(bad("bad metric name"));
        }
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

fn parse_labels(body: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("dangling escape".into()),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or("unterminated label value")?;
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses_every_kind() {
        let r = Registry::new();
        r.counter("adjoint_steps_total", "Steps run.");
        r.gauge("adjoint_loss", "Last loss.");
        r.histogram("adjoint_step_seconds", "Step time.", &[0.01, 0.1, 1.0]);
        r.inc("adjoint_steps_total", &[("job", "job-1")], 2.0);
        r.inc("adjoint_steps_total", &[("job", "job-1")], 1.0);
        r.set("adjoint_loss", &[("job", "a \"quoted\"\nname")], 0.5);
        for v in [0.005, 0.05, 0.05, 5.0] {
            r.observe("adjoint_step_seconds", &[], v);
        }
        let text = r.render();
        assert!(
            text.contains("# TYPE adjoint_step_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("adjoint_step_seconds_bucket{le=\"+Inf\"} 4"),
            "{text}"
        );
        let e = parse(&text).unwrap();
        assert_eq!(e.types["adjoint_steps_total"], "counter");
        assert_eq!(
            e.value("adjoint_steps_total", &[("job", "job-1")]),
            Some(3.0)
        );
        assert_eq!(
            e.value("adjoint_loss", &[("job", "a \"quoted\"\nname")]),
            Some(0.5)
        );
        assert_eq!(
            e.value("adjoint_step_seconds_bucket", &[("le", "0.01")]),
            Some(1.0)
        );
        assert_eq!(
            e.value("adjoint_step_seconds_bucket", &[("le", "0.1")]),
            Some(3.0)
        );
        assert_eq!(
            e.value("adjoint_step_seconds_bucket", &[("le", "1")]),
            Some(3.0)
        );
        assert_eq!(e.value("adjoint_step_seconds_count", &[]), Some(4.0));
        assert!((e.value("adjoint_step_seconds_sum", &[]).unwrap() - 5.105).abs() < 1e-12);
        // Counters do not go down; clearing drops a family's series.
        r.inc("adjoint_steps_total", &[("job", "job-1")], -5.0);
        r.clear("adjoint_loss");
        let e = parse(&r.render()).unwrap();
        assert_eq!(e.value("adjoint_steps_total", &[]), Some(3.0));
        assert_eq!(e.value("adjoint_loss", &[]), None);
    }

    #[test]
    fn bad_expositions_name_the_line() {
        let err = parse("ok 1\nbad{job=\"x} 2\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let err = parse("m{a=\"1\"} one").unwrap_err();
        assert!(err.contains("not a number"), "{err}");
    }
}
