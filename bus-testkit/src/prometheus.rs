//! Reading metrics as the Prometheus text format shows them, for tests that scrape an endpoint
//! or render a recorder.

/// The value of the sample of `metric` whose labels include every one of `labels` (each
/// written as in the text, e.g. `topic="jobs"`), if there is one.
///
/// ```
/// let text = "bus_messages_acked_total{topic=\"jobs\",subscription=\"worker\"} 7\n";
/// let acked = bus_testkit::prometheus::sample(text, "bus_messages_acked_total", &[r#"topic="jobs""#]);
/// assert_eq!(acked, Some(7.0));
/// ```
pub fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    let prefix = format!("{metric}{{");
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
