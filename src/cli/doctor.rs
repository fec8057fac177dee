//! `bookengine doctor`: check the host project (DATABASE_URL) and this service's
//! settings; print the findings; exit non-zero on a security finding.

use crate::config::{DatabaseConfig, SupabaseConfig};
use crate::doctor::{self, Finding};
use crate::error::Result;
use crate::migrate;
use clap::Args;
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub db: DatabaseConfig,
    /// The service's own settings: the API keys are checked for legacy JWT keys.
    #[command(flatten)]
    pub supabase: SupabaseConfig,
}

/// Returns the exit code: 0, or `doctor::EXIT_SECURITY_FINDING`.
pub async fn doctor(args: DoctorArgs, json: bool) -> Result<i32> {
    let config = args.db.pg_config()?;
    let client = migrate::connect(&config).await?;
    let cx = doctor::context(client, args.supabase).await?;
    let findings = doctor::examine(&cx).await?;
    let code = doctor::exit_code(&findings);
    if json {
        let count = |s: doctor::Severity| findings.iter().filter(|f| f.severity == s).count();
        let body = serde_json::json!({
            "database": migrate::describe_host(&config),
            "summary": {
                "security": count(doctor::Severity::Security),
                "warning": count(doctor::Severity::Warning),
                "info": count(doctor::Severity::Info),
            },
            "findings": findings,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    } else {
        print_report(&migrate::describe_host(&config), &findings);
    }
    Ok(code)
}

fn print_report(database: &str, findings: &[Finding]) {
    if findings.is_empty() {
        println!("{database}: no findings");
        return;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["#", "severity", "id", "finding"]);
    for (i, f) in findings.iter().enumerate() {
        t.add_row(vec![
            (i + 1).to_string(),
            f.severity.as_str().to_owned(),
            f.id.to_owned(),
            f.summary.clone(),
        ]);
    }
    println!("{database}\n{t}");
    for (i, f) in findings.iter().enumerate() {
        println!(
            "\n#{} {} [{}]: {}",
            i + 1,
            f.id,
            f.severity.as_str(),
            f.summary
        );
        for o in &f.objects {
            println!("  - {o}");
        }
        println!("  why: {}", f.why);
        println!("  fix:");
        for line in f.fix.lines() {
            println!("    {line}");
        }
    }
}
