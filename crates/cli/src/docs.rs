//! `raftkv completion SHELL` and `raftkv man`: generated from the command definitions
//! themselves (clap_complete, clap_mangen), so they never drift from the flags.

use std::path::PathBuf;

use clap::{Args, Command};
use clap_complete::Shell;

use crate::global::{CliError, CliResult};
use crate::output::write_out;

#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    raftkv completion bash > ~/.local/share/bash-completion/completions/raftkv\n  \
    raftkv completion zsh > \"${fpath[1]}/_raftkv\"\n  \
    raftkv completion fish > ~/.config/fish/completions/raftkv.fish")]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  raftkv man | man -l -\n  raftkv man --out /usr/local/share/man/man1")]
pub struct ManArgs {
    /// Write raftkv.1 and a page per subcommand (raftkv-put.1, ...) into DIR (created if
    /// missing) instead of printing raftkv.1.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn completion(cli: Command, args: &CompletionArgs) -> CliResult {
    // Without the hidden commands, which some generators (bash) would offer.
    let mut visible = Command::new("raftkv")
        .args(cli.get_arguments().cloned())
        .subcommands(cli.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut visible, "raftkv", &mut script);
    write_out(&script)
}

pub fn man(cli: Command, args: &ManArgs) -> CliResult {
    match &args.out {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cli).render(&mut page).map_err(|e| failed("render the manual page", e))?;
            write_out(&page)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| failed(&format!("create {}", dir.display()), e))?;
            let pages = page_count(&cli);
            clap_mangen::generate_to(cli, dir)
                .map_err(|e| failed(&format!("write the pages to {}", dir.display()), e))?;
            println!("wrote {pages} manual pages to {}", dir.display());
            Ok(())
        }
    }
}

/// One page per command that is not hidden, as clap_mangen writes them.
fn page_count(cmd: &Command) -> usize {
    1 + cmd.get_subcommands().filter(|c| !c.is_hide_set()).map(page_count).sum::<usize>()
}

fn failed(what: &str, e: std::io::Error) -> CliError {
    CliError::failed(format!("error: cannot {what}: {e}"))
}
