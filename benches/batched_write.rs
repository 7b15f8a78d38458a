//! Peak memory of writing a large Parquet table through the batched writer.
//!
//! `batched_write ROWS PATH [batched|whole]`: `batched` generates and writes one batch at a
//! time (what commands do for large outputs); `whole` builds the full frame first and writes
//! it, for contrast. Run under `/usr/bin/time -v` (see `scripts/bench-batched-write`) and read
//! "Maximum resident set size".

use std::time::Instant;

use curate::table::{DEFAULT_BATCH_ROWS, Output, Provenance};
use polars::prelude::*;

fn batch(start: usize, len: usize) -> DataFrame {
    let ids: Vec<i64> = (start..start + len).map(|i| i as i64).collect();
    let texts: Vec<String> = (start..start + len)
        .map(|i| format!("example {i} with a short line of text"))
        .collect();
    let scores: Vec<f64> = (start..start + len).map(|i| (i as f64).sin()).collect();
    let domains: Vec<&str> = (start..start + len)
        .map(|i| if i % 3 == 0 { "code" } else { "math" })
        .collect();
    df!("id" => ids, "text" => texts, "score" => scores, "domain" => domains)
        .expect("columns of equal length")
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rows: usize = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5_000_000);
    let path = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "batched_write.parquet".to_string());
    let mode = args.get(2).map(String::as_str).unwrap_or("batched");

    let started = Instant::now();
    let output = Output::create(&path, None, true)?;
    let provenance = Provenance::new(vec!["batched_write".into()], 0);
    let written = match mode {
        "batched" => {
            let mut writer = output.writer(batch(0, 1).schema(), Some(&provenance))?;
            let mut start = 0;
            while start < rows {
                let len = DEFAULT_BATCH_ROWS.min(rows - start);
                writer.write_batch(&batch(start, len))?;
                start += len;
            }
            writer.finish()?
        }
        "whole" => output.write_frame(&batch(0, rows), Some(&provenance))?,
        other => anyhow::bail!("unknown mode {other}: expected batched or whole"),
    };
    let bytes = std::fs::metadata(&path)?.len();
    println!(
        "mode={mode} rows={written} file_bytes={bytes} seconds={:.2}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
