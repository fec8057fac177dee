//! The demo's end: the book written to `.bookengine/books/<job>.md`, and the run
//! report (steps, models, attempts, tokens, times, who wrote the text).

use super::setup::Prepared;
use super::writer::{local_model_speed, Writer};
use crate::error::{Error, Result};
use crate::generations::{run_report, JobDetail};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

pub fn finish(demo: &Prepared, detail: &JobDetail, started: Instant) -> Result<()> {
    let (flow, dir, writer, keyless) = (&demo.flow, &demo.dir, &demo.writer, &demo.keyless);
    let job = &detail.job;
    let report = run_report(detail, flow);
    if detail.job.status != crate::jobs::JobStatus::Succeeded {
        return Err(Error::internal(format!(
            "the generation ended {}: {}",
            detail.job.status,
            detail.job.error.as_deref().unwrap_or("")
        )));
    }
    let result = detail.job.result.clone().unwrap_or_default();
    let book = match writer {
        // Without an editing pass the demo sets the chapters under their titles.
        Writer::Local(_)
            if flow
                .steps
                .last()
                .is_some_and(|s| s.config.for_each.is_some()) =>
        {
            book_with_headings(&result)
                .unwrap_or_else(|| result["book"].as_str().unwrap_or_default().to_owned())
        }
        _ => result["book"].as_str().unwrap_or_default().to_owned(),
    };
    let books = dir.join("books");
    std::fs::create_dir_all(&books)
        .map_err(|e| Error::internal(format!("creating {}: {e}", books.display())))?;
    let path: PathBuf = books.join(format!("{}.md", job.id));
    std::fs::write(&path, &book)
        .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?;

    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "step",
        "calls",
        "models",
        "attempts",
        "fallbacks",
        "tokens in/out",
        "slowest call",
    ]);
    for l in &report.steps {
        t.add_row(vec![
            l.step.clone(),
            l.calls.to_string(),
            l.models.join(", "),
            l.attempts.to_string(),
            l.fallbacks.to_string(),
            format!("{}/{}", l.input_tokens, l.output_tokens),
            format!("{} ms", l.longest_call_ms),
        ]);
    }
    println!("\nRun report ({} job {})", report.status, job.id);
    println!("{t}");
    if let Some(v) = report.engine_version {
        println!("engine:        {} version {v}", job.engine_name);
    }
    println!("models used:   {}", report.models_used.join(", "));
    println!(
        "calls:         {} ({} attempts, {} fallbacks)",
        report.calls, report.attempts, report.fallbacks
    );
    println!(
        "tokens:        {} in, {} out",
        report.input_tokens, report.output_tokens
    );
    println!(
        "wall time:     {} ms (job), {:.1} s (whole demo)",
        report.wall_ms.unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    println!("critical path: {} ms", report.critical_path_ms);
    for note in &report.notes {
        println!("note:          {note}");
    }
    let names = keyless.join(", ");
    match &writer {
        Writer::Apis => println!("text:          written by the providers' APIs"),
        Writer::Offline => println!(
            "text:          written by the OFFLINE provider (placeholder, not model output) for {names}"
        ),
        Writer::Local(path) => {
            println!(
                "text:          written by the local model {} on the CPU for {names}: {}",
                path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
                local_model_speed()
            );
        }
    }
    println!("\nbook: {}", path.display());
    eprintln!(
        "\nNext: `bookengine local down` stops the stack. To browse it: source {} and run\n      BOOKENGINE_DEV_USERS={} bookengine serve   # then open http://127.0.0.1:8787/admin",
        dir.join("env").display(),
        dir.join("dev-users.json").display()
    );
    Ok(())
}

/// `# Title`, then each chapter under its outline title: for flows whose last step
/// is the chapters' fan-out.
fn book_with_headings(result: &Value) -> Option<String> {
    let outputs = &result["outputs"];
    let titles: Vec<&str> = outputs["outline"]["chapters"]
        .as_array()?
        .iter()
        .map(|c| c["title"].as_str().unwrap_or(""))
        .collect();
    let texts = outputs["chapters"].as_array()?;
    let mut book = format!("# {}\n", result["title"].as_str().unwrap_or("Untitled"));
    for (k, text) in texts.iter().enumerate() {
        let title = titles.get(k).copied().filter(|t| !t.is_empty());
        book.push_str(&format!(
            "\n## {}. {}\n\n{}\n",
            k + 1,
            title.unwrap_or("Chapter"),
            whole_sentences(text.as_str().unwrap_or(""))
        ));
    }
    Some(book)
}

/// The text up to its last finished sentence: a capped answer stops mid-sentence.
fn whole_sentences(text: &str) -> &str {
    let text = text.trim();
    match text.rfind(['.', '!', '?']) {
        Some(end) if end > text.len() / 2 => &text[..=end],
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chapters_are_set_under_their_outline_titles() {
        let result = json!({
            "title": "Tea",
            "outputs": {
                "outline": {"title": "Tea", "chapters": [{"title": "Leaves"}, {"title": ""}]},
                "chapters": ["Green.", " Black. "]
            }
        });
        assert_eq!(
            book_with_headings(&result).unwrap(),
            "# Tea\n\n## 1. Leaves\n\nGreen.\n\n## 2. Chapter\n\nBlack.\n"
        );
        assert!(book_with_headings(&json!({"book": "x"})).is_none());
        assert_eq!(
            whole_sentences("One. Two three. Four fi"),
            "One. Two three."
        );
        assert_eq!(whole_sentences("No stop at all"), "No stop at all");
    }
}
