//! `roster-sync forget --external-user-id ID`: erases one person's rows from `roster_events`
//! and `roster_attendees` in one transaction ([`Store::forget_person`]).
//!
//! It asks before erasing: on a terminal it shows what would go and waits for `yes`; without
//! a terminal (a script, a pipe) it refuses unless `--yes` is given, so a script never erases
//! by accident and never hangs on a prompt. `--dry-run` shows the counts and changes nothing.
//! It prints the id it was given (that is the point of the command) but never logs it.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::config::Settings;
use crate::domain::ExternalUserId;
use crate::store::Erased;

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The person to erase: their ExternalUserId, matched exactly (no patterns).
    #[arg(long, value_name = "ID", value_parser = parse_external_user_id)]
    pub external_user_id: ExternalUserId,
    /// Erase without asking (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Print what would be erased and change nothing.
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,
}

/// The service's rule for ExternalUserId: 2..=64 characters.
fn parse_external_user_id(s: &str) -> Result<ExternalUserId, String> {
    let chars = s.chars().count();
    if !(2..=64).contains(&chars) {
        return Err(format!(
            "is {chars} characters long; an ExternalUserId has 2..=64"
        ));
    }
    Ok(ExternalUserId::new(s))
}

/// Runs `forget`.
///
/// # Errors
/// The database cannot be reached or fails (nothing is erased then), stdin is not a terminal
/// and `--yes` was not given, or the answer at the prompt was not `yes`.
pub async fn run(settings: &Settings, args: ForgetArgs) -> anyhow::Result<()> {
    let person = &args.external_user_id;
    let store = crate::app::connect(settings).await?;
    let found = store.person_rows(person).await?;
    let mut out = std::io::stdout().lock();
    if found == Erased::default() {
        writeln!(
            out,
            "nothing stored for external user id {:?}",
            person.as_str()
        )?;
        return Ok(());
    }
    let what = describe(found);
    if args.dry_run {
        writeln!(
            out,
            "would erase {what} of external user id {:?}",
            person.as_str()
        )?;
        return Ok(());
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to erase {what} without --yes: stdin is not a terminal to confirm on \
                 (--dry-run shows what would be erased)"
            );
        }
        eprint!(
            "erase {what} of external user id {:?}? This cannot be undone. Type yes: ",
            person.as_str()
        );
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("reading the answer")?;
        if answer.trim() != "yes" {
            bail!("not confirmed; nothing erased");
        }
    }
    let erased = store.forget_person(person).await?;
    writeln!(
        out,
        "erased {} of external user id {:?}",
        describe(erased),
        person.as_str()
    )?;
    if erased.present > 0 {
        writeln!(
            out,
            "they were present in {} meeting(s): while they stay there, the daemon records them \
             as joined again at its next poll",
            erased.present
        )?;
    }
    Ok(())
}

fn describe(e: Erased) -> String {
    format!(
        "{} event(s) and {} current-roster row(s)",
        e.events, e.present
    )
}
