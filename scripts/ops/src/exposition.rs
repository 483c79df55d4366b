//! Reading the Prometheus text exposition format that `/metrics` serves.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",…} 12.5`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name, with `_bucket`/`_count`/`_sum` for histogram series.
    pub name: String,
    /// Labels, by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or `""`.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every sample of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    /// In file order.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses a whole exposition; comments and blank lines are skipped.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line}", n + 1))?);
        }
        Ok(Scrape { samples })
    }

    /// Samples of metric `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end = loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some((i, c)) = chars.next() else {
                return Err("unterminated labels".into());
            };
            if c == '}' {
                break i + 1;
            }
            let mut key = String::from(c);
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            match chars.next() {
                Some((_, '"')) => {}
                _ => return Err(format!("label {key} has no quoted value")),
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => break,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("label {key} is not closed"));
            }
            labels.insert(key.trim().to_string(), value);
        };
        rest = &after[end..];
    }
    let value_text = rest.split_whitespace().next().ok_or("no value")?;
    let value = parse_value(value_text).ok_or_else(|| format!("bad value {value_text:?}"))?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// A sample value, `+Inf`, `-Inf` and `NaN` included.
pub fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_labels_escapes_and_infinity_parse() {
        let text = "# HELP x y\n# TYPE x counter\n\
                    strangler_requests_total{backend=\"users\",code=\"200\",route=\"users\"} 42\n\
                    strangler_request_duration_seconds_bucket{backend=\"m\",route=\"a\",le=\"+Inf\"} 7\n\
                    weird{l=\"a\\\"b\\\\c\\nd\",} 1.5e3 1700000000\n\
                    strangler_config_revision 3\n";
        let s = Scrape::parse(text).unwrap();
        assert_eq!(s.samples.len(), 4);
        assert_eq!(s.samples[0].label("code"), "200");
        assert_eq!(s.samples[0].value, 42.0);
        assert_eq!(s.samples[1].label("le"), "+Inf");
        assert_eq!(s.samples[2].label("l"), "a\"b\\c\nd");
        assert_eq!(s.samples[2].value, 1500.0);
        assert_eq!(s.samples[3].name, "strangler_config_revision");
        assert!(s.samples[3].labels.is_empty());
        assert!(Scrape::parse("x{a=\"b\" 1").is_err());
        assert!(Scrape::parse("x{a=\"b\"} one").is_err());
    }

    #[test]
    fn the_proxys_own_encoder_output_parses() {
        use strangler_proxy::metrics::{Metrics, PairMetrics, names};
        let metrics = Metrics::new();
        let pair = PairMetrics::new("users", "users");
        pair.observe(&metrics, 200, 0.003);
        pair.observe(&metrics, 503, 0.2);
        metrics
            .route_weight
            .with_label_values(&["users", "users", "canary"])
            .set(25);
        let text = String::from_utf8(metrics.render()).unwrap();
        let s = Scrape::parse(&text).unwrap();
        let requests: f64 = s.named(names::REQUESTS).map(|x| x.value).sum();
        assert_eq!(requests, 2.0, "{text}");
        let inf = s
            .named(names::REQUEST_DURATION_BUCKET)
            .find(|x| x.label("le") == "+Inf")
            .expect("an +Inf bucket");
        assert_eq!((inf.label("route"), inf.value), ("users", 2.0));
        let weight = s.named(names::ROUTE_WEIGHT).next().expect("weight gauge");
        assert_eq!((weight.label("stage"), weight.value), ("canary", 25.0));
    }
}
