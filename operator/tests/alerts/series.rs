//! Series as Prometheus stores them: parsed from a real scrape (the classic
//! text format), then given the target labels a PodMonitor or
//! ServiceMonitor adds — with `honorLabels` deciding, as in Prometheus,
//! whether a scraped label that clashes with a target label is kept or
//! renamed `exported_<name>`.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl Series {
    /// The series in PromQL selector form, as promtool's `input_series` takes it.
    pub fn selector(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| {
                let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
                format!("{k}=\"{escaped}\"")
            })
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }

    pub fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .unwrap_or_else(|| panic!("{} has no label {name}", self.selector()))
    }
}

/// Every sample line of a text-format exposition, as a series.
pub fn parse(exposition: &str) -> Vec<Series> {
    exposition
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, rest) = match line.find('{') {
                Some(open) => (&line[..open], &line[open + 1..]),
                None => (line.split(' ').next().unwrap(), ""),
            };
            let mut labels = BTreeMap::new();
            let mut rest = rest;
            while let Some(eq) = rest.find("=\"") {
                let key = rest[..eq].trim_start_matches(',').to_owned();
                let mut value = String::new();
                let mut chars = rest[eq + 2..].char_indices();
                let end = loop {
                    match chars.next().expect("a closed label value") {
                        (_, '\\') => match chars.next().expect("an escape").1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        (i, '"') => break eq + 2 + i + 1,
                        (_, c) => value.push(c),
                    }
                };
                labels.insert(key, value);
                rest = &rest[end..];
                if rest.starts_with('}') {
                    break;
                }
            }
            Series {
                name: name.to_owned(),
                labels,
            }
        })
        .collect()
}

/// What a monitor adds to every series it scrapes from one target.
pub struct Target {
    pub labels: BTreeMap<String, String>,
    pub honor_labels: bool,
}

impl Target {
    pub fn new(labels: &[(&str, &str)], honor_labels: bool) -> Self {
        Self {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            honor_labels,
        }
    }

    /// The series as stored: target labels added; on a clash the scraped
    /// value wins with honorLabels, else it moves to `exported_<name>`.
    pub fn store(&self, scraped: &Series) -> Series {
        let mut labels = self.labels.clone();
        for (key, value) in &scraped.labels {
            if !labels.contains_key(key) || self.honor_labels {
                labels.insert(key.clone(), value.clone());
            } else {
                labels.insert(format!("exported_{key}"), value.clone());
            }
        }
        Series {
            name: scraped.name.clone(),
            labels,
        }
    }
}

/// One scrape of one target, stored.
pub struct Scrape {
    pub series: Vec<Series>,
}

impl Scrape {
    pub fn new(exposition: &str, target: &Target) -> Self {
        Self {
            series: parse(exposition).iter().map(|s| target.store(s)).collect(),
        }
    }

    /// The one stored series named `name` whose labels include `matching`.
    /// Panics, listing what the scrape has under that name, when there is
    /// none: a renamed metric or label fails here, not silently in promtool.
    pub fn pick(&self, name: &str, matching: &[(&str, &str)]) -> Series {
        let found: Vec<&Series> = self
            .series
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                matching
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        match found.as_slice() {
            [one] => (*one).clone(),
            _ => {
                let named: Vec<String> = self
                    .series
                    .iter()
                    .filter(|s| s.name == name)
                    .map(Series::selector)
                    .collect();
                panic!(
                    "expected one series {name} with {matching:?} in the scrape, found {}; under that name: {named:#?}",
                    found.len()
                )
            }
        }
    }

    /// The histogram's bucket series of one label set, by their `le`.
    pub fn buckets(&self, name: &str, matching: &[(&str, &str)]) -> Vec<(f64, Series)> {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, Series)> = self
            .series
            .iter()
            .filter(|s| s.name == bucket)
            .filter(|s| {
                matching
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| {
                let le = match s.label("le") {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().unwrap(),
                };
                (le, s.clone())
            })
            .collect();
        assert!(
            buckets.len() > 2,
            "no buckets of {name} with {matching:?} in the scrape"
        );
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

#[test]
fn parses_escaped_label_values_and_honours_honor_labels() {
    let series = parse("# HELP x y\nx_total{a=\"1\",b=\"q\\\"u\\\\o\"} 3\nup 1\n");
    assert_eq!(series[0].labels["b"], "q\"u\\o");
    assert_eq!(series[1].name, "up");
    let scraped = &parse("m{endpoint=\"charges\"} 1\n")[0];
    let kept = Target::new(&[("endpoint", "sluice-admin")], true).store(scraped);
    assert_eq!(kept.labels["endpoint"], "charges");
    let renamed = Target::new(&[("endpoint", "sluice-admin")], false).store(scraped);
    assert_eq!(renamed.labels["endpoint"], "sluice-admin");
    assert_eq!(renamed.labels["exported_endpoint"], "charges");
}
