//! The autopatch pipeline's topics and events, exactly as the Python services put them on the
//! wire: CloudEvents 1.0 whose `data` is one of the structs below.

use bus::cloudevents::{Event, EventBuilder, EventBuilderV10};
use bus::{Error, Result, Topic};
use serde::{Deserialize, Serialize};

/// fuzzing-service → patch-evaluation: a crashing input.
pub const CRASH_DETAIL_TOPIC: &str = "autopatch/crash_detail";
/// code-property-graph-generator → llm-dispatch: a vulnerability found in a source file.
pub const SCAN_RESULT_TOPIC: &str = "autopatch/cpg-scan-result";
/// llm-dispatch → patch-evaluation: the patched source file.
pub const PATCH_RESPONSE_TOPIC: &str = "autopatch/patch_response";
/// patch-evaluation → anyone: the verdict on a patch.
pub const PATCH_EVALUATION_TOPIC: &str = "autopatch/patch_evaluation";

/// `type` of a [`CrashDetail`] event.
pub const CRASH_DETAIL_TYPE: &str = "autopatch.crashdetail";
/// `type` of a [`ScanResult`] event.
pub const SCAN_RESULT_TYPE: &str = "autopatch.scanresult";
/// `type` of a [`PatchResponse`] event.
pub const PATCH_RESPONSE_TYPE: &str = "autopatch.patchresponse";
/// `type` of a [`PatchEvaluation`] event.
pub const PATCH_EVALUATION_TYPE: &str = "autopatch.patchevaluation";

/// `source` of the fuzzing service's events.
pub const FUZZING_SOURCE: &str = "autopatch.fuzzing-service";
/// `source` of the scan results.
pub const CPG_SOURCE: &str = "autopatch.code-property-graph-generator";
/// `source` of the patch responses.
pub const LLM_DISPATCH_SOURCE: &str = "autopatch.llm-dispatch-service";
/// `source` of the evaluations.
pub const EVALUATION_SOURCE: &str = "autopatch.patch-evaluation-service";

/// A crash found by fuzzing `executable_name` (e.g. `boflow1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashDetail {
    /// The crashing program, without extension.
    pub executable_name: String,
    /// The crashing input, base64.
    pub crash_detail_base64: String,
    /// Whether the program reads the input from a file (else from argv/stdin).
    pub is_input_from_file: bool,
}

/// A vulnerability found in a source file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanResult {
    /// The source file, e.g. `boflow1.c`.
    pub executable_name: String,
    /// CVSS-like severity, 0 to 10.
    pub vulnerability_severity: f64,
    /// 1-based line of the vulnerable call.
    pub vulnerable_line_number: i64,
    /// The function containing it.
    pub vulnerable_function: String,
    /// What is wrong.
    pub vulnerability_description: String,
}

/// A patch produced for one source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchResponse {
    /// The source file, e.g. `boflow1.c`.
    pub executable_name: String,
    /// The whole patched file, base64.
    pub patch_snippet_base64: String,
    /// `success` or `fail`.
    pub status: PatchStatus,
    /// Which model made it.
    #[serde(rename = "TransformerMetadata")]
    pub transformer_metadata: TransformerMetadata,
}

/// Whether the LLM produced a patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchStatus {
    /// A patched file is attached.
    Success,
    /// No patch.
    Fail,
    /// The scan found nothing, so there is nothing to patch.
    NotNeeded,
}

/// The model behind a patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformerMetadata {
    /// Model name.
    pub llm_name: String,
    /// Model version.
    pub llm_version: String,
    /// Model variant or prompt flavour.
    pub llm_flavor: String,
}

/// The verdict on one patch for one crash (new: the Python version only wrote a CSV).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchEvaluation {
    /// The program, without extension.
    pub executable_name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
    /// The model that made the patch.
    pub llm_name: String,
    /// The `id` of the crash-detail event.
    pub crash_event_id: String,
    /// The `id` of the patch-response event.
    pub patch_event_id: String,
}

/// What the evaluator concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The patch removes what made the program crash.
    Fixed,
    /// The patched file still has the flaw.
    NotFixed,
    /// The LLM returned no usable patch.
    PatchFailed,
    /// The scan found nothing in the program, so nothing was patched.
    NoFinding,
    /// The crash or the patch never got its partner within `app.orphan_timeout_secs`.
    Unmatched,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Fixed => "fixed",
            Verdict::NotFixed => "not_fixed",
            Verdict::PatchFailed => "patch_failed",
            Verdict::NoFinding => "no_finding",
            Verdict::Unmatched => "unmatched",
        })
    }
}

/// The program name shared by all four event kinds: `boflow1.c` and `boflow1` are the same
/// program (scan results and patches name the source file, crashes the executable).
pub fn program_name(executable_name: &str) -> &str {
    executable_name
        .strip_suffix(".c")
        .unwrap_or(executable_name)
}

/// A topic from one of the constants above.
pub fn topic(name: &str) -> Topic {
    Topic::new(name).expect("the pipeline's topic names are valid")
}

/// A CloudEvent with a fresh UUID v4 id, the current time and `data` as JSON.
pub fn event<T: Serialize>(source: &str, ty: &str, subject: &str, data: &T) -> Result<Event> {
    let data = serde_json::to_value(data).map_err(|e| {
        Error::invalid_argument("autopatch", "event data cannot be serialised").with_source(e)
    })?;
    EventBuilderV10::new()
        .id(uuid::Uuid::new_v4().to_string())
        .source(source)
        .ty(ty)
        .subject(subject)
        .time(chrono::Utc::now())
        .data("application/json", data)
        .build()
        .map_err(|e| Error::invalid_argument("autopatch", format!("invalid event: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_response_uses_the_python_field_names() {
        let response = PatchResponse {
            executable_name: "boflow1.c".into(),
            patch_snippet_base64: "aW50".into(),
            status: PatchStatus::Success,
            transformer_metadata: TransformerMetadata {
                llm_name: "offline-stub".into(),
                llm_version: "1".into(),
                llm_flavor: "rules".into(),
            },
        };
        let json = serde_json::to_value(&response).unwrap();
        assert_eq!(json["status"], "success");
        assert_eq!(json["TransformerMetadata"]["llm_name"], "offline-stub");
    }

    #[test]
    fn program_names_ignore_the_c_extension() {
        assert_eq!(program_name("boflow1.c"), "boflow1");
        assert_eq!(program_name("boflow1"), "boflow1");
    }
}
