//! Where an influence run saves its progress, and what `--resume` and `--force` do with an
//! earlier run's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::cli::{BatchSize, GradientArgs};
use crate::printer::Printer;
use curate::error::{Interrupted, usage};
use curate::influence::checkpoint::RunCheckpoint;
use curate::influence::run::GradientRun;
use curate::model::checkpoint::{CheckpointMismatch, CheckpointPlace};

/// The checkpoint of a run writing `out` (a file or directory; `-` is stdout), fingerprinted
/// by `fingerprint`: `None` when progress has nowhere to go (stdout without
/// --checkpoint-dir). An earlier run's progress is continued with --resume, discarded with
/// --force, and otherwise refused; on --resume the run adopts the saved batch size when its
/// own was chosen automatically.
pub(super) fn open(
    args: &GradientArgs,
    out: &str,
    fingerprint: String,
    run: &mut GradientRun,
    force: bool,
    printer: &Printer,
) -> Result<Option<RunCheckpoint>> {
    let dir = match (&args.checkpoint_dir, out) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, "-") if args.resume => {
            return Err(usage(
                "--resume with --out - needs --checkpoint-dir: progress is saved beside --out",
            ));
        }
        (None, "-") => return Ok(None),
        (None, out) => crate::commands::sibling(Path::new(out), "checkpoint"),
    };
    RunCheckpoint::check_place(&dir, Path::new(out)).map_err(|err| match err {
        CheckpointPlace::OverlapsOutput { .. } => usage(format!(
            "--checkpoint-dir {} is --out {out} or overlaps it; give the checkpoint a directory of its own",
            dir.display()
        )),
        CheckpointPlace::Foreign(_) => usage(format!(
            "--checkpoint-dir {}: {err}; name a new or empty directory",
            dir.display()
        )),
    })?;
    let every = Duration::from_secs(args.checkpoint_every);
    let mut checkpoint = RunCheckpoint::new(&dir, fingerprint, run.batch_size, every);
    let exists = RunCheckpoint::exists(&dir);
    let mut err = printer.stderr();
    if exists && !args.resume {
        if !force {
            return Err(usage(format!(
                "{}: an interrupted run's progress is here; pass --resume to continue it, or --force to start over",
                dir.display()
            )));
        }
        checkpoint.remove()?;
    } else if args.resume && !exists {
        writeln!(
            err,
            "--resume: no progress saved in {}; starting from the beginning",
            dir.display()
        )?;
    } else if args.resume {
        let adopt = args.lm.batch_size == BatchSize::Auto;
        let adopted = checkpoint.load(adopt).map_err(|e| match e.downcast::<CheckpointMismatch>() {
            Ok(_) => usage(format!(
                "--resume: the progress in {} was saved by a run with other data, settings or batch size; --force starts over",
                dir.display()
            )),
            Err(e) => e,
        })?;
        if let Some(batch_size) = adopted {
            writeln!(
                err,
                "--resume: batches of {batch_size} as the interrupted run cut them (--batch-size auto chose {} now)",
                run.batch_size
            )?;
            run.batch_size = batch_size;
        }
        writeln!(err, "--resume: continuing from {}", dir.display())?;
    }
    Ok(Some(checkpoint))
}

/// After a pass: on a stop with progress saved, say where it is and how to continue.
pub(super) fn on_stop<T>(
    result: Result<T>,
    checkpoint: Option<&RunCheckpoint>,
    printer: &Printer,
) -> Result<T> {
    if let (Err(err), Some(checkpoint)) = (&result, checkpoint)
        && err.is::<Interrupted>()
        && RunCheckpoint::exists(checkpoint.dir())
    {
        writeln!(
            printer.stderr(),
            "progress saved in {}; continue with --resume",
            checkpoint.dir().display()
        )?;
    }
    result
}
