//! `ctl completion SHELL`: the shell completion script for `ctl` (clap_complete), printed so the
//! operator installs it where their shell looks, e.g.
//! `ctl completion bash > ~/.local/share/bash-completion/completions/ctl`.

use anyhow::Result;
use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;

use super::Cli;
use crate::Output;

/// The shells `ctl completion` writes scripts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// bash (bash-completion).
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// Arguments of `ctl completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// `ctl completion --help`, after the options.
pub const COMPLETION_HELP: &str = "\
Install the script where your shell loads completions from, for example:
  bash:  ctl completion bash > ~/.local/share/bash-completion/completions/ctl
  zsh:   ctl completion zsh > ~/.zfunc/_ctl    (with fpath+=~/.zfunc before compinit)
  fish:  ctl completion fish > ~/.config/fish/completions/ctl.fish";

/// Runs `ctl completion`: the script on stdout.
pub fn run(args: CompletionArgs) -> Result<Output> {
    let shell = match args.shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "ctl", &mut script);
    Ok(Output::stdout(String::from_utf8(script)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: CompletionShell) -> String {
        run(CompletionArgs { shell }).unwrap().stdout
    }

    #[test]
    fn every_shell_gets_a_script_naming_the_commands() {
        let bash = script(CompletionShell::Bash);
        assert!(bash.contains("complete -F _ctl"), "{bash}");
        let zsh = script(CompletionShell::Zsh);
        assert!(zsh.starts_with("#compdef ctl"), "{zsh}");
        let fish = script(CompletionShell::Fish);
        assert!(fish.contains("complete -c ctl"), "{fish}");
        for text in [&bash, &zsh, &fish] {
            for command in ["migrate", "show-controller", "completion", "deploy"] {
                assert!(text.contains(command), "{command} missing");
            }
        }
    }
}
