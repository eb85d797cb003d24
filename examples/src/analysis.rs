//! The pipeline's stand-ins for real tools, all deterministic and offline: source files (a
//! directory or built-in samples), a pattern scanner in place of the code-property-graph
//! generator, the "LLM" behind a trait, and the static evaluator.

use std::path::Path;

use crate::schema::{PatchStatus, ScanResult, TransformerMetadata, Verdict};

/// One C source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// File name, e.g. `boflow1.c`.
    pub name: String,
    /// Its text.
    pub text: String,
}

/// The built-in sample programs, used when no source directory is configured.
pub fn samples() -> Vec<SourceFile> {
    [
        ("boflow1.c", include_str!("../samples/boflow1.c")),
        ("boflow2.c", include_str!("../samples/boflow2.c")),
        ("fmtcat.c", include_str!("../samples/fmtcat.c")),
    ]
    .into_iter()
    .map(|(name, text)| SourceFile {
        name: name.to_string(),
        text: text.to_string(),
    })
    .collect()
}

/// The `.c` files in `dir` (sorted by name), or the samples when `dir` is `None`.
pub fn load_sources(dir: Option<&Path>) -> std::io::Result<Vec<SourceFile>> {
    let Some(dir) = dir else {
        return Ok(samples());
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "c") && path.is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push(SourceFile {
                name,
                text: std::fs::read_to_string(&path)?,
            });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// C library calls that write without knowing the destination's size, with their severity.
const UNSAFE_CALLS: [(&str, f64, &str); 4] = [
    (
        "gets(",
        9.8,
        "gets() reads an unbounded line into a fixed buffer",
    ),
    (
        "strcpy(",
        9.1,
        "strcpy() copies an unbounded string into a fixed buffer",
    ),
    (
        "sprintf(",
        8.1,
        "sprintf() formats into a fixed buffer without a size",
    ),
    (
        "strcat(",
        8.1,
        "strcat() appends to a fixed buffer without a size",
    ),
];

/// The lines of `text` with C comments blanked out (so a comment that mentions `gets()` is
/// not a finding), keeping line numbers.
fn code_lines(text: &str) -> Vec<String> {
    let mut in_comment = false;
    text.lines()
        .map(|line| {
            let mut code = String::new();
            let mut rest = line;
            loop {
                if in_comment {
                    match rest.find("*/") {
                        Some(end) => {
                            rest = &rest[end + 2..];
                            in_comment = false;
                        }
                        None => break,
                    }
                } else {
                    let block = rest.find("/*");
                    let slashes = rest.find("//");
                    match (block, slashes) {
                        (Some(b), s) if s.is_none_or(|s| b < s) => {
                            code.push_str(&rest[..b]);
                            rest = &rest[b + 2..];
                            in_comment = true;
                        }
                        (_, Some(s)) => {
                            code.push_str(&rest[..s]);
                            break;
                        }
                        _ => {
                            code.push_str(rest);
                            break;
                        }
                    }
                }
            }
            code
        })
        .collect()
}

/// Whether `line` calls `call` (and not, say, `fgets(` for `gets(`).
fn calls(line: &str, call: &str) -> bool {
    line.match_indices(call).any(|(at, _)| {
        line[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
}

/// The scan result for a file with no finding: severity 0, no line, no function.
pub fn clean_scan(file: &SourceFile) -> ScanResult {
    ScanResult {
        executable_name: file.name.clone(),
        vulnerability_severity: 0.0,
        vulnerable_line_number: 0,
        vulnerable_function: String::new(),
        vulnerability_description: "no finding".into(),
    }
}

/// Whether a scan result reports a finding (see [`clean_scan`]).
pub fn has_finding(scan: &ScanResult) -> bool {
    scan.vulnerable_line_number > 0
}

/// The most severe unsafe call in `file`, as a scan result (a pattern scan, not a real
/// code property graph).
pub fn scan(file: &SourceFile) -> Option<ScanResult> {
    let mut function = String::from("<file scope>");
    let mut worst: Option<ScanResult> = None;
    for (index, line) in code_lines(&file.text).iter().enumerate() {
        let line = line.trim_end();
        let trimmed = line.trim_start();
        // A function definition starts at column 0 and opens its body on the same line.
        if line == trimmed && trimmed.ends_with('{') && trimmed.contains('(') {
            if let Some(name) = trimmed
                .split('(')
                .next()
                .and_then(|s| s.split_whitespace().last())
            {
                function = name.trim_start_matches('*').to_string();
            }
        }
        for (call, severity, description) in UNSAFE_CALLS {
            if calls(line, call)
                && worst
                    .as_ref()
                    .is_none_or(|w| severity > w.vulnerability_severity)
            {
                worst = Some(ScanResult {
                    executable_name: file.name.clone(),
                    vulnerability_severity: severity,
                    vulnerable_line_number: index as i64 + 1,
                    vulnerable_function: function.clone(),
                    vulnerability_description: description.to_string(),
                });
            }
        }
    }
    worst
}

/// What an LLM returns for one vulnerable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchOutcome {
    /// `success` with the patched file, or `fail`.
    pub status: PatchStatus,
    /// The whole patched file (empty on failure).
    pub patched_source: String,
}

/// The model llm-dispatch asks for patches. Plug a real one in by implementing this.
pub trait Llm: Send + Sync {
    /// Who answers, for the patch's `TransformerMetadata`.
    fn metadata(&self) -> TransformerMetadata;
    /// Patches `source` for the vulnerability in `scan`.
    fn patch(&self, source: &SourceFile, scan: &ScanResult) -> PatchOutcome;
}

/// **Not a language model**: a deterministic, offline stand-in that rewrites the unsafe calls
/// the scanner knows into their bounded forms, so the pipeline runs anywhere with no model.
#[derive(Debug, Clone, Copy, Default)]
pub struct OfflineStubLlm;

impl Llm for OfflineStubLlm {
    fn metadata(&self) -> TransformerMetadata {
        TransformerMetadata {
            llm_name: "offline-stub".into(),
            llm_version: "1".into(),
            llm_flavor: "deterministic rule-based stub, no model".into(),
        }
    }

    fn patch(&self, source: &SourceFile, _scan: &ScanResult) -> PatchOutcome {
        let mut changed = false;
        let lines: Vec<String> = source
            .text
            .lines()
            .map(|line| match bounded(line) {
                Some(fixed) => {
                    changed = true;
                    fixed
                }
                None => line.to_string(),
            })
            .collect();
        if !changed {
            return PatchOutcome {
                status: PatchStatus::Fail,
                patched_source: String::new(),
            };
        }
        let mut patched_source = lines.join("\n");
        patched_source.push('\n');
        PatchOutcome {
            status: PatchStatus::Success,
            patched_source,
        }
    }
}

/// The bounded form of a line's unsafe call, for the simple `f(dst, ...);` shapes.
fn bounded(line: &str) -> Option<String> {
    let indent = &line[..line.len() - line.trim_start().len()];
    let statement = line.trim();
    let args = |call: &str| -> Option<Vec<String>> {
        let inner = statement.strip_prefix(call)?.strip_suffix(");")?;
        Some(inner.split(',').map(|a| a.trim().to_string()).collect())
    };
    if let Some([dst]) = args("gets(").as_deref() {
        return Some(format!("{indent}fgets({dst}, sizeof({dst}), stdin);"));
    }
    if let Some([dst, src]) = args("strcpy(").as_deref() {
        return Some(format!(
            "{indent}snprintf({dst}, sizeof({dst}), \"%s\", {src});"
        ));
    }
    if let Some([dst, src]) = args("strcat(").as_deref() {
        return Some(format!(
            "{indent}strncat({dst}, {src}, sizeof({dst}) - strlen({dst}) - 1);"
        ));
    }
    if let Some(rest) = statement.strip_prefix("sprintf(") {
        let (dst, tail) = rest.split_once(',')?;
        return Some(format!("{indent}snprintf({dst}, sizeof({dst}),{tail}"));
    }
    None
}

/// Judges a patched file: fixed when none of the unsafe calls is left (a static check; it does
/// not replay the crash).
pub fn evaluate(status: PatchStatus, patched_source: Option<&str>) -> (Verdict, String) {
    match (status, patched_source) {
        (PatchStatus::NotNeeded, _) => (
            Verdict::NoFinding,
            "the scan found no unsafe call, so nothing was patched".into(),
        ),
        (PatchStatus::Fail, _) => (Verdict::PatchFailed, "the LLM returned no patch".into()),
        (PatchStatus::Success, None) => (
            Verdict::PatchFailed,
            "the patch is not valid base64 UTF-8 text".into(),
        ),
        (PatchStatus::Success, Some(text)) => {
            let left: Vec<&str> = UNSAFE_CALLS
                .iter()
                .filter(|(call, _, _)| code_lines(text).iter().any(|line| calls(line, call)))
                .map(|(call, _, _)| call.trim_end_matches('('))
                .collect();
            if left.is_empty() {
                (Verdict::Fixed, "no unbounded buffer write is left".into())
            } else {
                (
                    Verdict::NotFixed,
                    format!("still calls {}", left.join(", ")),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_is_found_patched_and_fixed() {
        for file in samples() {
            let found = scan(&file).unwrap_or_else(|| panic!("{} has a finding", file.name));
            let outcome = OfflineStubLlm.patch(&file, &found);
            assert_eq!(outcome.status, PatchStatus::Success, "{}", file.name);
            let (verdict, reason) = evaluate(outcome.status, Some(&outcome.patched_source));
            assert_eq!(verdict, Verdict::Fixed, "{}: {reason}", file.name);
        }
    }

    #[test]
    fn the_scan_names_line_and_function() {
        let boflow1 = &samples()[0];
        let found = scan(boflow1).unwrap();
        assert_eq!(found.vulnerable_function, "greet");
        assert_eq!(found.vulnerable_line_number, 7);
        assert!(found.vulnerability_description.contains("strcpy"));
    }

    #[test]
    fn an_unpatched_file_is_not_fixed() {
        let text = samples()[1].text.clone();
        assert_eq!(
            evaluate(PatchStatus::Success, Some(&text)).0,
            Verdict::NotFixed
        );
        assert_eq!(evaluate(PatchStatus::Fail, None).0, Verdict::PatchFailed);
        assert!(!calls("fgets(line, 3, stdin);", "gets("));
    }
}
