//! `curate completions` and `curate man`: shell completions and man pages generated from the
//! command line's own definitions, so they cannot fall behind the flags.

use std::io::Write;

use anyhow::Result;
use clap::CommandFactory;

use super::Context;
use crate::ExitStatus;
use crate::cli::{Cli, CompletionsArgs, ManArgs};
use curate::error::usage;

pub fn completions(args: CompletionsArgs, context: &Context) -> Result<ExitStatus> {
    let mut command = Cli::command();
    // Generated into memory first: clap_complete panics on a failed write, and a closed pipe
    // (`curate completions bash | head`) must end the run quietly.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "curate", &mut script);
    let mut out = context.printer.stdout();
    out.write_all(&script)?;
    out.flush()?;
    Ok(ExitStatus::Success)
}

pub fn man(args: ManArgs, context: &Context) -> Result<ExitStatus> {
    let mut command = Cli::command();
    command.build();
    let mut page = command;
    let mut name = String::from("curate");
    for word in &args.command {
        let Some(sub) = page.find_subcommand(word).cloned() else {
            let known: Vec<&str> = page
                .get_subcommands()
                .map(|c| c.get_name())
                .filter(|n| *n != "help")
                .collect();
            return Err(usage(format!(
                "curate man: '{name}' has no command '{word}' (commands: {})",
                known.join(", ")
            )));
        };
        name = format!("{name}-{word}");
        page = sub.name(name.clone());
    }
    let mut roff = Vec::new();
    clap_mangen::Man::new(page).render(&mut roff)?;
    let mut out = context.printer.stdout();
    out.write_all(&roff)?;
    out.flush()?;
    Ok(ExitStatus::Success)
}
