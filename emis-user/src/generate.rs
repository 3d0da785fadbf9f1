//! `emis generate`: the man pages and shell completions the Debian package ships, made
//! from the CLI definition itself so they cannot drift from `--help`. Hidden from
//! `emis --help`: packagers call it (`cargo xtask deb`), operators do not.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use clap::Subcommand;
use clap_complete::Shell;

/// The command's name, as installed.
const BIN: &str = "emis";

/// The shells whose completions the package installs.
pub const PACKAGED_SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

#[derive(Subcommand)]
pub enum GenerateCommand {
    /// Write one man page per command into DIR: emis.1, emis-run.1, emis-export-nft.1, ...
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
    /// Print the completion script for SHELL, or with --dir write bash, zsh and fish
    /// scripts under the names their completion directories expect (emis, _emis, emis.fish).
    Completions {
        /// The shell to print a script for.
        #[arg(value_enum, required_unless_present = "dir", conflicts_with = "dir")]
        shell: Option<Shell>,
        /// Write every packaged shell's script into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Runs `command` for the CLI `cli` (the whole `emis` command tree).
pub fn run(command: GenerateCommand, cli: clap::Command) -> Result<()> {
    match command {
        GenerateCommand::Man { dir } => man_pages(cli, &dir).map(|pages| {
            for page in pages {
                println!("{}", page.display());
            }
        }),
        GenerateCommand::Completions {
            shell: Some(shell), ..
        } => {
            clap_complete::generate(shell, &mut visible(&cli), BIN, &mut std::io::stdout());
            Ok(())
        }
        GenerateCommand::Completions {
            shell: None,
            dir: Some(dir),
        } => completions(&cli, &dir).map(|files| {
            for file in files {
                println!("{}", file.display());
            }
        }),
        GenerateCommand::Completions {
            shell: None,
            dir: None,
        } => unreachable!("clap requires SHELL or --dir"),
    }
}

/// `cli` without its hidden subcommands (this one): clap_mangen leaves them out, but
/// clap_complete would offer them.
fn visible(cli: &clap::Command) -> clap::Command {
    let visible = clap::Command::new(BIN)
        .version(env!("CARGO_PKG_VERSION"))
        .args(cli.get_arguments().cloned())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    match cli.get_about() {
        Some(about) => visible.about(about.clone()),
        None => visible,
    }
}

/// Writes the man pages of `cli` and its visible subcommands into `dir` (one page per
/// command, named as `man` looks them up: `emis-run.1` for `emis run`); returns the
/// section-1 pages now in `dir`, sorted.
pub fn man_pages(cli: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cli, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    pages_in(dir)
}

fn pages_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut pages = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1") {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}

/// The file name a shell's completion directory expects for the `emis` command:
/// bash-completion looks up the command's own name, zsh `_emis`, fish `emis.fish`.
pub fn completion_file_name(shell: Shell, bin: &str) -> String {
    match shell {
        Shell::Bash => bin.to_string(),
        other => clap_complete::Generator::file_name(&other, bin),
    }
}

/// Writes the bash, zsh and fish completion scripts of `cli` into `dir`.
pub fn completions(cli: &clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for shell in PACKAGED_SHELLS {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut visible(cli), BIN, &mut script);
        let path = dir.join(completion_file_name(shell, BIN));
        fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new(BIN)
            .version("1.2.3")
            .subcommand(clap::Command::new("run").about("Run it"))
            .subcommand(
                clap::Command::new("export").subcommand(clap::Command::new("nft").about("nft")),
            )
            .subcommand(clap::Command::new("generate").hide(true))
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("emis-generate-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn one_page_per_visible_command() {
        let dir = temp("man");
        let pages = man_pages(cli(), &dir).unwrap();
        let names: Vec<_> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["emis-export-nft.1", "emis-export.1", "emis-run.1", "emis.1"]
        );
        let page = fs::read_to_string(dir.join("emis-run.1")).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH emis-run 1"),
            "{page}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn completions_under_the_packaged_names_without_hidden_commands() {
        let dir = temp("completions");
        let files = completions(&cli(), &dir).unwrap();
        assert_eq!(
            files,
            [dir.join("emis"), dir.join("_emis"), dir.join("emis.fish")]
        );
        for file in files {
            let script = fs::read_to_string(&file).unwrap();
            assert!(script.contains("run") && script.contains("nft"), "{script}");
            assert!(!script.contains("generate"), "{}", file.display());
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
