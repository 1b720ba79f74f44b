//! `onlyone man`: the manual pages, one per subcommand, made from the
//! flags' own help.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, CommandFactory};

use super::Cli;
use super::output::{self, Level, say};

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The subcommand whose page to print (run, status, stop, wait,
    /// completions, man) [default: the page of onlyone itself]
    #[arg(value_name = "SUBCOMMAND", value_parser = page_name)]
    subcommand: Option<String>,

    /// Write every page (onlyone.1, onlyone-run.1, ...) into DIR instead
    /// of printing one
    #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
    dir: Option<PathBuf>,
}

/// What the pages' footers name as their source.
const SOURCE: &str = concat!("onlyone ", env!("CARGO_PKG_VERSION"));

/// Prints one page, or writes them all into a directory.
pub fn man(args: ManArgs) -> anyhow::Result<u8> {
    let pages = pages()?;
    let Some(dir) = args.dir else {
        let wanted = args.subcommand.map(|name| format!("onlyone-{name}.1"));
        let wanted = wanted.as_deref().unwrap_or("onlyone.1");
        let (_, page) = pages
            .iter()
            .find(|(file, _)| file == wanted)
            .context("no such page")?;
        output::show_bytes(page)?;
        return Ok(0);
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    for (file, page) in &pages {
        let path = dir.join(file);
        std::fs::write(&path, page)
            .with_context(|| format!("cannot write the man page {}", path.display()))?;
        say(Level::Info, format!("wrote {}", path.display()));
    }
    Ok(0)
}

/// The command line as the pages describe it: without clap's `help`
/// subcommand, which has no page of its own.
fn described() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

/// The subcommands that have a page.
fn subcommands(command: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    command.get_subcommands().filter(|sub| !sub.is_hide_set())
}

fn page_name(text: &str) -> Result<String, String> {
    let command = described();
    let names: Vec<_> = subcommands(&command).map(clap::Command::get_name).collect();
    match names.contains(&text) {
        true => Ok(text.to_owned()),
        false => Err(format!("no such page; the pages are {}", names.join(", "))),
    }
}

/// Every page: its file name and its roff text. The top page lists the
/// subcommands' pages; each of those points back to it.
fn pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let command = described();
    let mut see_also = Vec::new();
    let mut pages = Vec::new();
    for sub in subcommands(&command) {
        let man = clap_mangen::Man::new(sub.clone()).source(SOURCE);
        // \% keeps roff from hyphenating the page name.
        see_also.push(format!("\\%onlyone\\-{}(1)", sub.get_name()));
        pages.push((man.get_filename(), render(&man, "onlyone(1)")?));
    }
    let man = clap_mangen::Man::new(command.clone()).source(SOURCE);
    pages.insert(0, (man.get_filename(), render(&man, &see_also.join(", "))?));
    Ok(pages)
}

fn render(man: &clap_mangen::Man, see_also: &str) -> anyhow::Result<Vec<u8>> {
    let mut page = Vec::new();
    man.render(&mut page)?;
    page.extend_from_slice(format!(".SH \"SEE ALSO\"\n{see_also}\n").as_bytes());
    Ok(page)
}
